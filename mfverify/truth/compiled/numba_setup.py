"""numba for the compiled kernels: its import (optional), a fork-safe threading layer, the
lock that serialises calls, the SLP vectoriser for the kernels' own compilation, and the
constants the kernels share (the DOP853 tableau and step control of ``truth.solver``,
covariance layouts, log-determinant modes, status codes)."""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from mfverify.truth import solver

try:  # numba is a declared dependency; the torch route still works without it
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
else:
    # The study runs in forked processes, and GNU OpenMP (numba's 'omp' layer here)
    # deadlocks in a child forked after its pool started: ask for a fork-safe layer
    # unless the user chose one. The workqueue layer this may pick is not thread-safe,
    # so calls into the kernel are serialised by _LOCK.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "forksafe"
_LOCK = threading.Lock()


@contextlib.contextmanager
def _slp_vectorization():
    """numba compiles lazily, inside the first call: compile the kernel with LLVM's SLP
    vectoriser, which packs the independent accumulator chains of the rotations into
    SIMD registers (random16d about 1.5x faster). numba leaves SLP off by default
    (numba#8705: miscompilations elsewhere); the kernel's results are checked against
    the torch solver by the tests, and SLP without fast-math does not reorder any sum,
    so the bits equal those of the scalar build. Only the kernel's own compilation
    sees the setting (callers hold _LOCK)."""
    saved = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = int(SLP)
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = saved

_A = np.ascontiguousarray(solver._A.numpy())
_B = np.ascontiguousarray(solver._B.numpy())
_C = np.ascontiguousarray(solver._C.numpy())
_E3 = np.ascontiguousarray(solver._E3.numpy())
_E5 = np.ascontiguousarray(solver._E5.numpy())
SPECIALISE_D = 2  # dimensions up to this get a solver compiled for their d (short loops unroll; cached)
_BLOCK = 32  # points per parallel work item
_SMALL_D = 4  # up to this d the solver's stage sums run one coordinate at a time (in registers)
SLP = True  # compile with LLVM's SLP vectoriser (see _slp_vectorization); a test compares both builds
_SKIP_LOGIT = 50.0  # components with logit < max - 50 carry weight < 2e-22: left out
_BOUND_MARGIN = 10.0  # logit bounds are skipped after an evaluation whose logits all lay above max - 40

# step control (beta, safety, min factor, max factor), as solver.solve
CONTROL = (solver.PI_BETA, solver._SAFETY, solver._MIN_FACTOR, solver._MAX_FACTOR)

# how the log-determinant enters the logits
_LOGDET_CANCELS = 0  # every component has the same spectrum: it cancels in the softmax
_LOGDET_PRODUCT = 1  # log of the product over coordinates, which stays in range
_LOGDET_SUM = 2  # sum of logs (singular or extreme spectra)

# layouts of the covariances
_SHARED = 0  # diagonal, the same for every component
_DIAG = 1  # diagonal
_FULL = 2  # full: rotations by the eigenbases

# status codes per point
OK, TOO_MANY_STEPS, STEP_UNDERFLOW = 0, 1, 2


def available() -> bool:
    return numba is not None
