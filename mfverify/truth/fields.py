"""Closed-form fields of a Gaussian-mixture path (MATH.md §3).

``C_k(t) = (1-t)^2 S_k + t^2 I``; in the eigenbasis of ``S_k`` it is diagonal,
``c_k = (1-t)^2 lam_k + t^2``, and every formula below is evaluated there:
``y_k = Q_k^T (x - (1-t) mu_k)``.

- posterior weights ``pi_k = softmax_k(log w_k + log N(x; (1-t) mu_k, C_k))``
- velocity ``v = sum_k pi_k [Q_k diag((t - (1-t) lam_k) / c_k) y_k - mu_k]``
- score ``grad log p_t = -sum_k pi_k Q_k diag(1 / c_k) y_k``
- ``E[v_c | x, k] = g_k = Q_k diag((t - (1-t) lam_k)/c_k) y_k - mu_k`` and
  ``Cov[v_c | x, k] = S_k C_k^-1 = Q_k diag(lam_k / c_k) Q_k^T`` (from
  ``Var v_c = I + S``, ``Cov(v_c, x_t) = t I - (1-t) S``), mixed over ``pi``.

The ``_raw`` functions take validated float64 tensors ``x (n, d)``, ``t (n,)``
and are differentiable (autograd and forward mode); the public wrappers in
``mfverify.truth`` validate.
"""

from __future__ import annotations

import torch

from mfverify.cases import GaussianMixture, LowRankMixture, ProductMixture
from mfverify.truth import lowrank
from mfverify.truth.algebra import LOG_2PI as _LOG_2PI
from mfverify.truth.algebra import component_sum as _component_sum
from mfverify.truth.algebra import expand as _expand
from mfverify.truth.algebra import half_square_shifted as _half_square_shifted
from mfverify.truth.algebra import norm as _norm
from mfverify.truth.inputs import prepare



# ------------------------------------------------------------ full mixtures


def _gm_terms(T: dict, x: torch.Tensor, t: torch.Tensor):
    """Eigen-coordinates ``Y`` (n, K*d), ``1/c`` (n, K*d) and ``log w_k N_k`` (n, K)."""
    d = x.shape[1]
    tc = t[:, None]
    Y = torch.addmm(T["muQ"] * (tc - 1), x, T["Qcat"])  # x Q_k - (1-t) Q_k^T mu_k
    c = torch.addcmul(tc.square(), (1 - tc).square(), T["lam"])
    ic = c.reciprocal()
    quad_logdet = _component_sum(Y.square() * ic + c.log(), d)
    logits = T["log_w"] - 0.5 * (quad_logdet + d * _LOG_2PI)
    return Y, ic, logits


def gm_velocity(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = gm.tensors(x.device)
    Y, ic, logits = _gm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None]
    a = torch.addcmul(tc, tc - 1, T["lam"]) * ic  # (t - (1-t) lam) / c
    return (_expand(pi, gm.d) * a * Y) @ T["QcatT"] - pi @ T["mu"]


def gm_velocity_jvp(gm: GaussianMixture, x, t, dx, dt):
    """``(v, J_x v . dx + d_t v dt)``, differentiating the formulas above by hand.

    ``dY = dx Q + dt Q^T mu``, ``dc = 2 a c dt``, ``da = (1 + lam - 2 a^2 c) / c dt``,
    ``d logit_k = -sum_i (Y dY / c - (Y^2 / c - 1) a dt)``, ``dpi = pi (dlogit - pi . dlogit)``.
    About twice the cost of ``gm_velocity``, far cheaper than generic forward-mode AD.
    """
    T = gm.tensors(x.device)
    Y, ic, logits = _gm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc, dtc = t[:, None], dt[:, None]
    a = torch.addcmul(tc, tc - 1, T["lam"]) * ic
    dY = torch.addmm(T["muQ"] * dtc, dx, T["Qcat"])
    da = (1 + T["lam"] - 2 * a.square() / ic) * ic * dtc
    dlogit = -_component_sum(Y * dY * ic - (Y.square() * ic - 1) * a * dtc, gm.d)
    dpi = pi * (dlogit - (pi * dlogit).sum(-1, keepdim=True))
    pe, dpe = _expand(pi, gm.d), _expand(dpi, gm.d)
    aY = a * Y
    v = (pe * aY) @ T["QcatT"] - pi @ T["mu"]
    dv = (dpe * aY + pe * (da * Y + a * dY)) @ T["QcatT"] - dpi @ T["mu"]
    return v, dv


def gm_score(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = gm.tensors(x.device)
    Y, ic, logits = _gm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    return -((_expand(pi, gm.d) * Y * ic) @ T["QcatT"])


def gm_posterior(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    _, _, logits = _gm_terms(gm.tensors(x.device), x, t)
    return torch.softmax(logits, dim=-1)


def gm_log_density(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    _, _, logits = _gm_terms(gm.tensors(x.device), x, t)
    return torch.logsumexp(logits, dim=-1)


def gm_component_moments(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor):
    """Per component: ``pi`` (n, K), ``E[v_c | x, k]`` (n, K, d) and the eigenvalues
    ``lam / c`` (n, K, d) of ``Cov[v_c | x, k] = Q_k diag(lam / c) Q_k^T``."""
    T = gm.tensors(x.device)
    n, d = x.shape
    K = gm.K
    Y, ic, logits = _gm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None]
    a = (tc - (1 - tc) * T["lam"]) * ic
    g = torch.einsum("nki,kji->nkj", (a * Y).view(n, K, d), T["Q"]) - T["mu"]
    return pi, g, (T["lam"] * ic).view(n, K, d)


def gm_moments(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor):
    Q = gm.tensors(x.device)["Q"]
    pi, g, var = gm_component_moments(gm, x, t)
    mean = torch.einsum("nk,nkj->nj", pi, g)
    within = torch.einsum("nk,kai,nki,kbi->nab", pi, Q, var, Q)
    dev = g - mean[:, None, :]
    between = torch.einsum("nk,nka,nkb->nab", pi, dev, dev)
    return mean, within + between


def gm_variance_trace(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``tr Cov[v_c | x]`` (n,): within the components plus the spread of their means, O(K d) per point."""
    pi, g, var = gm_component_moments(gm, x, t)
    mean = torch.einsum("nk,nkj->nj", pi, g)
    return (pi * (var.sum(-1) + (g - mean[:, None, :]).square().sum(-1))).sum(1)


# ---------------------------------------------------------- product mixtures


def _pm_terms(T: dict, x: torch.Tensor, t: torch.Tensor):
    """Per coordinate and component: ``y`` (n, d, K), ``c`` and ``log w N`` (n, d, K)."""
    tc = t[:, None, None]
    y = x[:, :, None] - (1 - tc) * T["mu"]
    c = (1 - tc) ** 2 * T["var"] + tc**2
    logits = T["log_w"] - 0.5 * (y.square() / c + c.log() + _LOG_2PI)
    return y, c, logits


def pm_velocity(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = pm.tensors(x.device)
    y, c, logits = _pm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None, None]
    g = (tc - (1 - tc) * T["var"]) / c * y - T["mu"]
    return (pi * g).sum(-1)


def pm_velocity_jvp(pm: ProductMixture, x, t, dx, dt):
    """``(v, J_x v . dx + d_t v dt)`` coordinate by coordinate (see ``gm_velocity_jvp``)."""
    T = pm.tensors(x.device)
    y, c, logits = _pm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc, dtc = t[:, None, None], dt[:, None, None]
    a = (tc - (1 - tc) * T["var"]) / c
    dy = dx[:, :, None] + dtc * T["mu"]
    da = (1 + T["var"] - 2 * a.square() * c) / c * dtc
    dlogit = -(y * dy / c - (y.square() / c - 1) * a * dtc)
    dpi = pi * (dlogit - (pi * dlogit).sum(-1, keepdim=True))
    g = a * y - T["mu"]
    return (pi * g).sum(-1), (dpi * g + pi * (da * y + a * dy)).sum(-1)


def pm_score(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    y, c, logits = _pm_terms(pm.tensors(x.device), x, t)
    return -(torch.softmax(logits, dim=-1) * y / c).sum(-1)


def pm_posterior(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    _, _, logits = _pm_terms(pm.tensors(x.device), x, t)
    return torch.softmax(logits, dim=-1)


def pm_log_density(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    _, _, logits = _pm_terms(pm.tensors(x.device), x, t)
    return torch.logsumexp(logits, dim=-1).sum(-1)


def pm_moments(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor):
    T = pm.tensors(x.device)
    y, c, logits = _pm_terms(T, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None, None]
    g = (tc - (1 - tc) * T["var"]) / c * y - T["mu"]
    mean = (pi * g).sum(-1)
    var = (pi * (T["var"] / c + (g - mean[..., None]).square())).sum(-1)
    return mean, torch.diag_embed(var)


def pm_variance_trace(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``tr Cov[v_c | x]`` (n,): the coordinates' variances summed."""
    return pm_moments(pm, x, t)[1].diagonal(dim1=1, dim2=2).sum(1)


# ------------------------------------------------- the singular edge, t -> 0

# below this t the products above lose to underflow where a covariance is (near) zero:
# c = t^2 underflows for t < 1e-154, and Y^2 / c becomes 0 / 0
SMALL_T = 1e-100


def gm_fields_scaled(gm: GaussianMixture, x: torch.Tensor, t: torch.Tensor):
    """``(pi, v, score)`` in a form that does not underflow as ``t -> 0``: with the
    component std ``s = sqrt(c) = hypot(t, (1-t) sqrt(lam))`` and ``Z = Y / s``,
    ``log N = -(|Z|^2 + 2 sum log s + d log 2 pi) / 2``, ``v = sum pi [Q ((t - (1-t) lam)/s) Z - mu]``,
    ``score = -sum pi Q Z / s``. The same quantities as above, finite wherever they are
    representable (the score grows like ``1/t^2`` for a Dirac mixture)."""
    T = gm.tensors(x.device)
    d = x.shape[1]
    tc = t[:, None]
    Y = torch.addmm(T["muQ"] * (tc - 1), x, T["Qcat"])
    s = torch.hypot(tc.expand_as(Y), (1 - tc) * T["lam"].sqrt())
    Z = Y / s
    logits = T["log_w"] - _component_sum(s.log(), d) - _half_square_shifted(_norm(Z.view(Z.shape[0], -1, d)))
    pi = torch.softmax(logits, dim=-1)
    pe = _expand(pi, d)
    a = (tc - (1 - tc) * T["lam"]) / s
    v = (pe * a * Z) @ T["QcatT"] - pi @ T["mu"]
    score = -((pe * (Z / s)) @ T["QcatT"])
    return pi, v, score


def pm_fields_scaled(pm: ProductMixture, x: torch.Tensor, t: torch.Tensor):
    """``gm_fields_scaled`` coordinate by coordinate."""
    T = pm.tensors(x.device)
    tc = t[:, None, None]
    y = x[:, :, None] - (1 - tc) * T["mu"]
    s = torch.hypot(tc.expand_as(y), (1 - tc) * T["var"].sqrt())
    z = y / s
    logits = T["log_w"] - s.log() - _half_square_shifted(z.abs())
    pi = torch.softmax(logits, dim=-1)
    v = (pi * ((tc - (1 - tc) * T["var"]) / s * z - T["mu"])).sum(-1)
    score = -(pi * z / s).sum(-1)
    return pi, v, score


def small_t_fields(mixture, x, t):
    """``(pi, v, score)`` at small ``t`` (rows with ``t < SMALL_T``)."""
    return _pick(mixture, gm_fields_scaled, pm_fields_scaled, lowrank.fields_scaled)(mixture, x, t)


# ------------------------------------------------------------- dispatchers


def _pick(mixture, gm_fn, pm_fn, lr_fn):
    if isinstance(mixture, GaussianMixture):
        return gm_fn
    if isinstance(mixture, ProductMixture):
        return pm_fn
    if isinstance(mixture, LowRankMixture):
        return lr_fn
    raise TypeError(f"mixture must be a GaussianMixture, ProductMixture or LowRankMixture, got "
                    f"{type(mixture).__name__}")


def velocity_raw(mixture, x, t):
    return _pick(mixture, gm_velocity, pm_velocity, lowrank.velocity)(mixture, x, t)


def velocity_jvp_raw(mixture, x, t, dx, dt):
    """``(v(x, t), J_x v . dx + d_t v . dt)``; x, dx (n, d), t, dt (n,)."""
    return _pick(mixture, gm_velocity_jvp, pm_velocity_jvp, lowrank.velocity_jvp)(mixture, x, t, dx, dt)


def score_raw(mixture, x, t):
    return _pick(mixture, gm_score, pm_score, lowrank.score)(mixture, x, t)


def posterior_raw(mixture, x, t):
    return _pick(mixture, gm_posterior, pm_posterior, lowrank.posterior)(mixture, x, t)


def log_density_raw(mixture, x, t):
    return _pick(mixture, gm_log_density, pm_log_density, lowrank.log_density)(mixture, x, t)


def moments_raw(mixture, x, t):
    return _pick(mixture, gm_moments, pm_moments, lowrank.moments)(mixture, x, t)


def variance_trace_raw(mixture, x, t):
    """``tr Cov[v_c | x_t = x]`` (n,), differentiable, never forming the covariance (MATH.md §3)."""
    return _pick(mixture, gm_variance_trace, pm_variance_trace, lowrank.variance_trace)(mixture, x, t)


def log_density(mixture, x, t) -> torch.Tensor:
    """``log p_t(x)`` (n,), validated; at ``t = 0`` the data's ``log p0(x)`` (-inf off the
    support of a singular mixture)."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    return log_density_raw(mixture, x, t)
