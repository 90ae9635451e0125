"""The DOP853 error norm and Hairer's PI step-size controller, written once for the compiled
kernels (``stepper`` for values, ``tangent`` with the variational equation), inlined into each.

They are ``truth.solver``'s, operation for operation (the same bits): the combined 5th/3rd
order error ``err = h e5 / sqrt((e5 + 0.01 e3) n)`` of the scaled error sums ``e5, e3`` over
``n`` components, and the factor ``clip(safety err^(-1/8 + beta/5) err_old^beta, 1/3, 6)``,
at most 1 after a rejected step. ``truth.solver`` keeps its own vectorised form: numba
compiles scalar code on numpy arrays and cannot run the torch one (the constants are shared,
``numba_setup.CONTROL``).
"""

from __future__ import annotations

import math

from mfverify.truth.compiled.numba_setup import numba

if numba is not None:
    from numba import njit

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def error_norm(h, e5, e3, n):
        """``h e5 / sqrt((e5 + 0.01 e3) n)`` (0 where both sums vanish)."""
        denom = (e5 + 0.01 * e3) * n
        return h * e5 / math.sqrt(max(denom, 1e-300)) if denom > 0 else 0.0

    @njit(cache=True, nogil=True, error_model="numpy", inline="always")
    def step_factor(err, err_old, ctrl):
        """``(factor, accepted)``: the next step is ``h factor``; ``ctrl = (beta, safety, fac_min, fac_max)``."""
        beta, safety, fac_min, fac_max = ctrl
        finite = math.isfinite(err)
        ok = finite and err <= 1.0
        if err == 0.0:
            factor = fac_max
        elif not finite:
            factor = fac_min
        else:
            pi = max(err, 1e-300) ** (-1.0 / 8.0 + 0.2 * beta) * err_old**beta
            factor = min(max(safety * pi, fac_min), fac_max)
        if not ok:
            factor = min(factor, 1.0)
        return factor, ok
