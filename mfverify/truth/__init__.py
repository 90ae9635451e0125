"""Ground truth for Gaussian-mixture paths (MATH.md §1-3).

Inputs ``x`` (n, d) as torch tensors or numpy arrays; ``r``, ``t`` floats or
(n,) arrays in [0, 1] with ``r <= t``. Outputs are float64 torch tensors on
x's device (CPU for numpy).

Routes for the flow map and the average velocity (``method=``):

- ``"closed_form"``: one Gaussian, any full covariance (``gaussian.py``);
- ``"quantile"``: 1-D mixtures and ``ProductMixture`` (``quantile.py``);
- ``"ode"``: any mixture, adaptive DOP853 in float64 with per-point steps (``ode.py``;
  values of full mixtures on the CPU run in the compiled kernels of ``compiled/``).

``method=None`` picks the most exact route that applies: closed form, else
quantile matching (with the ODE route for intervals ``t - r`` shorter than
``QUANTILE_MIN_INTERVAL``, where ``(x - Phi) / (t - r)`` would lose digits),
else the ODE. Forcing a route that does not apply raises ``ValueError``.

What lives here: ``fields`` (closed-form v, score, posterior, moments, densities),
``gaussian``, ``quantile`` and ``ode`` (the routes), ``solver`` (the batched DOP853),
``compiled/`` (the numba kernels), ``guided`` (guided fields of labelled mixtures),
``inputs`` (validation and tolerances). A new route or field is a module here.

Imports: ``mfverify.cases`` only; the truth never imports a network, an objective
or a study.
"""

from __future__ import annotations

import torch

from mfverify.truth import gaussian, ode, quantile
from mfverify.truth.fields import (SMALL_T, log_density, moments_raw, posterior_raw, score_raw, small_t_fields,
                                   velocity_raw)
from mfverify.truth.guided import (conditional_velocity, effective_guidance, guided_average_velocity, guided_flow_map,
                                   guided_velocity)
from mfverify.truth.inputs import DEFAULT_ATOL, DEFAULT_RTOL, _check_tolerance, as_points, as_times, jvp, prepare
from mfverify.truth.solver import SolverStats

__all__ = [
    "velocity",
    "score",
    "posterior_weights",
    "log_density",
    "conditional_moments",
    "flow_map",
    "average_velocity",
    "average_velocity_jvp",
    "average_velocity_jacobian",
    "average_velocity_derivatives",
    "conditional_velocity",
    "guided_velocity",
    "guided_flow_map",
    "guided_average_velocity",
    "effective_guidance",
    "METHODS",
    "DEFAULT_RTOL",
    "DEFAULT_ATOL",
    "SolverStats",
]

METHODS = ("closed_form", "quantile", "ode")
# Below this interval the quantile route's (x - Phi)/(t - r) loses more than
# ~1e-13 to round-off; the ODE over such a short interval is cheap and exact.
QUANTILE_MIN_INTERVAL = 1e-2


def velocity(mixture, x, t) -> torch.Tensor:
    """``v(x, t) = E[x1 - x0 | x_t = x]`` (n, d) (MATH.md §3)."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    return _near_zero(mixture, x, t, velocity_raw(mixture, x, t), 1, "velocity")


def score(mixture, x, t) -> torch.Tensor:
    """``grad_x log p_t(x)`` (n, d); a clear error where it exceeds float64 (``~1/t^2`` near a Dirac)."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    return _near_zero(mixture, x, t, score_raw(mixture, x, t), 2, "score")


def posterior_weights(mixture, x, t) -> torch.Tensor:
    """``pi_k(x, t)`` (n, K); for a ``ProductMixture`` per coordinate, (n, d, K_max)."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    return _near_zero(mixture, x, t, posterior_raw(mixture, x, t), 0, "posterior weights")


def _near_zero(mixture, x, t, value, which, what):
    """Rows with ``0 < t < fields.SMALL_T`` recomputed in the form that does not underflow
    (``t = 0`` has no small factor to lose, and keeps its bits)."""
    small = (t < SMALL_T) & (t > 0)
    if not bool(small.any()):
        return value
    scaled = small_t_fields(mixture, x[small], t[small])[which]
    if not bool(torch.isfinite(scaled).all()):
        i = int(torch.nonzero(~torch.isfinite(scaled).reshape(scaled.shape[0], -1).all(1))[0])
        raise ValueError(f"the {what} at t = {t[small][i].item():.3g} is not representable in float64 "
                         f"(near a zero-width component it grows like 1/t^{which})")
    value = value.clone()
    value[small] = scaled
    return value


def conditional_moments(mixture, x, t) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[v_c | x_t = x] (n, d), Cov[v_c | x_t = x] (n, d, d))``, closed form."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    return moments_raw(mixture, x, t)


def flow_map(mixture, x, t, r, method=None, rtol=None, atol=None) -> torch.Tensor:
    """``Phi(x, t -> r)`` (n, d), ``r <= t``: the ODE solution at r started from x at t."""
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    u, _ = _average_velocity(mixture, x, r, t, None, method, rtol, atol)
    return x - (t - r)[:, None] * u


def average_velocity(mixture, x, r, t, method=None, rtol=None, atol=None) -> torch.Tensor:
    """``u(x, r, t) = (x - Phi(x, t -> r)) / (t - r)`` (n, d); ``v(x, t)`` where ``r == t``."""
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    u, _ = _average_velocity(mixture, x, r, t, None, method, rtol, atol)
    return u


def average_velocity_jvp(mixture, x, r, t, dx, dr, dt, method=None, rtol=None, atol=None):
    """``(u, du)``: ``u(x, r, t)`` and its derivative along the tangent ``(dx, dr, dt)``.

    ``du = J_x u . dx + d_r u dr + d_t u dt`` (n, d). With ``(dx, dr, dt) = (v, 0, 1)``
    it is the total derivative ``d/dt u(x_t, r, t)`` of MATH.md §1. Closed form:
    forward-mode AD through the formula; quantile: implicit function theorem;
    ODE: the variational equation.
    """
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    n, d = x.shape
    dx = as_points(dx, d, "dx").to(x.device)
    if dx.shape[0] != n:
        raise ValueError(f"dx must have shape ({n}, {d}) like x, got {tuple(dx.shape)}")
    dr = _as_tangent_time(dr, n, x.device, "dr")
    dt = _as_tangent_time(dt, n, x.device, "dt")
    u, du = _average_velocity(mixture, x, r, t, (dx[:, None], dr[:, None], dt[:, None]), method, rtol, atol)
    return u, du[:, 0]


def average_velocity_jacobian(mixture, x, r, t, method=None, rtol=None, atol=None) -> torch.Tensor:
    """``J_x u(x, r, t)`` (n, d, d), ``[i, a, b] = d u_a / d x_b``."""
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    n, d = x.shape
    eye = torch.eye(d, dtype=torch.float64, device=x.device).expand(n, d, d)
    zeros = torch.zeros(n, d, dtype=torch.float64, device=x.device)
    _, du = _average_velocity(mixture, x, r, t, (eye, zeros, zeros), method, rtol, atol)
    return du.transpose(1, 2)  # du[:, b] is the derivative along e_b


def average_velocity_derivatives(mixture, x, r, t, method=None, rtol=None, atol=None):
    """``(u, J_x u (n, d, d), d_r u (n, d), d_t u (n, d))`` in one solve (d + 2 tangents)."""
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    n, d = x.shape
    m = d + 2
    dx = torch.zeros(n, m, d, dtype=torch.float64, device=x.device)
    dx[:, :d] = torch.eye(d, dtype=torch.float64, device=x.device)
    dr = torch.zeros(n, m, dtype=torch.float64, device=x.device)
    dt = torch.zeros_like(dr)
    dr[:, d], dt[:, d + 1] = 1.0, 1.0
    u, du = _average_velocity(mixture, x, r, t, (dx, dr, dt), method, rtol, atol)
    return u, du[:, :d].transpose(1, 2), du[:, d], du[:, d + 1]


# ------------------------------------------------------------------ routing


def _as_tangent_time(value, n, device, name):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value), dtype=torch.float64, device=device)
    tensor = torch.as_tensor(value, dtype=torch.float64).to(device)
    if tensor.shape != (n,):
        raise ValueError(f"{name} must be a float or have shape ({n},), got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite")
    return tensor


def _average_velocity(mixture, x, r, t, tangent, method, rtol, atol):
    """Dispatch to a route; ``tangent = (dx (n,m,d), dr (n,m), dt (n,m))`` or None."""
    rtol = _check_tolerance("rtol", rtol, DEFAULT_RTOL)
    atol = _check_tolerance("atol", atol, DEFAULT_ATOL)
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be None or one of {METHODS}, got {method!r}")
    if method == "closed_form" and not gaussian.applies(mixture):
        raise ValueError(f"method='closed_form' applies to a single Gaussian (K=1), not to {mixture!r}")
    if method == "quantile" and not quantile.applies(mixture, r):
        raise ValueError(
            f"method='quantile' applies to 1-D and product mixtures (and not at r = 0 when a "
            f"component has zero width), not to {mixture!r} here"
        )
    forced = method is not None
    if method is None:
        method = "closed_form" if gaussian.applies(mixture) else None
    if method is None:
        method = "quantile" if quantile.applies(mixture, r) else "ode"

    if method == "closed_form":
        return _closed_form(mixture, x, r, t, tangent)
    if method == "ode":
        # u(x, t, t) = v(x, t) in closed form where t is too small for the solver's own field
        edge = (r == t) & (t < SMALL_T) & (t > 0)
        if not bool(edge.any()):
            return ode.average_velocity(mixture, x, r, t, rtol=rtol, atol=atol, tangent=tangent)
        u = torch.empty_like(x)
        du = None if tangent is None else torch.empty_like(tangent[0])
        _fill(u, du, edge, *_closed_at_t(mixture, x, t, tangent, edge))
        rest = ~edge
        if bool(rest.any()):
            sub = None if tangent is None else tuple(a[rest] for a in tangent)
            _fill(u, du, rest, *ode.average_velocity(mixture, x[rest], r[rest], t[rest], rtol=rtol, atol=atol,
                                                     tangent=sub))
        return u, du
    # quantile; by default short intervals go to the ODE (forced: every point by quantiles)
    short = (t - r) < QUANTILE_MIN_INTERVAL
    u = torch.empty_like(x)
    du = None if tangent is None else torch.empty_like(tangent[0])
    at_t = r == t
    if bool(at_t.any()):
        _fill(u, du, at_t, *_closed_at_t(mixture, x, t, tangent, at_t))
    long = ~at_t if forced else ~short
    if bool(long.any()):
        _fill(u, du, long, *_quantile(mixture, x, r, t, tangent, long))
    rest = ~at_t & ~long
    if bool(rest.any()):
        sub = None if tangent is None else tuple(a[rest] for a in tangent)
        _fill(u, du, rest, *ode.average_velocity(mixture, x[rest], r[rest], t[rest], rtol=rtol, atol=atol, tangent=sub))
    return u, du


def _fill(u, du, mask, u_m, du_m):
    u[mask] = u_m
    if du is not None:
        du[mask] = du_m


def _closed_form(mixture, x, r, t, tangent):
    if tangent is None:
        return gaussian.average_velocity(mixture, x, r, t), None
    dx, dr, dt = tangent
    m = dx.shape[1]
    rep = lambda a: a.repeat_interleave(m, 0)  # noqa: E731
    n, d = x.shape
    u, du = jvp(
        lambda x_, r_, t_: gaussian.average_velocity(mixture, x_, r_, t_),
        (rep(x), rep(r), rep(t)),
        (dx.reshape(n * m, d), dr.reshape(n * m), dt.reshape(n * m)),
    )
    return u.view(n, m, d)[:, 0], du.view(n, m, d)


def _closed_at_t(mixture, x, t, tangent, mask):
    """``u(x, t, t) = v(x, t)``; its tangent is ``J_x v dx + d_t v dt + (1/2)(J_x v . v + d_t v)(dr - dt)``."""
    xm, tm = x[mask], t[mask]
    v = _near_zero(mixture, xm, tm, velocity_raw(mixture, xm, tm), 1, "velocity")
    if tangent is None:
        return v, None
    # d_r u at r = t equals (1/2) dv/dt along the flow (Taylor expansion of u in t - r)
    dx, dr, dt = (a[mask] for a in tangent)
    n, m, d = dx.shape
    rep = lambda a: a.repeat_interleave(m, 0)  # noqa: E731
    f = lambda x_, t_: velocity_raw(mixture, x_, t_)  # noqa: E731
    _, dv = jvp(f, (rep(xm), rep(tm)), (dx.reshape(n * m, d), dt.reshape(n * m)))
    _, dv_flow = jvp(f, (xm, tm), (v, torch.ones_like(tm)))
    du = dv.view(n, m, d) + 0.5 * dv_flow[:, None, :] * (dr - dt)[..., None]
    return v, du


def _quantile(mixture, x, r, t, tangent, mask):
    xm, rm, tm = x[mask], r[mask], t[mask]
    h = (tm - rm)[:, None]
    if tangent is None:
        phi, _ = quantile.flow_map_with_tangent(mixture, xm, rm, tm)
        return (xm - phi) / h, None
    dx, dr, dt = (a[mask] for a in tangent)
    n, m, d = dx.shape
    rep = lambda a: a.repeat_interleave(m, 0)  # noqa: E731
    phi, dphi = quantile.flow_map_with_tangent(
        mixture, rep(xm), rep(rm), rep(tm), (dx.reshape(n * m, d), dr.reshape(n * m), dt.reshape(n * m))
    )
    phi = phi.view(n, m, d)[:, 0]
    u = (xm - phi) / h
    du = (dx - dphi.view(n, m, d)) / h[..., None] - u[:, None, :] * ((dt - dr) / h)[..., None]
    return u, du
