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


# ------------------------------------------------- stationary points (MATH.md §4)


class ExactModel:
    """The exact average velocity as a model ``u*(x, r, t)`` that objectives can call.

    Values are ``truth.average_velocity``; first derivatives in ``(x, r, t)`` are
    exact (``truth.average_velocity_derivatives``) and reach every JVP back-end:
    the output is the first-order expansion ``u0 + J (x - sg x) + d_r u (r - sg r)
    + d_t u (t - sg t)`` around the call point, equal to ``u0`` in value. Second
    derivatives are zero, which is all the stationarity checks need: the gradient
    in the direction of a perturbation ``eps h`` involves first derivatives only.
    """

    def __init__(self, mixture, **route):
        self.mixture, self.route = mixture, route

    def __call__(self, x, r, t):
        xd, rd, td = x.detach(), r.detach(), t.detach()
        derivatives = truth.average_velocity_derivatives(self.mixture, xd, rd, td, **self.route)
        return _first_order(derivatives, x - xd, r - rd, t - td)


def _first_order(derivatives, dx, dr, dt):
    """``u + J dx + d_r u dr + d_t u dt``; J (n or 1, d, d) broadcasts over rows."""
    u, J, du_dr, du_dt = (a.to(dx.dtype) for a in derivatives)
    return u + torch.einsum("nab,nb->na", J.expand(dx.shape[0], -1, -1), dx) + du_dr * dr[:, None] + du_dt * dt[:, None]


def _sigma_points(mean: torch.Tensor, cov: torch.Tensor):
    """``2d`` points ``mean +- sqrt(d) L e_i`` (``cov = L L^T``), equal weights.

    Their average of any polynomial of degree <= 3 equals its expectation under any
    law with this mean and covariance: exact for losses quadratic in ``v_c``.
    """
    n, d = mean.shape
    e, V = torch.linalg.eigh(cov)
    L = V * e.clamp_min(0).sqrt()[:, None, :]  # (n, d, d), columns L e_i
    offsets = (d**0.5) * L.transpose(1, 2)  # (n, d, d): row i is sqrt(d) L e_i
    return torch.cat([mean[:, None] + offsets, mean[:, None] - offsets], dim=1)  # (n, 2d, d)


def _eps_derivative(objective, model, h, x, r, t, v_c, **options):
    """Per row, ``d/d eps loss(u* + eps h)`` at eps = 0 for labels ``v_c`` (N, d) at ``x_t = x``."""
    col = lambda a: a[:, None]  # noqa: E731
    x0 = x - col(t) * v_c  # then x_t = (1-t) x0 + t x1 = x and x1 - x0 = v_c
    x1 = x + col(1 - t) * v_c
    eps = torch.zeros(x.shape[0], 1, dtype=x.dtype, requires_grad=True)
    perturbed = lambda a, b, c: model(a, b, c) + eps * h(a, b, c)  # noqa: E731
    loss = objective(perturbed, x0, x1, r, t, **options)
    (grad,) = torch.autograd.grad(loss.sum(), eps)
    return grad[:, 0]


def population_gradient(name: str, mixture, h, x, r, t, **options) -> torch.Tensor:
    """``d/d eps E[loss(u* + eps h) | x_t = x]`` at eps = 0, exactly, per point (n,).

    ``loss`` is the objective ``name`` as implemented in ``mfverify.objectives``,
    ``u*`` the exact average velocity (``ExactModel``), ``h(x, r, t)`` any smooth
    direction. For the objectives (``p = 0``) the eps-derivative of the per-sample
    loss is a polynomial of degree <= 2 in ``v_c``, so its conditional expectation
    is the average over the sigma points of the closed-form conditional mean and
    covariance of ``v_c`` (``truth.conditional_moments``): no Monte Carlo.
    """
    from mfverify import objectives

    if options.get("p", 0) != 0:
        raise ValueError("population_gradient is exact only for p = 0; use population_gradient_mc")
    n, k, (x, r, t, v_c) = _sigma_batch(mixture, x, r, t)
    grads = _eps_derivative(objectives.get(name), ExactModel(mixture), h, x, r, t, v_c, **options)
    return grads.view(n, k).mean(1)


def _sigma_batch(mixture, x, r, t):
    """Rows ``(x, r, t, v_c)`` with the ``k = 2d`` sigma points of ``v_c | x_t = x`` per point."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n).clone() for a in (r, t))
    mean, cov = truth.conditional_moments(mixture, x, t)
    v_c = _sigma_points(mean, cov).reshape(n * 2 * d, d)
    rep = lambda a: a.repeat_interleave(2 * d, 0)  # noqa: E731
    return n, 2 * d, (rep(x), rep(r), rep(t), v_c)


def population_gradient_mc(name: str, mixture, h, x, r, t, n_samples=20_000, generator=None, **options):
    """Monte Carlo version of ``population_gradient`` (any ``p``): ``(mean (n,), stderr (n,))``.

    ``v_c`` is drawn exactly from its conditional law given ``x_t = x``
    (``montecarlo.sample_conditional_velocity``); the exact model is evaluated
    once per point.
    """
    from mfverify import objectives
    from mfverify.montecarlo import sample_conditional_velocity

    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n).clone() for a in (r, t))
    means, ses = [], []
    for i in range(n):
        vc = sample_conditional_velocity(mixture, x[i : i + 1], float(t[i]), n_samples, generator)[0]
        rep = lambda a: a[i : i + 1].expand(n_samples, *a.shape[1:]).clone()  # noqa: E731
        model = _Cached(ExactModel(mixture))
        g = _eps_derivative(objectives.get(name), model, h, rep(x), rep(r), rep(t), vc, **options)
        means.append(g.mean())
        ses.append(g.std() / n_samples**0.5)
    return torch.stack(means), torch.stack(ses)


class _Cached:
    """An exact model for batches of rows equal up to round-off: one solve at the first row.

    The rows of ``x_t = (1-t) x0 + t x1`` rebuilt from sampled ``v_c`` differ from
    each other by ~1e-16; the first-order expansion around the first row is then
    exact to ~1e-32, and the ODE is solved once instead of once per row.
    """

    def __init__(self, model: ExactModel):
        self.model = model

    def __call__(self, x, r, t):
        xd, rd, td = x.detach(), r.detach(), t.detach()
        xa, ra, ta = xd[:1], rd[:1], td[:1]
        close = lambda a, b: bool(((a - b).abs() <= 1e-12 * (1 + b.abs())).all())  # noqa: E731
        if not (close(xd, xa) and close(rd, ra) and close(td, ta)):
            return self.model(x, r, t)
        derivatives = truth.average_velocity_derivatives(self.model.mixture, xa, ra, ta, **self.model.route)
        return _first_order(derivatives, x - xa, r - ra, t - ta)


def nosg_extra_term_gradient(mixture, h, x, r, t) -> torch.Tensor:
    """``d/d eps`` of ``tr[((t-r) J_x u - I) Cov(v_c | x) ((t-r) J_x u - I)^T]`` along ``u* + eps h``.

    MATH.md §4: this term of ``mf_nosg``'s population loss depends on ``u``; its
    derivative, ``2 (t-r) tr[J_x h Cov ((t-r) J_x u* - I)^T]``, is the amount by
    which ``mf_nosg``'s population gradient at ``u*`` differs from zero.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n).clone() for a in (r, t))
    _, cov = truth.conditional_moments(mixture, x, t)
    J_u = truth.average_velocity_jacobian(mixture, x, r, t)
    J_h = torch.func.vmap(torch.func.jacrev(lambda a, b, c: h(a[None], b[None], c[None])[0]))(x, r, t)
    A = (t - r)[:, None, None] * J_u - torch.eye(d, dtype=x.dtype)
    return 2 * (t - r) * torch.einsum("nab,nbc,nac->n", J_h, cov, A)


def expected_loss(name: str, mixture, x, r, t, **options) -> torch.Tensor:
    """``E[loss(u*) | x_t = x]`` (n,) by sigma points: exact for losses quadratic in ``v_c``."""
    from mfverify import objectives

    n, k, (x, r, t, v_c) = _sigma_batch(mixture, x, r, t)
    x0, x1 = x - t[:, None] * v_c, x + (1 - t)[:, None] * v_c
    loss = objectives.get(name)(ExactModel(mixture), x0, x1, r, t, **options)
    return loss.detach().view(n, k).mean(1)
