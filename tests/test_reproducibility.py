"""Cross-machine reproducibility: MKL's code path pinned, and recorded with the CPU."""

import json
import os
import subprocess
import sys

import pytest

from mfverify import _cpu_has_avx2


def _env_without(*names):
    return {k: v for k, v in os.environ.items() if k not in names}


@pytest.mark.slow  # spawns processes
@pytest.mark.skipif(not _cpu_has_avx2(), reason="the pin applies to CPUs with AVX2 only")
def test_importing_mfverify_pins_mkl_to_avx2_unless_the_user_chose():
    code = "import mfverify, os; print(os.environ.get('MKL_CBWR'))"
    pinned = subprocess.run([sys.executable, "-c", code], env=_env_without("MKL_CBWR"), capture_output=True,
                            text=True, check=True).stdout.strip()
    assert pinned == "AVX2"
    chosen = subprocess.run([sys.executable, "-c", code], env={**_env_without("MKL_CBWR"), "MKL_CBWR": "COMPATIBLE"},
                            capture_output=True, text=True, check=True).stdout.strip()
    assert chosen == "COMPATIBLE"


def test_env_json_records_what_decides_the_bits(tmp_path):
    from mfverify.study.config import load_study
    from mfverify.study.environment import environment

    from .test_study import TINY

    path = tmp_path / "s.toml"
    path.write_text(TINY)
    env = environment(load_study(path))
    assert env["cpu_model"] and env["torch_cpu_capability"]
    assert env["numeric_env"]["MKL_CBWR"] == os.environ.get("MKL_CBWR")
    json.dumps(env)  # writable as JSON
