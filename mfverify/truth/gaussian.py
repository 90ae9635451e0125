"""Closed-form average velocity of one Gaussian ``N(mu, S)`` (MATH.md §3).

With ``S = Q diag(lam) Q^T``, ``sig_i(t) = sqrt((1-t)^2 lam_i + t^2)`` and
``y = Q^T (x - (1-t) mu)``:

    Phi(x, t -> r) = (1-r) mu + Q diag(sig(r) / sig(t)) y
    u(x, r, t)     = (x - Phi) / (t - r)
                   = -mu + Q diag(((t+r) - lam (2-t-r)) / ((sig(t) + sig(r)) sig(t))) y

The second form of ``u`` divides out ``t - r`` analytically
(``sig(t)^2 - sig(r)^2 = (t-r) ((t+r) - lam (2-t-r))``), so it has no
cancellation as ``r -> t`` and gives ``v(x, t)`` exactly at ``r = t``.
Differentiable in ``x, r, t`` (autograd and forward mode).
"""

from __future__ import annotations

import torch

from mfverify.cases import GaussianMixture


def applies(mixture) -> bool:
    return isinstance(mixture, GaussianMixture) and mixture.K == 1


def average_velocity(gm: GaussianMixture, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``u(x, r, t)`` (n, d) for x (n, d), r, t (n,), one component."""
    T = gm.tensors(x.device)
    Q, mu = T["Q"][0], T["mu"][0]
    lam = T["lam"]  # (d,) for K = 1
    tc, rc = t[:, None], r[:, None]
    y = (x - (1 - tc) * mu) @ Q
    sig_t = ((1 - tc) ** 2 * lam + tc**2).sqrt()
    sig_r = ((1 - rc) ** 2 * lam + rc**2).sqrt()
    gain = ((tc + rc) - lam * (2 - tc - rc)) / ((sig_t + sig_r) * sig_t)
    return (gain * y) @ Q.T - mu
