"""Installed without -e (a wheel), the package carries its studies and runs them from any folder."""

import pytest
import csv
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # spawns processes
def test_a_wheel_installed_in_a_fresh_environment_runs_the_quick_study_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300, cwd=tmp_path)
    (wheel,) = wheels.glob("mfverify-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # the dependencies (torch, numba, ...) are this environment's: a .pth makes them visible
    # without installing them again (mfverify's own editable install is not: .pth files
    # in a path added by a .pth are not read)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(py), "-c", "import mfverify; print(mfverify.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where  # the installed copy, not this checkout
    listed = subprocess.run([str(py), "-m", "mfverify.study", "--list"], cwd=elsewhere, capture_output=True,
                            text=True, check=True).stdout
    assert "objectives_compare" in listed and "images_compare" in listed
    # the installed wheel's entry points and public paths (the code behind them moved in #23)
    probe = ("import mfverify.testing, mfverify.conventions, mfverify.check.testing, mfverify.check.conventions\n"
             "from mfverify import objectives\n"
             "assert mfverify.testing is mfverify.check.testing and mfverify.conventions is mfverify.check.conventions\n"
             "print(','.join(type(objectives.get(n)).__name__ for n in ('imf', 'fm_oracle', 'mf_tangent')))\n"
             "from mfverify.cases import get_case\n"  # the fitted digits ship inside the wheel
             "assert get_case('digits').shape == (1, 8, 8)\n")
    got = subprocess.run([str(py), "-c", probe], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.strip() == "Objective,Objective,Objective"
    for command in (["-m", "mfverify", "check", "--help"], ["-m", "mfverify.stability", "--help"],
                    ["-m", "mfverify.study.claims", "--help"]):
        res = subprocess.run([str(py), *command], cwd=elsewhere, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "usage" in res.stdout, (command, res.stderr[-2000:])
    res = subprocess.run([str(py), "-m", "mfverify.study", "objectives_compare", "--preset", "quick", "--objectives",
                          "fm,mf", "--out", "out", "--no-progress"], cwd=elsewhere, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(elsewhere / "out" / "results.csv") as f:
        methods = {r["method"] for r in csv.DictReader(f)}
    assert {"fm", "mf", "exact_u"} <= methods
