"""The relatives of MeanFlow (mfverify.objectives.relatives): the check battery's verdicts are the
ones the mathematics predicts, and the limits of each family are its named ends."""

import pytest
import torch

from mfverify import check, objectives
from mfverify.nets import MeanFlowMLP
from mfverify.objectives.relatives import RELATIVES

P0 = {"p": 0.0}


def test_the_relatives_are_registered_through_the_entry_points():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="mfverify.objectives")}
    for name in RELATIVES:
        assert eps[name] == f"mfverify.objectives.relatives:{name}"
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


# ------------------------------------------------------------ imf (two heads)


def _imf_broken(model, x0, x1, r, t):
    """imf with its v head regressed on v_c / 2: the head's optimum is v / 2, not v."""
    col = lambda a: a[:, None]  # noqa: E731
    x_t = (1 - col(t)) * x0 + col(t) * x1
    v_c = x1 - x0
    v = model.velocity(x_t, t)
    from mfverify.jvp import jvp

    U, D = jvp(model, x_t, r, t, v.detach(), torch.zeros_like(r), torch.ones_like(t), "auto", tangent_grad=False)
    return (U + col(t - r) * D.detach() - v_c).square().sum(-1) + (v - 0.5 * v_c).square().sum(-1)


def test_imf_is_stationary_with_the_exact_two_head_model_and_a_broken_head_is_not():
    # the exact model's second head is the closed-form v; the battery perturbs both heads
    good = check.run("imf", options=P0, weighting=False, cases=("ring8",), n_points=3)
    assert good.checks["stationary_at_exact_u"].passed, good.table()
    # the battery's random networks have two heads for a two-head loss: at r = t imf is fm on
    # each head, |u(x_t, t, t) - v_c|^2 + |v(x_t, t) - v_c|^2, which reduces_to_fm compares (factor 1)
    assert good.checks["reduces_to_fm"].passed and "both heads" in good.checks["reduces_to_fm"].rule
    assert good.checks["reduces_to_fm"].details["factor"] == pytest.approx(1.0, rel=1e-12)
    bad = check.run(objectives.Objective("imf_broken", _imf_broken, quadratic_in_v_c=True, heads=2),
                    weighting=False, cases=("ring8",), n_points=3)
    assert not bad.checks["stationary_at_exact_u"].passed, bad.table()


def test_imf_with_the_tied_head_is_mf_sg_plus_fm():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=16, depth=2, dtype=torch.float64)  # one head: velocity = u(., t, t)
    x0, x1, r, t = _batch()
    imf = objectives.get("imf")(model, x0, x1, r, t, p=0.0)
    ref = objectives.get("mf_sg")(model, x0, x1, r, t, p=0.0) + objectives.get("fm")(model, x0, x1, r, t, p=0.0)
    assert torch.allclose(imf, ref, rtol=1e-12, atol=0)


def test_two_head_network_heads_are_separate_and_its_jvp_is_the_u_heads():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=16, depth=2, heads=2, dtype=torch.float64)
    x0, x1, r, t = _batch()
    u_tt, v = model(x0, t, t), model.velocity(x0, t)
    assert u_tt.shape == v.shape == x0.shape and (u_tt - v).abs().max() > 1e-3
    from mfverify.jvp import jvp

    zero, one = torch.zeros_like(r), torch.ones_like(t)
    u_a, d_a = jvp(model, x0, r, t, x1, zero, one, "analytic")
    u_f, d_f = jvp(model, x0, r, t, x1, zero, one, "func")
    assert torch.equal(u_a, model(x0, r, t)) and torch.allclose(d_a, d_f, rtol=0, atol=1e-12)
    with pytest.raises(TypeError, match="second head"):
        objectives.get("imf")(lambda x, r, t: x, x0, x1, r, t)


def test_imf_trains_a_two_head_network_and_ensembles_refuse_it():
    from mfverify.train import TrainConfig, train
    from mfverify.train.ensemble import train_ensemble

    cfg = TrainConfig(case="ring8", objective="imf", steps=5, batch=16)
    assert train(cfg, progress=False).model.heads == 2
    with pytest.raises(ValueError, match="heads = 1"):
        TrainConfig(case="ring8", objective="imf", network_options={"heads": 1})
    with pytest.raises(ValueError, match="one-head unconditional"):
        train_ensemble([cfg, TrainConfig(case="ring8", objective="imf", steps=5, batch=16, seed=1)])


# ------------------------------------------------------------ alpha-Flow's curriculum


def test_alpha_curriculum_runs_from_one_to_its_end_value_monotonically():
    from mfverify.objectives.relatives import alpha_schedule

    values = [alpha_schedule(k, 1000, 0.01, 0.2, 0.8) for k in range(1001)]
    assert values[:201] == [1.0] * 201 and values[800:] == [0.01] * 201
    assert all(a >= b for a, b in zip(values, values[1:]))
    obj = objectives.get("alpha_flow")
    opts = obj.resolve_options({"alpha": 0.01, "curriculum": "sigmoid", "curriculum_from": 0.2, "curriculum_to": 0.8})
    assert obj.options_at(0, 1000, opts)["alpha"] == 1.0 and obj.options_at(900, 1000, opts)["alpha"] == 0.01
    assert obj.options_at(500, 1000, obj.resolve_options({"alpha": 0.3}))["alpha"] == 0.3  # no curriculum
    assert not obj.is_quadratic({"alpha": 1.0, "curriculum": "sigmoid"})  # alpha moves: not alpha = 1 throughout
    with pytest.raises(ValueError, match="curriculum_from < curriculum_to"):
        obj.resolve_options({"curriculum": "sigmoid", "curriculum_from": 0.9, "curriculum_to": 0.1})
    with pytest.raises(ValueError, match="'none' or 'sigmoid'"):
        obj.resolve_options({"curriculum": "cosine"})


def test_alpha_flow_inverse_alpha_weights_the_off_diagonal_rows():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=16, depth=2, dtype=torch.float64)
    x0, x1, r, t = _batch()
    r[:8] = t[:8]  # some diagonal rows: flow matching, not weighted
    loss = objectives.get("alpha_flow")
    plain = loss(model, x0, x1, r, t, alpha=0.1, p=0.0)
    weighted = loss(model, x0, x1, r, t, alpha=0.1, p=0.0, inverse_alpha=True)
    assert torch.equal(weighted[:8], plain[:8])
    assert torch.allclose(weighted[8:], plain[8:] / 0.1, rtol=1e-14, atol=0)


# ------------------------------------------------------------ mf_cv's optimal coefficient


def _points(case, n, seed=0):
    from mfverify.cases import get_case

    mixture = get_case(case)
    g = torch.Generator().manual_seed(seed)
    t = 0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    x = (1 - t[:, None]) * mixture.sample(n, generator=g) + t[:, None] * torch.randn(n, mixture.d, generator=g,
                                                                                    dtype=torch.float64)
    return mixture, x, r, t


def test_cv_target_error_at_the_exact_u_is_mf_cv_expected_loss():
    # at u*, E[mf_cv loss | x_t] is the target's variance plus |U - E T|^2 = 0: the sigma-point
    # expected loss (exact, mf_cv is quadratic in v_c) must equal the closed form
    from mfverify.objectives.relatives import cv_target_error
    from mfverify.theory import identities

    mixture, x, r, t = _points("ring8", 6)
    betas = [-0.5, 0.0, 0.3, 1.0]
    closed = cv_target_error(mixture, x, r, t, betas)
    for j, beta in enumerate(betas):
        sigma = identities.expected_loss("mf_cv", mixture, x, r, t, beta=beta, p=0.0)
        # both from the same ODE derivatives (rtol 1e-12): agreement to 1e-9 of the size
        assert torch.allclose(sigma, closed[:, j], rtol=1e-9, atol=1e-9 * float(closed.abs().max())), (beta, sigma, closed[:, j])


def test_cv_target_error_with_a_biased_head_and_the_optimum():
    from mfverify import truth
    from mfverify.objectives.relatives import cv_target_error, optimal_cv_beta
    from mfverify.theory import identities

    mixture, x, r, t = _points("ring8", 5, seed=1)
    u, J, _, du_dt = truth.average_velocity_derivatives(mixture, x, r, t)
    g = torch.Generator().manual_seed(3)
    v = truth.velocity(mixture, x, t)
    v_hat = v + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    beta = 0.4
    # the error by sigma points of v_c | x_t: T_beta - T* = (I - beta A)(v_c - v) - (1 - beta) A (v_hat - v)
    n, k, (xs, rs, ts, v_c), w = identities.sigma_batch(mixture, x, r, t)
    A = ((t - r)[:, None, None] * J).repeat_interleave(k, 0)
    rep = lambda a: a.repeat_interleave(k, 0)  # noqa: E731
    diff = (v_c - rep(v)) - beta * torch.einsum("nab,nb->na", A, v_c - rep(v)) \
        - (1 - beta) * torch.einsum("nab,nb->na", A, rep(v_hat) - rep(v))
    sigma = (diff.square().sum(-1).view(n, k) * w).sum(1)
    closed = cv_target_error(mixture, x, r, t, [beta], v_hat=v_hat, jacobian=J)[:, 0]
    assert torch.allclose(sigma, closed, rtol=1e-10, atol=0)
    best = optimal_cv_beta(mixture, x, r, t, v_hat=v_hat, jacobian=J)
    mean = lambda b: float(cv_target_error(mixture, x, r, t, [b], v_hat=v_hat, jacobian=J).mean())  # noqa: E731
    assert best["error_beta_opt"] == pytest.approx(mean(best["beta"]), rel=1e-12)
    assert mean(best["beta"]) < min(mean(best["beta"] - 0.05), mean(best["beta"] + 0.05))
    assert best["error_beta_opt"] <= min(best["error_beta0"], best["error_beta1"])


@pytest.mark.parametrize("name, options", [("split_mf", {}), ("split_mf", {"lam": 0.3}), ("alpha_flow", {"alpha": 0.7}),
                                           ("psd", {}), ("shortcut", {})])
def test_a_split_of_r_t_stays_inside_it_at_r_equal_t_and_one_ulp_below(name, options):
    """The split point of [r, t] rounds into [r, t]: the exact model refuses r > s, so a split one ulp
    past an end would raise; at r = t and at t - r of one ulp every call has r <= s <= t."""
    from mfverify.cases import get_case
    from mfverify.check import ExactNetwork

    net = ExactNetwork(get_case("ring8"))
    g = torch.Generator().manual_seed(3)
    t = 0.05 + 0.9 * torch.rand(400, generator=g, dtype=torch.float64)
    r = torch.where(torch.arange(400) % 2 == 0, t, torch.nextafter(t, torch.zeros_like(t)))
    x0, x1 = torch.randn(400, 2, generator=g, dtype=torch.float64), torch.randn(400, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    loss = objectives.get(name)(net, x0, x1, r, t, **options)
    assert torch.isfinite(loss).all()
    summary = net.calls.summary()
    assert summary["fraction_r_gt_t"] == 0 and summary["fraction_outside_unit_interval"] == 0
