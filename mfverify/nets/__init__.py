"""Networks ``u_theta(x, r, t)``, all safe under ``torch.func`` (``jvp``, ``vmap``).

``mlp``: the default ``MeanFlowMLP`` and its time features; ``conditioned``: labels
bound to a class-conditional network; ``build``: the registry of network builders
(``networks``, ``build_network``, ``network_options``); ``unet``: the conv U-Net for
image-shaped cases. A new network is a module here, registered in ``build``.

Imports: ``mfverify.registry`` only; a network knows no objective, case or truth.
"""

from mfverify.nets.build import build_network, network_options, networks
from mfverify.nets.conditioned import NO_LABEL, Conditioned
from mfverify.nets.mlp import TIME_FEATURES, TIME_INPUTS, MeanFlowMLP, TimeFeatures
from mfverify.nets.unet import UNet

__all__ = ["MeanFlowMLP", "UNet", "TimeFeatures", "TIME_INPUTS", "TIME_FEATURES", "NO_LABEL", "Conditioned", "networks",
           "network_options", "build_network"]
