"""The network registry: builders by name, their options, and ``build_network``."""

from __future__ import annotations

import inspect

import torch

from mfverify.nets.mlp import MeanFlowMLP
from mfverify.nets.unet import UNet
from mfverify.registry import Registry

networks = Registry("network", "mfverify.networks")
"""Network builders ``build(d, **options) -> module`` with ``module(x, r, t) -> u`` (n, d).

A module may offer ``jvp(x, r, t, dx, dr, dt, tangent_grad)`` (the ``"analytic"``
back-end); without it the objectives use ``torch.func``. Register with
``@networks.register("name")``, a ``"package.module:attr"`` string, or an entry
point in the group ``mfverify.networks``.
"""


networks.register("mlp", MeanFlowMLP)  # the class is its own builder: MeanFlowMLP(d, **options)
networks.register("unet", UNet)  # image-shaped cases; the training loop passes the case's shape


def network_options(name: str) -> dict:
    """The options of network ``name`` with their defaults (from its builder's signature)."""
    build = networks.get(name)
    params = list(inspect.signature(build).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not p.empty and p.name != "dtype"}


def build_network(name: str, d: int, options=None, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``networks.get(name)(d, **options)``; unknown options are errors naming the known ones."""
    options = dict(options or {})
    known = network_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"network {name!r} got unexpected options {unknown}; its options: {', '.join(known) or 'none'}")
    build = networks.get(name)
    if "dtype" in inspect.signature(build).parameters:
        return build(d, **options, dtype=dtype)
    # a builder without a dtype argument initialises in torch's default dtype: set it
    # for the call, so that a seed gives the same initial draws whatever the caller's
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        return build(d, **options)
    finally:
        torch.set_default_dtype(previous)
