"""An explicit Runge-Kutta solver with a step size per point (DOP853).

Solves a batch of independent problems ``dy/ds = f(s, y; p)``, ``s`` from 0 to
1, each point with its own step size and its own accept/reject decision, so
that one stiff point does not slow the others down. The solver knows nothing
of what it integrates: ``f`` receives the active points' ``s`` (m,), state
``y`` (m, q) and parameters (each (m, ...)).

Method: Dormand-Prince 8(5,3) (Hairer, Norsett & Wanner, *Solving ODEs I*,
§II.10), with the Butcher tableau as shipped in scipy, the 5th/3rd-order
combined error estimate and Hairer's PI step-size control
``h <- h * clip(0.9 err^(-1/8 + beta/5) err_prev^beta, 1/3, 6)``, ``beta = 0.04`` (the growth limit matters: a step
grown 10x after a very smooth stretch can straddle a posterior switch with an
error estimate that misses it). Error norm per point: the RMS over
the state of ``err / (atol + rtol max(|y_old|, |y_new|))``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from scipy.integrate._ivp import dop853_coefficients as _dop853

__all__ = ["solve", "SolverStats"]

_N_STAGES = 12
_A = torch.tensor(_dop853.A[:_N_STAGES, :_N_STAGES], dtype=torch.float64)
_B = torch.tensor(_dop853.B, dtype=torch.float64)
_C = torch.tensor(_dop853.C[:_N_STAGES], dtype=torch.float64)
_E3 = torch.tensor(_dop853.E3, dtype=torch.float64)
_E5 = torch.tensor(_dop853.E5, dtype=torch.float64)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 1.0 / 3.0, 6.0
_ERROR_EXPONENT = -1.0 / 8.0
# PI control (Gustafsson; Hairer's beta): 0.04 halves the rejected steps on ring8 and
# cuts the max global error 2-10x at the same tolerance (benchmarks/truth_bench.py)
PI_BETA = 0.04


class SolverStats:
    """Totals over ``solve`` calls: points solved, accepted and rejected steps, f evaluations."""

    def __init__(self):
        self.points = 0
        self.accepted = 0
        self.rejected = 0
        self.max_steps = 0  # most steps (accepted + rejected) any point took
        self.point_evals = 0  # sum over calls of f of the number of points evaluated

    def __repr__(self) -> str:
        mean = self.accepted / max(self.points, 1)
        return (
            f"SolverStats(points={self.points}, accepted/point={mean:.1f}, rejected={self.rejected}, "
            f"max steps={self.max_steps}, evals/point={self.point_evals / max(self.points, 1):.0f})"
        )


Rhs = Callable[..., torch.Tensor]


def solve(
    f: Rhs,
    y0: torch.Tensor,
    params: Sequence[torch.Tensor] = (),
    *,
    rtol: float,
    atol: float,
    max_steps: int = 100_000,
    max_step: torch.Tensor | None = None,
    stats: SolverStats | None = None,
) -> torch.Tensor:
    """``y(1)`` for ``dy/ds = f(s, y, *params)``, ``y(0) = y0``; y0 (n, q), float64.

    ``max_step`` (n,): the largest step each point may take (default 1).
    Raises ``RuntimeError`` if a point needs more than ``max_steps`` steps or
    its step size underflows (a singular right-hand side).
    """
    n, _ = y0.shape
    device = y0.device
    A, B, C, E3, E5 = (c.to(device) for c in (_A, _B, _C, _E3, _E5))
    out = y0.clone()
    if n == 0:
        return out
    if stats is None:
        stats = SolverStats()
    stats.points += n

    def rhs(s, y, p):
        stats.point_evals += y.shape[0]
        return f(s, y, *p)

    index = torch.arange(n, device=device)  # original position of each active point
    s = torch.zeros(n, dtype=torch.float64, device=device)
    y = y0.clone()
    p = tuple(params)
    fy = rhs(s, y, p)
    h_max = torch.ones(n, dtype=torch.float64, device=device) if max_step is None else max_step.clone()
    h = torch.minimum(_initial_step(rhs, s, y, fy, p, rtol, atol), h_max)
    steps = torch.zeros(n, dtype=torch.int64, device=device)
    err_old = torch.full((n,), 1e-4, dtype=torch.float64, device=device)  # PI memory (Hairer's facold)

    K = torch.empty((_N_STAGES + 1,) + tuple(y.shape), dtype=y.dtype, device=device)
    while index.numel() > 0:
        m = index.numel()
        K = K[:, :m] if K.shape[1] >= m else torch.empty((_N_STAGES + 1, m, y.shape[1]), dtype=y.dtype, device=device)
        h = torch.minimum(h, 1.0 - s)
        hc = h[:, None]
        K[0] = fy
        for i in range(1, _N_STAGES):
            dy = torch.einsum("j,jmq->mq", A[i, :i], K[:i]) * hc
            K[i] = rhs(s + C[i] * h, y + dy, p)
        y_new = y + torch.einsum("j,jmq->mq", B, K[:_N_STAGES]) * hc
        s_new = s + h
        last = h >= 1.0 - s  # this step ends exactly at s = 1
        s_new = torch.where(last, torch.ones_like(s_new), s_new)
        K[_N_STAGES] = f_new = rhs(s_new, y_new, p)

        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err5 = torch.einsum("j,jmq->mq", E5, K) / scale
        err3 = torch.einsum("j,jmq->mq", E3, K) / scale
        e5 = err5.square().sum(1)
        e3 = err3.square().sum(1)
        denom = (e5 + 0.01 * e3) * y.shape[1]
        err = torch.where(denom > 0, h * e5 / denom.clamp_min(1e-300).sqrt(), torch.zeros_like(h))

        ok = torch.isfinite(err) & (err <= 1.0)
        # PI step control (Hairer's DOP853 with beta = PI_BETA): err^-(1/8 - beta/5) err_old^beta
        pi = err.clamp_min(1e-300).pow(_ERROR_EXPONENT + 0.2 * PI_BETA) * err_old.pow(PI_BETA)
        factor = torch.where(
            err == 0,
            torch.full_like(err, _MAX_FACTOR),
            (_SAFETY * pi).clamp(_MIN_FACTOR, _MAX_FACTOR),
        )
        factor = torch.where(torch.isfinite(err), factor, torch.full_like(err, _MIN_FACTOR))
        factor = torch.where(ok, factor, factor.clamp_max(1.0))

        n_ok = int(ok.sum())
        stats.accepted += n_ok
        stats.rejected += ok.numel() - n_ok
        s = torch.where(ok, s_new, s)
        y = torch.where(ok[:, None], y_new, y)
        fy = torch.where(ok[:, None], f_new, fy)
        err_old = torch.where(ok, err.clamp_min(1e-4), err_old)
        h = torch.minimum(h * factor, h_max)
        steps += 1

        finished = ok & last
        if bool((steps > max_steps).any()):
            bad = index[steps > max_steps]
            raise RuntimeError(f"ODE solver exceeded max_steps={max_steps} at {bad.numel()} points (first: {int(bad[0])})")
        if bool((h <= 1e-15).any()):
            bad = index[h <= 1e-15]
            raise RuntimeError(
                f"ODE step size underflowed at {bad.numel()} points (first: {int(bad[0])}): "
                "the right-hand side is singular or not finite there"
            )
        if bool(finished.any()):
            stats.max_steps = max(stats.max_steps, int(steps[finished].max()))
            out[index[finished]] = y[finished]
            keep = ~finished
            index, s, y, fy, h, steps = index[keep], s[keep], y[keep], fy[keep], h[keep], steps[keep]
            err_old = err_old[keep]
            h_max = h_max[keep]
            p = tuple(q[keep] for q in p)
    return out


def _initial_step(rhs, s, y, fy, p, rtol, atol) -> torch.Tensor:
    """Per-point first step (Hairer et al. §II.4), at most 1."""
    scale = atol + rtol * y.abs()
    d0 = (y / scale).square().mean(1).sqrt()
    d1 = (fy / scale).square().mean(1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = h0.clamp_max(1.0)
    f1 = rhs(s + h0, y + h0[:, None] * fy, p)
    d2 = ((f1 - fy) / scale).square().mean(1).sqrt() / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6), (0.01 / big.clamp_min(1e-300)) ** (1.0 / 8.0))
    # A zero initial state (the average-velocity ODE starts at z = 0) says nothing
    # about the scale, so the curvature-based h1 alone decides there.
    h = torch.where(d0 < 1e-5, h1, torch.minimum(100 * h0, h1))
    return h.clamp(1e-12, 1.0)
