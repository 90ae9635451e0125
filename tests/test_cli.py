"""One command line (``mfverify COMMAND``) and a user's own study file run as written (issue 26,
parts 7 and 8)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mfverify.__main__ import COMMANDS
from mfverify.__main__ import main as mfverify_main
from mfverify.study.__main__ import main as study_main
from mfverify.study.config import EvalConfig, TrainConfig, ema_warning, load_study, with_objectives

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("study", "check", "stability", "cases", "figures", "claims", "headlines")

# only what a newcomer writes: cases, objectives, seeds and [train] steps (plus a small [eval], for time)
MINIMAL = """[study]
cases = ["ring8"]
objectives = ["mf", "mf_full"]
seeds = 1

[train]
steps = 30

[eval]
nfe = [1, 2]
n_noise = 96
field_samples = 64
field_grid = 2
field_grid_samples = 16
sample_points = 64
"""


def test_mfverify_help_lists_every_tool(capsys):
    assert set(COMMANDS) == set(TOOLS)
    assert mfverify_main(["--help"]) == 0
    out = capsys.readouterr().out
    for tool in TOOLS:
        assert f"  {tool} " in out, tool
    assert mfverify_main([]) == 2
    assert mfverify_main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_s_help_names_it_and_describes_every_option(tool, capsys):
    with pytest.raises(SystemExit) as exit_:
        mfverify_main([tool, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mfverify {tool}")
    # every option line of the help carries a description (argparse puts it on the same line or the next)
    lines = out.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("  --") and "  " not in stripped:  # an option alone on its line (group titles are at 0)
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert following and not following.startswith("-"), f"{tool}: {stripped} has no description"


@pytest.mark.slow  # spawns processes
def test_mfverify_check_finds_a_module_in_the_current_folder(tmp_path):
    (tmp_path / "mymod.py").write_text(
        "def myloss(model, x0, x1, r, t):\n"
        "    v = x1 - x0\n"
        "    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1\n"
        "    u = model(x_t, t, t)\n"
        "    return ((u - v) ** 2).sum(1)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "mfverify", "check", "mymod:myloss", "--cases", "bimodal1d",
                          "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stderr[-2000:]  # a verdict, not a usage error (2): the module was found
    assert "check of mymod:myloss" in res.stdout


def test_a_study_file_with_only_the_essentials_runs_and_states_its_defaults(tmp_path, capsys):
    path = tmp_path / "mystudy.toml"
    path.write_text(MINIMAL)
    out = tmp_path / "out"
    assert study_main([str(path), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "defaults in effect" in err
    for key, value in (("lr_schedule", "constant"), ("ema_decay", "0.999"), ("p", "0.0")):
        assert f"{key} = {value}" in err
    assert "warning: ema_decay = 0.999 averages over about 1000 steps, more than the 30 steps" in err
    with open(out / "results.csv") as f:
        methods = {r["method"] for r in csv.DictReader(f)}
    assert methods == {"mf", "mf_full", "exact_u", "exact_v_euler", "exact_v_heun"}  # no fm_euler: fm not listed


def test_baselines_and_w2_samples_follow_what_the_file_lists(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL)
    study = load_study(path)
    assert study.study.baselines == ("exact_u", "exact_v_euler", "exact_v_heun")
    assert study.eval.w2_samples == 96  # capped by n_noise, which is below the default 1024
    path.write_text(MINIMAL.replace('objectives = ["mf", "mf_full"]', 'objectives = ["fm", "mf"]'))
    assert "fm_euler" in load_study(path).study.baselines
    path.write_text(MINIMAL + "w2_samples = 200\n")  # set by the user above n_noise: an error, not a silent cap
    with pytest.raises(ValueError, match=r"w2_samples \(200\) must be <= n_noise \(96\)"):
        load_study(path)
    assert EvalConfig().w2_samples == 1024
    full = load_study("objectives_compare", preset="quick")
    assert "fm_euler" in full.study.baselines
    assert "fm_euler" not in with_objectives(full, ["mf"]).study.baselines


def test_the_ema_warning_only_where_the_horizon_exceeds_the_steps():
    assert ema_warning(TrainConfig(steps=4000, ema_decay=0.995)) is None
    assert ema_warning(TrainConfig(steps=200, ema_decay=0.0)) is None
    warning = ema_warning(TrainConfig(steps=200, ema_decay=0.999))
    assert "keeps 82% of its initial weights" in warning  # 0.999^200 = 0.8186


def test_mfverify_cases_lists_every_named_case_with_its_dimension(capsys):
    from mfverify.cases import get_case, list_cases

    assert mfverify_main(["cases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "d", "K"]
    listed = {line.split()[0]: int(line.split()[1]) for line in lines[1:]}
    assert listed == {name: get_case(name).d for name in list_cases()}


def test_figures_help_states_one_default_for_the_style(capsys):
    with pytest.raises(SystemExit):
        mfverify_main(["figures", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: mfverify's own)" in text and "(default: None)" not in text
