"""``python -m fewshot_cryoet`` is the ``fsc`` command."""

from fewshot_cryoet.cli import main

main()
