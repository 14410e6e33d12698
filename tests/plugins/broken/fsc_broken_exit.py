"""A plugin that calls sys.exit while being imported (seen in scripts turned into plugins)."""

import sys

sys.exit("fsc_broken_exit refuses to load")
