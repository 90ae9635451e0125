"""The worked example of docs/examples runs as a user's own test suite would."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.mark.slow  # spawns processes
def test_the_worked_example_passes():
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_loss.py"],
        cwd=EXAMPLES, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout


def test_the_assertions_fail_with_the_numbers_on_a_broken_loss():
    import pytest

    from mfverify import objectives
    from mfverify.check.testing import assert_stationary

    from .public_losses import sign_error

    broken = objectives.Objective("sign_error", sign_error, quadratic_in_v_c=True)
    with pytest.raises(AssertionError, match=r"sign_error: stationary_at_exact_u failed: value [0-9.e-]+ against the rule"):
        assert_stationary(broken, "gauss2d_aniso")


def test_the_readme_batch_loss_is_the_example_file_and_passes_as_written():
    """README.md's first check quotes docs/examples/batch_loss.py; the loss passes, and with its
    stop-gradient removed it fails."""
    from mfverify.check.testing import assert_as_written

    source = (EXAMPLES / "batch_loss.py").read_text()
    readme = (EXAMPLES.parents[1] / "README.md").read_text()
    assert source.split("import torch\n", 1)[1].strip() in readme
    losses = {}
    for name, text in (("as_written", source), ("without_detach", source.replace(".detach()", ""))):
        namespace = {}
        exec(compile(text, f"batch_loss_{name}", "exec"), namespace)
        losses[name] = namespace["loss"]
    assert assert_as_written(losses["as_written"], cases=["gauss2d_aniso"]).passed
    with pytest.raises(AssertionError, match="failed"):
        assert_as_written(losses["without_detach"], cases=["gauss2d_aniso"])
