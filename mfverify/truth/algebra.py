"""Small array helpers shared by the closed-form fields (``fields``, ``lowrank``)."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def component_sum(A: torch.Tensor, d: int) -> torch.Tensor:
    """Sum over each component's d coordinates: (n, K*d) -> (n, K).

    The fastest form depends on d (measured on CPU): strided slices for small d,
    a reduction over a (n, K, d) view otherwise; a GEMM with an indicator is
    slower than both.
    """
    if d <= 4:
        acc = A[:, 0::d]
        for i in range(1, d):
            acc = acc + A[:, i::d]
        return acc
    return A.view(A.shape[0], -1, d).sum(-1)


def expand(pi: torch.Tensor, d: int) -> torch.Tensor:
    """``pi_k`` repeated over each component's d coordinates: (n, K) -> (n, K*d)."""
    return pi.repeat_interleave(d, dim=1)


def norm(Z: torch.Tensor) -> torch.Tensor:
    """``|Z|`` over the last axis without overflowing in the squares (scaled by the largest entry)."""
    m = Z.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    return m[..., 0] * (Z / m).square().sum(-1).sqrt()


def half_square_shifted(n: torch.Tensor) -> torch.Tensor:
    """``(n^2 - min_k n^2) / 2`` over the last axis (components), as ``(n - n_min)(n + n_min) / 2``:
    the softmax over components is unchanged by the shift, and the nearest component's term
    is 0 where ``n^2`` itself would overflow (``|x - mu| / t`` near a Dirac mixture)."""
    n_min = n.amin(-1, keepdim=True)
    return 0.5 * (n - n_min) * (n + n_min)
