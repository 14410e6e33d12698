"""A plugin that registers a method name that is already taken (protonet)."""

from fewshot_cryoet import hookimpl
from fewshot_cryoet.methods.protonet import ProtoNet


class Impostor(ProtoNet):
    description = "registers a name that is taken"


@hookimpl
def fsc_register_methods(registry):
    registry.add(Impostor)
