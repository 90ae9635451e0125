"""Compiled per-point DOP853 for the average velocity *and its tangents* (the variational
equation of ``ode.py``) of a full, non-singular Gaussian mixture on the CPU.

The state of a point is ``(z, W_1 .. W_m)`` ((1 + m) d numbers): ``z`` as in ``stepper.py`` and
one tangent ``W_j = dz`` per direction ``(dx_j, dr_j, dt_j)``, with

    dW_j/ds = J_y v(y, tau) . dy_j + d_tau v(y, tau) dtau_j,
    dy_j = dx_j - (dt_j - dr_j) z - (t - r) W_j,   dtau_j = dt_j - s (dt_j - dr_j),

integrated with the flow under one error control over the whole state (as the torch solver
does: the same method, tableau, PI control, initial step and error norm). ``J_y v`` and
``d_tau v`` are formed once per evaluation in closed form, in the eigenbasis of each
component (``Y_k = Q_k^T y - (1 - tau) Q_k^T mu_k``, ``c_kj = (1-tau)^2 lam_kj + tau^2``,
``a_kj = (tau - (1-tau) lam_kj) / c_kj``, ``v_k = Q_k (a_k Y_k) - mu_k``)::

    J_y v   = sum_k pi_k Q_k diag(a_k) Q_k^T + sum_k pi_k (v_k - v) (g_k - g)^T,  g_k = -Q_k (Y_k / c_k)
    d_tau v = sum_k pi_k Q_k (a'_k Y_k + a_k Q_k^T mu_k) + sum_k pi_k (v_k - v) (l'_k - l')

with ``a'_kj = ((1 + lam_kj) - a_kj c'_kj) / c_kj``, ``c'_kj = 2 tau - 2 (1 - tau) lam_kj`` and
``l'_k = d_tau logit_k = -sum_j (Y_kj (Q_k^T mu_k)_j / c_kj - Y_kj^2 c'_kj / (2 c_kj^2) + c'_kj / (2 c_kj))``;
``g`` and ``l'`` are the pi-weighted means. Components whose logit lies more than 50 below the
largest carry weight < 2e-22 and are left out, as in ``stepper.py``. Only components with
weight enter the d^3 part, so the cost per evaluation is about ``K d^2 + K_active d^3 + m d^2``
against the values' ``K d^2 + K_active d^2``. Three paths:

- a diagonal covariance shared by every component (``_SHARED``, ring8): ``a`` and ``c``
  are common and ``J_y v = diag(a) - (1 - tau) diag(1 + (1 - tau) a) Cov_pi(mu) diag(1/c)``
  (``_fields_shared``, ``K d^2``);
- ``d >= _BLAS_FROM`` (8): the d^3 part and ``J dy`` as matrix products through BLAS
  (``_fields_blas``; about 4x faster than the loops in 16-D);
- otherwise loops (``_fields``).

The sums are those of the formulas above, in an order that differs between the paths (they
agree to round-off, tested against each other through the torch solver).

Measured (``benchmarks/truth_bench.py --only-derivatives --repeats 5``, 2 threads, d + 2
tangents, ratio to values on the same points in the same run; the machines are noisy, three
runs or more of this version): ring8 8400-10900 points/s, 4.4-6.0x below values; random16d 1100-1160
points/s, 8.1-9.2x below values (the torch solver: 8-11 points/s); error against a solve at
1e-13: 9e-13 and 7e-11.
``ode.py`` routes tangents here where ``applies``; the torch solver remains the reference
(tests compare the two, and both against a tighter solve).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mfverify.truth.compiled import numba_setup as setup
from mfverify.truth.compiled.field import _mixture_arrays

numba = setup.numba
OK, TOO_MANY_STEPS, STEP_UNDERFLOW = setup.OK, setup.TOO_MANY_STEPS, setup.STEP_UNDERFLOW
USE = True  # tangents of full non-singular mixtures on CPU go through this kernel


def applies(mixture, x) -> bool:
    from mfverify.cases import GaussianMixture

    return (USE and setup.available() and isinstance(mixture, GaussianMixture) and x.device.type == "cpu"
            and not mixture.is_singular)


if numba is not None:
    from numba import njit, prange

    from mfverify.truth.compiled.controller import error_norm, step_factor

    _SKIP = setup._SKIP_LOGIT
    _BLAS_FROM = 8  # from this dimension on the d^3 part goes through BLAS (below, loops are faster)

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def _posterior(tau, KT, MK, cancels, d, K, Yk, ck, ak, lg, lt):
        """From ``Yk = Q_k^T y``: ``Y_k = Q_k^T y - (1 - tau) Q_k^T mu_k`` (in ``Yk``), ``1 / c_kj``
        (``ck``), ``a_kj`` (``ak``), the posterior weights ``pi_k`` (``lg``; 0 below the skip) and
        ``l'_k = d_tau logit_k`` (``lt``)."""
        one_m = 1.0 - tau
        one_m2 = one_m * one_m
        tau2 = tau * tau
        best = -np.inf
        for k in range(K):
            quad = 0.0
            dl = 0.0
            det = 1.0
            for j in range(d):
                muq = MK[2 * K + k, j]
                Y = Yk[k, j] - one_m * muq
                Yk[k, j] = Y
                lam = MK[K + k, j]
                c = one_m2 * lam + tau2
                ic = 1.0 / c
                cp = 2.0 * tau - 2.0 * one_m * lam
                ck[k, j] = ic
                ak[k, j] = (tau - one_m * lam) * ic
                quad += Y * Y * ic
                det *= c
                dl -= Y * muq * ic - 0.5 * Y * Y * cp * ic * ic + 0.5 * cp * ic
            if cancels:  # every component has the same spectrum: log det is common and cancels
                logdet = 0.0
            elif det > 1e-300 and det < 1e300:
                logdet = math.log(det)
            else:  # an extreme spectrum: the sum of logs stays in range
                logdet = 0.0
                for j in range(d):
                    logdet += math.log(one_m2 * MK[K + k, j] + tau2)
            lk = KT[2 * d, k] - 0.5 * quad - 0.5 * logdet
            lg[k] = lk
            lt[k] = dl
            if lk > best:
                best = lk
        total = 0.0
        for k in range(K):
            if lg[k] < best - _SKIP:
                lg[k] = 0.0
            else:
                e = math.exp(lg[k] - best)
                lg[k] = e
                total += e
        for k in range(K):
            lg[k] /= total

    @njit(cache=True, nogil=True, error_model="numpy")
    def _fields(tau, y, KT, MK, QQ, cancels, d, K, Yk, ck, ak, vk, gk, lg, lt, v, vt, JT, w3):
        """v, d_tau v and J_y v (transposed: ``JT[l, i] = dv_i / dy_l``) at (y, tau); the rest is
        scratch. Every inner loop runs over independent outputs (axpy form), so it vectorises
        without reassociating any sum (no fast-math, as in ``stepper.py``)."""
        KD = K * d
        one_m = 1.0 - tau
        for k in range(K):  # Y_k = Q_k^T y, row i of Q_k at a time
            base = k * d
            for j in range(d):
                Yk[k, j] = 0.0
            for i in range(d):
                c = y[i]
                for j in range(d):
                    Yk[k, j] += QQ[base + i, j] * c
        _posterior(tau, KT, MK, cancels, d, K, Yk, ck, ak, lg, lt)
        for i in range(d):
            v[i] = 0.0
            vt[i] = 0.0
            for l in range(d):
                JT[i, l] = 0.0
        ltbar = 0.0
        aY = w3[0]
        gY = w3[1]
        tY = w3[2]
        for k in range(K):
            p = lg[k]
            if p == 0.0:
                continue
            ltbar += p * lt[k]
            for j in range(d):
                Y = Yk[k, j]
                ic = ck[k, j]
                a = ak[k, j]
                lam = MK[K + k, j]
                cp = 2.0 * tau - 2.0 * one_m * lam
                aY[j] = a * Y
                gY[j] = -Y * ic
                tY[j] = ((1.0 + lam) - a * cp) * ic * Y + a * MK[2 * K + k, j]
            for i in range(d):
                vk[k, i] = -MK[k, i]
                gk[k, i] = 0.0
            cols = KD + k * d  # row KD + k d + j of QQ: column j of Q_k
            for j in range(d):
                ca = aY[j]
                cg = gY[j]
                ct = p * tY[j]
                cj = p * ak[k, j]
                for i in range(d):
                    q = QQ[cols + j, i]
                    vk[k, i] += q * ca
                    gk[k, i] += q * cg
                    vt[i] += q * ct
                for i in range(d):  # p a_kj q_j q_j^T (symmetric, so JT gets the same)
                    ci = cj * QQ[cols + j, i]
                    for l in range(d):
                        JT[i, l] += ci * QQ[cols + j, l]
            for i in range(d):
                v[i] += p * vk[k, i]
        # the softmax terms: sum_k pi_k (v_k - v)(g_k - g)^T and sum_k pi_k (v_k - v)(l'_k - l')
        gbar = w3[0]
        for l in range(d):
            gbar[l] = 0.0
        for k in range(K):
            p = lg[k]
            if p != 0.0:
                for l in range(d):
                    gbar[l] += p * gk[k, l]
        for k in range(K):
            p = lg[k]
            if p == 0.0:
                continue
            dv = w3[1]
            for i in range(d):
                dv[i] = vk[k, i] - v[i]
            w = p * (lt[k] - ltbar)
            for i in range(d):
                vt[i] += w * dv[i]
            for l in range(d):
                c = p * (gk[k, l] - gbar[l])
                for i in range(d):
                    JT[l, i] += c * dv[i]

    @njit(cache=True, nogil=True, error_model="numpy")
    def _fields_blas(tau, y, KT, MK, QQ, cancels, d, K, Yk, ck, ak, vk, gk, lg, lt, v, vt, JT, w3, LT, R, W, VGT):
        """``_fields`` with the d^3 part as one matrix product (BLAS, through numba's ``np.dot``):
        ``JT = LT^T R`` with a row of ``LT`` per active eigenvector (``q_kj``) and per active
        component (``pi_k (g_k - g)``), the matching row of ``R`` ``pi_k a_kj q_kj`` and
        ``v_k - v``; and ``Q_k (a_k Y_k, -Y_k / c_k, t_k)`` as one product per component. The
        same sums as ``_fields`` in another order (they agree to round-off)."""
        KD = K * d
        one_m = 1.0 - tau
        np.dot(QQ[KD : 2 * KD], y, Yk.reshape(KD))  # Q_k^T y for every k at once
        _posterior(tau, KT, MK, cancels, d, K, Yk, ck, ak, lg, lt)
        for i in range(d):
            v[i] = 0.0
            vt[i] = 0.0
        ltbar = 0.0
        rows = 0
        for k in range(K):
            p = lg[k]
            if p == 0.0:
                continue
            ltbar += p * lt[k]
            for j in range(d):
                Y = Yk[k, j]
                ic = ck[k, j]
                a = ak[k, j]
                lam = MK[K + k, j]
                cp = 2.0 * tau - 2.0 * one_m * lam
                W[j, 0] = a * Y
                W[j, 1] = -Y * ic
                W[j, 2] = ((1.0 + lam) - a * cp) * ic * Y + a * MK[2 * K + k, j]
            np.dot(QQ[k * d : (k + 1) * d], W, VGT)  # Q_k (a Y, -Y / c, t)
            for i in range(d):
                vk[k, i] = VGT[i, 0] - MK[k, i]
                gk[k, i] = VGT[i, 1]
                vt[i] += p * VGT[i, 2]
                v[i] += p * vk[k, i]
            cols = KD + k * d  # row KD + k d + j of QQ: column j of Q_k
            for j in range(d):
                cj = p * ak[k, j]
                for i in range(d):
                    q = QQ[cols + j, i]
                    LT[rows, i] = q
                    R[rows, i] = cj * q
                rows += 1
        gbar = w3[0]
        for l in range(d):
            gbar[l] = 0.0
        for k in range(K):
            p = lg[k]
            if p != 0.0:
                for l in range(d):
                    gbar[l] += p * gk[k, l]
        for k in range(K):
            p = lg[k]
            if p == 0.0:
                continue
            w = p * (lt[k] - ltbar)
            for i in range(d):
                dv = vk[k, i] - v[i]
                vt[i] += w * dv
                R[rows, i] = dv
                LT[rows, i] = p * (gk[k, i] - gbar[i])
            rows += 1
        np.dot(LT[:rows].T, R[:rows], JT)

    @njit(cache=True, nogil=True, error_model="numpy")
    def _fields_shared(tau, y, KT, MK, d, K, lg, lt, v, vt, JT, w3, C):
        """``_fields`` for a diagonal covariance shared by every component (``_SHARED``):
        ``a``, ``c`` are common, ``g_k - g = (1 - tau) (mu_k - m) / c`` and
        ``v_k - v = -(1 + (1 - tau) a) (mu_k - m)`` with ``m = sum_k pi_k mu_k``, so

            J_y v   = diag(a) - (1 - tau) diag(1 + (1 - tau) a) Cov_pi(mu) diag(1 / c)
            d_tau v = a' (y - (1 - tau) m) + a m - (1 + (1 - tau) a) Cov_pi(l', mu),

        ``K d^2`` work instead of ``K d^3`` (covariances taken about the mean, two passes)."""
        one_m = 1.0 - tau
        one_m2 = one_m * one_m
        tau2 = tau * tau
        ic = w3[0]
        a = w3[1]
        cp = w3[2]
        for j in range(d):
            lam = MK[K, j]
            ic[j] = 1.0 / (one_m2 * lam + tau2)
            a[j] = (tau - one_m * lam) * ic[j]
            cp[j] = 2.0 * tau - 2.0 * one_m * lam
        best = -np.inf
        for k in range(K):
            quad = 0.0
            dl = 0.0
            for j in range(d):
                mu = MK[k, j]
                Y = y[j] - one_m * mu
                quad += Y * Y * ic[j]
                dl -= Y * mu * ic[j] - 0.5 * Y * Y * cp[j] * ic[j] * ic[j]  # the common -c'/(2c) left out
            lk = KT[2 * d, k] - 0.5 * quad
            lg[k] = lk
            lt[k] = dl
            if lk > best:
                best = lk
        total = 0.0
        for k in range(K):
            if lg[k] < best - _SKIP:
                lg[k] = 0.0
            else:
                e = math.exp(lg[k] - best)
                lg[k] = e
                total += e
        ltbar = 0.0
        for j in range(d):
            v[j] = 0.0  # the posterior mean of mu, first
        for k in range(K):
            p = lg[k] / total
            lg[k] = p
            if p != 0.0:
                ltbar += p * lt[k]
                for j in range(d):
                    v[j] += p * MK[k, j]
        for j in range(d):
            vt[j] = 0.0
            for l in range(d):
                C[j, l] = 0.0
        for k in range(K):
            p = lg[k]
            if p == 0.0:
                continue
            w = p * (lt[k] - ltbar)
            for j in range(d):
                dm = MK[k, j] - v[j]
                vt[j] += w * dm
                pj = p * dm
                for l in range(d):
                    C[j, l] += pj * (MK[k, l] - v[l])
        for i in range(d):
            m = v[i]
            b = 1.0 + one_m * a[i]
            ap = ((1.0 + MK[K, i]) - a[i] * cp[i]) * ic[i]
            vt[i] = ap * (y[i] - one_m * m) + a[i] * m - b * vt[i]
            for l in range(d):
                JT[l, i] = -one_m * b * C[i, l] * ic[l]
            JT[i, i] += a[i]
            v[i] = a[i] * y[i] - b * m

    @njit(cache=True, nogil=True, error_model="numpy")
    def _rhs(s, state, x, r, t, dx, dr, dt, m, args, scr, out, row):
        KT, MK, QQ, cancels, shared = args
        Yk, ck, ak, vk, gk, lg, lt, v, vt, JT, y, dy, w3, LT, R, W, VGT, DY, OM, CS = scr
        d = x.shape[0]
        K = MK.shape[0] // 3
        h = t - r
        for i in range(d):
            y[i] = x[i] - h * state[i]
        tau = t - s * h
        if shared:
            _fields_shared(tau, y, KT, MK, d, K, lg, lt, v, vt, JT, w3, CS)
        elif d >= _BLAS_FROM:
            _fields_blas(tau, y, KT, MK, QQ, cancels, d, K, Yk, ck, ak, vk, gk, lg, lt, v, vt, JT, w3, LT, R, W, VGT)
        else:
            _fields(tau, y, KT, MK, QQ, cancels, d, K, Yk, ck, ak, vk, gk, lg, lt, v, vt, JT, w3)
        for i in range(d):
            out[row, i] = v[i]
        if d >= _BLAS_FROM:
            for jj in range(m):
                dh = dt[jj] - dr[jj]
                o = (1 + jj) * d
                for i in range(d):
                    DY[jj, i] = dx[jj, i] - dh * state[i] - h * state[o + i]
            np.dot(DY[:m], JT, OM[:m])  # J dy for every tangent at once
            for jj in range(m):
                dtau = dt[jj] - s * (dt[jj] - dr[jj])
                o = (1 + jj) * d
                for i in range(d):
                    out[row, o + i] = vt[i] * dtau + OM[jj, i]
            return
        for jj in range(m):
            dh = dt[jj] - dr[jj]
            dtau = dt[jj] - s * dh
            o = (1 + jj) * d
            for i in range(d):
                dy[i] = dx[jj, i] - dh * state[i] - h * state[o + i]
            for i in range(d):
                out[row, o + i] = vt[i] * dtau
            for l in range(d):  # J dy as a sum of columns of J (rows of JT)
                c = dy[l]
                for i in range(d):
                    out[row, o + i] += JT[l, i] * c

    @njit(cache=True, nogil=True, error_model="numpy")
    def _solve_point(x, r, t, dx, dr, dt, h_max, rtol, atol, max_steps, ctrl, args, tab, scr, k_st, y, ynew, ytmp,
                     e5v, e3v):
        A, B, C, E3, E5 = tab
        m = dx.shape[0]
        q = y.shape[0]
        n_stages = B.shape[0]
        F1 = n_stages + 1
        for i in range(q):
            y[i] = 0.0
        s = 0.0
        _rhs(s, y, x, r, t, dx, dr, dt, m, args, scr, k_st, 0)
        evals = 1
        d0 = 0.0
        d1 = 0.0
        for i in range(q):
            sc = atol + rtol * abs(y[i])
            d0 += (y[i] / sc) ** 2
            d1 += (k_st[0, i] / sc) ** 2
        d0 = math.sqrt(d0 / q)
        d1 = math.sqrt(d1 / q)
        h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
        h0 = min(h0, 1.0)
        for i in range(q):
            ytmp[i] = y[i] + h0 * k_st[0, i]
        _rhs(s + h0, ytmp, x, r, t, dx, dr, dt, m, args, scr, k_st, F1)
        evals += 1
        d2 = 0.0
        for i in range(q):
            sc = atol + rtol * abs(y[i])
            d2 += ((k_st[F1, i] - k_st[0, i]) / sc) ** 2
        d2 = math.sqrt(d2 / q) / h0
        big = max(d1, d2)
        h1 = max(h0 * 1e-3, 1e-6) if big <= 1e-15 else (0.01 / max(big, 1e-300)) ** (1.0 / 8.0)
        h = h1 if d0 < 1e-5 else min(100 * h0, h1)
        h = min(max(h, 1e-12), 1.0)
        h = min(h, h_max)
        err_old = 1e-4
        accepted = 0
        rejected = 0
        steps = 0
        while True:
            h = min(h, 1.0 - s)
            for st in range(1, n_stages):
                for i in range(q):
                    ytmp[i] = 0.0
                for j in range(st):
                    a = A[st, j]
                    for i in range(q):
                        ytmp[i] += a * k_st[j, i]
                for i in range(q):
                    ytmp[i] = y[i] + h * ytmp[i]
                _rhs(s + C[st] * h, ytmp, x, r, t, dx, dr, dt, m, args, scr, k_st, st)
            for i in range(q):
                ynew[i] = 0.0
            for j in range(n_stages):
                b = B[j]
                for i in range(q):
                    ynew[i] += b * k_st[j, i]
            for i in range(q):
                ynew[i] = y[i] + h * ynew[i]
            last = h >= 1.0 - s
            s_new = 1.0 if last else s + h
            _rhs(s_new, ynew, x, r, t, dx, dr, dt, m, args, scr, k_st, n_stages)
            evals += n_stages
            for i in range(q):
                e5v[i] = 0.0
                e3v[i] = 0.0
            for j in range(n_stages + 1):
                c5 = E5[j]
                c3 = E3[j]
                for i in range(q):
                    e5v[i] += c5 * k_st[j, i]
                    e3v[i] += c3 * k_st[j, i]
            e5 = 0.0
            e3 = 0.0
            for i in range(q):
                sc = atol + rtol * max(abs(y[i]), abs(ynew[i]))
                e5 += (e5v[i] / sc) ** 2
                e3 += (e3v[i] / sc) ** 2
            err = error_norm(h, e5, e3, q)
            factor, ok = step_factor(err, err_old, ctrl)
            steps += 1
            if ok:
                accepted += 1
                s = s_new
                for i in range(q):
                    y[i] = ynew[i]
                    k_st[0, i] = k_st[n_stages, i]
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
    def _solve_all(x, r, t, dx, dr, dt, h_max, rtol, atol, max_steps, ctrl, args, tab, out, info):
        n, d = x.shape
        m = dx.shape[1]
        K = args[1].shape[0] // 3
        q = (1 + m) * d
        n_stages = tab[1].shape[0]
        n_blocks = (n + setup._BLOCK - 1) // setup._BLOCK
        for b in prange(n_blocks):
            scr = (np.empty((K, d)), np.empty((K, d)), np.empty((K, d)), np.empty((K, d)), np.empty((K, d)),
                   np.empty(K), np.empty(K), np.empty(d), np.empty(d), np.empty((d, d)), np.empty(d), np.empty(d),
                   np.empty((3, d)), np.empty((K * d + K, d)), np.empty((K * d + K, d)), np.empty((d, 3)),
                   np.empty((d, 3)), np.empty((m, d)), np.empty((m, d)), np.empty((d, d)))
            k_st = np.empty((n_stages + 2, q))
            ynew = np.empty(q)
            ytmp = np.empty(q)
            e5v = np.empty(q)
            e3v = np.empty(q)
            for p in range(b, n, n_blocks):
                status, acc, rej, ev = _solve_point(x[p], r[p], t[p], dx[p], dr[p], dt[p], h_max[p], rtol, atol,
                                                    max_steps, ctrl, args, tab, scr, k_st, out[p], ynew, ytmp, e5v, e3v)
                info[p, 0] = status
                info[p, 1] = acc
                info[p, 2] = rej
                info[p, 3] = ev


_NO_FUNCTORCH = getattr(torch._C, "_DisableFuncTorch", None)


def _numpy(a: torch.Tensor) -> np.ndarray:
    """A float64 tensor's values as a contiguous array (called with functorch disabled: inside a
    ``torch.func`` transform, as ``identities.ExactModel`` is called in ``torch.func.jvp``, a
    detached input is a wrapper without storage of its own, and ``clone`` there gives a plain one)."""
    return np.ascontiguousarray(a.detach().clone().contiguous().numpy())


def average_velocity(gm, x, r, t, tangent, h_max, *, rtol, atol, max_steps=100_000, stats=None):
    """``(u (n, d), du (n, m, d))`` for CPU float64 tensors; same contract as ``ode._solve``."""
    if _NO_FUNCTORCH is None:  # pragma: no cover
        return _average_velocity(gm, x, r, t, tangent, h_max, rtol, atol, max_steps, stats)
    with _NO_FUNCTORCH():  # inside a torch.func transform: plain tensors in and out (see _numpy)
        return _average_velocity(gm, x, r, t, tangent, h_max, rtol, atol, max_steps, stats)


def _average_velocity(gm, x, r, t, tangent, h_max, rtol, atol, max_steps, stats):
    dx, dr, dt = tangent
    n, d = x.shape
    m = dx.shape[1]
    out = np.zeros((n, (1 + m) * d))
    if n == 0:
        return torch.from_numpy(out[:, :d]), torch.from_numpy(out[:, d:]).view(n, m, d)
    info = np.zeros((n, 4), dtype=np.int64)
    KT, MK, QQ, layout, logdet_mode = _mixture_arrays(gm)
    cancels = logdet_mode == setup._LOGDET_CANCELS
    shared = layout == setup._SHARED
    tab = (setup._A, setup._B, setup._C, setup._E3, setup._E5)
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    c = _numpy
    with setup._LOCK:
        numba.set_num_threads(threads)
        _solve_all(c(x), c(r), c(t), c(dx), c(dr), c(dt), c(h_max), float(rtol), float(atol), int(max_steps),
                   setup.CONTROL, (KT, MK, QQ, cancels, shared), tab, out, info)
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
        raise RuntimeError(f"ODE step size underflowed at {bad.size} points (first: {first}): "
                           "the right-hand side is singular or not finite there")
    u = torch.from_numpy(out[:, :d].copy())
    du = torch.from_numpy(out[:, d:].copy()).view(n, m, d)
    return u, du
