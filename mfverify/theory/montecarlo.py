"""Monte Carlo estimates of conditional expectations given ``x_t = x`` (MATH.md §3).

Self-normalised importance sampling with the prior as proposal: draw
``x0_i ~ p0``; the weight of ``x0_i`` is the density of ``x_t = x`` given it,
``N(x; (1-t) x0_i, t^2 I)``, and then ``x1_i = (x - (1-t) x0_i) / t`` and
``v_c = x1_i - x0_i = (x - x0_i) / t``. The standard error is the usual
delta-method one, ``sum_i wbar_i^2 (f_i - fhat)^2``.

An independent check of the closed forms in ``mfverify.truth``: it uses only
``mixture.sample``.
"""

from __future__ import annotations

from typing import Callable

import torch


def conditional_mean_mc(
    mixture,
    x: torch.Tensor,
    t: float,
    f: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
    chunk: int = 50_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate ``E[f(v_c) | x_t = x]`` and its standard error; x (m, d), t in (0, 1].

    ``f`` maps ``v_c`` of shape (m, N, d) to (m, N, q); the default is ``v_c``
    itself (the velocity). Returns ``(estimate (m, q), stderr (m, q))``.
    """
    if not 0 < t <= 1:
        raise ValueError(f"t must lie in (0, 1], got {t!r}")
    f = f or (lambda vc: vc)
    x = torch.as_tensor(x, dtype=torch.float64)
    # streaming sums of w, w f, w^2, w^2 f, w^2 f^2, rescaled to a running max log-weight
    top = torch.full((x.shape[0], 1), -torch.inf, dtype=torch.float64)
    sums = None
    for start in range(0, n_samples, chunk):
        x0 = mixture.sample(min(chunk, n_samples - start), generator=generator)
        log_w = -0.5 * (x[:, None, :] - (1 - t) * x0[None]).square().sum(-1) / t**2  # (m, N)
        values = f((x[:, None, :] - x0[None]) / t)  # (m, N, q)
        new_top = torch.maximum(top, log_w.amax(1, keepdim=True))
        w = (log_w - new_top).exp()[..., None]
        w2 = w.square()
        part = [w.sum(1), (w * values).sum(1), w2.sum(1), (w2 * values).sum(1), (w2 * values.square()).sum(1)]
        if sums is None:
            sums = part
        else:
            shrink = (top - new_top).exp()
            sums = [a * shrink ** (1 if i < 2 else 2) + b for i, (a, b) in enumerate(zip(sums, part))]
        top = new_top
    s_w, s_wf, s_w2, s_w2f, s_w2f2 = sums
    est = s_wf / s_w
    var = (s_w2f2 - 2 * est * s_w2f + est.square() * s_w2) / s_w.square()
    return est, var.clamp_min(0).sqrt()


def z_scores(exact: torch.Tensor, estimate: torch.Tensor, stderr: torch.Tensor) -> torch.Tensor:
    """``|exact - estimate| / stderr`` entrywise."""
    return (exact - estimate).abs() / stderr.clamp_min(1e-300)


def sample_conditional_velocity(mixture, x, t: float, n_samples: int, generator=None) -> torch.Tensor:
    """Exact draws of ``v_c`` given ``x_t = x`` (m, N, d) for a ``GaussianMixture`` or ``LowRankMixture``.

    Given ``x_t = x`` the posterior of ``x0`` is a Gaussian mixture, hence so is
    ``v_c``: component k with probability ``pi_k``, mean ``E[v_c | x, k]`` and
    covariance ``S_k C_k^-1`` (``mfverify.truth.fields``): ``Q_k diag(lam_k / c_k) Q_k^T``,
    or for a low-rank component ``lam / c`` along its basis ``U_k`` and ``noise / c_perp`` off it.
    """
    from mfverify.cases import GaussianMixture, LowRankMixture
    from mfverify.truth.fields import gm_component_moments

    if isinstance(mixture, LowRankMixture):
        return _sample_lowrank(mixture, x, t, n_samples, generator)
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture or LowRankMixture, got {type(mixture).__name__}")
    x = torch.as_tensor(x, dtype=torch.float64)
    m, d = x.shape
    tt = torch.full((m,), float(t), dtype=torch.float64)
    pi, g, var = gm_component_moments(mixture, x, tt)
    k = torch.multinomial(pi, n_samples, replacement=True, generator=generator)  # (m, N)
    eps = torch.randn(m, n_samples, d, generator=generator, dtype=torch.float64)
    rows = torch.arange(m)[:, None]
    std_eig = var[rows, k].sqrt()  # (m, N, d)
    Q = mixture.eigvecs[k]  # (m, N, d, d)
    return g[rows, k] + torch.einsum("mnij,mnj->mni", Q, std_eig * eps)


def _sample_lowrank(mixture, x, t, n_samples, generator):
    from mfverify.truth import lowrank

    x = torch.as_tensor(x, dtype=torch.float64)
    m, d = x.shape
    tt = torch.full((m,), float(t), dtype=torch.float64)
    pi, g, var, var_perp = lowrank.component_moments(mixture, x, tt)
    k = torch.multinomial(pi, n_samples, replacement=True, generator=generator)  # (m, N)
    e = torch.randn(m, n_samples, mixture.q, generator=generator, dtype=torch.float64)
    e_d = torch.randn(m, n_samples, d, generator=generator, dtype=torch.float64)
    rows = torch.arange(m)[:, None]
    U = mixture.basis[k]  # (m, N, d, q)
    off = e_d - torch.einsum("mndq,mnq->mnd", U, torch.einsum("mndq,mnd->mnq", U, e_d))
    along = torch.einsum("mndq,mnq->mnd", U, var[rows, k].sqrt() * e)
    return g[rows, k] + along + var_perp[rows, k].sqrt()[..., None] * off
