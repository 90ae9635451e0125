"""Seeds trained as one vmapped ensemble (mfverify.train.ensemble): each member as its solo run."""

import csv
import statistics

import pytest
import torch

from mfverify import objectives
from mfverify.nets import MeanFlowMLP
from mfverify.study.config import load_study, with_objectives
from mfverify.study.plan import plan
from mfverify.study.runner import run_study
from mfverify.train import TrainConfig, train
from mfverify.train.ensemble import Ensemble, train_ensemble
from tests.test_registry import TINY, plugin  # noqa: F401  (the plugin fixture)

SMALL = {"case": "ring8", "steps": 25, "batch": 48, "device": "cpu", "network_options": {"width": 24, "depth": 2}}
BUILTIN = ["fm", "mf_full", "mf_sg", "mf", "mf_nosg", "shortcut", "scm"]


def _cfgs(objective, seeds=(0, 1, 2), **kw):
    extra = {"p": 1.0, "c": 0.03} if objectives.get(objective).weighting else {}
    return [TrainConfig(objective=objective, seed=s, **{**SMALL, **extra, **kw}) for s in seeds]


@pytest.mark.parametrize("objective", BUILTIN)
def test_each_member_trains_as_its_solo_run(objective):
    cfgs = _cfgs(objective)
    ens = train_ensemble(cfgs, progress=False)
    for cfg, member in zip(cfgs, ens):
        solo = train(cfg, progress=False)
        # the first step: the same initial draw and batch, one loss evaluated batched over
        # members: equal to float32 round-off (2^-23 ~ 1.2e-7, a few operations deep)
        assert member.losses[0] == pytest.approx(solo.losses[0], rel=1e-6, abs=1e-7)
        assert len(member.losses) == len(solo.losses) and member.diverged_step == solo.diverged_step
        # after 25 steps of Adam the parameters still agree to round-off growth (a loose
        # bound: 1e-4 of the parameter scale; a member mixed up with another differs by O(1))
        for a, b in zip(member.ema.state_dict().values(), solo.ema.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_analytic_jvp_through_the_ensemble_is_each_members():
    torch.manual_seed(0)
    models = [MeanFlowMLP(2, width=16, depth=2) for _ in range(3)]
    ens = Ensemble(models)
    n = 5
    x, dx = torch.randn(3 * n, 2), torch.randn(3 * n, 2)
    t = torch.rand(3 * n)
    r = t * torch.rand(3 * n)
    dr, dt = torch.zeros(3 * n), torch.ones(3 * n)
    for tangent_grad in (True, False):
        u, du = ens.jvp(x, r, t, dx, dr, dt, tangent_grad=tangent_grad)
        for i, m in enumerate(models):
            s = slice(i * n, (i + 1) * n)
            mu, mdu = m.jvp(x[s], r[s], t[s], dx[s], dr[s], dt[s], tangent_grad=tangent_grad)
            assert torch.allclose(u[s], mu, atol=1e-12) and torch.allclose(du[s], mdu, atol=1e-12)
    # gradients through the tangent (mf_full) reach each member's own parameters only
    u, du = ens.jvp(x, r, t, dx, dr, dt)
    du[:n].sum().backward()
    grads = [p.grad for p in ens.stacked.values() if p.grad is not None]  # the last bias: no effect on du
    assert len(grads) >= 4
    assert all(g[0].abs().sum() > 0 and g[1:].abs().sum() == 0 for g in grads)


def test_a_call_on_part_of_the_batch_is_an_error():
    ens = Ensemble([MeanFlowMLP(2, width=8, depth=1) for _ in range(3)])
    with pytest.raises(ValueError, match="whole batch"):
        ens(torch.randn(7, 2), torch.zeros(7), torch.ones(7))


def test_members_diverge_as_their_solo_runs():
    cfgs = _cfgs("fm", optimizer="sgd", lr=1e6, steps=30, p=0.0)
    ens = train_ensemble(cfgs, progress=False)
    for cfg, member in zip(cfgs, ens):
        solo = train(cfg, progress=False)
        assert solo.diverged_step is not None  # the case is meant to diverge
        assert member.diverged_step == solo.diverged_step
        assert len(member.losses) == len(solo.losses)


def test_ensemble_configurations_must_differ_in_seed_only():
    with pytest.raises(ValueError, match="seed only"):
        train_ensemble([_cfgs("fm")[0], _cfgs("mf")[1]], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        train_ensemble(_cfgs("fm", seeds=(1, 1)), progress=False)


def _results(out):
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # spawns processes
def test_an_ensemble_study_is_deterministic_and_within_the_solo_seed_spread(tmp_path, plugin):  # noqa: F811
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("seeds = 2", "seeds = 3"))
    study = with_objectives(load_study(path), ["fm", "mf", "scm", plugin])
    assert [len(j.seeds) for j in plan(study, tmp_path / "none", ensemble=True)] == [3, 3, 3, 3]
    a = run_study(study, tmp_path / "a", progress=False, ensemble=True)
    b = run_study(study, tmp_path / "b", progress=False, ensemble=True, jobs=2)
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    solo = run_study(study, tmp_path / "solo", progress=False)
    with open(a / "runs.csv") as f:
        assert {r["ensemble"] for r in csv.DictReader(f)} == {"3"}
    ens_rows, solo_rows = _results(a), _results(solo)
    assert [(r["method"], r["seed"], r["nfe"], r["metric"]) for r in ens_rows] == [
        (r["method"], r["seed"], r["nfe"], r["metric"]) for r in solo_rows]  # the same rows, written alike
    for method in ("fm", "mf", "scm", plugin):
        one = lambda rows: [float(r["value"]) for r in rows  # noqa: E731
                            if r["method"] == method and r["nfe"] == "1" and r["metric"] == "flow_map_mean"]
        e, s = one(ens_rows), one(solo_rows)
        spread = statistics.stdev(s)
        assert all(abs(x - y) <= spread for x, y in zip(e, s)), (method, e, s)


def test_an_objective_drawing_from_the_global_generator_is_trained_seed_by_seed_as_its_solo_runs():
    """split_mf draws lambda ~ U(0, 1) from torch's global generator: members sharing that stream
    would not draw their solo runs' numbers, so train_ensemble trains them one by one, bit for bit."""
    cfgs = _cfgs("split_mf", seeds=(0, 1))
    ens = train_ensemble(cfgs, progress=False)
    assert [m.ensemble for m in ens] == [1, 1]
    for cfg, member in zip(cfgs, ens):
        solo = train(cfg, progress=False)
        assert member.losses == solo.losses
        for a, b in zip(member.ema.state_dict().values(), solo.ema.state_dict().values()):
            assert torch.equal(a, b)
    assert [m.ensemble for m in train_ensemble(_cfgs("fm", seeds=(0, 1)), progress=False)] == [2, 2]
