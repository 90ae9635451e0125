"""mfverify: a numerical verification testbed for MeanFlow and its relatives.

Conventions (docs/MATH.md §1): data at t = 0, noise at t = 1, argument order
``(x, r, t)`` with ``r <= t``.

Importing mfverify pins MKL's code path to AVX2 (``MKL_CBWR=AVX2``) on CPUs that have
AVX2, unless ``MKL_CBWR`` is set already: MKL otherwise picks its kernels by CPU
(AVX-512 ones on CPUs that have them), and trained numbers then differ between
machines in their last bits, amplified up to 1e-3 relative by objectives with
second-order gradients (``docs/reproducibility.md``). The pin takes effect where
mfverify is imported before torch's first MKL call (its command lines do that).
"""

import os as _os

__version__ = "0.1.0"


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " avx2" in line
    except OSError:
        pass
    return False


if "MKL_CBWR" not in _os.environ and _cpu_has_avx2():
    _os.environ["MKL_CBWR"] = "AVX2"
