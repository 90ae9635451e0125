"""The relatives of MeanFlow (mfverify.relatives): the check battery's verdicts are the
ones the mathematics predicts, and the limits of each family are its named ends."""

import pytest
import torch

from mfverify import check, objectives
from mfverify.models import MeanFlowMLP
from mfverify.relatives import RELATIVES

P0 = {"p": 0.0}


def test_the_relatives_are_registered_through_the_entry_points():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="mfverify.objectives")}
    for name in RELATIVES:
        assert eps[name] == f"mfverify.relatives:{name}"
        assert name in objectives.names() and objectives.get(name).doc


@pytest.mark.parametrize("name, options, reference", [
    ("split_mf", {}, None),                 # lambda ~ U(0, 1)
    ("split_mf", {"lam": 0.5}, "shortcut"),  # the midpoint split is Shortcut's target
    ("modular_mf", {"lam": 0.0}, "mf"),
    ("mf_cv", {"beta": 0.3}, None),
    ("mf_cv", {"beta": 1.0}, "mf"),
    ("mf_cv", {"beta": 0.0}, "mf_sg"),
    ("lsd", {}, None),                       # self-distillation: no v_c off the diagonal
    ("esd", {}, None),
    ("psd", {}, None),                       # s uniform on [r, t]
    ("psd", {"split": "midpoint"}, "shortcut"),  # the midpoint two-step teacher is Shortcut's
])
def test_stationary_at_u_star_and_its_named_ends(name, options, reference):
    report = check.run(name, reference=reference, options={**P0, **options}, weighting=False, cases=("ring8",),
                       n_points=3)
    assert report.checks["reduces_to_fm"].passed
    assert report.checks["stationary_at_exact_u"].passed, report.table()
    if reference:
        eq = report.checks["equivalent_to_reference"]
        assert eq.passed and eq.details.get("factor", 1.0) == pytest.approx(1.0), report.table()


@pytest.mark.parametrize("name, options, n_samples", [
    ("modular_mf", {"lam": 1.0}, 20000),   # mf_nosg: the tangent's gradient moves the fixed point
    ("alpha_flow", {"alpha": 1.0}, 20000),  # regression on v_c: its optimum is v, not u
    ("alpha_flow", {"alpha": 0.5}, 3000),   # not polynomial in v_c: the Monte Carlo route
])
def test_not_stationary_at_u_star(name, options, n_samples):
    report = check.run(name, options={**P0, **options}, weighting=False, cases=("ring8",), n_points=2,
                       n_samples=n_samples)
    assert report.checks["reduces_to_fm"].passed
    assert not report.checks["stationary_at_exact_u"].passed, report.table()


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.2
    r = t * torch.rand(n, generator=g, dtype=torch.float64) * 0.9  # r < t everywhere
    return x0, x1, r, t


def test_alpha_flow_tends_to_alpha_squared_times_mf_in_value_and_alpha_times_in_gradient():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=32, depth=2, dtype=torch.float64)
    x0, x1, r, t = _batch()
    mf = objectives.get("mf")(model, x0, x1, r, t, p=0.0).mean()
    grad_mf = torch.autograd.grad(mf, list(model.parameters()))
    errors = []
    for alpha in (1e-2, 1e-3):
        a = objectives.get("alpha_flow")(model, x0, x1, r, t, p=0.0, alpha=alpha).mean()
        grad_a = torch.autograd.grad(a, list(model.parameters()))
        value_ratio = (a / mf).item() / alpha**2
        grad_ratio = sum((ga * gm).sum() for ga, gm in zip(grad_a, grad_mf)) / sum(gm.square().sum() for gm in grad_mf)
        errors.append((abs(value_ratio - 1), abs(grad_ratio.item() / alpha - 1)))
    # the remainders are O(alpha): ten times smaller alpha, about ten times smaller error
    for (v1, g1), (v2, g2) in [errors]:
        assert v2 < 0.2 * v1 + 1e-9 and g2 < 0.2 * g1 + 1e-9, errors
    assert errors[-1][0] < 0.05 and errors[-1][1] < 0.05, errors


def test_split_mf_with_a_fixed_split_is_deterministic_and_options_are_checked():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=16, depth=2, dtype=torch.float64)
    x0, x1, r, t = _batch()
    loss = objectives.get("split_mf")
    assert torch.equal(loss(model, x0, x1, r, t, lam=0.3), loss(model, x0, x1, r, t, lam=0.3))
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        loss(model, x0, x1, r, t, lam=1.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\]"):
        objectives.get("alpha_flow")(model, x0, x1, r, t, alpha=0.0)
    with pytest.raises(ValueError, match="split must be 'uniform' or 'midpoint'"):
        objectives.get("psd")(model, x0, x1, r, t, split="random")
    with pytest.raises(ValueError, match="finite"):
        objectives.get("mf_cv")(model, x0, x1, r, t, beta=float("inf"))
