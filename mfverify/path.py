"""The linear path of MATH.md §1, written once: ``x_t = (1 - t) x0 + t x1``, ``v_c = x1 - x0``.

``x0`` (n, d) data, ``x1`` (n, d) noise, ``t`` (n,) (or a float); ``sample(mixture, t, g)`` draws
``x_t ~ p_t``: ``x0 ~ p0`` first, then ``x1 ~ N(0, I)`` from the same generator (the order every
caller relied on, so that a seed gives the same points as before).

Imports: nothing of mfverify's (a mixture is anything with ``sample(n, generator=)`` and ``d``).
"""

from __future__ import annotations

import torch

__all__ = ["x_t", "v_c", "sample"]


def _column(t, like: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t[:, None] if t.dim() == 1 else t
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def x_t(x0: torch.Tensor, x1: torch.Tensor, t) -> torch.Tensor:
    """``(1 - t) x0 + t x1`` (n, d): the point of the path at time ``t`` (data at 0, noise at 1)."""
    tc = _column(t, x0)
    return (1 - tc) * x0 + tc * x1


def v_c(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """``x1 - x0`` (n, d): the conditional velocity, the regression label of flow matching."""
    return x1 - x0


def sample(mixture, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_t ~ p_t`` (n, d) for times ``t`` (n,): ``x0 ~ p0``, then ``x1 ~ N(0, I)``, float64."""
    n = t.shape[0]
    x0 = mixture.sample(n, generator=generator)
    return x_t(x0, torch.randn(n, mixture.d, generator=generator, dtype=torch.float64), t)
