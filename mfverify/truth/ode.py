"""The average velocity of any mixture by an adaptive float64 ODE solve.

With ``tau(s) = t - s (t - r)`` and ``z(s) = (x - x(tau(s))) / (t - r)``,

    dz/ds = v(x - (t - r) z, tau(s)),   z(0) = 0,   u(x, r, t) = z(1),

so ``u`` is integrated directly: no cancellation as ``r -> t``, and error
control acts on ``u`` itself. Each point has its own step size
(``solver.solve``; for a full mixture on the CPU, the same method compiled per
point: values in ``compiled/stepper.py``, values with tangents in ``compiled/tangent.py``).

Derivatives (the variational equation, integrated with the flow): a tangent
``(dx, dr, dt)`` moves ``y = x - (t-r) z`` by
``dy = dx - (dt - dr) z - (t - r) dz`` and ``tau`` by ``dt - s (dt - dr)``, so
``d(dz)/ds = J_x v . dy + d_t v . dtau`` (a forward-mode JVP of the closed-form
velocity). The tangents share the primal's error control.

Dirac mixtures at ``r = 0`` or near it (``r < 1e-12``): ``v`` is singular at
``tau = 0``. Once the posterior is one-hot to round-off the flow is the straight
line to that data point, so the solve stops at a small ``r' > r`` where the
posterior has saturated and follows the line from there exactly.
"""

from __future__ import annotations

import torch

from mfverify.cases import GaussianMixture, ProductMixture
from mfverify.truth import solver
from mfverify.truth.compiled import numba_setup, stepper
from mfverify.truth.compiled import tangent as kernel_tangent
from mfverify.truth.fields import SMALL_T, posterior_raw, small_t_fields, velocity_jvp_raw, velocity_raw

CHUNK = 16384  # points per solve: bounded memory for any n
# and at most this many values (points x d) per solve: at d = 3072 a chunk of 341 points keeps
# every stage's array at 8 MB (4096 points at once ran 2x slower, mostly in page faults)
CHUNK_VALUES = 1 << 20
MAX_DTAU = 0.05  # longest step in path time tau
_R_SNAP = 1e-3  # first r' tried for Dirac mixtures at r = 0
_SATURATED = 1 - 1e-15  # posterior one-hot to round-off
USE_KERNEL = True  # values of full mixtures on CPU go through the compiled kernel (compiled/stepper.py)


def _rhs(mixture, m: int):
    def f(s, state, x, r, t, *tangent):
        n, d = x.shape
        h = (t - r)[:, None]
        z = state[:, :d]
        tau = t - s * (t - r)
        y = x - h * z
        if m == 0:
            return velocity_raw(mixture, y, tau)
        dx, dr, dt = tangent  # (n, m, d), (n, m), (n, m)
        dz = state[:, d:].view(n, m, d)
        dh = dt - dr
        dy = dx - dh[..., None] * z[:, None, :] - h[..., None] * dz
        dtau = dt - s[:, None] * dh
        rep = lambda a: a[:, None].expand(n, m, *a.shape[1:]).reshape(n * m, *a.shape[1:])  # noqa: E731
        v, dv = velocity_jvp_raw(mixture, rep(y), rep(tau), dy.reshape(n * m, d), dtau.reshape(n * m))
        return torch.cat([v.view(n, m, d)[:, 0], dv.view(n, m * d)], dim=1)

    return f


def _solve(mixture, x, r, t, tangent, rtol, atol, stats):
    n, d = x.shape
    m = 0 if tangent is None else tangent[0].shape[1]
    # A step may not span more than MAX_DTAU of path time: the posterior can switch
    # between components within a short time, and one long step can straddle a
    # switch with an error estimate that misses it (seen on ring8: 7e-6 at rtol 1e-11).
    max_step = (MAX_DTAU / (t - r).clamp_min(1e-300)).clamp_max(1.0)
    if m == 0 and _kernel_applies(mixture, x):
        return stepper.average_velocity(mixture, x, r, t, max_step, rtol=rtol, atol=atol, stats=stats), None
    if m > 0 and kernel_tangent.applies(mixture, x):
        return kernel_tangent.average_velocity(mixture, x, r, t, tangent, max_step, rtol=rtol, atol=atol, stats=stats)
    state0 = torch.zeros(n, (1 + m) * d, dtype=torch.float64, device=x.device)
    params = (x, r, t) + (() if tangent is None else tuple(tangent))
    state = solver.solve(_rhs(mixture, m), state0, params, rtol=rtol, atol=atol, max_step=max_step, stats=stats)
    u = state[:, :d]
    du = None if m == 0 else state[:, d:].view(n, m, d)
    return u, du


def _kernel_applies(mixture, x) -> bool:
    return USE_KERNEL and numba_setup.available() and isinstance(mixture, GaussianMixture) and x.device.type == "cpu"


def _snap_targets(mixture, y, tau):
    """Data point each ``y`` flows to, and whether its posterior at ``tau`` is saturated."""
    pi = posterior_raw(mixture, y, tau)
    small = (tau < SMALL_T) & (tau > 0)
    if bool(small.any()):  # the form that does not underflow as tau -> 0
        pi = pi.clone()
        pi[small] = small_t_fields(mixture, y[small], tau[small])[0]
    best = pi.argmax(-1)
    T = mixture.tensors(y.device)
    if not isinstance(mixture, ProductMixture):
        return T["mu"][best], pi.amax(-1) >= _SATURATED
    target = torch.gather(T["mu"].expand(y.shape[0], -1, -1), 2, best[..., None])[..., 0]
    return target, (pi.amax(-1) >= _SATURATED).all(-1)


def _dirac_to_zero(mixture, x, r, t, tangent, rtol, atol, stats):
    """``u(x, r, t)`` (and its tangent) for a Dirac mixture and ``r`` at or near 0.

    The ODE is solved down to an ``r' > r`` where the posterior of the point reached,
    ``phi'``, has saturated on one data point ``mu_k``; from there the trajectory is the
    straight line ``Phi(r) = mu_k + (r / r') (phi' - mu_k)`` exactly (``v = (y - mu_k) / tau``),
    so no step comes near the singularity at ``tau = 0``. With a tangent, ``dPhi = (r / r')
    dphi' + (phi' - mu_k) / r' dr``; ``dphi'`` (a tangent solve to ``r'``) is needed only where
    ``r > 0``.
    """
    n, d = x.shape
    u = torch.empty_like(x)
    du = None if tangent is None else torch.empty_like(tangent[0])
    todo = torch.arange(n, device=x.device)
    r_prime = _R_SNAP
    while todo.numel() > 0:
        if r_prime < 1e-15:
            raise RuntimeError(f"posterior did not saturate for {todo.numel()} points of a Dirac mixture")
        xs, ts, r0 = x[todo], t[todo], r[todo]
        rs = torch.minimum(ts, torch.full_like(ts, r_prime))
        us = torch.zeros_like(xs)  # where t <= r' the point is already at r' = t: nothing to solve
        move = rs < ts
        if bool(move.any()):
            us[move] = _solve(mixture, xs[move], rs[move], ts[move], None, rtol, atol, stats)[0]
        phi = xs - (ts - rs)[:, None] * us
        target, ok = _snap_targets(mixture, phi, rs)
        ok = ok & (r0 < rs)  # r' must lie above r
        idx = todo[ok]
        line = (phi[ok] - target[ok]) / rs[ok, None]  # d Phi / d r on the straight segment
        rr, h = r0[ok, None], (ts[ok] - r0[ok])[:, None]
        end = target[ok] + rr * line
        u_ok = (xs[ok] - end) / h
        u[idx] = u_ok
        if tangent is not None:
            dx, dr, dt = (a[idx] for a in tangent)
            dend = line[:, None, :] * dr[..., None]
            far = r0[ok] > 0
            if bool(far.any()):  # the part of dPhi that moves with phi': zero at r = 0
                xf, tf, rf = xs[ok][far], ts[ok][far], rs[ok][far]
                tg = (dx[far], torch.zeros_like(dr[far]), dt[far])
                uf, duf = _solve(mixture, xf, rf, tf, tg, rtol, atol, stats)
                dphi = dx[far] - dt[far][..., None] * uf[:, None, :] - (tf - rf)[:, None, None] * duf
                dend[far] = dend[far] + (r0[ok][far] / rf)[:, None, None] * dphi
            du[idx] = (dx - dend) / h[..., None] - u_ok[:, None, :] * ((dt - dr) / h)[..., None]
        todo = todo[~ok]
        r_prime *= 1e-3
    return u, du


def chunk_size(d: int) -> int:
    """Points per solve in dimension d (``CHUNK``, fewer where d is large)."""
    return max(1, min(CHUNK, CHUNK_VALUES // d))


# below this r a Dirac mixture's solve goes by the straight last segment (_dirac_to_zero):
# the ODE would step into v ~ 1/tau and lose the point (NaN for r <= 1e-17)
_R_DIRAC = 1e-12


def average_velocity(mixture, x, r, t, *, rtol, atol, tangent=None, stats=None):
    """``u(x, r, t)`` (n, d) and, for ``tangent = (dx (n,m,d), dr (n,m), dt (n,m))``, ``du`` (n, m, d)."""
    n, d = x.shape
    snap = (r < _R_DIRAC) & (t > r) if mixture.is_dirac else torch.zeros_like(r, dtype=torch.bool)
    if mixture.is_singular and not mixture.is_dirac and bool(((r == 0) & (t > 0)).any()):
        raise ValueError(
            "r = 0 is not supported by the ODE route for a mixture whose covariances are singular "
            "but not all zero: v(x, 0) is undefined there"
        )
    u = torch.empty_like(x)
    du = None if tangent is None else torch.empty_like(tangent[0])
    chunk = chunk_size(d)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        xs, rs, ts = x[sl], r[sl], t[sl]
        tg = None if tangent is None else tuple(a[sl] for a in tangent)
        sn = snap[sl]
        for mask, route in ((~sn, "ode"), (sn, "snap")):
            if not bool(mask.any()):
                continue
            tg_m = None if tg is None else tuple(a[mask] for a in tg)
            if route == "ode":
                um, dum = _solve(mixture, xs[mask], rs[mask], ts[mask], tg_m, rtol, atol, stats)
            else:
                um, dum = _dirac_to_zero(mixture, xs[mask], rs[mask], ts[mask], tg_m, rtol, atol, stats)
            idx = torch.arange(start, min(start + chunk, n), device=x.device)[mask]
            u[idx] = um
            if du is not None:
                du[idx] = dum
    return u, du
