"""The study runner: configuration, smoke run, determinism, resume, divergence, atomic files."""

import csv
import os
from pathlib import Path

import pytest

from mfverify.io import write_text
from mfverify.study.__main__ import main
from mfverify.study.config import load_study, to_toml
from mfverify.study.runner import StudyInterrupted, run_study

TINY = """# a tiny study for the tests
[study]
name = "tiny"
cases = ["ring8"]
objectives = ["fm", "mf", "scm"]
baselines = ["exact_u", "exact_v_euler", "exact_v_heun", "fm_euler", "fm_heun"]
seeds = 2

[train]
steps = 20
batch = 64
device = "cpu"

[network_options.mlp]
width = 16
depth = 2

[eval]
nfe = [1, 2]
n_noise = 128
w2_samples = 64
field_samples = 64
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _run(path, out, **kw):
    return run_study(load_study(path), out, progress=False, **kw)


def test_quick_preset_smoke(tmp_path):
    study = load_study("objectives_compare", preset="quick")
    out = run_study(study, tmp_path / "quick", progress=False)
    for name in ("results.csv", "runs.csv", "summary.md", "config.toml", "env.json",
                 "error_vs_nfe_ring8.pdf", "error_vs_nfe_ring8.png", "error_vs_nfe_ring8.csv"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) >= {"study", "case", "method", "seed", "nfe", "metric", "value"}
    methods = {r["method"] for r in rows}
    assert methods >= set(study.study.objectives) | set(study.study.baselines)
    exact_u = [float(r["value"]) for r in rows if r["method"] == "exact_u" and r["metric"] == "flow_map_mean"]
    assert max(exact_u) <= 1e-8  # the issue's bar for the exact average velocity
    assert {int(r["nfe"]) for r in rows if r["method"] == "scm"} <= {0, 1}  # scm: NFE 1 only (0: field error)


@pytest.mark.slow  # spawns processes
def test_same_seed_gives_identical_results(tiny, tmp_path):
    a = (_run(tiny, tmp_path / "a") / "results.csv").read_bytes()
    b = (_run(tiny, tmp_path / "b") / "results.csv").read_bytes()
    assert a == b
    c = (_run(tiny, tmp_path / "c", jobs=2) / "results.csv").read_bytes()
    assert a == c  # parallel processes give the same numbers


@pytest.mark.slow  # spawns processes
def test_spawned_workers_give_the_same_results(tiny, tmp_path):
    """GPU studies start workers with spawn: fresh interpreters, none of this process's
    global torch state (the tests' default dtype is float64), and the same numbers."""
    a = (_run(tiny, tmp_path / "a") / "results.csv").read_bytes()
    s = (_run(tiny, tmp_path / "s", jobs=2, start_method="spawn") / "results.csv").read_bytes()
    assert a == s


def test_interrupted_study_resumes_without_redoing_finished_runs(tiny, tmp_path):
    full = _run(tiny, tmp_path / "full")
    out = tmp_path / "resumed"
    with pytest.raises(StudyInterrupted):
        _run(tiny, out, stop_after=2)
    finished = sorted(out.glob("runs/*/*/seed*/run.json"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    _run(tiny, out, resume=True)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished)  # not redone
    assert len(list(out.glob("runs/*/*/seed*/run.json"))) == 6
    assert (out / "results.csv").read_bytes() == (full / "results.csv").read_bytes()


def test_a_diverging_run_is_recorded_and_the_study_completes(tiny, tmp_path):
    path = tmp_path / "diverge.toml"
    path.write_text(TINY + '\n[overrides.mf]\nlr = 1e30\n')
    out = _run(path, tmp_path / "d")
    with open(out / "runs.csv") as f:
        runs = {(r["objective"], r["seed"]): r for r in csv.DictReader(f)}
    assert runs[("mf", "0")]["diverged_step"] != ""
    assert runs[("fm", "0")]["diverged_step"] == ""
    with open(out / "results.csv") as f:
        assert not any(r["method"] == "mf" for r in csv.DictReader(f))


def test_the_command_line_names_the_diverged_runs_at_the_end(tiny, tmp_path, capsys):
    path = tmp_path / "diverge.toml"
    path.write_text(TINY + '\n[overrides.mf]\nlr = 1e30\n')
    assert main([str(path), "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "run diverged" in err or "runs diverged" in err
    assert "ring8/mf/seed0: loss not finite at step" in err and "/fm/" not in err


def test_divergence_is_one_definition_a_non_finite_loss_or_a_one_step_error_beyond_the_data():
    """``divergence.reasons``: the loss's stop, or a one-step error above 3 x sqrt(E|x0 - E x0|^2);
    ring8's scale is its radius 2 with components of variance 1e-2 per coordinate: sqrt(4 + 0.02)."""
    from mfverify.cases import get_case
    from mfverify.study import divergence
    from mfverify.study.headlines import Results

    m = get_case("ring8")
    x = m.sample(200_000, generator=__import__("torch").Generator().manual_seed(0))
    empirical = float((x - x.mean(0)).square().sum(1).mean().sqrt())
    assert abs(divergence.data_scale("ring8") - empirical) <= 5e-3 * empirical  # Monte Carlo: ~0.1 % at 2e5
    scale = divergence.data_scale("ring8")
    runs = [{"case": "ring8", "objective": "scm", "seed": s, "diverged_step": d} for s, d in ((0, ""), (1, "17"), (2, ""))]
    rows = [{"case": "ring8", "method": "scm", "seed": str(s), "nfe": "1", "metric": "flow_map_mean", "value": repr(v)}
            for s, v in ((0, 0.9 * 3 * scale), (2, 1.1 * 3 * scale))]
    why = divergence.reasons(runs, rows)
    assert set(why) == {("ring8", "scm", "1"), ("ring8", "scm", "2")}
    assert why[("ring8", "scm", "1")] == "loss not finite at step 17"
    assert why[("ring8", "scm", "2")].startswith("one-step error")
    assert Results(Path("."), rows, runs).diverged("ring8", "scm") == 2


def test_resolved_config_reads_back(tiny, tmp_path):
    study = load_study(tiny)
    path = tmp_path / "again.toml"
    path.write_text(to_toml(study))
    again = load_study(path)
    assert (again.study, again.train, again.eval) == (study.study, study.train, study.eval)


@pytest.mark.parametrize(
    "extra, pattern",
    [
        ("[train]\nstepz = 3\n", r"unknown key 'train.stepz'"),
        ("[evaluation]\nnfe = [1]\n", r"unknown section"),
        ("[train]\nema_decay = 'slow'\n", r"key 'train.ema_decay' must be of type float"),
        ("[train]\nseed = 3\n", r"unknown key 'train.seed'"),
        ("[overrides.mf_nosg]\np = 1.0\n", r"names no objective of this study"),
        ("[overrides.fm]\nlrr = 1.0\n", r"unknown key 'overrides.fm.lrr'"),
    ],
)
def test_bad_keys_are_errors_naming_the_key_and_the_file(tmp_path, extra, pattern):
    base = TINY
    if extra.startswith("[train]"):
        base = TINY.replace("[train]\n", extra)
    else:
        base = TINY + "\n" + extra
    path = tmp_path / "bad.toml"
    path.write_text(base)
    with pytest.raises(ValueError, match=pattern) as info:
        load_study(path)
    assert "bad.toml" in str(info.value)


def test_unknown_preset_and_study(tiny):
    with pytest.raises(ValueError, match="no preset 'huge'"):
        load_study(tiny, preset="huge")
    with pytest.raises(ValueError, match="known studies: .*objectives_compare"):
        load_study("no_such_study")


def test_cli_lists_studies_and_rejects_bad_names(capsys):
    assert main(["--list"]) == 0
    assert "objectives_compare" in capsys.readouterr().out
    assert main(["no_such_study"]) == 2
    assert "no study 'no_such_study'" in capsys.readouterr().err


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")

    class Boom(str):
        def encode(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_text(path, Boom("new"))
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]  # no temporary file left behind


def test_objective_and_network_options_from_their_tables(tmp_path):
    path = tmp_path / "opts.toml"
    path.write_text(TINY + '\n[objective_options.scm]\ntangent_norm_c = 0.1\nwarmup_steps = 5\n'
                    '\n[overrides.mf]\nnetwork_options = { width = 8 }\n')
    study = load_study(path)
    cfg = study.run_config("ring8", "scm", 0)
    assert dict(cfg.objective_options) == {"tangent_norm_c": 0.1, "warmup_steps": 5}
    assert dict(cfg.network_options) == {"width": 16, "depth": 2}
    assert dict(study.run_config("ring8", "mf", 0).network_options) == {"width": 8, "depth": 2}  # merged
    assert dict(study.run_config("ring8", "fm", 0).objective_options) == {}
    again = tmp_path / "again.toml"
    again.write_text(to_toml(study))
    back = load_study(again)
    assert back.run_config("ring8", "scm", 0) == cfg and back.run_config("ring8", "mf", 0) == study.run_config("ring8", "mf", 0)


@pytest.mark.parametrize(
    "extra, pattern",
    [
        ("[objective_options.scm]\ntangent_norm = 0.1\n", r"unexpected options \['tangent_norm'\]; its options: jvp, tangent_norm_c"),
        ("[objective_options.scm]\ntangent_norm_c = 'big'\n", r"option 'tangent_norm_c' must be a float"),
        ("[objective_options.scm]\ntangent_norm_c = -1.0\n", r"tangent_norm_c must be > 0"),
        ("[objective_options.mf_sg]\njvp = 'func'\n", r"\[objective_options.mf_sg\] names no objective of this study"),
        ("[overrides.mf]\nnetwork_options = { widht = 3 }\n", r"unexpected options \['widht'\]; its options: width"),
        ("[objective_options.mf]\np = -1.0\n", r"weighting needs finite p >= 0"),
        ("[overrides.scm]\np = 1.0\n", r"objective 'scm' takes no adaptive weighting"),
    ],
)
def test_bad_options_are_errors_naming_the_file_when_the_study_is_loaded(tmp_path, extra, pattern):
    path = tmp_path / "bad.toml"
    path.write_text(TINY + "\n" + extra)
    with pytest.raises(ValueError, match=pattern) as info:
        load_study(path)
    assert "bad.toml" in str(info.value)


def test_studies_registry_finds_registered_files(tmp_path, tiny):
    from mfverify.study.config import list_studies, studies

    studies.register("tiny_registered", str(tiny))
    try:
        assert "tiny_registered" in list_studies()
        assert load_study("tiny_registered").study.name == "tiny"
        with pytest.raises(ValueError, match="is not a TOML file"):
            studies.register("nowhere", str(tmp_path / "missing.toml"))
    finally:
        studies.unregister("tiny_registered")


@pytest.mark.slow  # spawns processes
def test_results_do_not_depend_on_the_callers_thread_count(tiny, tmp_path):
    """The driver computes the baselines' metrics: with one thread, as the workers do."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = (_run(tiny, tmp_path / "a", jobs=2) / "results.csv").read_bytes()
        torch.set_num_threads(2)
        b = (_run(tiny, tmp_path / "b", jobs=2) / "results.csv").read_bytes()
        assert torch.get_num_threads() == 2  # the caller's setting is left as it was
    finally:
        torch.set_num_threads(threads)
    assert a == b


def test_a_plain_loss_added_to_a_weighted_study_is_trained_without_weighting(tmp_path):
    """objectives_compare's [train] p = 1.0 is for the objectives that take a weighting: a plain loss
    added with --objectives runs with p = 0; asked of it in [overrides] it is still an error."""
    from dataclasses import replace

    from mfverify.study.config import with_objectives

    study = with_objectives(load_study("objectives_compare", preset="quick"), ["fm", "tests.test_study:plain_fm"])
    assert study.train.p == 1.0
    assert study.run_config("ring8", "tests.test_study:plain_fm", 0).p == 0.0
    assert study.run_config("ring8", "fm", 0).p == 0.0  # its own override
    study = replace(study, train=replace(study.train, steps=5))
    out = run_study(study, tmp_path / "out", progress=False)
    assert (out / "runs" / "ring8" / "tests.test_study_plain_fm" / "seed0" / "run.json").exists()
    asked = replace(study, overrides=study.overrides + (("tests.test_study:plain_fm", (("p", 1.0),)),))
    with pytest.raises(ValueError, match="takes no adaptive weighting"):
        run_study(asked, tmp_path / "asked", progress=False)


def plain_fm(model, x0, x1, r, t):
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    return (model(x_t, t, t) - (x1 - x0)).square().sum(1)


def test_a_run_that_raises_exits_1_and_says_how_to_resume(tiny, tmp_path, capsys):
    assert main([str(tiny), "--objectives", "fm,tests.test_study:raising_loss", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: a run failed (RuntimeError: a bug in my loss)" in err and f"--resume {tmp_path / 'r'}" in err


def raising_loss(model, x0, x1, r, t):
    raise RuntimeError("a bug in my loss")
