"""What a study records of its environment (``env.json``): versions, the CPU, torch's CPU
capability, the numeric environment variables, the device and the resolved configuration."""

from __future__ import annotations

import os
import platform
import sys

import torch

from mfverify.study.config import Study, as_dict
from mfverify.train import resolve_device

# environment variables that change which CPU kernels run, hence the trained numbers' bits
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str):
    try:
        return __import__(module).__version__
    except ImportError:  # pragma: no cover
        return None


def environment(study: Study) -> dict:
    import numpy
    import scipy

    import mfverify

    try:
        import ot

        pot = ot.__version__
    except ImportError:  # pragma: no cover
        pot = None
    device = resolve_device(study.train.device)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numeric_env": {k: os.environ.get(k) for k in NUMERIC_ENV},
        "mfverify": mfverify.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pot": pot,
        "numba": _version("numba"),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in as_dict(study).items()},
    }
