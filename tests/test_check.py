"""The check battery (mfverify.check): the verdicts MATH.md predicts for the built-in
objectives, public transcriptions pass, broken variants fail naming the check, the
exact route refuses a false declaration, the command line and its bad input."""

import json
import sys

import pytest
import torch

from mfverify import check, objectives
from mfverify.check import battery
from mfverify.check.exact_core import smooth_directions
from mfverify.cases import get_case
from mfverify.theory import identities

from . import public_losses as P

MEANFLOW = ["fm", "mf_full", "mf_sg", "mf", "mf_nosg", "shortcut"]


@pytest.mark.parametrize("name", MEANFLOW + ["scm"])
def test_builtin_objectives_get_the_verdicts_math_predicts(name):
    report = check.run(name, weighting=False)
    checks = report.checks
    if name == "scm":  # trained at r = 0 only: the sCM relation instead of the r = t reduction
        assert "reduces_to_fm" not in checks and checks["scm_relation"].passed
        assert checks["scm_relation"].details["factor"] == pytest.approx(1.0, rel=1e-9)
    else:
        assert checks["reduces_to_fm"].passed
        assert checks["reduces_to_fm"].details["factor"] == pytest.approx(1.0, rel=1e-9)
    assert checks["stationary_at_exact_u"].details["route"] == "exact"
    # MATH.md §4: u* is stationary for every objective but mf_nosg
    assert checks["stationary_at_exact_u"].passed == (name != "mf_nosg")
    # fm is flow matching: it never trains r < t, which an average-velocity loss must
    assert checks["trains_off_diagonal"].passed == (name != "fm")
    assert report.passed == (name not in ("mf_nosg", "fm"))


def test_weighting_moves_mf_fixed_point_on_a_mixture_not_on_a_gaussian():
    report = check.run("mf", cases=["gauss2d_aniso"])
    w = report.checks["weighting_moves_fixed_point"]
    assert not w.counts and w.passed
    assert w.details["per_case"]["ring8"]["moved"] and not w.details["per_case"]["gauss2d_aniso"]["moved"]
    assert report.passed  # informational: it does not decide the verdict


@pytest.mark.parametrize(
    "loss, options",
    [(P.py_meanflow, {"norm_p": 0.0}), (P.haidog_meanflow, None), (P.reversed_meanflow, None), (P.declared(P.mf_by_hand), None)],
    ids=["py_meanflow", "haidog_meanflow", "reversed_meanflow", "mf_by_hand"],
)
def test_faithful_transcriptions_pass_and_equal_mf(loss, options):
    report = check.run(loss, reference="mf", options=options, cases=["gauss2d_aniso", "ring8"])
    assert report.passed, report.table()
    # converted to mfverify's conventions, each is mf itself: factor 1
    assert report.checks["equivalent_to_reference"].details["factor"] == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("name", sorted(P.BROKEN))
def test_every_broken_variant_fails_and_the_failure_names_the_check(name):
    report = check.run(P.declared(getattr(P, name)), reference="mf", cases=["gauss2d_aniso", "ring8"])
    failed = {k for k, c in report.checks.items() if c.counts and not c.passed}
    assert not report.passed
    assert failed == set(P.BROKEN[name]) | {"equivalent_to_reference"}, report.table()


def test_monte_carlo_route_for_an_undeclared_loss():
    good = check.run(P.haidog_meanflow_undeclared, cases=["ring8"])
    assert good.checks["stationary_at_exact_u"].details["route"] == "monte_carlo"
    assert good.checks["stationary_at_exact_u"].passed
    bad = check.run(objectives.Objective("sign_error", P.sign_error), cases=["ring8"])
    assert bad.checks["stationary_at_exact_u"].details["route"] == "monte_carlo"
    assert not bad.checks["stationary_at_exact_u"].passed  # z far above the Bonferroni bar


def test_public_weighting_defect_is_found():
    # zhuyu-cs's L^2 / sg(L^2 + c)^p: at p = 0 it is |Delta|^4, whose minimiser is not the mean
    report = check.run(P.zhuyu_meanflow, cases=["ring8"], weighting=False)
    assert report.checks["reduces_to_fm"].passed is False  # |Delta|^4 is not k |Delta|^2
    stationary = report.checks["stationary_at_exact_u"]
    assert stationary.details["route"] == "monte_carlo" and not stationary.passed


def test_a_false_quadratic_declaration_is_an_error_not_an_exact_result():
    from dataclasses import replace

    liar = replace(P.zhuyu_meanflow, quadratic_in_v_c=True)
    m = get_case("ring8")
    x, r, t = battery._points(m, 0, 2, r0=False)
    h = smooth_directions(2, 0)["wavy"]
    with pytest.raises(identities.NotQuadratic, match="declared quadratic in v_c"):
        identities.population_gradient(liar, m, h, x, r, t, p=0.0)
    with pytest.raises(ValueError, match="not declared quadratic"):
        identities.population_gradient(P.zhuyu_meanflow, m, h, x, r, t, p=0.0)


def test_sigma_points_are_exact_to_degree_two_not_three():
    # the posterior of v_c given x_t is a skewed mixture: its third moment is not the
    # symmetric set's; both sets give the first two moments exactly
    from mfverify.truth.fields import gm_component_moments

    m = get_case("bimodal1d")
    x = torch.tensor([[0.1], [-0.6]], dtype=torch.float64)
    t = torch.tensor([0.7, 0.5], dtype=torch.float64)
    pi, g, var = gm_component_moments(m, x, t)  # (n, K), (n, K, 1), (n, K, 1): per component Gaussian
    g, var = g[..., 0], var[..., 0]
    first, second = (pi * g).sum(1), (pi * (g**2 + var)).sum(1)
    third = (pi * (g**3 + 3 * g * var)).sum(1)
    mean, cov = identities.truth.conditional_moments(m, x, t)
    for skew in (1.0, 2.0):
        pts, w = identities.sigma_points(mean, cov, skew=skew)
        moment = lambda k: (pts[..., 0] ** k * w).sum(1)  # noqa: E731
        assert torch.allclose(moment(1), first, rtol=1e-12)
        assert torch.allclose(moment(2), second, rtol=1e-12)
        # round-off 1e-12; the symmetric set misses the third moment by the skewness
        assert ((moment(3) - third).abs() > 1e-3).any() if skew == 1.0 else True
    a, wa = identities.sigma_points(mean, cov, skew=1.0)
    b, wb = identities.sigma_points(mean, cov, skew=2.0)
    assert ((a[..., 0] ** 3 * wa).sum(1) - (b[..., 0] ** 3 * wb).sum(1)).abs().max() > 1e-3  # the sets disagree


def test_scm_relation_fails_for_a_broken_surrogate():
    def scm_without_t(model, x0, x1, r, t):
        """sCM with the tangent's t dropped: df/dt = v_c - u - D[v_c]."""
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        v_c, zero = x1 - x0, torch.zeros_like(t)
        u, D = torch.func.jvp(model, (x_t, zero, t), (v_c, zero, torch.ones_like(t)))
        return ((x_t - t[:, None] * u) * (v_c - u - D).detach()).sum(1)

    loss = objectives.Objective("scm_without_t", scm_without_t, trained_at_r0=True, surrogate=True,
                                quadratic_in_v_c=True)
    report = check.run(loss)
    assert not report.checks["scm_relation"].passed
    assert not report.checks["stationary_at_exact_u"].passed


# ---------------------------------------------------------------- reports and the command line


def test_report_json_has_the_documented_shape(tmp_path):
    out = tmp_path / "r.json"
    rc = check.main(["tests.public_losses:haidog_meanflow", "--reference", "mf", "--cases", "gauss2d_aniso",
                     "--json", str(out), "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["loss"] == "tests.public_losses:haidog_meanflow" and data["passed"] is True
    for name, c in data["checks"].items():
        assert {"passed", "value", "rule"} <= set(c), name
    assert data["checks"]["equivalent_to_reference"]["factor"] == pytest.approx(1.0, rel=1e-9)


def test_cli_exit_status_is_one_when_a_check_fails(capsys):
    assert check.main(["mf_nosg", "--cases", "gauss2d_aniso", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "stationary_at_exact_u | FAIL" in out


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["meanflow"], "unknown objective 'meanflow'; known objectives: fm, mf_full"),
        (["no_such_module_xyz:loss"], "cannot import module 'no_such_module_xyz'"),
        (["tests.public_losses:nothing_here"], "has no attribute 'nothing_here'"),
        (["tests.public_losses:BROKEN"], "must be callable"),
        (["mf", "--option", "tangent_warmup=2"], r"unexpected options \['tangent_warmup'\]"),
        (["mf", "--cases", "ring9"], "unknown case 'ring9'"),
        (["tests.test_check:_wrong_shape"], r"must return the per-sample loss, a torch tensor of shape \(12,\)"),
        (["tests.test_check:_numpy_loss"], "got ndarray"),
        (["tests.test_check:_nan_loss"], "returned non-finite values"),
        (["tests.test_check:_too_few_arguments"], r"takes \(model, x0, x1, r, t\)"),
        (["tests.test_check:_raises"], r"loss '.*_raises' raised KeyError: 'boom'"),
        (["tests.test_check:_detached"], "returned a tensor without a gradient"),
        (["tests.test_check:_integer"], "returned a torch.int64 tensor"),
        (["tests.test_check:_float32"], "returned torch.float32 on torch.float64 inputs"),
        (["tests.test_check:_in_place"], "changed its input t in place"),
    ],
)
def test_bad_input_is_a_usage_error_naming_what_was_expected(argv, pattern, capsys):
    assert check.main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(pattern, err), err


def _wrong_shape(model, x0, x1, r, t):
    return (model(x0, r, t) - x1).square()  # (n, d), not (n,)


def _numpy_loss(model, x0, x1, r, t):
    return (model(x0, r, t) - x1).square().sum(1).detach().numpy()


def _nan_loss(model, x0, x1, r, t):
    return (model(x0, r, t) - x1).square().sum(1) * float("nan")


def _too_few_arguments(model, x0, x1):
    return (model(x0, x0[:, 0], x0[:, 0]) - x1).square().sum(1)


def _raises(model, x0, x1, r, t):
    raise KeyError("boom")


def _fm(model, x0, x1, r, t):
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    return (model(x_t, t, t) - (x1 - x0)).square().sum(1)


def _detached(model, x0, x1, r, t):
    return _fm(model, x0, x1, r, t).detach()


def _integer(model, x0, x1, r, t):
    return _fm(model, x0, x1, r, t).long()


def _float32(model, x0, x1, r, t):
    return _fm(model, x0, x1, r, t).float()


def _in_place(model, x0, x1, r, t):
    loss = _fm(model, x0, x1, r, t)
    t.clamp_(min=0.5)  # a loss that edits its inputs
    return loss


def test_json_is_refused_before_any_work_where_it_cannot_be_written_or_would_replace_a_users_file(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    assert check.main(["mf", "--json", str(blocker / "report.json"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert check.main(["mf", "--json", str(blocker), "--no-progress"]) == 2
    assert "is not an earlier check report" in capsys.readouterr().err
    assert blocker.read_text() == "mine"
    report = tmp_path / "report.json"
    assert check.main(["mf", "--cases", "gauss2d_aniso", "--json", str(report), "--no-progress"]) == 0
    assert check.main(["mf", "--cases", "gauss2d_aniso", "--json", str(report), "--no-progress"]) == 0  # a report
    assert json.loads(report.read_text())["passed"] is True
    assert check.main(["mf", "--cases", "gauss2d_aniso", "--json", str(blocker), "--force", "--no-progress"]) == 0
    assert json.loads(blocker.read_text())["loss"] == "mf"


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"cases": "ring8"}, TypeError, r"a list of case names, got the string 'ring8'"),
    ({"n_points": 0}, ValueError, "n_points must be a positive int"),
    ({"seed": "0"}, TypeError, "seed must be an int"),
    ({"n_samples": 2.5}, TypeError, "n_samples must be an int"),
])
def test_run_refuses_bad_arguments_naming_them(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        check.run("mf", **kwargs)


@pytest.mark.slow  # spawns processes
def test_console_script_and_module_entry(tmp_path):
    import subprocess

    res = subprocess.run([sys.executable, "-m", "mfverify", "check", "mf", "--cases", "gauss2d_aniso",
                          "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "check of mf: PASSED" in res.stdout


@pytest.mark.slow  # spawns processes
def test_the_console_script_imports_a_loss_from_the_current_folder(tmp_path):
    """``mfverify check mymod:loss`` finds ``./mymod.py`` as ``python -m mfverify check`` does."""
    import os
    import subprocess
    from pathlib import Path

    (tmp_path / "mymod_for_check.py").write_text(
        "def loss(model, x0, x1, r, t):\n"
        "    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1\n"
        "    return (model(x_t, t, t) - (x1 - x0)).square().sum(1)\n")
    script = Path(sys.executable).parent / "mfverify"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(script), "check", "mymod_for_check:loss", "--cases", "gauss2d_aniso", "--no-progress"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert "cannot import module" not in res.stderr, res.stderr
    assert "check of mymod_for_check:loss" in res.stdout or "check of loss" in res.stdout, res.stdout + res.stderr


def test_weighting_cannot_move_shortcut_off_u_star_where_r_is_below_t():
    # at r < t shortcut's target is deterministic given x_t: the residual is 0 at u* for
    # every draw, so any weighting of it is 0 too (a round-off mean is not a "move")
    report = check.run("shortcut", cases=["gauss2d_aniso"])
    w = report.checks["weighting_moves_fixed_point"]
    assert not w.details["per_case"]["ring8"]["moved"] and not w.details["per_case"]["gauss2d_aniso"]["moved"]


# ------------------------------------------------------------------ issue 28, part 3: the checker's own defects


def test_imf_passes_every_check_with_both_heads_compared(capsys):
    assert check.main(["imf", "--no-progress"]) == 0, capsys.readouterr().out


def _mf_coordinate_mean(model, x0, x1, r, t):
    return objectives.get("mf")(model, x0, x1, r, t) / x0.shape[1]  # F.mse_loss-style: a mean over coordinates


def test_a_coordinate_mean_passes_the_reference_with_its_factor_one_over_d():
    report = check.run(_mf_coordinate_mean, reference="mf", cases=["ring8"], weighting=False)
    eq = report.checks["equivalent_to_reference"]
    assert report.passed and eq.details["factor_kind"].startswith("coordinate mean")
    assert eq.details["factors_per_d"] == {d: pytest.approx(1 / d, rel=1e-12) for d in (1, 2, 3)}
    assert any("coordinate mean" in n for n in report.notes)


def test_batch_mean_runs_through_every_check_on_both_routes():
    from mfverify.check.conventions import batch_mean

    wrapped = batch_mean(lambda model, x0, x1, r, t: objectives.get("mf")(model, x0, x1, r, t).mean())
    exact = check.run(objectives.Objective("mf_batch_mean", wrapped, quadratic_in_v_c=True), reference="mf",
                      cases=["ring8"])
    assert exact.passed and exact.checks["stationary_at_exact_u"].details["route"] == "exact"
    # batch_mean calls the loss once per row: the Monte Carlo route (a row per draw) is slow with it
    mc = check.run(objectives.Objective("mf_batch_mean_mc", wrapped), cases=["ring8"], n_samples=300, n_points=2)
    stationary = mc.checks["stationary_at_exact_u"]
    assert stationary.details["route"] == "monte_carlo" and stationary.status != "fail"
    # 300 draws per point: too few to rule out a move of half a direction, so undecided, never a pass
    assert (stationary.status == "pass") == (stationary.details["detectable_move"] <= 0.5)


@pytest.mark.parametrize("quadratic", [True, False])
def test_the_stationarity_statistic_does_not_depend_on_the_loss_scale(quadratic):
    nosg = objectives.get("mf_nosg")
    values = []
    for scale in (1e-8, 1.0, 1e8):
        loss = objectives.Objective(f"nosg_{scale:g}", lambda m, x0, x1, r, t, s=scale: s * nosg(m, x0, x1, r, t),
                                    quadratic_in_v_c=quadratic)
        report = check.run(loss, cases=["ring8"], n_samples=5_000)
        assert not report.checks["stationary_at_exact_u"].passed
        values.append(report.checks["stationary_at_exact_u"].value)
    # the statistic is a ratio of quantities that all scale with the loss: equal up to round-off
    assert values[0] == pytest.approx(values[1], rel=1e-9) and values[2] == pytest.approx(values[1], rel=1e-9)


def test_reference_options_and_the_weighting_rule():
    # the loss's weighting is given to the reference too: mf at p = 1 equals mf at p = 1
    same = check.run("mf", reference="mf", options={"p": 1.0}, cases=["gauss2d_aniso"], weighting=False)
    assert same.checks["equivalent_to_reference"].passed
    assert same.checks["equivalent_to_reference"].details["reference_options"]["p"] == 1.0
    # unless the reference's options say otherwise
    other = check.run("mf", reference="mf", options={"p": 1.0}, reference_options={"p": 0.0},
                      cases=["gauss2d_aniso"], weighting=False)
    assert not other.checks["equivalent_to_reference"].passed
    assert any(n.startswith("weighting:") for n in other.notes)
    with pytest.raises(ValueError, match="reference_options given without a reference"):
        check.run("mf", reference_options={"p": 0.0})


def test_rtol_sets_the_tolerance_of_the_exact_checks(capsys):
    loose = check.run("mf", cases=["gauss2d_aniso"], weighting=False, rtol=0.5)
    assert "0.5" in loose.checks["reduces_to_fm"].rule and "0.5" in loose.checks["stationary_at_exact_u"].rule
    for bad in (0.0, 1.0, -1e-3, float("nan"), "x"):
        with pytest.raises(ValueError, match="rtol"):
            check.run("mf", rtol=bad)
    assert check.main(["mf", "--rtol", "2", "--no-progress"]) == 2


def test_the_stationarity_points_include_the_diagonal():
    from mfverify.check.battery import _points

    x, r, t = _points(get_case("ring8"), 0, 4, r0=False)
    assert bool((r == t).any()) and bool((r == 0).any()) and bool(((r > 0) & (r < t)).any())


def test_the_markdown_table_escapes_bars():
    report = check.run("fm", cases=["gauss2d_aniso"], weighting=False)
    for line in report.table().splitlines():
        if line.startswith("| stationary_at_exact_u"):
            assert line.count(" | ") == 4  # five cells: the |E dl/d eps| of the rule is escaped
