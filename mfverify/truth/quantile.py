"""Exact flow maps of 1-D and product mixtures by quantile matching (MATH.md §3).

A 1-D ODE flow is monotone and carries ``p_t`` to ``p_r``, so
``Phi(x, t -> r) = F_r^-1(F_t(x))``, coordinate by coordinate for independent
coordinates. No ODE solver is involved.

Precision: the CDFs are matched in log space and in the nearer tail (a point
above the median is reflected, ``x -> -x``, ``mu -> -mu``, so the survival
function is matched instead), which keeps full relative precision far into the
tails. The root is found by safeguarded Newton iteration on
``log F_r(y) - log F_t(x)`` to round-off. ``u = (x - Phi) / (t - r)`` then
loses about ``eps |x| / (t - r)``: the truth module uses the ODE route for
very short intervals.

Derivatives: by the implicit function theorem on
``G(Phi, x, r, t) = log F_r(Phi) - log F_t(x) = 0``, with ``G``'s partial
derivatives from forward-mode AD through the CDF formulas (not through the
velocity formula, so identity checks against ``v`` are not circular).
"""

from __future__ import annotations

import torch

from mfverify.cases import GaussianMixture, ProductMixture
from mfverify.truth.inputs import jvp

_MAX_ITER = 200


def applies(mixture, r: torch.Tensor) -> bool:
    """1-D or product mixtures; not to r = 0 when some component has zero width (F_0 jumps)."""
    one_d = isinstance(mixture, ProductMixture) or (isinstance(mixture, GaussianMixture) and mixture.d == 1)
    return one_d and not (mixture.is_singular and bool((r == 0).any()))


def diagonal_params(mixture, device) -> dict:
    """``log_w, mu, var`` of shape (d, K) for a 1-D or product mixture."""
    if isinstance(mixture, ProductMixture):
        return mixture.tensors(device)
    T = mixture.tensors(device)
    return {"log_w": T["log_w"][None, :], "mu": T["mu"].T, "var": mixture.covs[:, 0, 0][None, :].to(device)}


def _log_cdf(P: dict, mu: torch.Tensor, y: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``log F_tau(y)`` per coordinate, y (n, d), tau (n,), mu (n, d, K) (possibly reflected)."""
    tc = tau[:, None, None]
    s = ((1 - tc) ** 2 * P["var"] + tc**2).sqrt()
    z = (y[:, :, None] - (1 - tc) * mu) / s
    return torch.logsumexp(P["log_w"] + torch.special.log_ndtr(z), dim=-1)


def _log_pdf_over_cdf(P, mu, y, tau, log_cdf) -> torch.Tensor:
    tc = tau[:, None, None]
    s = ((1 - tc) ** 2 * P["var"] + tc**2).sqrt()
    z = (y[:, :, None] - (1 - tc) * mu) / s
    log_pdf = torch.logsumexp(P["log_w"] - 0.5 * z.square() - s.log(), dim=-1) - 0.9189385332046727
    return (log_pdf - log_cdf).exp()


def _solve(P, mu, target, r) -> tuple[torch.Tensor, torch.Tensor]:
    """Root ``y`` of ``log F_r(y) = target`` (n, d) and ``d/dy log F_r`` there."""
    rc = r[:, None, None]
    s = ((1 - rc) ** 2 * P["var"] + rc**2).sqrt()
    p = target.exp()
    if bool((p <= 0).any()):
        raise ValueError("x lies too far in the tail (|z| > 37) for quantile matching in float64")
    q = (1 - rc) * mu + s * torch.special.ndtri(p)[:, :, None]  # component quantiles
    active = torch.isfinite(P["log_w"]).expand_as(q)
    lo = torch.where(active, q, torch.full_like(q, torch.inf)).amin(-1)
    hi = torch.where(active, q, torch.full_like(q, -torch.inf)).amax(-1)
    y = 0.5 * (lo + hi)
    g_prev = torch.full_like(y, torch.inf)
    for _ in range(_MAX_ITER):
        L = _log_cdf(P, mu, y, r)
        slope = _log_pdf_over_cdf(P, mu, y, r, L)
        g = L - target
        lo = torch.where(g < 0, y, lo)
        hi = torch.where(g > 0, y, hi)
        y_new = y - g / slope
        # Newton where it lands strictly inside the bracket and the last step at least
        # halved the residual; bisection otherwise (Newton can 2-cycle on a mixture CDF)
        newton = (y_new > lo) & (y_new < hi) & torch.isfinite(y_new) & (g.abs() <= 0.5 * g_prev.abs())
        y_new = torch.where(newton, y_new, 0.5 * (lo + hi))
        # stop at the round-off floor: the residual is as small as log F can be
        # evaluated, or the step is below a few ulps of y
        done = (g.abs() <= 4e-16 * (target.abs() + 1)) | ((y_new - y).abs() <= 4e-16 * y.abs())
        y = torch.where(done, y, y_new)
        g_prev = g
        if bool(done.all()):
            break
    else:
        raise RuntimeError("quantile matching did not converge")
    L = _log_cdf(P, mu, y, r)
    return y, _log_pdf_over_cdf(P, mu, y, r, L)


def flow_map_with_tangent(mixture, x, r, t, tangent=None):
    """``Phi(x, t -> r)`` (n, d) and, for ``tangent = (dx, dr, dt)``, its directional derivative."""
    P = diagonal_params(mixture, x.device)
    mu0 = P["mu"].expand(x.shape[0], -1, -1)
    with torch.no_grad():
        L_low = _log_cdf(P, mu0, x, t)
        L_up = _log_cdf(P, -mu0, -x, t)
    sign = torch.where(L_low <= L_up, 1.0, -1.0)  # match in the nearer tail
    mu = sign[..., None] * mu0
    xs = sign * x
    target = torch.minimum(L_low, L_up)
    with torch.no_grad():
        phi_s, slope = _solve(P, mu, target, r)
    phi = sign * phi_s
    if tangent is None:
        return phi, None
    dx, dr, dt = tangent

    def G(x_, r_, t_):
        return _log_cdf(P, mu, phi_s, r_) - _log_cdf(P, mu, x_, t_)

    _, dG = jvp(G, (xs, r, t), (sign * dx, dr, dt))
    return phi, sign * (-dG / slope)
