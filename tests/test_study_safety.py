"""Nothing lost, nothing silently wrong: validation before anything is written, no
writing over a user's folder, one writer per folder, the first env.json kept,
workers that die with their parent, no stale temporaries, the umask honoured."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mfverify.study.__main__ import main
from mfverify.study.config import load_study
from mfverify.study.runner import StudyInterrupted, run_study
from mfverify.study.store import StudyLock

from .test_study import TINY


def _write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_folder_holding_other_files_is_refused_and_left_byte_identical(tmp_path, capsys):
    study = _write(tmp_path, TINY)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "results.csv").write_text("my own results\n")
    (folder / "summary.md").write_bytes(b"# my notes\n\x00binary")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main([str(study), "--out", str(folder), "--no-progress"]) == 2
    assert "is not empty and holds no study" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize(
    "change, pattern",
    [
        (("[train]\n", "[train]\njvp = \"magic\"\n"), r"jvp must be 'auto' or one of"),
        (("[train]\n", "[train]\ntime_sampler = \"lognormal\"\n"), r"time_sampler must be one of"),
        (("width = 16\n", "width = 16\ntime_inputs = \"foo\"\n"), r"time_inputs must be one of"),
        (("[train]\n", "[train]\np = -1.0\n"), r"weighting needs finite p >= 0"),
        (("[train]\n", "[train]\nc = -1.0\n"), r"weighting needs finite p >= 0 and c > 0"),
        (("[train]\n", "[train]\nfrac_r_eq_t = 2.0\n"), r"frac_r_eq_t must lie in \[0, 1\]"),
        (("[train]\n", "[train]\ntime_std = -1.0\n"), r"time_std must be positive"),
        (("[train]\n", "[train]\nlr = inf\n"), r"lr must be a finite number"),
        (('objectives = ["fm", "mf", "scm"]', 'objectives = ["fm", "mf", "mf"]'), r"objectives lists 'mf' twice"),
        (("nfe = [1, 2]", "nfe = [1, 2, 2]"), r"nfe lists 2 twice"),
        (('cases = ["ring8"]', "cases = []"), r"cases must name at least one case"),
        (("w2_samples = 64", "w2_samples = 5000"), r"w2_samples \(5000\) must be <= n_noise \(128\)"),
        (("[eval]\n", '[presets.big.train]\nstepz = 3\n\n[eval]\n'), r"unknown key 'presets.big.train.stepz'"),
    ],
)
def test_a_bad_study_exits_2_within_seconds_and_creates_no_folder(tmp_path, capsys, change, pattern):
    old, new = change
    assert old in TINY
    study = _write(tmp_path, TINY.replace(old, new, 1))
    out = tmp_path / "out"
    start = time.perf_counter()
    assert main([str(study), "--out", str(out), "--no-progress"]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(pattern, err), err
    assert "s.toml" in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_before_any_file(tmp_path, capsys):
    study = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert main([str(study), "--device", "cuda", "--out", str(out), "--no-progress"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow  # spawns processes
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    study = load_study(_write(tmp_path, TINY))
    out = tmp_path / "out"
    out.mkdir()
    with StudyLock(out):  # a study writing here now (this process: alive)
        with pytest.raises(ValueError, match="is in use by another study"):
            run_study(study, out, progress=False)
    assert not (out / ".lock").exists() and not (out / "config.toml").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{dead.pid}\n")  # left by a process that died
    run_study(study, out, progress=False)
    assert (out / "results.csv").exists() and not (out / ".lock").exists()


def test_a_resume_keeps_the_first_env_json_and_adds_the_new_environment(tmp_path, monkeypatch):
    from mfverify.study import runner

    study = load_study(_write(tmp_path, TINY))
    out = tmp_path / "out"
    with pytest.raises(StudyInterrupted):
        run_study(study, out, progress=False, stop_after=1)
    first = (out / "env.json").read_bytes()
    real = runner.environment
    monkeypatch.setattr(runner, "environment", lambda s: {**real(s), "cpu_model": "another machine"})
    run_study(study, out, progress=False, resume=True)
    assert (out / "env.json").read_bytes() == first
    assert json.loads((out / "env-2.json").read_text())["cpu_model"] == "another machine"
    assert {"cpu_model", "torch_cpu_capability", "numeric_env"} <= set(json.loads(first))


def test_resume_refusal_says_what_differs_and_resume_with_another_out_is_an_error(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    with pytest.raises(StudyInterrupted):
        run_study(load_study(path), out, progress=False, stop_after=1)
    changed = _write(tmp_path, TINY.replace("steps = 20", "steps = 21"), name="s2.toml")
    assert main([str(changed), "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "steps = 20 (in the folder) vs steps = 21 (now)" in err
    with pytest.raises(SystemExit) as info:
        main([str(path), "--resume", str(out), "--out", str(tmp_path / "other")])
    assert info.value.code == 2


def test_stale_temporaries_are_removed_and_files_follow_the_umask(tmp_path):
    study = load_study(_write(tmp_path, TINY))
    out = tmp_path / "out"
    with pytest.raises(StudyInterrupted):
        run_study(study, out, progress=False, stop_after=1)
    stale = out / "runs" / ".rows.csv.abc123.tmp"  # what a kill during an atomic write leaves
    stale.write_text("half")
    old = os.umask(0o022)
    try:
        run_study(study, out, progress=False, resume=True)
    finally:
        os.umask(old)
    assert not stale.exists() and not list(out.rglob("*.tmp"))
    assert (out / "results.csv").stat().st_mode & 0o777 == 0o644


def test_a_study_without_presets_runs_as_written(tmp_path):
    path = _write(tmp_path, TINY.replace("seeds = 2", "seeds = 1").replace('objectives = ["fm", "mf", "scm"]',
                                                                          'objectives = ["fm"]'))
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--no-progress"]) == 0
    assert (out / "results.csv").exists()


@pytest.mark.slow  # spawns processes
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_workers_die_with_their_parent(tmp_path):
    path = _write(tmp_path, TINY.replace("steps = 20", "steps = 20000"))
    parent = subprocess.Popen([sys.executable, "-m", "mfverify.study", str(path), "--jobs", "2", "--out",
                               str(tmp_path / "out"), "--no-progress"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.5)
        workers = _children(parent.pid)
    assert len(workers) >= 2, "the workers never started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.5)
    alive = [w for w in workers if _alive(w)]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their parent"


def _children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; init reaps it


def test_list_shows_the_current_folders_studies_and_the_built_in_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.toml").write_text("# my own study\n" + TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "my own study" in out and "objectives_compare" in out
    assert load_study("mine").study.name == "tiny"
