"""Hypothesis strategies: mixtures, times, points (STYLE.md: composable, no loops of draws)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from mfverify.cases import GaussianMixture, ProductMixture


@st.composite
def covariances(draw, d: int, min_log10_eig: float = -6.0):
    """Random full covariance, eigenvalues from ``10**min_log10_eig`` (near-singular) to 2."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lo = draw(st.floats(min_log10_eig, -0.5))
    lam = 10 ** rng.uniform(lo, np.log10(2.0), size=d)
    S = (q * lam) @ q.T
    return 0.5 * (S + S.T)


@st.composite
def mixtures(draw, K=st.integers(1, 5), d=st.integers(1, 6), min_log10_eig: float = -6.0):
    """A ``GaussianMixture`` with random weights, means and full covariances."""
    K, d = draw(K), draw(d)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(K, 2.0)) * 0.9 + 0.1 / K  # no vanishing component
    w = w / w.sum()
    mu = rng.normal(0.0, 1.5, size=(K, d))
    S = np.stack([draw(covariances(d, min_log10_eig)) for _ in range(K)])
    return GaussianMixture(w, mu, S)


def gaussians(d=st.integers(1, 8), min_log10_eig: float = -6.0):
    return mixtures(K=st.just(1), d=d, min_log10_eig=min_log10_eig)


def mixtures_1d(K=st.integers(1, 5), min_log10_eig: float = -4.0):
    return mixtures(K=K, d=st.just(1), min_log10_eig=min_log10_eig)


@st.composite
def product_mixtures(draw, d=st.integers(1, 6)):
    return ProductMixture([draw(mixtures_1d(K=st.integers(1, 3))) for _ in range(draw(d))])


@st.composite
def times(draw, n: int, t_min: float = 0.02, r_min: float = 0.0, min_gap: float = 0.0):
    """``(r, t)`` as (n,) tensors with ``r_min <= r <= t - min_gap``, ``t_min <= t <= 1``; some full intervals."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = t_min + (1 - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    frac = torch.rand(n, generator=g, dtype=torch.float64)
    r = r_min + (t - min_gap - r_min).clamp_min(0) * frac
    if draw(st.booleans()):
        t[0], r[0] = 1.0, max(r_min, 0.0)
    return r, t


def points_on_path(mixture, t: torch.Tensor, seed: int) -> torch.Tensor:
    """``x_t = (1-t) x0 + t x1`` for the given times: typical points of ``p_t``."""
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(t.shape[0], generator=g)
    x1 = torch.randn(t.shape[0], mixture.d, generator=g, dtype=torch.float64)
    return (1 - t[:, None]) * x0 + t[:, None] * x1
