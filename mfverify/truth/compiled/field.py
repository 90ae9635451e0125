"""The compiled mixture velocity ``v(y, tau)`` of a full Gaussian mixture, inlined into the
kernels' right-hand sides (``stepper``, ``tangent``), and ``_mixture_arrays``, the packing
of a mixture's parameters that they take.

In the eigenbasis of ``S_k``: ``Y_k = Q_k^T y - (1-tau) Q_k^T mu_k``,
``c_k = (1-tau)^2 lam_k + tau^2``, ``logit_k = log w_k - (sum Y_k^2 / c_k + sum log c_k) / 2``,
``v = sum_k pi_k [Q_k ((tau - (1-tau) lam_k) / c_k * Y_k) - mu_k]`` (``truth.fields``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mfverify.truth.compiled.numba_setup import (_BOUND_MARGIN, _DIAG, _FULL, _LOCK, _LOGDET_CANCELS, _LOGDET_PRODUCT,
                                                 _LOGDET_SUM, _SHARED, _SKIP_LOGIT, _slp_vectorization, numba)

if numba is not None:
    from numba import njit

    # No fast-math anywhere: with reassociation LLVM vectorised the dot products, but the
    # bits then depended on how a function was compiled (a fresh compile and numba's
    # cached build differed by 4e-13), and the study must give the same results.csv on
    # every run. IEEE semantics make every build agree. The speed comes instead from
    # sums written as independent chains (blocks of outputs in local accumulators, loops
    # over components innermost), which SLP and loop vectorisation pack into SIMD
    # registers without changing any summation order.

    @njit(cache=True, nogil=True, inline="always")
    def _scratch_offsets(K, d):
        """Offsets in the scratch ``S`` ((2K + 1) d + 3K + 1,) of one thread: Y_k rows at 0,
        1 / c_kj and then the coefficients at ``oc``, the logits and their bounds (3K) at
        ``ol``, the point y at ``oy``, and at ``oy + d`` the flag for logit bounds (set it
        to 1 for a new point)."""
        oc = K * d
        ol = oc + K * d
        return oc, ol, ol + 3 * K

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _softmax_inplace(S, ol, best, K):
        """logit <- exp(logit - best) / sum for the logits S[ol:ol + K], with terms below
        best - _SKIP_LOGIT set to 0."""
        total = 0.0
        for k in range(K):
            if S[ol + k] < best - _SKIP_LOGIT:
                S[ol + k] = 0.0
            else:
                e = math.exp(S[ol + k] - best)
                S[ol + k] = e
                total += e
        inv_total = 1.0 / total
        for k in range(K):
            S[ol + k] *= inv_total

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _velocity(tau, KT, MK, QQ, layout, logdet_mode, S, out, row, D):
        """v(y, tau) into ``out[row]``, for y in the scratch ``S`` (layout: ``_scratch_offsets``).

        The mixture comes packed in three arrays (``_mixture_arrays``) and the scratch in
        one: every array passed to a function that is not inlined costs an atomic
        reference-count increment and decrement per call, about 6 ns per array here,
        which with thirteen separate arrays was a tenth of an evaluation in 16-D.

        ``D`` is a compile-time constant for d <= SPECIALISE_D. Only the 2-D shared-spectrum
        case uses it (``_velocity_shared_2d``); every other case goes to ``_velocity_general``,
        compiled once for a run-time d (``D + 0``) and shared by all dimensions, which keeps
        the first compile short."""
        if layout == _SHARED and D == 2:
            _velocity_shared_2d(tau, KT, MK, S, out, row)
        else:
            _velocity_general(tau, KT, MK, QQ, layout, logdet_mode, S, out, row, D + 0)

    @njit(cache=True, nogil=True, error_model="numpy")
    def _velocity_shared_2d(tau, KT, MK, S, out, row):
        """The 2-D case of the shared-spectrum branch of ``_velocity_general`` in scalars
        (about 3x faster than its loops over scratch arrays)."""
        K = MK.shape[0] // 3
        oc, ol, oy = _scratch_offsets(K, 2)
        one_m = 1.0 - tau
        one_m2 = one_m * one_m
        tau2 = tau * tau
        best = -np.inf
        ic0 = 1.0 / (one_m2 * MK[K, 0] + tau2)
        ic1 = 1.0 / (one_m2 * MK[K, 1] + tau2)
        y0 = S[oy]
        y1 = S[oy + 1]
        for k in range(K):
            e0 = y0 - one_m * MK[k, 0]
            e1 = y1 - one_m * MK[k, 1]
            lk = KT[4, k] - 0.5 * (e0 * e0 * ic0 + e1 * e1 * ic1)
            S[ol + k] = lk
            if lk > best:
                best = lk
        total = 0.0
        m0 = 0.0
        m1 = 0.0
        for k in range(K):
            g = S[ol + k] - best
            if g >= -_SKIP_LOGIT:
                e = math.exp(g)
                total += e
                m0 += e * MK[k, 0]
                m1 += e * MK[k, 1]
        a0 = (tau - one_m * MK[K, 0]) * ic0
        a1 = (tau - one_m * MK[K, 1]) * ic1
        out[row, 0] = a0 * y0 - (1.0 + one_m * a0) * (m0 / total)
        out[row, 1] = a1 * y1 - (1.0 + one_m * a1) * (m1 / total)

    @njit(cache=True, nogil=True, error_model="numpy")
    def _velocity_general(tau, KT, MK, QQ, layout, logdet_mode, S, out, row, d):
        """v(y, tau) into ``out[row]`` for any layout and d (see ``_velocity``)."""
        K = MK.shape[0] // 3
        KD = K * d
        oc, ol, oy = _scratch_offsets(K, d)
        one_m = 1.0 - tau
        one_m2 = one_m * one_m
        tau2 = tau * tau
        best = -np.inf
        if layout == _SHARED:
            # diagonal covariances with one spectrum: c and a are the same for every
            # component, and v = a y - (1 + (1 - tau) a) sum_k pi_k mu_k
            for j in range(d):
                c = one_m2 * MK[K + 0, j] + tau2
                S[oc + j] = 1.0 / c
                S[j] = (tau - one_m * MK[K + 0, j]) / c
            for k in range(K):
                quad = 0.0
                for j in range(d):
                    Yj = S[oy + j] - one_m * MK[k, j]
                    quad += Yj * Yj * S[oc + j]
                lk = KT[2 * d, k] - 0.5 * quad
                S[ol + k] = lk
                best = max(best, lk)
            _softmax_inplace(S, ol, best, K)
            for j in range(d):
                out[row, j] = 0.0
            for k in range(K):
                p = S[ol + k]
                if p != 0.0:
                    for j in range(d):
                        out[row, j] += p * MK[k, j]
            for j in range(d):
                a = S[j]
                out[row, j] = a * S[oy + j] - (1.0 + one_m * a) * out[row, j]
            return
        # General layouts. First a cheap upper bound on every logit: |Y_k| = |y - (1-tau) mu_k|
        # (a rotation) and c_kj <= c at the largest eigenvalue. The component with the
        # highest bound is computed exactly first; any other whose bound lies below the
        # best exact logit - _SKIP_LOGIT is dropped before its rotation is computed (far
        # from the data most components are). The bounds are computed only while they can
        # drop a component (flag S[oy + d], see the end of the loop over components).
        # Whether a component is dropped never changes the result: a dropped one would
        # get weight 0 in the softmax anyway (its logit <= its bound < best - _SKIP_LOGIT).
        # scratch: upper bounds in S[ol + K:2K], log w_k - logdet_k / 2 in S[ol + 2K:3K]
        # (offsets, not slices: a slice costs reference counting in the hot loop)
        use_bounds = S[oy + d] != 0.0
        # |Y_k|^2 and the log-determinants for four components at a time in local
        # accumulators (KT[i] = mu^T and KT[d + j] = lam^T rows, so the four run along a row
        # and share a vector register); the chains through memory of a loop over all k
        # innermost cost about 8 % of an evaluation in 16-D. Each sum runs over i, j in order.
        k0 = 0
        while k0 + 4 <= K:
            if use_bounds:
                b0 = 0.0
                b1 = 0.0
                b2 = 0.0
                b3 = 0.0
                for i in range(d):
                    yi = S[oy + i]
                    e0 = yi - one_m * KT[i, k0]
                    e1 = yi - one_m * KT[i, k0 + 1]
                    e2 = yi - one_m * KT[i, k0 + 2]
                    e3 = yi - one_m * KT[i, k0 + 3]
                    b0 += e0 * e0
                    b1 += e1 * e1
                    b2 += e2 * e2
                    b3 += e3 * e3
                S[ol + K + k0] = b0
                S[ol + K + k0 + 1] = b1
                S[ol + K + k0 + 2] = b2
                S[ol + K + k0 + 3] = b3
            if logdet_mode == _LOGDET_PRODUCT:
                b0 = 1.0
                b1 = 1.0
                b2 = 1.0
                b3 = 1.0
                for j in range(d):
                    b0 *= one_m2 * KT[d + j, k0] + tau2
                    b1 *= one_m2 * KT[d + j, k0 + 1] + tau2
                    b2 *= one_m2 * KT[d + j, k0 + 2] + tau2
                    b3 *= one_m2 * KT[d + j, k0 + 3] + tau2
                S[ol + 2 * K + k0] = b0
                S[ol + 2 * K + k0 + 1] = b1
                S[ol + 2 * K + k0 + 2] = b2
                S[ol + 2 * K + k0 + 3] = b3
            k0 += 4
        for k in range(k0, K):  # the last K % 4 components
            S[ol + K + k] = 0.0
            S[ol + 2 * K + k] = 1.0
        if use_bounds:
            for i in range(d):
                yi = S[oy + i]
                for k in range(k0, K):
                    e = yi - one_m * KT[i, k]
                    S[ol + K + k] += e * e
        if logdet_mode == _LOGDET_PRODUCT:  # one log of a product that stays in range
            for j in range(d):
                for k in range(k0, K):
                    S[ol + 2 * K + k] *= one_m2 * KT[d + j, k] + tau2
            for k in range(K):
                S[ol + 2 * K + k] = math.log(S[ol + 2 * K + k])
        else:
            for k in range(K):
                S[ol + 2 * K + k] = 0.0
            if logdet_mode == _LOGDET_SUM:
                for j in range(d):
                    for k in range(K):
                        S[ol + 2 * K + k] += math.log(one_m2 * KT[d + j, k] + tau2)
        first = 0
        for k in range(K):
            S[ol + 2 * K + k] = KT[2 * d, k] - 0.5 * S[ol + 2 * K + k]
            if use_bounds:
                S[ol + K + k] = S[ol + 2 * K + k] - 0.5 * S[ol + K + k] / (one_m2 * KT[2 * d + 1, k] + tau2)
                if S[ol + K + k] > S[ol + K + first]:
                    first = k
        for step in range(K):
            k = first if step == 0 else (step - 1 if step <= first else step)
            if use_bounds and step > 0 and S[ol + K + k] < best - _SKIP_LOGIT:
                S[ol + k] = -np.inf
                continue
            o = k * d
            # 1 / c_kj, first: the divisions (four to a vector instruction) then overlap with
            # the rotation. Unsigned indices: numba wraps a negative signed index, and that
            # check per element kept loops like this from vectorising (uint64 + int64 gives a
            # float in numba, hence np.uint64 on every term)
            u_row = np.uint64(oc + o)
            for j in range(d):
                S[u_row + np.uint64(j)] = 1.0 / (one_m2 * MK[K + k, np.uint64(j)] + tau2)
            if layout == _DIAG:
                for j in range(d):
                    S[o + j] = S[oy + j] - one_m * MK[k, j]
            else:
                # Y = Q_k^T y - (1 - tau) Q_k^T mu_k. Sixteen (then four) outputs at a time in local
                # accumulators: each Y_j still sums i = 0..d-1 in order (the bits of a dot
                # product), and the independent chains vectorise (SLP) without
                # reassociation, i.e. without fast-math
                base = k * d
                j = 0
                while j + 16 <= d:
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    a4 = 0.0
                    a5 = 0.0
                    a6 = 0.0
                    a7 = 0.0
                    a8 = 0.0
                    a9 = 0.0
                    a10 = 0.0
                    a11 = 0.0
                    a12 = 0.0
                    a13 = 0.0
                    a14 = 0.0
                    a15 = 0.0
                    # unsigned indices (see 1 / c_kj above): the row and the
                    # sixteen columns, hoisted out of the loop over i
                    c0 = np.uint64(j + 0)
                    c1 = np.uint64(j + 1)
                    c2 = np.uint64(j + 2)
                    c3 = np.uint64(j + 3)
                    c4 = np.uint64(j + 4)
                    c5 = np.uint64(j + 5)
                    c6 = np.uint64(j + 6)
                    c7 = np.uint64(j + 7)
                    c8 = np.uint64(j + 8)
                    c9 = np.uint64(j + 9)
                    c10 = np.uint64(j + 10)
                    c11 = np.uint64(j + 11)
                    c12 = np.uint64(j + 12)
                    c13 = np.uint64(j + 13)
                    c14 = np.uint64(j + 14)
                    c15 = np.uint64(j + 15)
                    u_base = np.uint64(base)
                    u_y = np.uint64(oy)
                    for i in range(d):
                        yi = S[u_y + np.uint64(i)]
                        ri = u_base + np.uint64(i)
                        a0 += QQ[ri, c0] * yi
                        a1 += QQ[ri, c1] * yi
                        a2 += QQ[ri, c2] * yi
                        a3 += QQ[ri, c3] * yi
                        a4 += QQ[ri, c4] * yi
                        a5 += QQ[ri, c5] * yi
                        a6 += QQ[ri, c6] * yi
                        a7 += QQ[ri, c7] * yi
                        a8 += QQ[ri, c8] * yi
                        a9 += QQ[ri, c9] * yi
                        a10 += QQ[ri, c10] * yi
                        a11 += QQ[ri, c11] * yi
                        a12 += QQ[ri, c12] * yi
                        a13 += QQ[ri, c13] * yi
                        a14 += QQ[ri, c14] * yi
                        a15 += QQ[ri, c15] * yi
                    S[o + j] = a0 - one_m * MK[2 * K + k, j]
                    S[o + j + 1] = a1 - one_m * MK[2 * K + k, j + 1]
                    S[o + j + 2] = a2 - one_m * MK[2 * K + k, j + 2]
                    S[o + j + 3] = a3 - one_m * MK[2 * K + k, j + 3]
                    S[o + j + 4] = a4 - one_m * MK[2 * K + k, j + 4]
                    S[o + j + 5] = a5 - one_m * MK[2 * K + k, j + 5]
                    S[o + j + 6] = a6 - one_m * MK[2 * K + k, j + 6]
                    S[o + j + 7] = a7 - one_m * MK[2 * K + k, j + 7]
                    S[o + j + 8] = a8 - one_m * MK[2 * K + k, j + 8]
                    S[o + j + 9] = a9 - one_m * MK[2 * K + k, j + 9]
                    S[o + j + 10] = a10 - one_m * MK[2 * K + k, j + 10]
                    S[o + j + 11] = a11 - one_m * MK[2 * K + k, j + 11]
                    S[o + j + 12] = a12 - one_m * MK[2 * K + k, j + 12]
                    S[o + j + 13] = a13 - one_m * MK[2 * K + k, j + 13]
                    S[o + j + 14] = a14 - one_m * MK[2 * K + k, j + 14]
                    S[o + j + 15] = a15 - one_m * MK[2 * K + k, j + 15]
                    j += 16
                while j + 4 <= d:
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    for i in range(d):
                        yi = S[oy + i]
                        row_i = base + i
                        a0 += QQ[row_i, j] * yi
                        a1 += QQ[row_i, j + 1] * yi
                        a2 += QQ[row_i, j + 2] * yi
                        a3 += QQ[row_i, j + 3] * yi
                    S[o + j] = a0 - one_m * MK[2 * K + k, j]
                    S[o + j + 1] = a1 - one_m * MK[2 * K + k, j + 1]
                    S[o + j + 2] = a2 - one_m * MK[2 * K + k, j + 2]
                    S[o + j + 3] = a3 - one_m * MK[2 * K + k, j + 3]
                    j += 4
                while j < d:
                    a0 = 0.0
                    for i in range(d):
                        a0 += QQ[base + i, j] * S[oy + i]
                    S[o + j] = a0 - one_m * MK[2 * K + k, j]
                    j += 1
            # the quadratic form sum_j Y_kj^2 / c_kj in four partial sums (j mod 4), added as
            # (0 + 2) + (1 + 3): a vector register's lanes, so the loop vectorises (about 10 %
            # faster than one chain over j)
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            j = 0
            while j + 4 <= d:
                u_y = np.uint64(o + j)
                u_c = np.uint64(oc + o + j)
                y0 = S[u_y]
                y1 = S[u_y + np.uint64(1)]
                y2 = S[u_y + np.uint64(2)]
                y3 = S[u_y + np.uint64(3)]
                s0 += y0 * y0 * S[u_c]
                s1 += y1 * y1 * S[u_c + np.uint64(1)]
                s2 += y2 * y2 * S[u_c + np.uint64(2)]
                s3 += y3 * y3 * S[u_c + np.uint64(3)]
                j += 4
            while j < d:
                s0 += S[o + j] * S[o + j] * S[oc + o + j]
                j += 1
            quad = (s0 + s2) + (s1 + s3)
            lk = S[ol + 2 * K + k] - 0.5 * quad
            S[ol + k] = lk
            best = max(best, lk)
        # bounds for the next evaluation (the same point, nearby y and tau) only if one of
        # the logits here lies within _BOUND_MARGIN of the cut (or below it, or was dropped)
        low = best
        for k in range(K):
            low = min(low, S[ol + k])
        S[oy + d] = 1.0 if low < best - (_SKIP_LOGIT - _BOUND_MARGIN) else 0.0
        _softmax_inplace(S, ol, best, K)
        for i in range(d):
            out[row, i] = 0.0
        for k in range(K):
            p = S[ol + k]
            if p == 0.0:
                continue
            o = k * d
            # pi_k a_kj Y_kj, a_kj = (tau - (1 - tau) lam_kj) / c_kj, only for the components
            # that carry weight (1 / c_kj is in the scratch; unsigned indices as above)
            u_y = np.uint64(o)
            u_c = np.uint64(oc + o)
            for j in range(d):
                u_j = np.uint64(j)
                S[u_c + u_j] = ((tau - one_m * MK[K + k, u_j]) * S[u_c + u_j]) * (p * S[u_y + u_j])
            if layout == _DIAG:
                for i in range(d):
                    out[row, i] += S[oc + o + i] - p * MK[k, i]
            else:  # Q_k (pi_k a_k Y_k), sixteen, then four outputs at a time (see above)
                i = 0
                while i + 16 <= d:
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    a4 = 0.0
                    a5 = 0.0
                    a6 = 0.0
                    a7 = 0.0
                    a8 = 0.0
                    a9 = 0.0
                    a10 = 0.0
                    a11 = 0.0
                    a12 = 0.0
                    a13 = 0.0
                    a14 = 0.0
                    a15 = 0.0
                    # unsigned indices, as in the forward rotation
                    c0 = np.uint64(i + 0)
                    c1 = np.uint64(i + 1)
                    c2 = np.uint64(i + 2)
                    c3 = np.uint64(i + 3)
                    c4 = np.uint64(i + 4)
                    c5 = np.uint64(i + 5)
                    c6 = np.uint64(i + 6)
                    c7 = np.uint64(i + 7)
                    c8 = np.uint64(i + 8)
                    c9 = np.uint64(i + 9)
                    c10 = np.uint64(i + 10)
                    c11 = np.uint64(i + 11)
                    c12 = np.uint64(i + 12)
                    c13 = np.uint64(i + 13)
                    c14 = np.uint64(i + 14)
                    c15 = np.uint64(i + 15)
                    u_rows = np.uint64(KD + o)
                    u_c = np.uint64(oc + o)
                    for j in range(d):
                        cj = S[u_c + np.uint64(j)]
                        rj = u_rows + np.uint64(j)
                        a0 += QQ[rj, c0] * cj
                        a1 += QQ[rj, c1] * cj
                        a2 += QQ[rj, c2] * cj
                        a3 += QQ[rj, c3] * cj
                        a4 += QQ[rj, c4] * cj
                        a5 += QQ[rj, c5] * cj
                        a6 += QQ[rj, c6] * cj
                        a7 += QQ[rj, c7] * cj
                        a8 += QQ[rj, c8] * cj
                        a9 += QQ[rj, c9] * cj
                        a10 += QQ[rj, c10] * cj
                        a11 += QQ[rj, c11] * cj
                        a12 += QQ[rj, c12] * cj
                        a13 += QQ[rj, c13] * cj
                        a14 += QQ[rj, c14] * cj
                        a15 += QQ[rj, c15] * cj
                    out[row, i] += a0 - p * MK[k, i]
                    out[row, i + 1] += a1 - p * MK[k, i + 1]
                    out[row, i + 2] += a2 - p * MK[k, i + 2]
                    out[row, i + 3] += a3 - p * MK[k, i + 3]
                    out[row, i + 4] += a4 - p * MK[k, i + 4]
                    out[row, i + 5] += a5 - p * MK[k, i + 5]
                    out[row, i + 6] += a6 - p * MK[k, i + 6]
                    out[row, i + 7] += a7 - p * MK[k, i + 7]
                    out[row, i + 8] += a8 - p * MK[k, i + 8]
                    out[row, i + 9] += a9 - p * MK[k, i + 9]
                    out[row, i + 10] += a10 - p * MK[k, i + 10]
                    out[row, i + 11] += a11 - p * MK[k, i + 11]
                    out[row, i + 12] += a12 - p * MK[k, i + 12]
                    out[row, i + 13] += a13 - p * MK[k, i + 13]
                    out[row, i + 14] += a14 - p * MK[k, i + 14]
                    out[row, i + 15] += a15 - p * MK[k, i + 15]
                    i += 16
                while i + 4 <= d:
                    a0 = 0.0
                    a1 = 0.0
                    a2 = 0.0
                    a3 = 0.0
                    for j in range(d):
                        cj = S[oc + o + j]
                        row_j = o + j
                        a0 += QQ[KD + row_j, i] * cj
                        a1 += QQ[KD + row_j, i + 1] * cj
                        a2 += QQ[KD + row_j, i + 2] * cj
                        a3 += QQ[KD + row_j, i + 3] * cj
                    out[row, i] += a0 - p * MK[k, i]
                    out[row, i + 1] += a1 - p * MK[k, i + 1]
                    out[row, i + 2] += a2 - p * MK[k, i + 2]
                    out[row, i + 3] += a3 - p * MK[k, i + 3]
                    i += 4
                while i < d:
                    a0 = 0.0
                    for j in range(d):
                        a0 += QQ[KD + o + j, i] * S[oc + o + j]
                    out[row, i] += a0 - p * MK[k, i]
                    i += 1

    @njit(cache=True)
    def _velocity_many(y, tau, args, out):
        KT, MK, QQ, layout, logdet_mode = args
        n, d = y.shape
        K = MK.shape[0] // 3
        S = np.empty((2 * K + 1) * d + 3 * K + 1)
        oy = _scratch_offsets(K, d)[2]
        for p in range(n):
            for i in range(d):
                S[oy + i] = y[p, i]
            S[oy + d] = 1.0
            _velocity(tau, KT, MK, QQ, layout, logdet_mode, S, out, p, d)


def velocity(gm, y: torch.Tensor, tau: float) -> torch.Tensor:
    """The kernel's v(y, tau) for CPU float64 ``y`` (n, d): to test it against ``fields``."""
    out = np.empty(tuple(y.shape))
    with _LOCK, _slp_vectorization():
        _velocity_many(np.ascontiguousarray(y.numpy()), float(tau), _mixture_arrays(gm), out)
    return torch.from_numpy(out)


def _mixture_arrays(gm):
    """The kernel's parameter tuple for ``gm``, cached on the mixture."""
    cached = getattr(gm, "_kernel_args", None)
    if cached is not None:
        return cached
    covs = gm.covs.numpy()
    K, d = gm.K, gm.d
    off = covs - np.einsum("kii->ki", covs)[:, :, None] * np.eye(d)
    if np.all(off == 0.0):
        lam = np.ascontiguousarray(np.einsum("kii->ki", covs).clip(min=0.0))
        Q = np.broadcast_to(np.eye(d), (K, d, d))
        layout = _SHARED if np.all(lam == lam[0]) else _DIAG
    else:
        lam = np.ascontiguousarray(gm.eigvals.numpy())
        Q = gm.eigvecs.numpy()  # Q[k] = Q_k, columns are eigenvectors
        layout = _FULL
    q_rows = np.ascontiguousarray(Q.reshape(K * d, d))  # [k*d + i, j] = Q_k[i, j]
    q_cols = np.ascontiguousarray(Q.transpose(0, 2, 1).reshape(K * d, d))  # [k*d + j, i] = Q_k[i, j]
    mu = np.ascontiguousarray(gm.means.numpy())
    muQ = np.ascontiguousarray(np.einsum("ki,kij->kj", mu, Q))  # Q_k^T mu_k
    sorted_lam = np.sort(lam, axis=1)
    if np.all(sorted_lam == sorted_lam[0]):
        logdet_mode = _LOGDET_CANCELS
    else:
        # c = (1-tau)^2 lam + tau^2 lies in [lam / (1 + lam), max(lam, 1)] for all tau,
        # so the product over coordinates is bounded by these products
        with np.errstate(divide="ignore"):
            low = np.log(lam / (1 + lam)).sum(axis=1).min()
        high = np.log(np.maximum(lam, 1.0)).sum(axis=1).max()
        logdet_mode = _LOGDET_PRODUCT if (low > -600 and high < 600) else _LOGDET_SUM
    # packed in three arrays (see _velocity): KT (2d + 2, K) = [mu^T; lam^T; log w; max lam],
    # MK (3K, d) = [mu; lam; Q_k^T mu_k], QQ (2Kd, d) = [Q rows; Q^T rows]
    KT = np.ascontiguousarray(np.concatenate([mu.T, lam.T, np.log(gm.weights.numpy())[None], lam.max(axis=1)[None]]))
    MK = np.ascontiguousarray(np.concatenate([mu, lam, muQ]))
    QQ = np.ascontiguousarray(np.concatenate([q_rows, q_cols]))
    args = (KT, MK, QQ, layout, logdet_mode)
    gm._kernel_args = args
    return args
