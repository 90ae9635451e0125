"""Stability of the stationary point ``u*`` (docs/MATH.md §7), computed from the objective itself.

For a per-sample loss ``l``, ``G[u](x, r, t) = E[dl/dU | x_t = x]`` with every stop-gradient
honoured; ``u*`` is stationary, ``G[u*] = 0``. A model ``u* + sum_i theta_i h_i`` trained by
gradient flow on the population loss moves as ``d theta / d tau = -H theta + O(|theta|^2)``,

    H_ij = d/d eps_j  E_mu[ h_i . G[u* + eps_j h_j] ]   at eps_j = 0,

``mu`` the training law of ``(x_t, r, t)``. ``u*`` is stable within the class iff every
eigenvalue of ``H`` has a positive real part; for the sg objectives ``H`` is not symmetric.

Nothing here is written per objective: the inner derivative (the parameter gradient along
``h_i``, through every call of the model that is not stopped) is autograd of the loss with
respect to ``theta``; the outer one, through every call, stopped or not, is a central
difference in ``eps_j`` of step ``delta`` (exact for a pseudo-gradient polynomial of
degree <= 2 in ``u``, as ``mf``'s and ``mf_sg``'s; ``O(delta^2)`` otherwise, as
``shortcut``'s, whose target evaluates ``u`` at a point that moves with ``u``). The
expectation over ``v_c | x_t`` is exact by sigma points (``identities.sigma_batch``) for a
loss declared quadratic in ``v_c``; the base model is ``identities.ExactModel``. Directions
are random Fourier features in ``(x, r, t)`` (``FourierDirections``).

``tests/test_stability.py`` checks ``H`` against MATH.md §7's closed-form linearisations
``L`` of ``mf``, ``mf_sg`` and ``shortcut``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mfverify import objectives
from mfverify.path import sample as sample_x_t
from mfverify.theory import identities

__all__ = ["FourierDirections", "NetworkDirections", "pseudo_gradient_matrix", "eigen_summary", "training_points",
           "symmetric_part_check"]


class FourierDirections:
    """``P`` directions ``h_i(x, r, t) = e_{i mod d} cos(omega_i . x + alpha_i r + beta_i t + b_i)``.

    ``omega_i ~ N(0, scale_x^2 I)``, ``alpha_i, beta_i ~ N(0, scale_t^2)``, ``b_i ~ U(0, 2 pi)``,
    fixed by ``seed``: smooth, bounded, with derivatives of order ``scale``."""

    def __init__(self, d: int, n_features: int, seed: int = 0, scale_x: float = 1.0, scale_t: float = 2.0):
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        g = torch.Generator().manual_seed(seed)
        self.d, self.P = d, n_features
        self.omega = scale_x * torch.randn(n_features, d, generator=g, dtype=torch.float64)
        self.alpha = scale_t * torch.randn(n_features, generator=g, dtype=torch.float64)
        self.beta = scale_t * torch.randn(n_features, generator=g, dtype=torch.float64)
        self.phase = 2 * math.pi * torch.rand(n_features, generator=g, dtype=torch.float64)
        self.axis = torch.arange(n_features) % d
        self.select = torch.nn.functional.one_hot(self.axis, d).to(torch.float64)  # (P, d)

    def _arg(self, x, r, t):
        return x @ self.omega.T.to(x.dtype) + r[:, None] * self.alpha + t[:, None] * self.beta + self.phase

    def __call__(self, x, r, t) -> torch.Tensor:
        """All directions at once, (n, P, d)."""
        return torch.cos(self._arg(x, r, t))[:, :, None] * self.select

    def combine(self, x, r, t, coeffs) -> torch.Tensor:
        """``sum_i coeffs[:, i] h_i(x, r, t)`` (n, d) without forming every direction."""
        return (coeffs * torch.cos(self._arg(x, r, t))) @ self.select.to(coeffs.dtype)

    def derivatives(self, x, r, t):
        """``(cos(arg), -sin(arg))`` (n, P) each: ``h_i = cos_i e_i``, ``J_x h_i . a = -sin_i (omega_i . a) e_i``,
        ``d_t h_i = -sin_i beta_i e_i`` (what closed-form linearisations need)."""
        arg = self._arg(x, r, t)
        return torch.cos(arg), -torch.sin(arg)


class _Silu(torch.nn.Module):
    """``x sigmoid(x)`` written out: torch's SiLU has no forward-mode derivative of its
    derivative, which a network's tangent features inside an objective's JVP need."""

    def forward(self, x):
        return x * torch.sigmoid(x)


def _twice_differentiable(module: torch.nn.Module):
    for name, child in module.named_children():
        if isinstance(child, torch.nn.SiLU):
            setattr(module, name, _Silu())
        else:
            _twice_differentiable(child)


class NetworkDirections:
    """``P`` tangent features of a network: ``h_i(x, r, t) = d/d eps u_{theta + eps e_i}(x, r, t)``
    at its parameters ``theta`` (a float64 copy), ``e_i`` random directions in parameter space
    (Gaussian, each of unit norm; fixed by ``seed``). The linear class a network explores
    near its parameters, restricted to ``P`` random directions of it."""

    def __init__(self, model, n_features: int, seed: int = 0):
        import copy

        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise ValueError(f"n_features must be a positive int, got {n_features!r}")
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.net = copy.deepcopy(model).to(torch.float64).eval()
        _twice_differentiable(self.net)
        self.params = {k: p.detach() for k, p in self.net.named_parameters()}
        if not self.params:
            raise ValueError("model has no parameters")
        g = torch.Generator().manual_seed(seed)
        E = {k: torch.randn(n_features, *p.shape, generator=g, dtype=torch.float64) for k, p in self.params.items()}
        norm = torch.sqrt(sum(e.flatten(1).pow(2).sum(1) for e in E.values()))
        self.E = {k: e / norm.view(-1, *([1] * (e.ndim - 1))) for k, e in E.items()}
        self.P = n_features
        self.d = getattr(model, "d", None)
        if not isinstance(self.d, int):
            raise ValueError(f"model must have an int attribute d (its data dimension), got {self.d!r}")
        # numbers per row and direction held at once (the widest layer's, a few times over)
        widths = [p.shape[0] for k, p in self.params.items() if p.ndim == 2]
        self.row_numbers = n_features * 4 * max(widths + [self.d])

    def __call__(self, x, r, t) -> torch.Tensor:
        """All directions at once, (n, P, d)."""

        def f(params):
            return torch.func.functional_call(self.net, params, (x, r, t))

        def one(e):
            return torch.func.jvp(f, (self.params,), (e,))[1]

        return torch.func.vmap(one)(self.E).movedim(0, 1)


def training_points(mixture, n: int, kind: str = "logit_normal", mean: float = -0.4, std: float = 1.0,
                    frac_r_eq_t: float = 0.75, seed: int = 0):
    """``n`` points ``(x_t, r, t)`` of a training law (``times.sample_times``; ``x_t ~ p_t``),
    with ``t`` kept at least 1e-3 (the exact u's derivatives at t = 0 are those of p_0)."""
    from mfverify.times import sample_times

    g = torch.Generator().manual_seed(seed)
    r, t = sample_times(n, kind, mean, std, frac_r_eq_t, g, dtype=torch.float64)
    t = t.clamp_min(1e-3)
    r = torch.minimum(r, t)
    return sample_x_t(mixture, t, g), r, t


class _Replicated(identities.ExactModel):
    """The exact model on stacked copies of the same rows: the ODE is solved once per distinct
    point and its derivatives are repeated; the first-order expansion around every row keeps
    each copy's own gradient and tangent (``ExactModel`` with ``replicated``)."""

    def __init__(self, mixture, **route):
        super().__init__(mixture, replicated=True, **route)

    def __call__(self, x, r, t):
        # a call that no derivative can reach (a stopped target, plain tensors, no autograd):
        # values only, on the compiled kernel, instead of the variational equation
        import torch.autograd.forward_ad as fwAD

        plain = all(not torch._C._functorch.is_functorch_wrapped_tensor(a) and not a.requires_grad
                    and fwAD.unpack_dual(a).tangent is None for a in (x, r, t))
        if plain and not torch.is_grad_enabled():
            from mfverify import truth

            return truth.average_velocity(self.mixture, x, r, t).to(x.dtype)
        return super().__call__(x, r, t)


class _Perturbed:
    """``base + c_row h_{j_row} + sum_i theta_{point_row, i} h_i``: the outer steps (one direction
    and sign per copy of the rows) on every call; the inner ``theta`` (one row per copy and
    point) carries the parameter gradient through the unstopped calls."""

    def __init__(self, base, dirs, j_rows, c_rows, theta, rows):
        self.base, self.dirs, self.j_rows, self.c_rows, self.theta, self.rows = base, dirs, j_rows, c_rows, theta, rows

    def __call__(self, x, r, t):
        coeffs = self.theta[self.rows] + self.c_rows[:, None] * torch.nn.functional.one_hot(
            self.j_rows, self.dirs.P).to(self.c_rows.dtype)
        if hasattr(self.dirs, "combine"):
            return self.base(x, r, t) + self.dirs.combine(x, r, t, coeffs)
        return self.base(x, r, t) + torch.einsum("np,npd->nd", coeffs, self.dirs(x, r, t))


def pseudo_gradient_matrix(objective, mixture, dirs: FourierDirections, x, r, t, delta: float = 1e-4,
                           progress=None, memory: float = 2e7, **options) -> torch.Tensor:
    """Per-point contributions ``C (n, P, P)``, ``H = C.mean(0)`` over the points ``(x, r, t)``
    (a sample of ``mu``): ``C[n, i, j]`` is the central difference in ``eps_j`` of
    ``E[h_i . dl/d(output) | x_t = x_n]`` summed over the model's unstopped calls. The outer
    steps are batched (copies of the rows, about ``memory`` numbers per loss call)."""
    obj = objectives.get(objective)
    if not obj.is_quadratic(options):
        raise ValueError(f"objective {obj.name!r} with options {options or {}} is not declared quadratic in v_c: "
                         "the expectation over v_c | x_t is exact by sigma points only for such losses")
    options = obj.resolve_options(options)
    n = x.shape[0]
    npts, k, (xs, rs, ts, v_c), w = identities.sigma_batch(mixture, x, r, t)
    x0 = xs - ts[:, None] * v_c
    x1 = xs + (1 - ts)[:, None] * v_c
    rows_per_copy = len(xs)
    steps = [(j, c) for j in range(dirs.P) for c in (delta, -delta)]
    per_call = max(1, int(memory // (rows_per_copy * getattr(dirs, "row_numbers", dirs.P * dirs.d))))
    G = torch.empty(len(steps), n, dirs.P, dtype=torch.float64)
    for first in range(0, len(steps), per_call):
        chunk = steps[first : first + per_call]
        J = len(chunk)
        rep = lambda a: a.repeat(J, *([1] * (a.ndim - 1)))  # noqa: E731
        copy = torch.arange(J).repeat_interleave(rows_per_copy)
        j_rows = torch.tensor([j for j, _ in chunk])[copy]
        c_rows = torch.tensor([c for _, c in chunk], dtype=torch.float64)[copy]
        rows = copy * n + torch.arange(npts).repeat_interleave(k).repeat(J)
        theta = torch.zeros(J * n, dirs.P, dtype=torch.float64, requires_grad=True)
        model = _Perturbed(_Replicated(mixture), dirs, j_rows, c_rows, theta, rows)
        loss = obj(model, rep(x0), rep(x1), rep(rs), rep(ts), **options)
        (grad,) = torch.autograd.grad((loss * w.repeat(npts * J)).sum(), theta, allow_unused=True)
        if grad is not None:
            G[first : first + J] = grad.view(J, n, dirs.P)
        else:
            G[first : first + J] = 0.0
        if progress is not None:
            progress(first + J, len(steps))
    plus, minus = G[0::2], G[1::2]  # (P, n, P): [j, point, i]
    return ((plus - minus) / (2 * delta)).permute(1, 2, 0).contiguous()


def gram(dirs: FourierDirections, x, r, t) -> torch.Tensor:
    """Per-point ``h_i . h_j`` (n, P, P): ``E_mu`` of it is the class's Gram matrix."""
    h = dirs(x, r, t)
    return torch.einsum("nid,njd->nij", h, h)


@dataclass
class EigenSummary:
    """The spectrum of ``H`` (MATH.md §7's criterion: every ``Re lambda > 0``) and of
    ``G^-1 H`` (``G`` the Gram matrix: the same flow in function-space units, where flow
    matching's ``L = 2`` gives 2; a near-null direction of ``G`` makes ``H``'s smallest
    eigenvalues small without making them unstable)."""

    min_real: float  # smallest real part of the eigenvalues of H
    interval: tuple  # bootstrap percentile interval of min_real
    min_real_normalised: float  # smallest real part of the eigenvalues of G^-1 H
    interval_normalised: tuple
    max_abs: float  # largest |eigenvalue| of H
    min_real_symmetric: float  # smallest eigenvalue of (H + H^T) / 2
    asymmetry: float  # |H - H^T| / |H + H^T| (Frobenius)
    n_points: int
    n_features: int
    gram_condition: float = float("nan")  # condition number of G (above GRAM_CONDITION_LIMIT: no G^-1 H numbers)

    @property
    def ill_conditioned(self) -> bool:
        """``G`` is near singular (condition above ``GRAM_CONDITION_LIMIT``): ``G^-1 H``'s numbers are
        round-off, and ``H`` is estimated in fewer independent directions than it has."""
        return self.gram_condition > GRAM_CONDITION_LIMIT


# float64 solves lose about log10(cond) of their 16 digits: above 1e10, G^-1 H keeps under 6
GRAM_CONDITION_LIMIT = 1e10


def _min_real(H, G=None) -> float:
    A = H if G is None else torch.linalg.solve(G, H)
    return float(torch.linalg.eigvals(A).real.min())


def eigen_summary(C: torch.Tensor, G: torch.Tensor | None = None, n_boot: int = 200, level: float = 0.95,
                  seed: int = 0) -> EigenSummary:
    """Eigenvalues of ``H = C.mean(0)`` (and of ``G^-1 H``, ``G = G.mean(0)``, per-point Gram
    contributions as ``gram`` returns) with bootstrap intervals over the points."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int (bootstrap resamples), got {n_boot!r}")
    n, P, _ = C.shape
    H = C.mean(0)
    ev = torch.linalg.eigvals(H)
    cond = float("nan") if G is None else float(torch.linalg.cond(G.mean(0)))
    normalised = G is not None and cond <= GRAM_CONDITION_LIMIT  # else G^-1 H is round-off: not computed
    g = torch.Generator().manual_seed(seed)
    boots, boots_n = [], []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=g)
        boots.append(_min_real(C[idx].mean(0)))
        if normalised:
            boots_n.append(_min_real(C[idx].mean(0), G[idx].mean(0)))

    def interval(values):
        if not values:
            return (float("nan"), float("nan"))
        values = sorted(values)
        return (values[int((1 - level) / 2 * (len(values) - 1))], values[int((1 + level) / 2 * (len(values) - 1))])

    sym = 0.5 * (H + H.T)
    return EigenSummary(
        min_real=float(ev.real.min()), interval=interval(boots),
        min_real_normalised=_min_real(H, G.mean(0)) if normalised else float("nan"),
        interval_normalised=interval(boots_n), max_abs=float(ev.abs().max()),
        min_real_symmetric=float(torch.linalg.eigvalsh(sym).min()),
        asymmetry=float((H - H.T).norm() / (H + H.T).norm().clamp_min(1e-300)), n_points=n, n_features=P,
        gram_condition=cond)


LAWS = {"uniform": ("uniform", 0.0, 1.0), "logit_normal(-0.4, 1)": ("logit_normal", -0.4, 1.0)}


# ------------------------------------------------------- MATH.md §7's symmetric-part formula, by quadrature


def law_density(kind: str, mean: float, std: float, t: torch.Tensor):
    """``(q(t), d/dt log q(t))`` of one draw of ``times.sample_times``' law (``r, t`` are the
    min and max of two draws, so the off-diagonal density is ``rho = 2 (1 - f) q(r) q(t)``)."""
    if kind == "uniform":
        return torch.ones_like(t), torch.zeros_like(t)
    if kind != "logit_normal":
        raise ValueError(f"kind must be 'uniform' or 'logit_normal', got {kind!r}")
    y = torch.log(t) - torch.log1p(-t)
    q = torch.exp(-0.5 * ((y - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))
    return q, -(y - mean) / std**2 / (t * (1 - t)) - 1 / t + 1 / (1 - t)


def _gauss_legendre(n: int, a, b):
    import numpy as np

    z, w = np.polynomial.legendre.leggauss(n)
    z, w = torch.as_tensor(z, dtype=torch.float64), torch.as_tensor(w, dtype=torch.float64)
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    half = (b - a)[..., None] / 2
    return a[..., None] + half * (z + 1), half * w


def law_quadrature(kind: str, mean: float, std: float, n: int, tail: float = 9.0):
    """Gauss-Legendre nodes of the law: ``(t, w)`` with ``sum w f(t) ~ int q(t) f(t) dt`` and
    ``(r, t, w)`` with ``sum w f(r, t) ~ int int_{r<t} q(r) q(t) f(r, t) dr dt``. Uniform: on
    ``t in [0, 1], r = s t``; logit-normal: in the logits (``q`` is then a Gaussian), cut at
    ``tail`` standard deviations."""
    if kind == "uniform":
        t, wt = _gauss_legendre(n, 0.0, 1.0)
        s, ws = _gauss_legendre(n, 0.0, 1.0)
        r2 = t[:, None] * s[None, :]
        pair_w = (wt[:, None] * ws[None, :] * t[:, None]).flatten()  # dr dt = t ds dt
        return (t, wt), (r2.flatten(), t[:, None].expand(n, n).flatten(), pair_w)
    b, wb = _gauss_legendre(n, mean - tail * std, mean + tail * std)
    phi = lambda y: torch.exp(-0.5 * ((y - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))  # noqa: E731
    a, wa = _gauss_legendre(n, torch.full((n,), mean - tail * std), b)  # (n, n): a in [lo, b]
    wd = wb * phi(b)
    wp = wd[:, None] * wa * phi(a)
    return (torch.sigmoid(b), wd), (torch.sigmoid(a).flatten(), torch.sigmoid(b)[:, None].expand(n, n).flatten(),
                                   wp.flatten())


def mixture_quadrature(mixture, t: torch.Tensor, n: int):
    """Gauss-Hermite nodes of ``p_t`` (each component ``N((1-t) mu_k, (1-t)^2 Sigma_k + t^2 I)``,
    a tensor rule of ``n`` points per dimension): ``x (T, K n^d, d)`` and weights ``(K n^d,)``
    summing to 1. Exact for polynomials of degree < 2n in each component; practical for d <= 3."""
    import numpy as np

    d = mixture.d
    if d > 3:
        raise ValueError(f"mixture_quadrature is a tensor rule, for d <= 3; this mixture has d = {d}")
    z1, w1 = np.polynomial.hermite_e.hermegauss(n)
    z1, w1 = torch.as_tensor(z1, dtype=torch.float64), torch.as_tensor(w1 / w1.sum(), dtype=torch.float64)
    grids = torch.meshgrid(*([z1] * d), indexing="ij")
    z = torch.stack([g.flatten() for g in grids], -1)  # (n^d, d)
    wz = torch.ones(len(z), dtype=torch.float64)
    for g in torch.meshgrid(*([w1] * d), indexing="ij"):
        wz = wz * g.flatten()
    means, covs, pis = mixture.means.double(), mixture.covs.double(), mixture.weights.double()
    tt = t[:, None, None, None]
    cov_t = (1 - tt) ** 2 * covs[None] + tt**2 * torch.eye(d, dtype=torch.float64)  # (T, K, d, d)
    L = torch.linalg.cholesky(cov_t)
    x = (1 - t)[:, None, None, None] * means[None, :, None, :] + torch.einsum("tkab,mb->tkma", L, z)
    return x.reshape(len(t), -1, d), (pis[:, None] * wz[None, :]).flatten()


def _moments(mixture, dirs: FourierDirections, r, t, n_gh: int, chunk: int = 64):
    """Per quadrature node ``(r, t)``: ``M_ij = E_{p_t}[h_i . h_j]`` and
    ``D_ij = E_{p_t}[h_i . L h_j]`` with mf's (p = 0) ``L h = 2 (h + (t - r) (J_x h . v + d_t h))``."""
    from mfverify import truth

    same = (dirs.axis[:, None] == dirs.axis[None, :]).to(torch.float64)  # h_i . h_j needs the same axis
    Ms, Ds = [], []
    for first in range(0, len(t), chunk):
        rc, tc = r[first : first + chunk], t[first : first + chunk]
        x, w = mixture_quadrature(mixture, tc, n_gh)
        T, N, d = x.shape
        v = truth.velocity(mixture, x.reshape(-1, d), tc.repeat_interleave(N)).reshape(T, N, d)
        arg = x @ dirs.omega.T + (rc[:, None, None] * dirs.alpha + tc[:, None, None] * dirs.beta + dirs.phase)
        cos, sin = torch.cos(arg), torch.sin(arg)  # (T, N, P)
        slope = v @ dirs.omega.T + dirs.beta  # (T, N, P): omega_j . v + beta_j
        Lh = 2 * (cos - (tc - rc)[:, None, None] * sin * slope)
        Ms.append(torch.einsum("n,tni,tnj->tij", w, cos, cos) * same)
        Ds.append(torch.einsum("n,tni,tnj->tij", w, cos, Lh) * same)
    return torch.cat(Ms), torch.cat(Ds)


@dataclass
class SymmetricPartCheck:
    """MATH.md §7's formula for the symmetric part of mf's ``H`` (p = 0) against ``H`` itself,
    both by quadrature (Gauss-Legendre in the times, Gauss-Hermite in ``x ~ p_t``)."""

    relative_difference: float  # |sym(H) - S_formula|_F / |S_formula|_F
    min_eig_normalised: float  # smallest eigenvalue of S_formula in function-space units (G^-1)
    weight_min: float  # min over r < t of (rho - (t - r) d_t rho) / rho: < 0 where the condition fails
    mass_condition_fails: float  # share of the off-diagonal law where it is < 0
    n_features: int


def symmetric_part_check(mixture, dirs: FourierDirections, kind: str = "uniform", mean: float = -0.4,
                         std: float = 1.0, frac_r_eq_t: float = 0.75, n_t: int = 48,
                         n_gh: int = 16) -> SymmetricPartCheck:
    """Check MATH.md §7's identity for ``mf`` (p = 0) on a low-dimensional mixture:

        theta^T H theta / 2 = P(r = t) E|w|^2 + int int_{r<t} 1/2 m (rho - (t - r) d_t rho)
                              + 1/2 int rho(r, 1) (1 - r) m(r, 1) dr,

    ``w = sum theta_i h_i``, ``m(r, t) = E_{p_t}|w|^2``. ``H`` is ``E_mu[h_i . L h_j]``
    with the closed-form ``L`` (``tests/test_stability.py`` ties it to the loss itself).
    Both sides are quadratures of the same nodes; they agree to the quadrature's error if
    the formula is right. Also returned: the smallest eigenvalue of the formula's matrix
    relative to the Gram matrix, and where the sufficient condition ``d_t log rho <= 1/(t-r)``
    fails."""
    f = float(frac_r_eq_t)
    (td, wd), (rp, tp, wp) = law_quadrature(kind, mean, std, n_t)
    Md, _ = _moments(mixture, dirs, td, td, n_gh)
    Mp, Dp = _moments(mixture, dirs, rp, tp, n_gh)
    _, dlogq = law_density(kind, mean, std, tp)
    # the pair weights wp carry q(r) q(t) dr dt; rho = 2 (1 - f) q(r) q(t)
    rho_w = 2 * (1 - f) * wp
    ratio = 1 - (tp - rp) * dlogq  # (rho - (t - r) d_t rho) / rho
    H = f * torch.einsum("t,tij->ij", wd, 2 * Md) + torch.einsum("t,tij->ij", rho_w, Dp)
    half = f * torch.einsum("t,tij->ij", wd, Md) + torch.einsum("t,tij->ij", rho_w * ratio / 2, Mp)
    if kind == "uniform":  # rho(r, 1) = 2 (1 - f); for the logit-normal law q(1) = 0
        rb, wb = _gauss_legendre(n_t, 0.0, 1.0)
        Mb, _ = _moments(mixture, dirs, rb, torch.ones_like(rb), n_gh)
        half = half + torch.einsum("t,tij->ij", 2 * (1 - f) * wb * (1 - rb) / 2, Mb)
    S = 2 * half
    G = f * torch.einsum("t,tij->ij", wd, Md) + torch.einsum("t,tij->ij", rho_w, Mp)
    sym = (H + H.T) / 2
    Lg = torch.linalg.cholesky(G)
    inv = torch.linalg.solve_triangular(Lg, torch.eye(len(G), dtype=torch.float64), upper=False)
    normalised = inv @ S @ inv.T
    fails = ratio < 0
    return SymmetricPartCheck(
        relative_difference=float((sym - S).norm() / S.norm()),
        min_eig_normalised=float(torch.linalg.eigvalsh((normalised + normalised.T) / 2).min()),
        weight_min=float(ratio.min()), mass_condition_fails=float((wp * fails).sum() / wp.sum()),
        n_features=dirs.P)


def stability(objective, case: str, law: str = "logit_normal(-0.4, 1)", n_points: int = 500, n_features: int = 48,
              frac_r_eq_t: float = 0.75, n_boot: int = 200, seed: int = 0, progress=None, scale_x: float = 1.0,
              scale_t: float = 2.0, directions=None) -> EigenSummary:
    """``eigen_summary`` of ``objective`` (p = 0) around the exact u of ``case`` under a time law of
    ``LAWS`` with the flow-matching share ``frac_r_eq_t``, on ``n_features`` Fourier directions
    (or on ``directions``, for instance a trained network's ``NetworkDirections``)."""
    from mfverify.cases import get_case

    if law not in LAWS:
        raise ValueError(f"law must be one of {list(LAWS)}, got {law!r}")
    _check_sizes(n_points=n_points, n_features=n_features, n_boot=n_boot, frac_r_eq_t=frac_r_eq_t, scale_x=scale_x,
                 scale_t=scale_t)
    obj = objectives.get(objective)  # an unknown objective fails before any work
    mixture = get_case(case)
    kind, mean, std = LAWS[law]
    x, r, t = training_points(mixture, n_points, kind, mean, std, frac_r_eq_t, seed)
    if directions is None:
        dirs = FourierDirections(mixture.d, n_features, seed=seed + 1, scale_x=scale_x, scale_t=scale_t)
    elif directions.d != mixture.d:
        raise ValueError(f"directions are of dimension {directions.d}, case {case!r} of {mixture.d}")
    else:
        dirs = directions
    _check_sampled(n_points, mixture.d, dirs.P)
    options = {"p": 0.0} if "p" in obj.options else {}
    C = pseudo_gradient_matrix(objective, mixture, dirs, x, r, t, progress=progress, **options)
    return eigen_summary(C, gram(dirs, x, r, t), n_boot=n_boot, seed=seed)


def _check_sizes(**values) -> None:
    for name in ("n_points", "n_features", "n_boot"):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name in ("scale_x", "scale_t"):
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    f = values["frac_r_eq_t"]
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
        raise ValueError(f"frac_r_eq_t must lie in [0, 1], got {f!r}")


def _check_sampled(n_points: int, d: int, n_directions: int, points: str = "n_points") -> None:
    """``n_points`` points in ``d`` dimensions give per-direction matrices of rank at most ``n_points d``:
    fewer than the directions and ``H`` and ``G`` are singular."""
    if n_points * d < n_directions:
        raise ValueError(f"under-sampled: {points} {n_points} in d = {d} cannot estimate {n_directions} directions "
                         f"(H and G would have rank at most {n_points * d}); use at least "
                         f"{math.ceil(n_directions / d)}, many more for a stable estimate")


def main(argv=None, prog: str = "mfverify stability") -> int:
    """``mfverify stability [--case ring8] [--points N] [--features P]``: the table of C12 (MATH.md §7):
    per objective, min Re lambda of the linearised training operator at ``u*``, bootstrap interval."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=main.__doc__.split("``: ", 1)[1],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="Exit status: 0 the table was printed, 2 a usage error.")
    parser.add_argument("--case", default="ring8", help="a named case")
    parser.add_argument("--objectives", default="mf,mf_sg,shortcut", help="comma-separated objectives")
    parser.add_argument("--points", type=int, default=500, help="training points (x_t, r, t) of the estimate")
    parser.add_argument("--features", type=int, default=48, help="directions h_i of the perturbation class")
    parser.add_argument("--boot", type=int, default=200, help="bootstrap resamples of the intervals")
    parser.add_argument("--frac-r-eq-t", type=float, default=0.75, help="the law's flow-matching share")
    parser.add_argument("--scale-x", type=float, default=1.0, help="frequency scale of the directions in x")
    parser.add_argument("--scale-t", type=float, default=2.0, help="frequency scale of the directions in r, t")
    parser.add_argument("--network", metavar="CHECKPOINT", default=None,
                        help="directions: the tangent features of this checkpoint's EMA network (random directions "
                             "in its parameter space) instead of Fourier features")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points, directions and bootstrap")
    args = parser.parse_args(argv)
    from mfverify.cases import get_case

    names = [o.strip() for o in args.objectives.split(",") if o.strip()]
    try:  # every argument checked before any work
        if not names:
            raise ValueError("--objectives names no objective")
        for name in names:
            objectives.get(name)
        d_case = get_case(args.case).d
        _check_sizes(n_points=args.points, n_features=args.features, n_boot=args.boot, frac_r_eq_t=args.frac_r_eq_t,
                     scale_x=args.scale_x, scale_t=args.scale_t)
        _check_sampled(args.points, d_case, args.features, points="--points")
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    directions = None
    if args.network is not None:
        from mfverify.train import load_checkpoint

        try:
            cfg, _, ema = load_checkpoint(args.network)
        except Exception as err:  # noqa: BLE001  (any unreadable file: torch raises many kinds)
            print(f"error: --network: {args.network} is not a readable mfverify checkpoint "
                  f"({type(err).__name__}: {err})", file=sys.stderr)
            return 2
        d_net = get_case(cfg.case).d
        if d_net != d_case:
            print(f"error: --network: the checkpoint's network is for case {cfg.case!r} (d = {d_net}); --case "
                  f"{args.case!r} has d = {d_case}", file=sys.stderr)
            return 2
        directions = NetworkDirections(ema, args.features, seed=args.seed + 1)
    print("| objective | time law | min Re lambda(H) [95 % bootstrap] | min Re lambda(G^-1 H) [95 %] | "
          "min eig sym(H) | asymmetry |")
    print("|---|---|---|---|---|---|")
    flagged = []
    for objective in names:
        for law in LAWS:
            try:
                s = stability(objective, args.case, law, args.points, args.features, args.frac_r_eq_t,
                              n_boot=args.boot, seed=args.seed, scale_x=args.scale_x, scale_t=args.scale_t,
                              directions=directions)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            print(f"| {objective} | {law} | {s.min_real:.3g} [{s.interval[0]:.3g}, {s.interval[1]:.3g}] | "
                  f"{s.min_real_normalised:.3g} [{s.interval_normalised[0]:.3g}, {s.interval_normalised[1]:.3g}] | "
                  f"{s.min_real_symmetric:.3g} | {s.asymmetry:.3g} |{' ill-conditioned G' if s.ill_conditioned else ''}",
                  flush=True)
            if s.ill_conditioned:
                flagged.append(f"{objective} / {law}: cond(G) = {s.gram_condition:.2g}")
    if flagged:
        print(f"warning: the Gram matrix G is near singular (condition above {GRAM_CONDITION_LIMIT:g}) on "
              f"{'; '.join(flagged)}: G^-1 H there is round-off and H is estimated in fewer independent directions "
              "than it has; use more --points or fewer --features", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
