from fewshot_cryoet.api.core_ import *  # noqa: F401,F403  (temporary during the split)
