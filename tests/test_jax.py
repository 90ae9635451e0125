"""Runs ``tests/jax_checks.py`` (the JAX exact model) in a separate process.

JAX starts threads when imported, and the rest of the suite forks worker processes
(the study's process executors): a process holding both can deadlock (JAX warns so).
So the JAX tests run in a child pytest of their own; their output is shown on failure.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # spawns processes
def test_the_jax_exact_model_in_its_own_process():
    if not os.environ.get("CI"):
        pytest.importorskip("jax", reason="JAX is not installed (pip install -e \".[jax]\")")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                          "error::RuntimeWarning", str(ROOT / "tests" / "jax_checks.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]
