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
from mfverify.cases import GaussianMixture, ProductMixture


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

    def __init__(self, mixture, replicated: bool | None = None, **route):
        """``replicated``: rows equal to 1e-12 relative share one solve (``_solve``); by default for a
        mixture without a compiled kernel (``LowRankMixture``), where a solve is dear."""
        self.mixture, self.route = mixture, route
        self.replicated = not isinstance(mixture, (GaussianMixture, ProductMixture)) if replicated is None \
            else replicated
        self._memo: list = []  # the last few solves: checks call u* at the same points per direction

    def __call__(self, x, r, t):
        xd, rd, td = x.detach(), r.detach(), t.detach()
        derivatives = self._derivatives(xd, rd, td)
        return _first_order(derivatives, x - xd, r - rd, t - td)

    def velocity(self, x, t):
        """``v(x, t)``, the closed form (differentiable): the exact second head of a two-head model."""
        return truth.velocity(self.mixture, x, t)

    def _derivatives(self, x, r, t):
        for key, value in self._memo:
            if all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(key, (x, r, t))):
                return value
        value = self._solve(x, r, t)
        self._memo = [((x, r, t), value)] + self._memo[:3]
        return value

    def _solve(self, x, r, t):
        """The derivatives at every row; ``replicated``: once per distinct point. A sigma-point batch
        repeats each point 2d times (the stability check's copies likewise), equal up to the round-off
        of ``x_t = (1-t) x0 + t x1`` rebuilt inside the loss: rows equal to 1e-12 relative share the
        first one's solve, and the first-order expansion around each row's own value keeps the error
        at ``|J_x u| 1e-12 |x|``."""
        if not self.replicated:
            return truth.average_velocity_derivatives(self.mixture, x, r, t, **self.route)
        rows = torch.cat([x, r[:, None], t[:, None]], dim=1)
        unique, first, inverse = unique_rows(torch.round(rows / rows.abs().amax(0).clamp_min(1.0) * 1e12))
        if len(unique) == len(rows):
            return truth.average_velocity_derivatives(self.mixture, x, r, t, **self.route)
        one = truth.average_velocity_derivatives(self.mixture, x[first], r[first], t[first], **self.route)
        return tuple(a[inverse] for a in one)


def unique_rows(key):
    """``(unique, first, inverse)``: the distinct rows of ``key``, the index of each one's first
    row, and each row's distinct row."""
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((len(unique),), len(key), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(key)), reduce="amin")
    return unique, first, inverse


def _first_order(derivatives, dx, dr, dt):
    """``u + J dx + d_r u dr + d_t u dt``; J (n or 1, d, d) broadcasts over rows."""
    u, J, du_dr, du_dt = (a.to(dx.dtype) for a in derivatives)
    return u + torch.einsum("nab,nb->na", J.expand(dx.shape[0], -1, -1), dx) + du_dr * dr[:, None] + du_dt * dt[:, None]


def sigma_points(mean: torch.Tensor, cov: torch.Tensor, skew: float = 1.0, rotation: torch.Tensor | None = None):
    """Points and weights ``(points (n, 2d, d), weights (2d,))`` with the given mean and covariance.

    Along each column ``a_i = sqrt(d) L e_i`` of a square root ``cov = L L^T`` (``L``
    from the eigendecomposition, times ``rotation`` if given): the pair
    ``mean + skew a_i`` and ``mean - a_i / skew`` with weights ``1 / (d (1 + skew^2))``
    and ``skew^2 / (d (1 + skew^2))``. Any such set has the exact mean and covariance,
    so its weighted average of a polynomial of degree <= 2 in the point equals the
    expectation under any law with these two moments. Nothing more: the posterior of
    ``v_c`` given ``x_t`` is a skewed mixture, so degree 3 is not exact (``skew = 1``,
    the symmetric set, matches third moments only when they vanish, as for one
    Gaussian). Two sets (another ``skew``, another ``rotation``) that agree on a
    function are the run-time check that it is of degree <= 2.
    """
    n, d = mean.shape
    e, V = torch.linalg.eigh(cov)
    L = V * e.clamp_min(0).sqrt()[:, None, :]  # (n, d, d), columns L e_i
    if rotation is not None:
        L = L @ rotation.to(L.dtype)
    offsets = (d**0.5) * L.transpose(1, 2)  # (n, d, d): row i is sqrt(d) L e_i
    points = torch.cat([mean[:, None] + skew * offsets, mean[:, None] - offsets / skew], dim=1)
    w_plus, w_minus = 1 / (d * (1 + skew**2)), skew**2 / (d * (1 + skew**2))
    weights = torch.tensor([w_plus] * d + [w_minus] * d, dtype=mean.dtype)
    return points, weights


def eps_derivative(objective, model, h, x, r, t, v_c, **options) -> torch.Tensor:
    """Per row, ``d/d eps loss(u + eps h)`` at eps = 0 for labels ``v_c`` (N, d) at ``x_t = x``.

    ``objective``: a name, an ``Objective`` or a per-sample loss; ``model`` the base
    ``u`` (``ExactModel`` for ``u*``); ``h(x, r, t)`` the direction. The data pair is
    rebuilt from ``(x, v_c)``: ``x0 = x - t v_c``, ``x1 = x + (1 - t) v_c``.

    Each row has its own ``eps`` while the loss calls the model on all rows at once.
    A loss that calls it on other batches (``conventions.batch_mean`` goes one row at
    a time) gets one shared ``eps``; the per-row derivatives are then the diagonal of
    the Jacobian of the rows, read by a second backward pass (exact when rows do not
    interact, which is what a per-sample loss is).
    """
    from mfverify import objectives

    col = lambda a: a[:, None]  # noqa: E731
    x0 = x - col(t) * v_c  # then x_t = (1-t) x0 + t x1 = x and x1 - x0 = v_c
    x1 = x + col(1 - t) * v_c
    loss_fn = objectives.get(objective)
    n = x.shape[0]
    zero = torch.zeros(n, dtype=x.dtype)
    eps = torch.zeros(n, 1, dtype=x.dtype, requires_grad=True)
    try:
        loss = loss_fn(_Perturbed(model, h, eps), x0, x1, r, t, **options)
    except _RowMismatch:
        eps = torch.zeros((), dtype=x.dtype, requires_grad=True)
        loss = loss_fn(_Perturbed(model, h, eps), x0, x1, r, t, **options)
        if not loss.requires_grad:
            return zero
        probe = torch.zeros_like(loss, requires_grad=True)
        (mixed,) = torch.autograd.grad(loss, eps, probe, create_graph=True, allow_unused=True)
        if mixed is None or not mixed.requires_grad:
            return zero
        (grad,) = torch.autograd.grad(mixed, probe, allow_unused=True)
        return zero if grad is None else grad.detach()
    if not loss.requires_grad:
        return zero  # the loss does not depend on the model
    (grad,) = torch.autograd.grad(loss.sum(), eps, allow_unused=True)
    return zero if grad is None else grad[:, 0]


class _RowMismatch(RuntimeError):
    """The loss called the perturbed model on another number of rows than it was given."""


class _Perturbed:
    """``u + eps h``; a two-head base (``velocity``) is perturbed in its second head by
    ``eps h(x, t, t)`` too (at ``u*`` every direction of either head must give zero).
    ``eps``: one per row (n, 1), or one shared (a 0-d tensor)."""

    def __init__(self, model, h, eps):
        self.model, self.h, self.eps = model, h, eps
        if hasattr(model, "velocity"):
            self.velocity = lambda x, t: model.velocity(x, t) + self._eps(x) * h(x, t, t)

    def _eps(self, x):
        if self.eps.dim() and x.shape[0] != self.eps.shape[0]:
            raise _RowMismatch
        return self.eps

    def __call__(self, x, r, t):
        return self.model(x, r, t) + self._eps(x) * self.h(x, r, t)


class NotQuadratic(ValueError):
    """A loss declared quadratic in ``v_c`` whose sigma-point averages disagree."""


# sigma-point sets of a quadratic function agree to the round-off of the exact model:
# the ODE route's derivatives are accurate to ~1e-10 relative and rows rebuilt from
# (x, v_c) differ by ~1e-16, so 1e-8 of the rms per-row derivative leaves a margin
QUADRATIC_RTOL = 1e-8


def population_gradient(
    objective, mixture, h, x, r, t, verify: bool = True, exact_model: "ExactModel | None" = None, **options
) -> torch.Tensor:
    """``d/d eps E[loss(u* + eps h) | x_t = x]`` at eps = 0, exactly, per point (n,).

    ``objective``: a name, ``"module:attr"``, ``Objective`` or per-sample loss; ``u*``
    the exact average velocity (``ExactModel``); ``h(x, r, t)`` any smooth direction.
    Exact when the eps-derivative of the loss is a polynomial of degree <= 2 in
    ``v_c``: its conditional expectation is then the sigma-point average of the
    closed-form conditional mean and covariance of ``v_c``
    (``truth.conditional_moments``). The objective must declare that
    (``Objective.quadratic_in_v_c``; use ``population_gradient_mc`` otherwise), and
    with ``verify`` a second, skewed and rotated, sigma-point set must agree to
    ``QUADRATIC_RTOL`` of the per-row derivatives' size: a false declaration raises
    ``NotQuadratic`` instead of returning a wrong "exact" number. ``exact_model``:
    an ``ExactModel`` to reuse (its solves are remembered across directions).
    """
    return population_gradient_with_scale(objective, mixture, h, x, r, t, verify, exact_model, **options)[0]


def population_gradient_with_scale(objective, mixture, h, x, r, t, verify=True, exact_model=None, **options):
    """``(population_gradient (n,), rms of the per-sigma-point derivatives (n,))``: the second is
    the size against which the first is zero (a loss scaled by 10 scales both)."""
    from mfverify import objectives

    obj = objectives.get(objective)
    if not obj.is_quadratic(options):
        raise ValueError(
            f"objective {obj.name!r} with options {options or {}} is not declared quadratic in v_c, so sigma "
            "points are not exact for it: use population_gradient_mc"
        )
    model = exact_model or ExactModel(mixture)
    grad, rows = _sigma_average(obj, model, h, x, r, t, options)
    if verify:
        d = torch.as_tensor(x).shape[-1]
        rotation = _rotation(d, seed=0)
        other, rows2 = _sigma_average(obj, model, h, x, r, t, options, skew=2.0, rotation=rotation)
        scale = torch.maximum(rows, rows2).clamp_min(1e-300)
        gap = ((grad - other).abs() / scale).max().item()
        if gap > QUADRATIC_RTOL:
            raise NotQuadratic(
                f"objective {obj.name!r} is declared quadratic in v_c, but two sigma-point sets give population "
                f"gradients that differ by {gap:.2e} of their size (> {QUADRATIC_RTOL:g}): its derivative is of "
                "degree > 2 in v_c; declare quadratic_in_v_c=False (the Monte Carlo route)"
            )
    return grad, rows


def _sigma_average(obj, model, h, x, r, t, options, skew=1.0, rotation=None):
    """``(weighted mean (n,), scale (n,))`` of the eps-derivative over a sigma-point set.

    The scale is the rms of the rows plus ``sensitivity``: without label noise
    (``shortcut`` at ``r < t``) every row is itself ~0 at ``u*`` and the rms alone is
    round-off. Both scale with the loss, so the ratio does not depend on its units."""
    n, k, (xs, rs, ts, v_c), w = sigma_batch(model.mixture, x, r, t, skew=skew, rotation=rotation)
    if obj.needs_truth:  # an oracle objective takes the exact mixture
        options = {**options, "mixture": model.mixture}
    rows = eps_derivative(obj, model, h, xs, rs, ts, v_c, **options).view(n, k)
    size = _rms_rows(eps_derivative(obj, _Offset(model, h), h, xs, rs, ts, v_c, **options).view(n, k), w)
    return (rows * w).sum(1), _rms_rows(rows, w) + size


def _rms_rows(rows, w):
    return (rows.square() * w).sum(1).sqrt()


class _Offset:
    """``u + scale h``: a model off the exact one along the direction itself (either head)."""

    def __init__(self, model, h, scale: float = 1.0):
        self.model, self.h, self.scale = model, h, scale
        if hasattr(model, "velocity"):
            self.velocity = lambda x, t: model.velocity(x, t) + scale * h(x, t, t)

    def __call__(self, x, r, t):
        return self.model(x, r, t) + self.scale * self.h(x, r, t)


def sensitivity(objective, mixture, h, x, r, t, exact_model: "ExactModel | None" = None, **options) -> torch.Tensor:
    """The size of the loss's eps-derivative when the model is off by ``h`` (n,): the rms over
    a sigma-point set of ``v_c`` of ``d/d eps loss(u* + h + eps h)``. A derivative at ``u*``
    is "zero" relative to this (a quadratic loss gives about ``2 |h|^2``); it scales with
    the loss, so a loss times 1e-8 is judged as the loss itself. Any loss (not only
    quadratic ones: this is a scale, not an expectation)."""
    from mfverify import objectives

    obj = objectives.get(objective)
    if obj.needs_truth:
        options = {**options, "mixture": mixture}
    model = exact_model or ExactModel(mixture)
    n, k, (xs, rs, ts, v_c), w = sigma_batch(mixture, x, r, t)
    return _rms_rows(eps_derivative(obj, _Offset(model, h), h, xs, rs, ts, v_c, **options).view(n, k), w)


CURVATURE_STEP = 1e-3  # the central difference's step, in units of the direction


def curvature(objective, mixture, h, x, r, t, exact_model: "ExactModel | None" = None, **options) -> torch.Tensor:
    """``d^2/d eps^2 E[loss(u* + eps h) | x_t = x]`` at eps = 0 (n,): how fast the population derivative
    grows as the model moves along ``h``, the yardstick of a derivative at ``u*`` (a derivative ``g``
    moves the loss's minimiser along ``h`` by ``-g / curvature``). The central difference at
    ``+-CURVATURE_STEP`` averaged over the sigma points of ``v_c | x_t``: exact for a loss whose
    derivative is at most quadratic in ``v_c`` and cubic in ``eps`` (``|Delta|^4`` included), a
    yardstick otherwise (never a verdict). It scales with the loss, as the derivative does."""
    from mfverify import objectives

    obj = objectives.get(objective)
    if obj.needs_truth:
        options = {**options, "mixture": mixture}
    model = exact_model or ExactModel(mixture)
    n, k, (xs, rs, ts, v_c), w = sigma_batch(mixture, x, r, t)
    step = CURVATURE_STEP
    plus = eps_derivative(obj, _Offset(model, h, step), h, xs, rs, ts, v_c, **options).view(n, k)
    minus = eps_derivative(obj, _Offset(model, h, -step), h, xs, rs, ts, v_c, **options).view(n, k)
    return ((plus - minus) / (2 * step) * w).sum(1)


def _rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def sigma_batch(mixture, x, r, t, skew: float = 1.0, rotation=None):
    """``(n, k, (x, r, t, v_c), weights (k,))``: rows with the ``k = 2d`` sigma points of
    ``v_c | x_t = x`` per point (``sigma_points``), each point's rows together."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n).clone() for a in (r, t))
    mean, cov = truth.conditional_moments(mixture, x, t)
    points, weights = sigma_points(mean, cov, skew=skew, rotation=rotation)
    v_c = points.reshape(n * 2 * d, d)
    rep = lambda a: a.repeat_interleave(2 * d, 0)  # noqa: E731
    return n, 2 * d, (rep(x), rep(r), rep(t), v_c), weights


def population_gradient_mc(objective, mixture, h, x, r, t, n_samples=20_000, generator=None, **options):
    """Monte Carlo version of ``population_gradient`` (any loss, any ``p``): ``(mean (n,), stderr (n,))``.

    ``v_c`` is drawn exactly from its conditional law given ``x_t = x``
    (``montecarlo.sample_conditional_velocity``); the exact model is evaluated
    once per point (where the loss calls it at ``x_t`` itself or at points that
    do not depend on the draw, as every objective of MATH.md does).
    """
    from mfverify import objectives
    from mfverify.theory.montecarlo import sample_conditional_velocity

    if objectives.get(objective).needs_truth:
        options = {**options, "mixture": mixture}
    x = torch.as_tensor(x, dtype=torch.float64)
    n, d = x.shape
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n).clone() for a in (r, t))
    means, ses = [], []
    for i in range(n):
        vc = sample_conditional_velocity(mixture, x[i : i + 1], float(t[i]), n_samples, generator)[0]
        rep = lambda a: a[i : i + 1].expand(n_samples, *a.shape[1:]).clone()  # noqa: E731
        model = _Cached(ExactModel(mixture))
        g = eps_derivative(objective, model, h, rep(x), rep(r), rep(t), vc, **options)
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
        self.velocity = model.velocity  # a two-head loss's second head (the closed form)

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


def expected_loss(objective, mixture, x, r, t, **options) -> torch.Tensor:
    """``E[loss(u*) | x_t = x]`` (n,) by sigma points: exact for losses of degree <= 2 in ``v_c``
    (the built-in objectives at ``p = 0``; the caller vouches for that, it is not checked here)."""
    from mfverify import objectives

    n, k, (x, r, t, v_c), w = sigma_batch(mixture, x, r, t)
    x0, x1 = x - t[:, None] * v_c, x + (1 - t)[:, None] * v_c
    if objectives.get(objective).needs_truth:
        options = {**options, "mixture": mixture}
    loss = objectives.get(objective)(ExactModel(mixture), x0, x1, r, t, **options)
    return (loss.detach().view(n, k) * w).sum(1)
