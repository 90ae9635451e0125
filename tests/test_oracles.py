"""The oracle objectives of docs/MATH.md §8 (mfverify.objectives.oracles): registered, exact at u*,
and trainable with the case's mixture."""

import pytest
import torch

from mfverify import objectives
from mfverify.cases import get_case
from mfverify.objectives.oracles import ORACLES
from mfverify.theory import identities


def _points(n=5, seed=0):
    mixture = get_case("ring8")
    g = torch.Generator().manual_seed(seed)
    t = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    r[0] = t[0]
    x = (1 - t[:, None]) * mixture.sample(n, generator=g) + t[:, None] * torch.randn(n, 2, generator=g,
                                                                                    dtype=torch.float64)
    return mixture, x, r, t


def test_oracles_are_registered_and_need_the_mixture():
    for name in ORACLES:
        obj = objectives.get(name)
        assert name in objectives.names() and obj.needs_truth and obj.doc
    mixture, x, r, t = _points()
    with pytest.raises(TypeError, match="needs the exact mixture"):
        objectives.get("mf_oracle")(identities.ExactModel(mixture), x, x, r, t)


@pytest.mark.parametrize("name", ORACLES)
def test_the_exact_u_is_stationary(name):
    mixture, x, r, t = _points()
    h = lambda x_, r_, t_: torch.sin(x_ + t_[:, None] - 0.5 * r_[:, None])  # noqa: E731
    g, scale = identities.population_gradient_with_scale(name, mixture, h, x, r, t, p=0.0)  # passes the mixture
    # exact by sigma points (declared and verified quadratic); zero to the ODE's ~1e-10
    assert (g.abs() / scale).max() < 1e-8


def test_mf_oracle_and_u_regress_vanish_pointwise_at_u_star():
    # no label noise: at u* the residual is the MeanFlow identity (mf_oracle) or zero (u_regress)
    mixture, x, r, t = _points()
    model = identities.ExactModel(mixture)
    x1 = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = (x - t[:, None] * x1) / (1 - t[:, None])  # any pair with x_t = x
    for name in ("mf_oracle", "u_regress"):
        loss = objectives.get(name)(model, x0, x1, r, t, mixture=mixture, p=0.0)
        assert loss.max() < 1e-18, (name, loss)


def test_oracles_train_with_the_cases_mixture():
    from mfverify.train import TrainConfig, train

    for name in ORACLES:
        result = train(TrainConfig(case="ring8", objective=name, steps=3, batch=16), progress=False)
        assert result.diverged_step is None and len(result.losses) == 3


@pytest.mark.parametrize("name, like_fm", [("mf_vtan", True), ("mf_oracle", False), ("fm_oracle", False),
                                           ("u_regress", False)])
def test_the_battery_runs_on_oracles(name, like_fm):
    # the battery hands an oracle its case's mixture; at r = t only mf_vtan's target is v_c
    # (the others regress on v or u*, so they reduce to fm_oracle, not to fm)
    from mfverify import check

    report = check.run(name, cases=("ring8",), weighting=False, n_points=2)
    assert report.checks["stationary_at_exact_u"].passed, report.table()
    assert report.checks["reduces_to_fm"].passed == like_fm


def test_oracles_compare_study_loads_and_shares_objectives_compares_runs():
    # its fm, mf, mf_sg and mf_full runs are configured exactly as objectives_compare's
    from mfverify.study.config import load_study

    oracles, base = load_study("oracles_compare", "default"), load_study("objectives_compare", "default")
    for obj in ("fm", "mf", "mf_sg", "mf_full"):
        for case in ("ring8", "random16d"):
            assert oracles.run_config(case, obj, 0) == base.run_config(case, obj, 0)
