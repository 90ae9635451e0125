"""The claims report (``python -m mfverify.study claims``): its quick preset end to end, every
claim with a number and a verdict, a broken objective flipping its claim, runs shared by
resolved configuration, per-objective seeds and cases, and the tangent ablation."""

import csv
import dataclasses
import json
import math

import pytest
import torch

from mfverify import check, objectives
from mfverify.check import battery
from mfverify.objectives.core import Objective, _on_path, _sq
from mfverify.study import claims
from mfverify.study.config import load_study, to_toml
from mfverify.study.headlines import Results
from mfverify.study.plan import plan
from mfverify.study.runner import run_study

VERDICTS = {"holds", "fails", "partly", "insufficient", "undetermined"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("claims") / "quick"
    study = load_study("claims", preset="quick")
    run_study(study, out, jobs=2, progress=False)
    return study, out


def _claims_csv(out):
    with open(out / "claims.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_claim_has_a_number_and_a_verdict(quick):
    _, out = quick
    rows = _claims_csv(out)
    assert list(rows[0]) == claims.COLUMNS
    found = {r["claim"] for r in rows}
    assert {f"C{i}" for i in range(1, 14)} <= found
    for claim in found:
        sub = [r for r in rows if r["claim"] == claim]
        verdicts = {r["verdict"] for r in sub}
        assert len(verdicts) == 1, f"{claim} has several verdicts {verdicts}"
        assert verdicts <= (VERDICTS if claim.startswith("C") else {"observed"}), (claim, verdicts)
        assert all(r["rule"] and r["statement"] and r["source"] for r in sub)
        numbers = []
        for r in sub:
            assert r["value"] != "", (claim, r["metric"])
            try:
                numbers.append(float(r["value"]))
            except ValueError:
                pass  # a text value (an interval, "2 / 2")
        assert any(math.isfinite(v) for v in numbers), f"{claim} has no finite number"
    text = (out / "claims.md").read_text()
    for claim in found:
        assert f"## {claim}" in text
    assert "error_vs_nfe_ring8.png" in text and (out / "error_vs_nfe_ring8.png").exists()


def test_the_exact_claims_hold_on_the_quick_preset(quick):
    """C1, C2, C6, C7, C8, C9's exact parts are mathematics, not training: they must hold at any size."""
    _, out = quick
    verdict = {r["claim"]: r["verdict"] for r in _claims_csv(out)}
    for claim in ("C1", "C2", "C6", "C7", "C8"):
        assert verdict[claim] == "holds", claim
    c9 = [r for r in _claims_csv(out) if r["claim"] == "C9" and r["metric"] == "max relative residual"]
    assert c9 and float(c9[0]["value"]) <= 1e-9


def test_a_run_two_names_share_is_trained_once(quick):
    study, out = quick
    assert study.run_config("ring8", "mf_share25", 0) == study.run_config("ring8", "mf", 0)
    record = json.loads((out / "runs" / "ring8" / "mf_share25" / "seed0" / "run.json").read_text())
    assert record["same_run_as"] == "mf"
    assert (out / "runs" / "ring8" / "mf_share25" / "seed0" / "checkpoint.pt").read_bytes() == \
        (out / "runs" / "ring8" / "mf" / "seed0" / "checkpoint.pt").read_bytes()
    res = Results.read(out)
    for nfe in study.eval.nfe:
        assert res.error("ring8", "mf_share25", nfe) == res.error("ring8", "mf", nfe)
    # nothing is left to do, and no job trains mf_share25 on its own
    assert plan(study, out) == []
    fresh = plan(study, out / "elsewhere")
    assert not any(job.objective == "mf_share25" for job in fresh)
    assert any(("mf_share25", 0) in job.aliases for job in fresh)


def test_seeds_of_and_cases_of(quick):
    study, out = quick
    res = Results.read(out)
    seeds = lambda m: sorted(int(r["seed"]) for r in res.runs if r["objective"] == m)  # noqa: E731
    assert seeds("mf_sg") == [0, 1] and seeds("mf") == [0]
    default = load_study("claims", preset="default")
    assert default.study.cases_for("mf_share0") == ("ring8",)
    assert default.study.cases_for("mf_vtan") == ("ring8", "random16d")
    runs = default.study.runs()
    assert ("random16d", "mf_share0", 0) not in runs and ("random16d", "mf_sg", 4) in runs


def test_the_claims_study_reads_back_from_its_config(tmp_path):
    study = load_study("claims", preset="default")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(study))
    again = load_study(path)
    assert again.study == study.study and to_toml(again) == to_toml(study)


@pytest.mark.parametrize("key, value, pattern", [
    ("seeds_of", "{ nope = 2 }", "seeds_of names 'nope'"),
    ("seeds_of", "{ mf = 0 }", "seeds_of.mf must be a positive int"),
    ("cases_of", '{ mf = ["random16d"] }', "cases_of.mf must be a non-empty list of the study's cases"),
    ("report", '"no_colon"', "report must be 'package.module:function'"),
])
def test_bad_per_objective_settings_are_errors(tmp_path, key, value, pattern):
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\ncases = ["ring8"]\nobjectives = ["fm", "mf"]\nbaselines = []\n'
                    f"{key} = {value}\n")
    with pytest.raises(ValueError, match=pattern):
        load_study(path)


def _context(study, out):
    return claims.Context(study, Results.read(out), {**claims.DEFAULTS, **dict(study.study.report_options)})


def test_a_broken_objective_flips_the_claim_it_breaks(quick):
    """C7 reads mf's stationarity from the registered mf: replaced by mf with the wrong tangent
    (v, 0, 0) it fails. C8 covers every registered objective: one whose r = t rows regress on
    1.1 v_c makes it partly."""
    study, out = quick
    ctx = _context(study, out)
    assert claims.c7_stationary(ctx)[0]["verdict"] == "holds"
    original = objectives.get("mf")
    wrong = dataclasses.replace(objectives.get("mf_tangent"), name="mf",
                                options={**objectives.get("mf_tangent").options, "tangent_t": 0.0})
    objectives.registry.register("mf", wrong, replace=True)
    try:
        assert claims.c7_stationary(ctx)[0]["verdict"] == "fails"
    finally:
        objectives.registry.register("mf", original, replace=True)
    assert claims.c7_stationary(ctx)[0]["verdict"] == "holds"

    def scaled_target(model, x_t, v_c, r, t, backend):
        return _sq(model(x_t, r, t) - 1.1 * v_c)

    scaled_target.__name__ = "scaled_target"
    objectives.registry.register("scaled_target", Objective(
        name="scaled_target", loss=_on_path(scaled_target), options={"jvp": "auto"}, weighting=True,
        quadratic_in_v_c=True))
    try:
        rows = claims.c8_reduces_to_fm(ctx)
        assert rows[0]["verdict"] == "partly"
        assert any(r["case"] == "scaled_target" and r["metric"] == "residual" and r["value"] > check.EQUAL_RTOL
                   for r in rows)
    finally:
        objectives.registry.unregister("scaled_target")
    assert claims.c8_reduces_to_fm(ctx)[0]["verdict"] == "holds"


def test_the_quick_preset_is_a_smoke_test_its_trained_claims_insufficient(quick):
    """One seed and 150 steps decide no comparison (issue 26): the trained claims are insufficient, each
    with its reason; the timing claims too (5 rounds); the exact ones keep their verdicts; no X1/X2."""
    _, out = quick
    rows = _claims_csv(out)
    verdict = {r["claim"]: r["verdict"] for r in rows}
    for claim in ("C3", "C4", "C5", "C10", "C11", "C13"):
        assert verdict[claim] == "insufficient", claim
        reason = [r["value"] for r in rows if r["claim"] == claim and r["metric"] == "insufficient evidence"]
        assert reason and ("seed" in reason[0] or "rounds" in reason[0]), (claim, reason)
    for claim in ("C1", "C2", "C6", "C7", "C8"):
        assert verdict[claim] == "holds", claim
    assert not {"X1", "X2"} & set(verdict)
    text = (out / "claims.md").read_text()
    assert "smoke test" in text.split("## ")[0]


def test_a_trained_claims_rule_follows_the_numbers(quick, tmp_path, monkeypatch):
    """C10's tangent rule on results where a wrong tangent wins: the verdict is not 'holds' (the
    evidence rule relaxed to the quick preset's one seed and 150 steps, so that the rule decides)."""
    from mfverify.study.claims import context

    monkeypatch.setattr(context, "EVIDENCE_SEEDS", 1)
    monkeypatch.setattr(context, "EVIDENCE_STEPS", 1)
    study, out = quick
    ctx = _context(study, out)
    for r in ctx.res.rows:
        if r["method"] == "mf_tan_v00" and r["metric"] == "flow_map_mean":
            r["value"] = "0.0"
    rows = claims.c10_ablations(ctx)
    assert rows[0]["verdict"] in ("fails", "partly")


@pytest.mark.parametrize("intervals, verdict", [
    ({}, "holds"),  # every row stable (the real quick preset's rows are replaced by these)
    ({("shortcut", 0.75): (-0.5, -0.1)}, "fails"),  # a row unstable, the control trusted
    ({("mf_sg", 0.75): (-0.5, 0.5)}, "partly"),  # a row undetermined
    ({("mf", 0.75): (-0.5, 0.5), ("shortcut", 0.75): (-0.5, -0.1)}, "partly"),  # the control not stable: untrusted
    ({("net", "mf"): (-0.5, 0.5)}, "partly"),  # trained-network directions: their control not stable, untrusted
    ({("net", "mf"): (-0.5, 0.5), ("net", "mf_sg"): (-0.5, -0.1)}, "partly"),  # untrusted: not a failure
    ({("net", "mf_sg"): (-0.5, -0.1)}, "fails"),  # unstable on the network's directions, its control trusted
    ({("net", "mf_sg"): (-0.5, 0.5)}, "partly"),  # undetermined there: the weakest class decides
])
def test_c12_rule_follows_the_intervals_and_its_control(quick, monkeypatch, intervals, verdict):
    from mfverify.theory import stability

    study, out = quick
    ctx = _context(study, out)
    frac = study.train.frac_r_eq_t

    def fake(obj, case, law, n_points, n_features, frac_r_eq_t, **kw):
        if kw.get("directions") is not None:  # C12's trained-network class
            key = ("net", obj)
        else:
            key = (obj, frac_r_eq_t) if law == "uniform" or obj != "mf" else (obj + "_logit", frac_r_eq_t)
        lo, hi = intervals.get(key, (1.0, 2.0))
        return stability.EigenSummary(min_real=lo, interval=(lo, hi), min_real_normalised=(lo + hi) / 2,
                                      interval_normalised=(lo, hi), max_abs=1.0, min_real_symmetric=lo,
                                      asymmetry=0.0, n_points=n_points, n_features=n_features)

    assert frac == 0.75
    monkeypatch.setattr(stability, "stability", fake)
    rows = claims.c12_stability(ctx)
    assert rows[0]["verdict"] == verdict, [(r["metric"], r["value"]) for r in rows]


def test_mf_tangent_at_its_default_is_mf_and_wrong_tangents_are_not_stationary():
    torch.manual_seed(0)
    (model, x0, x1, r, t, _w), = battery._networks(0, "mlp", dims=(2,))
    a = objectives.get("mf_tangent")(model, x0, x1, r, t)
    b = objectives.get("mf")(model, x0, x1, r, t)
    assert torch.equal(a, b)
    for dr, dt in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)):
        loss = battery._Loss("mf_tangent", {"tangent_r": dr, "tangent_t": dt})
        assert not check.check_stationary(loss, ["ring8"], 0, 2, 0).passed, (dr, dt)
    assert check.check_stationary(battery._Loss("mf_tangent", None), ["ring8"], 0, 2, 0).passed
    with pytest.raises(ValueError, match="tangent_t must be 0 or 1"):
        objectives.get("mf_tangent").resolve_options({"tangent_t": 0.5})


def test_rk4_reference_agrees_with_the_flow_map():
    """C1's independent reference: classical RK4 against truth.flow_map (DOP853, rtol 1e-12) on
    ring8; RK4's error at 2000 steps is ~1e-8 (halving the step: 16x smaller)."""
    from mfverify import truth
    from mfverify.cases import get_case

    m = get_case("ring8")
    x1 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = truth.flow_map(m, x1, t=torch.ones(8, dtype=torch.float64), r=torch.zeros(8, dtype=torch.float64))
    assert (claims.exact.rk4_flow(m, x1, 4000) - ref).abs().max() < 1e-8


def test_a_timing_verdict_is_undetermined_where_its_rounds_straddle_the_threshold():
    """Issue 26, part 2: holds only if the lower quartile of the per-round ratios is above the threshold,
    fails only if the upper one is below; a load that slows some rounds cannot reverse the verdict."""
    from mfverify.study.claims.trained import _above, _ratio

    assert _above(1.05, 1.3, 1.0) is True
    assert _above(0.8, 0.95, 1.0) is False
    assert _above(0.9, 1.2, 1.0) is None
    fast = {"mf": [1.0] * 12, "mf_sg": [1.25] * 12}
    assert _above(*_ratio(fast, "mf_sg", "mf")[1:], 1.0) is True
    loaded = {"mf": [1.0] * 6 + [3.0] * 6, "mf_sg": [1.25] * 6 + [2.0] * 6}  # half the rounds under load
    median, low, high = _ratio(loaded, "mf_sg", "mf")
    assert low < 1.0 < high and _above(low, high, 1.0) is None  # undetermined, not "fails"


def test_the_evidence_rule_names_what_is_missing():
    from types import SimpleNamespace

    from mfverify.study.claims.context import shortfall

    class Res:
        def stats(self, case, method):
            return 0.3, 0.01, {"mf": 3, "mf_nosg": 1}[method]

    ctx = SimpleNamespace(steps=4000, res=Res(), cases_with=lambda m: ["ring8"])
    assert shortfall(ctx, ("mf",)) is None
    assert shortfall(ctx, ("mf", "mf_nosg")) == "1 seed of mf_nosg (needs >= 3)"
    assert "150 training steps" in shortfall(SimpleNamespace(steps=150, res=Res(), cases_with=lambda m: ["ring8"]),
                                             ("mf",))
    assert shortfall(ctx, rounds=5) == "5 timing rounds (needs >= 10)"
    assert shortfall(ctx, ("mf",), seeds=5) == "3 seeds of mf (needs >= 5)"
