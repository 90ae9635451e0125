"""Closed-form fields of a low-rank-plus-isotropic mixture in O(K d q) per point (docs/MATH.md §12).

With ``S_k = U_k diag(lam_k - s_k) U_k^T + s_k I`` (``U_k`` (d, q) orthonormal, ``lam_k`` the
eigenvalues along it, ``s_k`` the noise), the path's covariance ``C_k(t) = (1-t)^2 S_k + t^2 I``
has the eigenvalues ``c = (1-t)^2 lam + t^2`` along ``U_k`` and ``c_perp = (1-t)^2 s_k + t^2`` on
the ``d - q`` dimensions orthogonal to it. With ``y_k = x - (1-t) mu_k`` and its coordinates
``P_k = U_k^T y_k`` (one GEMM with every basis stacked, ``x @ Ucat``):

- ``|y_k|^2 = |x|^2 - 2 (1-t) x . mu_k + (1-t)^2 |mu_k|^2``, the orthogonal part
  ``|y_k|^2 - |P_k|^2``: no ``(n, K, d)`` array is formed;
- ``log N_k = -(|y_perp|^2 / c_perp + sum P^2 / c + (d - q) log c_perp + sum log c + d log 2 pi) / 2``;
- ``E[v_c | x, k] = A_k y_k - mu_k`` with ``A_k = (t I - (1-t) S_k) C_k^-1``, eigenvalues
  ``a = (t - (1-t) lam) / c`` and ``a_perp = (t - (1-t) s) / c_perp``, so
  ``v = (sum pi a_perp) x - sum pi (1 + (1-t) a_perp) mu + sum pi U (a - a_perp) P``;
- ``score = -sum pi C_k^-1 y_k``, the same with ``1 / c`` for ``a``.

This is Woodbury's identity written in the eigenbasis of the low-rank part. Round-off: the
orthogonal part is a difference of squares, accurate to ~1e-16 ``|x|^2 / c_perp`` in the
logits (1e-11 at d = 3072, |x|^2 ~ d, noise 0.01); near ``t = 0`` with zero noise the form of
``small_t_fields`` forms ``y`` itself. ``velocity_jvp`` differentiates the formulas by hand.
"""

from __future__ import annotations

import torch

from mfverify.cases import LowRankMixture
from mfverify.truth.algebra import LOG_2PI, component_sum, expand, half_square_shifted, norm

__all__ = ["velocity", "velocity_jvp", "score", "posterior", "log_density", "component_moments", "moments",
           "fields_scaled"]


def _terms(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor):
    """``P`` (n, K q), ``c`` (n, K q), ``c_perp`` (n, K), the logits ``log w_k N_k`` (n, K), and for
    ``d > q`` the products ``x . mu_k`` and the squared lengths ``|y_k|^2 - |P_k|^2`` off ``U_k``
    (n, K) (None at ``d = q``)."""
    T = mix.tensors(x.device)
    d, q = mix.d, mix.q
    tc = t[:, None]
    b = 1 - tc
    P = torch.addmm(T["muU"] * -b, x, T["Ucat"])
    c = torch.addcmul(tc.square(), b.square(), T["lam"])
    c_perp = torch.addcmul(tc.square(), b.square(), T["noise"])
    quad = component_sum(P.square() / c + c.log(), q)
    xm = perp = None
    if d > q:
        xm = x @ T["muT"]
        y_sq = x.square().sum(1, keepdim=True) - 2 * b * xm + b.square() * T["mu_sq"]
        perp = (y_sq - component_sum(P.square(), q)).clamp_min(0)
        quad = quad + perp / c_perp + (d - q) * c_perp.log()
    logits = T["log_w"] - 0.5 * (quad + d * LOG_2PI)
    return P, c, c_perp, logits, xm, perp


def _combine(mix, x, t, pi, P, gain, gain_perp, mean_coef):
    """``sum_k pi_k [gain_perp_k y_k + U_k (gain - gain_perp_k) P_k] + (pi * mean_coef) @ mu``."""
    T = mix.tensors(x.device)
    b = 1 - t[:, None]
    w_perp = pi * gain_perp
    out = w_perp.sum(1, keepdim=True) * x + (mean_coef * pi - b * w_perp) @ T["mu"]
    return out + (expand(pi, mix.q) * (gain - expand(gain_perp, mix.q)) * P) @ T["UcatT"]


def velocity(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    T = mix.tensors(x.device)
    P, c, c_perp, logits, _, _ = _terms(mix, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None]
    a = torch.addcmul(tc, tc - 1, T["lam"]) / c
    a_perp = torch.addcmul(tc, tc - 1, T["noise"]) / c_perp
    return _combine(mix, x, t, pi, P, a, a_perp, -1.0)


def velocity_jvp(mix: LowRankMixture, x, t, dx, dt):
    """``(v, J_x v . dx + d_t v dt)``, the formulas above differentiated by hand
    (``fields.gm_velocity_jvp``'s, component by component): ``dy_k = dx + dt mu_k``,
    ``dP = dx U + dt U^T mu``, ``dc = 2 a c dt``, ``da = (1 + lam - 2 a^2 c) / c dt`` (and the
    same off ``U`` with the noise), ``d logit_k = -[(y.dy - P.dP) / c_perp - (|y_perp|^2 / c_perp
    - (d - q)) a_perp dt + sum (P dP / c - (P^2 / c - 1) a dt)]``. Checked against forward-mode AD
    (tests/test_lowrank.py)."""
    T = mix.tensors(x.device)
    d, q = mix.d, mix.q
    tc, dtc = t[:, None], dt[:, None]
    b = 1 - tc
    P, c, c_perp, logits, xm, perp = _terms(mix, x, t)
    pi = torch.softmax(logits, dim=-1)
    lam, noise = T["lam"], T["noise"]
    a = torch.addcmul(tc, tc - 1, lam) / c
    a_perp = torch.addcmul(tc, tc - 1, noise) / c_perp
    da = (1 + lam - 2 * a.square() * c) / c * dtc
    da_perp = (1 + noise - 2 * a_perp.square() * c_perp) / c_perp * dtc
    dP = torch.addmm(T["muU"] * dtc, dx, T["Ucat"])
    dlogit = -component_sum(P * dP / c - (P.square() / c - 1) * a * dtc, q)
    if d > q:
        y_dy = ((x * dx).sum(1, keepdim=True) + dtc * xm - b * (dx @ T["muT"]) - b * dtc * T["mu_sq"])
        p_dp = component_sum(P * dP, q)
        dlogit = dlogit - ((y_dy - p_dp) / c_perp - (perp / c_perp - (d - q)) * a_perp * dtc)
    dpi = pi * (dlogit - (pi * dlogit).sum(-1, keepdim=True))
    v = _combine(mix, x, t, pi, P, a, a_perp, -1.0)
    gap, dgap = a - expand(a_perp, q), da - expand(da_perp, q)
    pe, dpe = expand(pi, q), expand(dpi, q)
    dW = (dpi * a_perp + pi * da_perp).sum(1, keepdim=True)
    W = (pi * a_perp).sum(1, keepdim=True)
    dM = dpi * (1 + b * a_perp) + pi * (b * da_perp - dtc * a_perp)
    dv = dW * x + W * dx - dM @ T["mu"] + ((dpe * gap + pe * dgap) * P + pe * gap * dP) @ T["UcatT"]
    return v, dv


def score(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    P, c, c_perp, logits, _, _ = _terms(mix, x, t)
    pi = torch.softmax(logits, dim=-1)
    return -_combine(mix, x, t, pi, P, c.reciprocal(), c_perp.reciprocal(), 0.0)


def posterior(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.softmax(_terms(mix, x, t)[3], dim=-1)


def log_density(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(_terms(mix, x, t)[3], dim=-1)


def component_moments(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor):
    """Per component: ``pi`` (n, K), ``E[v_c | x, k]`` (n, K, d), the eigenvalues ``lam / c`` (n, K, q) of
    ``Cov[v_c | x, k]`` along ``U_k`` and ``noise / c_perp`` (n, K) off it."""
    T = mix.tensors(x.device)
    n = x.shape[0]
    K, q = mix.K, mix.q
    P, c, c_perp, logits, _, _ = _terms(mix, x, t)
    pi = torch.softmax(logits, dim=-1)
    tc = t[:, None]
    a = (torch.addcmul(tc, tc - 1, T["lam"]) / c).view(n, K, q)
    a_perp = torch.addcmul(tc, tc - 1, T["noise"]) / c_perp
    y = x[:, None, :] - (1 - tc)[:, :, None] * T["mu"]
    along = torch.einsum("kdi,nki->nkd", T["U"], (a - a_perp[..., None]) * P.view(n, K, q))
    g = a_perp[..., None] * y + along - T["mu"]
    return pi, g, (T["lam"] / c).view(n, K, q), T["noise"] / c_perp


def variance_trace(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``tr Cov[v_c | x]`` (n,) in O(K d q): the components' traces mixed over ``pi`` with the spread of
    their means (never forms the (d, d) covariance)."""
    pi, g, var, var_perp = component_moments(mix, x, t)
    d, q = x.shape[1], var.shape[-1]
    within = (pi * (var.sum(-1) + (d - q) * var_perp)).sum(1)
    mean = torch.einsum("nk,nkd->nd", pi, g)
    return within + (pi * (g - mean[:, None, :]).square().sum(-1)).sum(1)


def moments(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor):
    """``(E[v_c | x], Cov[v_c | x])``: ``Cov[v_c | x, k] = S_k C_k^-1`` (``component_moments``) mixed over
    ``pi`` with the spread of the component means. Forms (n, d, d): for tests and small d."""
    U = mix.tensors(x.device)["U"]
    d = x.shape[1]
    pi, g, var, var_perp = component_moments(mix, x, t)
    mean = torch.einsum("nk,nkd->nd", pi, g)
    within = (pi * var_perp).sum(1)[:, None, None] * torch.eye(d, dtype=x.dtype, device=x.device)
    within = within + torch.einsum("nk,kai,nki,kbi->nab", pi, U, var - var_perp[..., None], U)
    dev = g - mean[:, None, :]
    return mean, within + torch.einsum("nk,nka,nkb->nab", pi, dev, dev)


def fields_scaled(mix: LowRankMixture, x: torch.Tensor, t: torch.Tensor):
    """``(pi, v, score)`` in the form that does not underflow as ``t -> 0`` (``fields.gm_fields_scaled``):
    component standard deviations ``s = hypot(t, (1-t) sqrt(lam))``, ``y_k`` formed explicitly
    (n, K, d): for the few rows below ``fields.SMALL_T``."""
    T = mix.tensors(x.device)
    n, d = x.shape
    K, q = mix.K, mix.q
    tc = t[:, None]
    b = 1 - tc
    y = x[:, None, :] - b[:, :, None] * T["mu"]  # (n, K, d)
    U = T["U"]
    P = torch.einsum("nkd,kdi->nki", y, U)
    y_perp = y - torch.einsum("kdi,nki->nkd", U, P)
    s = torch.hypot(tc.expand(n, K * q), b * T["lam"].sqrt()).view(n, K, q)
    s_perp = torch.hypot(tc.expand(n, K), b * T["noise"].sqrt())
    Z = P / s
    z_perp = norm(y_perp) / s_perp if d > q else torch.zeros(n, K, dtype=x.dtype, device=x.device)
    logs = s.log().sum(-1) + (d - q) * s_perp.log()
    logits = T["log_w"] - logs - half_square_shifted(norm(torch.cat([Z, z_perp[..., None]], -1)))
    pi = torch.softmax(logits, dim=-1)
    lam = T["lam"].view(K, q)
    a = (tc[:, :, None] - b[:, :, None] * lam) / s
    a_perp = (tc - b * T["noise"]) / s_perp
    unit_perp = y_perp / s_perp[..., None]
    comp_v = (a_perp[..., None] * unit_perp + torch.einsum("kdi,nki->nkd", U, a * Z) - T["mu"])
    comp_s = -(unit_perp / s_perp[..., None] + torch.einsum("kdi,nki->nkd", U, Z / s))
    return pi, torch.einsum("nk,nkd->nd", pi, comp_v), torch.einsum("nk,nkd->nd", pi, comp_s)
