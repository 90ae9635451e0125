"""Time samplers for training: ``(r, t)`` with ``r <= t`` (MATH.md §1)."""

from __future__ import annotations

import torch

KINDS = ("uniform", "logit_normal")


def sample_times(
    n: int,
    kind: str = "uniform",
    mean: float = -0.4,
    std: float = 1.0,
    frac_r_eq_t: float = 0.25,
    generator: torch.Generator | None = None,
    device="cpu",
    dtype=torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, t)`` (n,): two independent draws, ``t = max``, ``r = min``.

    ``kind``: ``"uniform"`` on [0, 1] or ``"logit_normal"`` (``sigmoid(N(mean, std^2))``).
    Exactly ``round(frac_r_eq_t * n)`` samples, at random positions, have ``r = t``
    (the flow-matching share); the rest have ``r <= t`` from the two draws.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 <= frac_r_eq_t <= 1.0:
        raise ValueError(f"frac_r_eq_t must lie in [0, 1], got {frac_r_eq_t!r}")
    if kind == "logit_normal" and not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    if kind == "uniform":
        a = torch.rand(2, n, generator=generator, dtype=torch.float64)
    else:
        a = torch.sigmoid(mean + std * torch.randn(2, n, generator=generator, dtype=torch.float64))
    t, r = a.max(0).values, a.min(0).values
    n_eq = round(frac_r_eq_t * n)
    eq = torch.randperm(n, generator=generator)[:n_eq]
    r[eq] = t[eq]
    return r.to(device=device, dtype=dtype), t.to(device=device, dtype=dtype)
