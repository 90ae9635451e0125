"""Compiled per-point DOP853 for the average velocity of a full Gaussian mixture (CPU), and its
tangents (the variational equation): the fast route of ``truth.ode``.

The same method as ``solver.solve`` on the right-hand side of ``ode.py``
(Dormand-Prince 8(5,3), Hairer's PI control with ``PI_BETA``, growth limits
1/3..6, ``max_step``, the same initial-step rule and error norm), written as one
loop per point and compiled with numba, with the mixture velocity inlined. Points
run in parallel over ``torch.get_num_threads()`` threads. This removes the per-
operation overhead of the batched torch solver, which dominates for small ``d``.

- ``numba_setup``: numba (optional), its threading layer, the lock, the SLP build, the
  shared constants (tableau, step control, layouts, status codes);
- ``field``: the mixture velocity ``v(y, tau)`` (as ``truth.fields``) and the packing of
  a mixture's parameters;
- ``stepper``: the per-point DOP853 and ``average_velocity`` (values);
- ``tangent``: the variational equation, ``average_velocity`` with tangents.

Shortcuts: diagonal covariances skip the rotations (one shared diagonal spectrum,
as in ring8, also shares c and a between components, with scalar code in 2-D); when
every component has the same eigenvalues the log-determinant cancels in the softmax;
components with ``logit_k < max - 50`` (weight below 2e-22 relative, far below the
1e-12 tolerances this serves) are left out of the sum, and for full covariances an
upper bound on the logit (from the largest eigenvalue) drops most of them before
their rotation is computed. A point's evaluations compute these bounds only while
they can drop a component (near the noise end every component counts). None of this
changes a bit of the result: a dropped component would get weight 0 anyway.

Measured (``benchmarks/truth_bench.py``, 2 threads): about 54k points/s on ring8 and
9.4-10k on random16d at the default tolerance.

``ode.py`` falls back to the torch solver for other devices, product mixtures, or when
numba is not installed.

numba's on-disk cache (``cache=True``) checks a compiled function against its own
source file only, while ``stepper``'s kernels inline ``field``'s: an edit of
``field.py`` would leave a stale ``stepper`` build in use. So the caches of this
package are dropped as one whenever any of its sources changes (``_drop_stale_caches``).

Imports: ``truth.solver`` (the tableau) and ``cases`` only.
"""

from __future__ import annotations

import os
from pathlib import Path


def _drop_stale_caches(here: Path = Path(__file__).parent) -> None:
    """Remove this package's numba cache files (``__pycache__/*.nbi, *.nbc``) unless they were
    written for the present sources (a stamp of every source's mtime and size). A folder
    that cannot be written is left alone (numba then caches elsewhere, per user, and an
    installed package's sources do not change)."""
    stamp = ";".join(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}" for p in sorted(here.glob("*.py")))
    cache = here / "__pycache__"
    marker = cache / "numba-sources.stamp"
    try:
        if marker.read_text() == stamp:
            return
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for f in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
            f.unlink(missing_ok=True)
        tmp = cache / f".numba-sources.stamp.{os.getpid()}.tmp"
        tmp.write_text(stamp)
        os.replace(tmp, marker)
    except OSError:
        pass


_drop_stale_caches()
