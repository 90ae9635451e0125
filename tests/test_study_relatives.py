"""The relatives' studies: study-local variants, conditional runs against the exact guided map,
the quick presets of relatives_compare and relatives_guided, and the headline claims' rules."""

import csv

import pytest
import torch

from mfverify import truth
from mfverify.cases import get_case
from mfverify.sample import average_velocity_sampler, uniform_grid
from mfverify.study import headlines
from mfverify.study.config import load_study, to_toml
from mfverify.study.exact import guided_targets
from mfverify.study.runner import run_study
from mfverify.study.store import guided_path, run_dir
from mfverify.train import load_checkpoint

BASE = """[study]
name = "variants"
cases = ["ring8"]
objectives = ["mf", "alpha_fixed"]
variants = {{ {variants} }}
baselines = []
seeds = 1

[train]
steps = 5
batch = 16
"""


@pytest.mark.parametrize("variants, pattern", [
    ('mf = "alpha_flow"', "shadows the registered objective"),
    ('alpha_fixed = "other", other = "mf"', "names another variant"),
    ('alpha_fixed = "nope"', "unknown objective"),
])
def test_bad_variants_are_errors(tmp_path, variants, pattern):
    path = tmp_path / "v.toml"
    path.write_text(BASE.format(variants=variants))
    with pytest.raises(ValueError, match=pattern):
        load_study(path)


def test_a_variant_trains_its_objective_with_its_options_and_reads_back(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text(BASE.format(variants='alpha_fixed = "alpha_flow"') + "\n[objective_options.alpha_fixed]\nalpha = 0.2\n")
    study = load_study(path)
    cfg = study.run_config("ring8", "alpha_fixed", 0)
    assert cfg.objective == "alpha_flow" and dict(cfg.objective_options) == {"alpha": 0.2}
    again = tmp_path / "again.toml"
    again.write_text(to_toml(study))
    assert load_study(again).study == study.study


def _rows(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("relatives")
    rel = run_study(load_study("relatives_compare", preset="quick"), base / "rel", progress=False)
    guided = run_study(load_study("relatives_guided", preset="quick"), base / "guided", progress=False)
    return rel, guided


def test_relatives_compare_quick_preset_trains_every_relative(quick_runs):
    rel, _ = quick_runs
    study = load_study("relatives_compare", preset="quick")
    methods = {r["method"] for r in _rows(rel)}
    assert methods >= set(study.study.objectives)
    for name in ("summary.md", "error_vs_nfe_ring8.png", "samples_ring8.png", "field_error_ring8.png"):
        assert (rel / name).stat().st_size > 0


def test_conditional_runs_are_measured_against_the_exact_guided_map(quick_runs):
    _, out = quick_runs
    study = load_study("relatives_guided", preset="quick")
    case = study.study.cases[0]
    mixture = get_case(case)
    targets = guided_targets(study, case)
    assert set(targets) == {"w1", "w2", "w3", "w2_t0.3-1"}  # fm and mf (w = 1); w2 and w1_k05 share w' = 2
    noise = torch.load(out / "truth" / f"{case}.pt", weights_only=True)["x1"]
    blob = torch.load(guided_path(out, case, "w2"), weights_only=True)
    # the stored target is the exact guided map of those labels
    again = truth.guided_flow_map(mixture, noise[:16], t=1.0, r=0.0, labels=blob["labels"][:16], w=2.0)
    assert torch.allclose(blob["phi"][:16], again, rtol=0, atol=1e-12)
    # the study's one-step error of mf_w1_k05 is its model's, sampled with the labels, against that map
    _, _, ema = load_checkpoint(run_dir(out, case, "mf_w1_k05", 0) / "checkpoint.pt")
    with torch.no_grad():
        u = lambda x, r, t: ema(x.float(), r.float(), t.float(), labels=blob["labels"]).double()  # noqa: E731
        x, _ = average_velocity_sampler(u, noise, uniform_grid(1))
    mine = (x - blob["phi"]).norm(dim=1).mean().item()
    theirs = [float(r["value"]) for r in _rows(out) if r["method"] == "mf_w1_k05" and r["nfe"] == "1"
              and r["metric"] == "flow_map_mean"]
    assert theirs == [pytest.approx(mine, rel=1e-6)]  # float32 model, float64 metric
    summary = (out / "summary.md").read_text()
    assert "exact guided map" in summary and "w = 2" in summary


def test_headlines_give_every_claim_numbers_and_a_verdict(quick_runs):
    rel, guided = quick_runs
    rows = headlines.compute(rel, guided, points={"ring8": 50})
    claims = {r["claim"] for r in rows}
    assert claims == {"R1", "R2", "R3", "R4", "R5", "R6", "R7"}
    for r in rows:
        assert r["verdict"] in ("holds", "fails", "partly") and r["rule"] and r["source"]
        assert isinstance(r["value"], (int, float))


def _fake(errors: dict, seeds=3):
    """A Results whose one-step errors are ``errors[method] + 0.01 * seed``."""
    rows = [{"case": "ring8", "method": m, "nfe": "1", "metric": "flow_map_mean", "seed": str(s),
             "value": str(v + 0.01 * s)} for m, v in errors.items() for s in range(seeds)]
    runs = [{"case": "ring8", "objective": m, "seed": str(s), "steps": "10", "wall_seconds": "1.0",
             "diverged_step": ""} for m in errors for s in range(seeds)]
    return headlines.Results(None, rows, runs)


def test_a_headline_verdict_follows_its_rule():
    assert headlines.alpha_curriculum(_fake({"alpha_curriculum": 0.2, "alpha_small": 0.4}))[0]["verdict"] == "holds"
    assert headlines.alpha_curriculum(_fake({"alpha_curriculum": 0.4, "alpha_small": 0.2}))[0]["verdict"] == "fails"
    # within the seeds' scatter (standard error ~0.006 each): not a win
    assert headlines.alpha_curriculum(_fake({"alpha_curriculum": 0.40, "alpha_small": 0.41}))[0]["verdict"] == "fails"


def test_ensembles_leave_two_head_and_conditional_runs_to_train_one_by_one(tmp_path):
    from mfverify.study.plan import plan

    path = tmp_path / "e.toml"
    path.write_text(BASE.format(variants='alpha_fixed = "alpha_flow"').replace('objectives = ["mf", "alpha_fixed"]',
                                                                             'objectives = ["mf", "imf"]')
                    .replace("seeds = 1", "seeds = 2").replace("variants = {  }", ""))
    jobs = plan(load_study(path), tmp_path / "out", ensemble=True)
    assert sorted((j.objective, j.seeds) for j in jobs) == [("imf", (0,)), ("imf", (1,)), ("mf", (0, 1))]
