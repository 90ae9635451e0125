"""Executors: the quick study on a two-node Ray cluster gives the process pool's bytes,
also when a worker is killed mid-run; plugins and ensembles run there too.

One test holds the cluster (``ray start --head`` and a second ``ray start --address``,
two "nodes" of one CPU each on this machine): ``ray stop`` at its end stops every Ray
process of this machine, so no other test may run one at the same time.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from mfverify.study.config import load_study, with_objectives
from mfverify.study.executors import make_executor
from mfverify.study.runner import StudyInterrupted, run_study
from tests.test_registry import TINY, plugin  # noqa: F401  (the plugin fixture)

PORT = 6391
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray(*args, check=True):
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")  # installed with ray, beside python
    return subprocess.run([ray_cli, *args], env=ENV, check=check,
                          capture_output=True, text=True, timeout=120)


def _task_pids():
    """Ray worker processes now running one of our tasks (their title is ``ray::_ray_task``)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if "ray::_ray_task" in line]


@pytest.mark.slow  # spawns processes
def test_quick_study_on_a_two_node_ray_cluster_survives_a_killed_worker(tmp_path, plugin, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    pool = run_study(load_study("objectives_compare", preset="quick"), tmp_path / "pool", jobs=2, progress=False,
                     executor="processes")
    address = f"127.0.0.1:{PORT}"
    try:
        _ray("start", "--head", "--port", str(PORT), "--num-cpus", "1", "--include-dashboard", "false",
             "--disable-usage-stats")
        _ray("start", "--address", address, "--num-cpus", "1", "--disable-usage-stats")
        out = tmp_path / "ray"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mfverify.study", "objectives_compare", "--preset", "quick", "--executor", "ray",
             "--address", address, "--jobs", "2", "--out", str(out), "--no-progress"],
            env={**ENV, "PYTHONPATH": os.pathsep.join(sys.path)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        killed = None
        deadline = time.time() + 240
        while killed is None and proc.poll() is None and time.time() < deadline:
            pids = _task_pids()
            finished = len(list(out.glob("runs/*/*/seed*/run.json"))) if out.exists() else 0
            if pids and finished >= 1:  # mid-run: one run stored, others in flight
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.2)
        log = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, log
        assert killed is not None, "no Ray task was seen running: nothing was killed"
        assert (out / "results.csv").read_bytes() == (pool / "results.csv").read_bytes()
        with open(out / "runs.csv") as f:
            assert len(list(csv.DictReader(f))) == 7  # every run of the quick preset, once

        # a plugin objective (an installed entry point) and the ensemble path on the same cluster
        path = tmp_path / "tiny.toml"
        path.write_text(TINY)
        study = with_objectives(load_study(path), ["fm", plugin])
        local = run_study(study, tmp_path / "local", progress=False, ensemble=True)
        remote = run_study(study, tmp_path / "remote", progress=False, ensemble=True, executor="ray",
                           address=address, jobs=2)
        assert (remote / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
        assert (remote / "runs" / "ring8" / plugin / "seed1" / "run.json").exists()
    finally:
        _ray("stop", "--force", check=False)


def test_unknown_executor_and_stray_address_are_errors(tmp_path):
    study = load_study("objectives_compare", preset="quick")
    with pytest.raises(ValueError, match="executor must be one of"):
        run_study(study, tmp_path / "a", executor="dask")
    with pytest.raises(ValueError, match="needs executor 'ray'"):
        run_study(study, tmp_path / "b", address="auto")
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("threads")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow  # spawns processes
def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ValueError, match=r'pip install -e "\.\[ray\]"'):
        run_study(load_study("objectives_compare", preset="quick"), tmp_path / "c", executor="ray")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize("address, message", [("127.0.0.1:1", "no Ray cluster answers there"),
                                              ("nonsense", "expected auto or HOST:PORT")])
def test_a_ray_address_that_does_not_answer_fails_fast_and_writes_nothing(tmp_path, address, message):
    """Nothing listens on port 1: the command exits 2 within seconds (Ray alone retried for minutes),
    before --out exists, with no lock left; a malformed address likewise."""
    out = tmp_path / "out"
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "mfverify.study", "objectives_compare", "--preset", "quick",
                          "--executor", "ray", "--address", address, "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - start < 60
    assert not out.exists()


def test_a_resume_keeps_the_ensemble_setting_of_the_study(tmp_path):
    study = load_study("objectives_compare", preset="quick")
    study = replace(study, study=replace(study.study, objectives=("fm",), seeds=2),
                    train=replace(study.train, steps=20))
    out = tmp_path / "s"
    with pytest.raises(StudyInterrupted):
        run_study(study, out, progress=False, stop_after=1)
    with pytest.raises(ValueError, match="run without --ensemble; resume it without --ensemble"):
        run_study(study, out, progress=False, resume=True, ensemble=True)
    assert not (out / "runs" / "ring8" / "fm" / "seed1" / "run.json").exists()  # refused before any work
    run_study(study, out, progress=False, resume=True)
    assert (out / "runs" / "ring8" / "fm" / "seed1" / "run.json").exists()
