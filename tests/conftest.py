"""Hypothesis profiles: ``ci`` (default, fast) and ``thorough``.

Select with ``MFVERIFY_HYPOTHESIS_PROFILE=thorough pytest``.
"""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=12,
    deadline=None,  # ODE solves vary in cost; the suite's total time is what CI bounds
    derandomize=True,  # CI is reproducible; the thorough profile explores
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("MFVERIFY_HYPOTHESIS_PROFILE", "ci"))

torch.set_default_dtype(torch.float64)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: no oversubscription on CI's 2 cores
