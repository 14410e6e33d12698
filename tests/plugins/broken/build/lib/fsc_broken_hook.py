"""A plugin whose hook raises after registering one method: nothing of it may stay registered."""

from fewshot_cryoet import hookimpl
from fewshot_cryoet.methods.xcorr import CrossCorrelation


class HalfRegistered(CrossCorrelation):
    name = "half-registered"


@hookimpl
def fsc_register_methods(registry):
    registry.add(HalfRegistered)
    raise RuntimeError("hook exploded")
