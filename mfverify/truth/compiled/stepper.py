"""The compiled stepper: DOP853 per point on ``dz/ds = v(x - (t - r) z, t - s (t - r))``, the
points in parallel, and ``average_velocity``, its entry point."""

from __future__ import annotations

import math

import numpy as np
import torch

from mfverify.truth.compiled.field import _mixture_arrays, _scratch_offsets, _velocity
from mfverify.truth.compiled.numba_setup import (_A, _B, _BLOCK, _C, _E3, _E5, _LOCK, _SMALL_D, CONTROL, OK,
                                                 SPECIALISE_D, STEP_UNDERFLOW, TOO_MANY_STEPS, _slp_vectorization,
                                                 numba)

if numba is not None:
    from numba import literally, njit, prange

    from mfverify.truth.compiled.controller import error_norm, step_factor

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _rhs(s, z, x, r, t, KT, MK, QQ, layout, logdet_mode, S, oy, out, row, D):
        """dz/ds = v(x - (t - r) z, t - s (t - r)) into ``out[row]`` (y goes to ``S[oy:oy + D]``)."""
        h = t - r
        for i in range(D):
            S[oy + i] = x[i] - h * z[i]
        _velocity(t - s * h, KT, MK, QQ, layout, logdet_mode, S, out, row, D)

    @njit(cache=True, nogil=True, error_model="numpy")
    def _solve_point(x, r, t, h_max, rtol, atol, max_steps, ctrl, args, tab, S, ybuf, k_stages, ynew, ytmp, out, D):
        """Integrate z from s = 0 to 1 for one point; z(1) into ``out``.

        ``k_stages`` (14, d): the 13 stages, and a last row for the initial-step probe.
        Rows are indexed, never sliced (a slice costs reference counting).
        Returns (status, accepted, rejected, f evaluations)."""
        A, B, C, E3, E5 = tab
        # unpacked once per point: unpacking arrays from a tuple costs reference counting
        KT, MK, QQ, layout, logdet_mode = args
        d = D
        oy = _scratch_offsets(MK.shape[0] // 3, d)[2]
        S[oy + d] = 1.0  # a new point: logit bounds on
        n_stages = B.shape[0]
        y = out
        for i in range(d):
            y[i] = 0.0
        s = 0.0
        F1 = n_stages + 1  # row of the initial-step probe
        _rhs(s, y, x, r, t, KT, MK, QQ, layout, logdet_mode, S, oy, k_stages, 0, D)
        evals = 1
        # initial step (Hairer et al. §II.4), as solver._initial_step
        d0 = 0.0
        d1 = 0.0
        for i in range(d):
            sc = atol + rtol * abs(y[i])
            d0 += (y[i] / sc) ** 2
            d1 += (k_stages[0, i] / sc) ** 2
        d0 = math.sqrt(d0 / d)
        d1 = math.sqrt(d1 / d)
        if d0 < 1e-5 or d1 < 1e-5:
            h0 = 1e-6
        else:
            h0 = 0.01 * d0 / d1
        h0 = min(h0, 1.0)
        for i in range(d):
            ytmp[i] = y[i] + h0 * k_stages[0, i]
        _rhs(s + h0, ytmp, x, r, t, KT, MK, QQ, layout, logdet_mode, S, oy, k_stages, F1, D)
        evals += 1
        d2 = 0.0
        for i in range(d):
            sc = atol + rtol * abs(y[i])
            d2 += ((k_stages[F1, i] - k_stages[0, i]) / sc) ** 2
        d2 = math.sqrt(d2 / d) / h0
        big = max(d1, d2)
        if big <= 1e-15:
            h1 = max(h0 * 1e-3, 1e-6)
        else:
            h1 = (0.01 / max(big, 1e-300)) ** (1.0 / 8.0)
        h = h1 if d0 < 1e-5 else min(100 * h0, h1)
        h = min(max(h, 1e-12), 1.0)
        h = min(h, h_max)

        err_old = 1e-4
        accepted = 0
        rejected = 0
        steps = 0
        while True:
            h = min(h, 1.0 - s)
            # stage sums; for larger d with the point's coordinates innermost (independent,
            # so they vectorise). Either way each sums over the stages j in order: the same bits
            for st in range(1, n_stages):
                if d <= _SMALL_D:
                    for i in range(d):
                        acc = 0.0
                        for j in range(st):
                            acc += A[st, j] * k_stages[j, i]
                        ytmp[i] = y[i] + h * acc
                else:
                    for i in range(d):
                        ytmp[i] = 0.0
                    for j in range(st):
                        a = A[st, j]
                        for i in range(d):
                            ytmp[i] += a * k_stages[j, i]
                    for i in range(d):
                        ytmp[i] = y[i] + h * ytmp[i]
                _rhs(s + C[st] * h, ytmp, x, r, t, KT, MK, QQ, layout, logdet_mode, S, oy, k_stages, st, D)
            for i in range(d):
                ynew[i] = 0.0
            for j in range(n_stages):
                b = B[j]
                for i in range(d):
                    ynew[i] += b * k_stages[j, i]
            for i in range(d):
                ynew[i] = y[i] + h * ynew[i]
            last = h >= 1.0 - s
            s_new = 1.0 if last else s + h
            _rhs(s_new, ynew, x, r, t, KT, MK, QQ, layout, logdet_mode, S, oy, k_stages, n_stages, D)
            evals += n_stages
            # error estimates: the combinations as above (ytmp and ybuf hold them)
            for i in range(d):
                ytmp[i] = 0.0
                ybuf[i] = 0.0
            for j in range(n_stages + 1):
                c5 = E5[j]
                c3 = E3[j]
                for i in range(d):
                    ytmp[i] += c5 * k_stages[j, i]
                    ybuf[i] += c3 * k_stages[j, i]
            e5 = 0.0
            e3 = 0.0
            for i in range(d):
                sc = atol + rtol * max(abs(y[i]), abs(ynew[i]))
                e5 += (ytmp[i] / sc) ** 2
                e3 += (ybuf[i] / sc) ** 2
            err = error_norm(h, e5, e3, d)
            factor, ok = step_factor(err, err_old, ctrl)
            steps += 1
            if ok:
                accepted += 1
                s = s_new
                for i in range(d):
                    y[i] = ynew[i]
                    k_stages[0, i] = k_stages[n_stages, i]
                err_old = max(err, 1e-4)
            else:
                rejected += 1
            h = min(h * factor, h_max)
            if ok and last:
                return OK, accepted, rejected, evals
            if steps > max_steps:
                return TOO_MANY_STEPS, accepted, rejected, evals
            if h <= 1e-15:
                return STEP_UNDERFLOW, accepted, rejected, evals

    @njit(cache=True, parallel=True, error_model="numpy")
    def _solve_all(x, r, t, h_max, rtol, atol, max_steps, ctrl, args, tab, out, info, D):
        n = x.shape[0]
        d = D
        K = args[1].shape[0] // 3
        n_stages = tab[1].shape[0]
        n_blocks = (n + _BLOCK - 1) // _BLOCK
        # Block b takes points b, b + n_blocks, ...: every block a fair sample, so the
        # static split of blocks over threads stays balanced however costs are ordered.
        for b in prange(n_blocks):  # scratch allocated once per block
            S = np.empty((2 * K + 1) * d + 3 * K + 1)
            ybuf = np.empty(d)
            k_stages = np.empty((n_stages + 2, d))
            ynew = np.empty(d)
            ytmp = np.empty(d)
            for p in range(b, n, n_blocks):
                status, acc, rej, ev = _solve_point(
                    x[p], r[p], t[p], h_max[p], rtol, atol, max_steps, ctrl, args, tab, S, ybuf, k_stages,
                    ynew, ytmp, out[p], D,
                )
                info[p, 0] = status
                info[p, 1] = acc
                info[p, 2] = rej
                info[p, 3] = ev


    @njit(cache=True)
    def _solve_all_small_d(x, r, t, h_max, rtol, atol, max_steps, ctrl, args, tab, out, info, D):
        """``_solve_all`` compiled for the value of D (d <= SPECIALISE_D): short loops unroll."""
        _solve_all(x, r, t, h_max, rtol, atol, max_steps, ctrl, args, tab, out, info, literally(D))


def average_velocity(gm, x, r, t, h_max, *, rtol, atol, max_steps=100_000, stats=None):
    """``z(1) = u(x, r, t)`` (n, d) for CPU float64 tensors; same contract as ``solver.solve``."""
    n, d = x.shape
    out = np.zeros((n, d))
    if n == 0:
        return torch.from_numpy(out)
    info = np.zeros((n, 4), dtype=np.int64)
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    tab = (_A, _B, _C, _E3, _E5)
    solve = _solve_all_small_d if d <= SPECIALISE_D else _solve_all
    with _LOCK, _slp_vectorization():
        numba.set_num_threads(threads)
        solve(
            np.ascontiguousarray(x.numpy()), np.ascontiguousarray(r.numpy()), np.ascontiguousarray(t.numpy()),
            np.ascontiguousarray(h_max.numpy()), float(rtol), float(atol), int(max_steps), CONTROL,
            _mixture_arrays(gm), tab, out, info, d,
        )
    if stats is not None:
        stats.points += n
        stats.accepted += int(info[:, 1].sum())
        stats.rejected += int(info[:, 2].sum())
        stats.max_steps = max(stats.max_steps, int((info[:, 1] + info[:, 2]).max()))
        stats.point_evals += int(info[:, 3].sum())
    bad = np.nonzero(info[:, 0] != OK)[0]
    if bad.size:
        first = int(bad[0])
        if info[first, 0] == TOO_MANY_STEPS:
            raise RuntimeError(f"ODE solver exceeded max_steps={max_steps} at {bad.size} points (first: {first})")
        raise RuntimeError(
            f"ODE step size underflowed at {bad.size} points (first: {first}): "
            "the right-hand side is singular or not finite there"
        )
    return torch.from_numpy(out)
