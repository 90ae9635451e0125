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

from mfverify import identities, objectives

__all__ = ["FourierDirections", "pseudo_gradient_matrix", "eigen_summary", "training_points"]


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

    def derivatives(self, x, r, t):
        """``(cos(arg), -sin(arg))`` (n, P) each: ``h_i = cos_i e_i``, ``J_x h_i . a = -sin_i (omega_i . a) e_i``,
        ``d_t h_i = -sin_i beta_i e_i`` (what closed-form linearisations need)."""
        arg = self._arg(x, r, t)
        return torch.cos(arg), -torch.sin(arg)


def training_points(mixture, n: int, kind: str = "logit_normal", mean: float = -0.4, std: float = 1.0,
                    frac_r_eq_t: float = 0.75, seed: int = 0):
    """``n`` points ``(x_t, r, t)`` of a training law (``times.sample_times``; ``x_t ~ p_t``),
    with ``t`` kept at least 1e-3 (the exact u's derivatives at t = 0 are those of p_0)."""
    from mfverify.times import sample_times

    g = torch.Generator().manual_seed(seed)
    r, t = sample_times(n, kind, mean, std, frac_r_eq_t, g, dtype=torch.float64)
    t = t.clamp_min(1e-3)
    r = torch.minimum(r, t)
    x0 = mixture.sample(n, generator=g)
    x = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(n, mixture.d, generator=g, dtype=torch.float64)
    return x, r, t


class _Replicated(identities.ExactModel):
    """The exact model on ``J`` stacked copies of the same rows: where the copies' inputs are
    equal (calls at the training points themselves) the ODE is solved for one copy only and
    its derivatives are repeated; the first-order expansion around every row keeps each
    copy's own gradient and tangent."""

    def __init__(self, mixture, copies: int):
        super().__init__(mixture)
        self.copies = copies

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

    def _derivatives(self, x, r, t):
        J, n = self.copies, x.shape[0]
        if J > 1 and n % J == 0:
            m = n // J
            blocks = [a.view(J, m, *a.shape[1:]) for a in (x, r, t)]
            if all(bool((b == b[:1]).all()) for b in blocks):
                one = super()._derivatives(x[:m], r[:m], t[:m])
                return tuple(a.repeat(J, *([1] * (a.ndim - 1))) for a in one)
        return super()._derivatives(x, r, t)


class _Perturbed:
    """``base + c_row h_{j_row} + sum_i theta_{point_row, i} h_i``: the outer steps (one direction
    and sign per copy of the rows) on every call; the inner ``theta`` (one row per copy and
    point) carries the parameter gradient through the unstopped calls."""

    def __init__(self, base, dirs, j_rows, c_rows, theta, rows):
        self.base, self.dirs, self.j_rows, self.c_rows, self.theta, self.rows = base, dirs, j_rows, c_rows, theta, rows

    def __call__(self, x, r, t):
        h = self.dirs(x, r, t)  # (n, P, d)
        outer = h[torch.arange(len(x)), self.j_rows] * self.c_rows[:, None]
        return self.base(x, r, t) + outer + torch.einsum("np,npd->nd", self.theta[self.rows], h)


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
    per_call = max(1, int(memory // (rows_per_copy * dirs.P * dirs.d)))
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
        model = _Perturbed(_Replicated(mixture, J), dirs, j_rows, c_rows, theta, rows)
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


def _min_real(H, G=None) -> float:
    A = H if G is None else torch.linalg.solve(G, H)
    return float(torch.linalg.eigvals(A).real.min())


def eigen_summary(C: torch.Tensor, G: torch.Tensor | None = None, n_boot: int = 200, level: float = 0.95,
                  seed: int = 0) -> EigenSummary:
    """Eigenvalues of ``H = C.mean(0)`` (and of ``G^-1 H``, ``G = G.mean(0)``, per-point Gram
    contributions as ``gram`` returns) with bootstrap intervals over the points."""
    n, P, _ = C.shape
    H = C.mean(0)
    ev = torch.linalg.eigvals(H)
    g = torch.Generator().manual_seed(seed)
    boots, boots_n = [], []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=g)
        boots.append(_min_real(C[idx].mean(0)))
        if G is not None:
            boots_n.append(_min_real(C[idx].mean(0), G[idx].mean(0)))

    def interval(values):
        if not values:
            return (float("nan"), float("nan"))
        values = sorted(values)
        return (values[int((1 - level) / 2 * (len(values) - 1))], values[int((1 + level) / 2 * (len(values) - 1))])

    sym = 0.5 * (H + H.T)
    return EigenSummary(
        min_real=float(ev.real.min()), interval=interval(boots),
        min_real_normalised=float("nan") if G is None else _min_real(H, G.mean(0)),
        interval_normalised=interval(boots_n), max_abs=float(ev.abs().max()),
        min_real_symmetric=float(torch.linalg.eigvalsh(sym).min()),
        asymmetry=float((H - H.T).norm() / (H + H.T).norm().clamp_min(1e-300)), n_points=n, n_features=P)


LAWS = {"uniform": ("uniform", 0.0, 1.0), "logit_normal(-0.4, 1)": ("logit_normal", -0.4, 1.0)}


def stability(objective, case: str, law: str = "logit_normal(-0.4, 1)", n_points: int = 500, n_features: int = 48,
              frac_r_eq_t: float = 0.75, n_boot: int = 200, seed: int = 0, progress=None, scale_x: float = 1.0,
              scale_t: float = 2.0) -> EigenSummary:
    """``eigen_summary`` of ``objective`` (p = 0) around the exact u of ``case`` under a time law of
    ``LAWS`` with the flow-matching share ``frac_r_eq_t``, on ``n_features`` Fourier directions."""
    from mfverify.cases import get_case

    if law not in LAWS:
        raise ValueError(f"law must be one of {list(LAWS)}, got {law!r}")
    mixture = get_case(case)
    kind, mean, std = LAWS[law]
    x, r, t = training_points(mixture, n_points, kind, mean, std, frac_r_eq_t, seed)
    dirs = FourierDirections(mixture.d, n_features, seed=seed + 1, scale_x=scale_x, scale_t=scale_t)
    options = {"p": 0.0} if "p" in objectives.get(objective).options else {}
    C = pseudo_gradient_matrix(objective, mixture, dirs, x, r, t, progress=progress, **options)
    return eigen_summary(C, gram(dirs, x, r, t), n_boot=n_boot, seed=seed)


def main(argv=None) -> int:
    """``python -m mfverify.stability [--case ring8] [--points N] [--features P]``: the table of C12."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m mfverify.stability", description=main.__doc__)
    parser.add_argument("--case", default="ring8")
    parser.add_argument("--objectives", default="mf,mf_sg,shortcut")
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--features", type=int, default=48)
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--frac-r-eq-t", type=float, default=0.75, help="the law's flow-matching share")
    parser.add_argument("--scale-x", type=float, default=1.0, help="frequency scale of the directions in x")
    parser.add_argument("--scale-t", type=float, default=2.0, help="frequency scale of the directions in r, t")
    args = parser.parse_args(argv)
    print("| objective | time law | min Re lambda(H) [95 % bootstrap] | min Re lambda(G^-1 H) [95 %] | "
          "min eig sym(H) | asymmetry |")
    print("|---|---|---|---|---|---|")
    for objective in args.objectives.split(","):
        for law in LAWS:
            try:
                s = stability(objective, args.case, law, args.points, args.features, args.frac_r_eq_t,
                              n_boot=args.boot, scale_x=args.scale_x, scale_t=args.scale_t)
            except ValueError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            print(f"| {objective} | {law} | {s.min_real:.3g} [{s.interval[0]:.3g}, {s.interval[1]:.3g}] | "
                  f"{s.min_real_normalised:.3g} [{s.interval_normalised[0]:.3g}, {s.interval_normalised[1]:.3g}] | "
                  f"{s.min_real_symmetric:.3g} | {s.asymmetry:.3g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
