"""Numerical checks of the identities of MATH.md §2 on the exact average velocity.

Each function returns ``(residual (n, d), scale (n,))``: the identity holds to
relative precision ``max |residual| / scale``. The scale is the size of the
terms in the identity (at least 1), so a residual is compared with what it
cancels. Derivatives of ``u`` come from ``truth.average_velocity_jvp``:
forward-mode AD through the closed form, the implicit function theorem for
quantile matching, the variational equation for the ODE route.
"""

from __future__ import annotations

import torch

from mfverify import truth


def _col(a) -> torch.Tensor:
    """A float or (n,) time as a column that broadcasts against (n, d)."""
    return torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1)


def _scale(*terms: torch.Tensor) -> torch.Tensor:
    return torch.stack([a.norm(dim=1) for a in terms]).amax(0).clamp_min(1.0)


def eulerian(mixture, x, r, t, **route) -> tuple[torch.Tensor, torch.Tensor]:
    """MeanFlow identity: ``u - [v - (t - r)(J_x u . v + d_t u)]``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    v = truth.velocity(mixture, x, t)
    u, du = truth.average_velocity_jvp(mixture, x, r, t, v, 0.0, 1.0, **route)
    h = _col(t) - _col(r)
    rhs = v - h * du
    return u - rhs, _scale(u, v, h * du)


def boundary(mixture, x, t, **route) -> tuple[torch.Tensor, torch.Tensor]:
    """``u(x, t, t) - v(x, t)``."""
    u = truth.average_velocity(mixture, x, t, t, **route)
    v = truth.velocity(mixture, x, t)
    return u - v, _scale(u, v)


def lagrangian(mixture, x, r, t, **route) -> tuple[torch.Tensor, torch.Tensor]:
    """``u - (t - r) d_r u - v(x - (t - r) u, r)``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    u, du_dr = truth.average_velocity_jvp(mixture, x, r, t, torch.zeros_like(x), 1.0, 0.0, **route)
    h = _col(t) - _col(r)
    y = x - h * u
    v_r = truth.velocity(mixture, y, r)
    return u - h * du_dr - v_r, _scale(u, h * du_dr, v_r)


def splitting(mixture, x, r, s, t, **route) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t-r) u(x,r,t) - (t-s) u(x,s,t) - (s-r) u(x_s,r,s)``, ``x_s = x - (t-s) u(x,s,t)``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    r_, s_, t_ = _col(r), _col(s), _col(t)
    u_rt = truth.average_velocity(mixture, x, r, t, **route)
    u_st = truth.average_velocity(mixture, x, s, t, **route)
    x_s = x - (t_ - s_) * u_st
    u_rs = truth.average_velocity(mixture, x_s, r, s, **route)
    whole, first, second = (t_ - r_) * u_rt, (t_ - s_) * u_st, (s_ - r_) * u_rs
    return whole - first - second, _scale(whole, first, second)
