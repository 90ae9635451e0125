"""Hypothesis profiles: ``ci`` (default, fast) and ``thorough``.

Select with ``MFVERIFY_HYPOTHESIS_PROFILE=thorough pytest``.
"""

import os

import pytest
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

# torch's default dtype stays float32, as users run it. A module of numerical truth says so with
# ``pytestmark = pytest.mark.float64``: its tests run with float64 as the default dtype, restored after.


@pytest.fixture(autouse=True)
def _float64_where_marked(request):
    if request.node.get_closest_marker("float64") is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: no oversubscription on CI's 2 cores
