"""The built-in methods, registered through the same hook as any third-party plugin."""

from __future__ import annotations

from fewshot_cryoet.plugins.hookspecs import hookimpl


@hookimpl
def fsc_register_methods(registry) -> None:
    from fewshot_cryoet.methods.cosnet import COSNet
    from fewshot_cryoet.methods.matched import MatchedTemplates
    from fewshot_cryoet.methods.protonet import ProtoNet
    from fewshot_cryoet.methods.radial import RadialProfile
    from fewshot_cryoet.methods.siamese import Siamese
    from fewshot_cryoet.methods.xcorr import CrossCorrelation

    for method in (COSNet, ProtoNet, Siamese, CrossCorrelation, MatchedTemplates, RadialProfile):
        registry.add(method)
