"""Objectives (MATH.md §4): the sCM identity, r = t reductions, stationary points, JVP back-ends."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfverify import objectives, truth
from mfverify.cases import get_case
from mfverify.check.testing import batches, mixtures, points_on_path
from mfverify.jvp import BACKENDS
from mfverify.nets import MeanFlowMLP
from mfverify.theory import identities
from mfverify.times import sample_times

pytestmark = pytest.mark.float64  # numerical truth, compared at float64 tolerances

MEANFLOW = ["mf_full", "mf_sg", "mf", "mf_nosg", "shortcut"]
# "compiled" compiles once per model and shape (seconds): tested on one model below
EAGER_BACKENDS = [b for b in BACKENDS if b != "compiled"]


def _per_sample_grads(loss, model):
    params = list(model.parameters())
    return [torch.cat([g.flatten() for g in torch.autograd.grad(li, params, retain_graph=True)]) for li in loss]


@given(batches(n=4, d=st.integers(1, 5), r_zero=True))
def test_scm_gradient_is_half_t_times_mf_gradient(batch):
    model, x0, x1, r, t = batch
    g_scm = _per_sample_grads(objectives.get("scm")(model, x0, x1, r, t), model)
    g_mf = _per_sample_grads(objectives.get("mf")(model, x0, x1, r, t), model)
    for i in range(len(t)):
        ref = 0.5 * t[i] * g_mf[i]
        # float64 round-off of two different computation graphs
        assert (g_scm[i] - ref).norm() <= 1e-10 * ref.norm().clamp_min(1e-30)


def test_scm_ignores_the_r_it_is_given():
    torch.manual_seed(0)
    model = MeanFlowMLP(2, width=16).double()
    x0, x1 = torch.randn(6, 2), torch.randn(6, 2)
    t = torch.rand(6)
    a = objectives.get("scm")(model, x0, x1, torch.zeros(6), t)
    b = objectives.get("scm")(model, x0, x1, 0.5 * t, t)
    assert torch.equal(a, b)


@given(batches(n=4, d=st.integers(1, 5), r_eq_t=True))
def test_every_meanflow_objective_is_fm_where_r_equals_t(batch):
    model, x0, x1, r, t = batch
    ref = objectives.get("fm")(model, x0, x1, r, t)
    g_ref = _per_sample_grads(ref, model)
    for name in MEANFLOW:
        loss = objectives.get(name)(model, x0, x1, r, t)
        assert (loss - ref).abs().max() <= 1e-12 * ref.abs().max().clamp_min(1)
        for g, gr in zip(_per_sample_grads(loss, model), g_ref):
            assert (g - gr).norm() <= 1e-12 * gr.norm().clamp_min(1)


# objectives that draw random numbers inside the loss, with the draw fixed by an option
FIXED_DRAWS = {"split_mf": {"lam": 0.3}, "psd": {"split": "midpoint"}}


@given(batches(n=4, d=st.integers(1, 5)))
def test_jvp_backends_agree_in_value_and_gradient(batch):
    model, x0, x1, r, t = batch
    for name in objectives.names():
        results = []
        fixed = dict(FIXED_DRAWS.get(name, {}))
        if objectives.get(name).needs_truth:  # the oracles: a mixture of the batch's dimension
            from mfverify.cases import GaussianMixture

            d = x0.shape[1]
            fixed["mixture"] = GaussianMixture([0.5, 0.5], torch.stack([torch.ones(d), -torch.ones(d)]),
                                               0.3 * torch.eye(d).expand(2, d, d))
        for backend in EAGER_BACKENDS:
            loss = objectives.get(name)(model, x0, x1, r, t, jvp=backend, **fixed)
            grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss.sum(), list(model.parameters()))])
            results.append((loss.detach(), grad))
        for loss, grad in results[1:]:
            scale = max(1.0, results[0][1].abs().max().item())
            assert (loss - results[0][0]).abs().max() <= 1e-12 * max(1.0, loss.abs().max().item())
            assert (grad - results[0][1]).abs().max() <= 1e-12 * scale


def test_compiled_backend_equals_func_for_a_plain_module():
    class Plain(torch.nn.Module):  # no jvp method: the generic back-ends only
        def __init__(self):
            super().__init__()
            self.inner = MeanFlowMLP(2, width=16, depth=2)

        def forward(self, x, r, t):
            return self.inner(x, r, t)

    torch.manual_seed(5)
    model = Plain().double()
    x0, x1 = torch.randn(16, 2), torch.randn(16, 2)
    r, t = sample_times(16, frac_r_eq_t=0.25, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    for name in ("mf", "mf_sg", "scm", "mf_full"):
        ref = objectives.get(name)(model, x0, x1, r, t, jvp="func")
        got = objectives.get(name)(model, x0, x1, r, t, jvp="compiled")
        g_ref = torch.autograd.grad(ref.sum(), list(model.parameters()))
        g_got = torch.autograd.grad(got.sum(), list(model.parameters()))
        # float64; the compiled graph fuses and reorders sums: round-off, 1e-12 relative
        assert (got - ref).abs().max() <= 1e-12 * max(1.0, ref.abs().max().item())
        assert all((a - b).abs().max() <= 1e-12 * max(1.0, b.abs().max().item()) for a, b in zip(g_got, g_ref))


@pytest.mark.parametrize("name", ["mf_full", "mf_nosg"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_through_the_jvp_matches_finite_differences(name, backend):
    torch.manual_seed(1)
    model = MeanFlowMLP(3, width=16, depth=2).double()
    x0, x1 = torch.randn(8, 3), torch.randn(8, 3)
    r, t = sample_times(8, frac_r_eq_t=0.0, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = list(model.parameters())
    direction = [torch.randn_like(p) for p in params]
    loss = objectives.get(name)(model, x0, x1, r, t, jvp=backend).sum()
    analytic = sum((g * v).sum() for g, v in zip(torch.autograd.grad(loss, params), direction))
    eps = 1e-6  # central differences: truncation ~eps^2, round-off ~1e-16/eps ~1e-10 relative

    def shifted(sign):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(sign * eps * v)
        value = objectives.get(name)(model, x0, x1, r, t, jvp=backend).sum().item()
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(sign * eps * v)
        return value

    fd = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(fd - analytic.item()) <= 1e-6 * abs(analytic.item())


def test_adaptive_weighting_divides_by_the_detached_loss():
    torch.manual_seed(3)
    model = MeanFlowMLP(2, width=16).double()
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    r, t = sample_times(5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    plain = objectives.get("mf")(model, x0, x1, r, t)
    weighted = objectives.get("mf")(model, x0, x1, r, t, p=0.5, c=0.1)
    assert torch.allclose(weighted, plain / (plain.detach() + 0.1) ** 0.5, rtol=1e-14)
    g_w = torch.autograd.grad(weighted.sum(), list(model.parameters()))
    g_ref = torch.autograd.grad((plain / (plain.detach() + 0.1) ** 0.5).sum(), list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-13, atol=1e-15) for a, b in zip(g_w, g_ref))


# ------------------------------------------------ stationary points, exactly


def _h(d, seed):
    """A smooth random direction: a small random network."""
    torch.manual_seed(seed)
    return MeanFlowMLP(d, width=16, depth=2).double()


def _wavy(d, seed, frequency=3.0):
    """A smooth random direction with a large Jacobian, ``sin(W x + b t + c)``: its
    effects (the mf_nosg term, ~ J_x h) stand out of Monte Carlo noise (~ |h|)."""
    g = torch.Generator().manual_seed(seed)
    W = frequency * torch.randn(d, d, generator=g)
    b, c = torch.randn(d, generator=g), torch.randn(d, generator=g)
    return lambda x, r, t: torch.sin(x @ W.T + t[:, None] * b + c)


def _points(mixture, seed, n=3):
    g = torch.Generator().manual_seed(seed)
    t = 0.2 + 0.8 * torch.rand(n, generator=g)
    r = t * torch.rand(n, generator=g)
    return points_on_path(mixture, t, seed), r, t


def _relative(grad, h, x, r, t):
    return (grad.abs() / h(x, r, t).norm(dim=1).detach()).max().item()


@pytest.mark.parametrize("case", ["gauss2d_aniso", "gauss1d", "bimodal1d", "ring8"])
@pytest.mark.parametrize("name", ["fm", "mf_full", "mf_sg", "mf", "shortcut"])
def test_exact_average_velocity_is_stationary(case, name):
    m = get_case(case)
    x, r, t = _points(m, 5)
    if name == "fm":
        r = t.clone()
    h = _h(m.d, 6)
    grad = identities.population_gradient(name, m, h, x, r, t)
    # closed form: round-off; ODE route: solver error ~1e-10 times O(1) factors
    assert _relative(grad, h, x, r, t) <= 1e-8


@given(gm=mixtures(K=st.integers(1, 3), d=st.integers(1, 3), min_log10_eig=-2.0), seed=st.integers(0, 10**6))
def test_exact_average_velocity_is_stationary_on_random_mixtures(gm, seed):
    x, r, t = _points(gm, seed, n=2)
    h = _h(gm.d, seed)
    for name in ["mf_full", "mf_sg", "mf", "shortcut"]:
        grad = identities.population_gradient(name, gm, h, x, r, t)
        assert _relative(grad, h, x, r, t) <= 1e-8


@pytest.mark.parametrize("case", ["gauss2d_aniso", "ring8"])
def test_mf_nosg_is_not_stationary_and_its_gradient_is_the_extra_term(case):
    m = get_case(case)
    x, r, t = _points(m, 7)
    h = _h(m.d, 8)
    grad = identities.population_gradient("mf_nosg", m, h, x, r, t)
    extra = identities.nosg_extra_term_gradient(m, h, x, r, t)
    assert _relative(grad, h, x, r, t) >= 1e-4  # clearly non-zero: 4+ orders above the 1e-8 bar
    assert (grad - extra).abs().max() <= 1e-8 * extra.abs().max()


def test_exact_moment_computation_agrees_with_monte_carlo():
    m = get_case("ring8")
    # long intervals late in the path: the mf_nosg term grows with (t - r) and Cov(v_c | x_t)
    t, r = torch.tensor([0.95, 0.8]), torch.zeros(2)
    x = points_on_path(m, t, 3)
    h = _wavy(2, 10, frequency=1.0)
    exact = identities.population_gradient("mf_nosg", m, h, x, r, t)
    mc, se = identities.population_gradient_mc(
        "mf_nosg", m, h, x, r, t, n_samples=100_000, generator=torch.Generator().manual_seed(11)
    )
    assert ((exact - mc).abs() / se).max() <= 5.0  # 5 standard errors
    assert (exact.abs() / se).max() > 5.0  # and the MC resolves the non-zero value


def test_adaptive_weighting_moves_the_stationary_point_on_a_mixture():
    m = get_case("ring8")
    t, r = torch.tensor([0.8, 0.4]), torch.zeros(2)
    x = points_on_path(m, t, 3)
    h = _wavy(2, 10, frequency=1.0)
    gen = torch.Generator().manual_seed(14)
    plain, se0 = identities.population_gradient_mc("mf", m, h, x, r, t, n_samples=100_000, generator=gen)
    assert (plain.abs() / se0).max() <= 5.0  # p = 0: consistent with the exact zero
    moved, se1 = identities.population_gradient_mc("mf", m, h, x, r, t, n_samples=100_000, generator=gen, p=1.0, c=1e-2)
    assert (moved.abs() / se1).max() > 5.0


def test_adaptive_weighting_keeps_the_stationary_point_of_a_single_gaussian():
    # given x_t, v_c is Gaussian, so the residual R is symmetric about 0 and
    # E[R / (|R|^2 + c)^p] = 0: weighting only moves the fixed point when the
    # conditional law of v_c is asymmetric (a mixture)
    m = get_case("gauss2d_aniso")
    t, r = torch.tensor([0.8, 0.4]), torch.zeros(2)
    x = points_on_path(m, t, 12)
    h = _wavy(2, 13, frequency=1.0)
    gen = torch.Generator().manual_seed(15)
    moved, se = identities.population_gradient_mc("mf", m, h, x, r, t, n_samples=100_000, generator=gen, p=1.0, c=1e-2)
    assert (moved.abs() / se).max() <= 5.0


@pytest.mark.parametrize("case", ["gauss2d_aniso", "bimodal1d", "ring8"])
def test_mf_full_at_the_exact_u_has_the_flow_matching_irreducible_variance(case):
    m = get_case(case)
    x, r, t = _points(m, 15)
    expected = identities.expected_loss("mf_full", m, x, r, t)
    _, cov = truth.conditional_moments(m, x, t)
    variance = cov.diagonal(dim1=1, dim2=2).sum(-1)  # E|v_c - v(x_t, t)|^2 given x_t
    assert torch.allclose(expected, variance, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["gauss2d_aniso", "bimodal1d", "ring8"])
@pytest.mark.parametrize("name", ["mf", "mf_nosg"])
def test_mf_at_the_exact_u_has_the_amplified_variance(case, name):
    # mf's target v_c - (t-r)(J_x u v_c + d_t u) carries the noise (I - (t-r) J_x u) v_c:
    # at u* its population loss is tr[M Cov(v_c | x) M^T], M = I - (t-r) J_x u (MATH.md §4,
    # the second term of mf_nosg's loss), not mf_full's tr Cov
    m = get_case(case)
    x, r, t = _points(m, 16)
    expected = identities.expected_loss(name, m, x, r, t)
    _, cov = truth.conditional_moments(m, x, t)
    M = torch.eye(m.d) - (t - r)[:, None, None] * truth.average_velocity_jacobian(m, x, r, t)
    amplified = torch.einsum("nab,nbc,nac->n", M, cov, M)
    # sigma points are exact for a loss quadratic in v_c: round-off of the solver's
    # derivatives (rtol 1e-12) and of the sums, well inside 1e-9
    assert torch.allclose(expected, amplified, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(expected, cov.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-3)  # differs from mf_full's


# ---------------------------------------------------------------- bad input


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return MeanFlowMLP(2, width=8).double(), torch.randn(4, 2), torch.randn(4, 2), torch.full((4,), 0.2), torch.full((4,), 0.7)


def test_unknown_objective_lists_the_known_ones():
    with pytest.raises(ValueError, match="known objectives: fm, mf_full, mf_sg, mf, mf_nosg, shortcut, scm"):
        objectives.get("meanflow")
    names = objectives.names()  # MATH.md §4's seven, then the relatives (mfverify's own entry points)
    assert names[:7] == ["fm", "mf_full", "mf_sg", "mf", "mf_nosg", "shortcut", "scm"]
    assert set(names[7:]) == {"split_mf", "modular_mf", "mf_cv", "alpha_flow", "imf", "lsd", "esd", "psd",
                              "fm_oracle", "mf_vtan", "mf_oracle", "u_regress", "mf_tangent"}


def test_r_greater_than_t_is_rejected(batch):
    model, x0, x1, r, t = batch
    with pytest.raises(ValueError, match="r must be <= t"):
        objectives.get("mf")(model, x0, x1, t, r)


def test_mismatched_shapes_are_rejected(batch):
    model, x0, x1, r, t = batch
    with pytest.raises(ValueError, match="x0 and x1 must both have shape"):
        objectives.get("mf")(model, x0, x1[:, :1], r, t)
    with pytest.raises(ValueError, match=r"r and t must have shape \(4,\)"):
        objectives.get("mf")(model, x0, x1, r[:3], t)


def test_model_returning_the_wrong_shape_is_rejected(batch):
    _, x0, x1, r, t = batch
    with pytest.raises(ValueError, match=r"model\(x, r, t\) must return a tensor of shape \(4, 2\)"):
        objectives.get("fm")(lambda x, r, t: x[:, :1], x0, x1, r, t)


def test_non_finite_inputs_are_rejected(batch):
    model, x0, x1, r, t = batch
    x0 = x0.clone()
    x0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x0 must be finite"):
        objectives.get("mf")(model, x0, x1, r, t)


def test_bad_options_are_rejected(batch):
    model, x0, x1, r, t = batch
    with pytest.raises(ValueError, match="jvp must be 'auto' or one of"):
        objectives.get("mf")(model, x0, x1, r, t, jvp="finite_differences")
    with pytest.raises(ValueError, match="'analytic' needs a model with a jvp method"):
        objectives.get("mf")(lambda x, r, t: x * t[:, None], x0, x1, r, t, jvp="analytic")
    with pytest.raises(TypeError, match="'scm' takes no adaptive weighting"):
        objectives.get("scm")(model, x0, x1, r, t, p=1.0)
    with pytest.raises(TypeError, match=r"unexpected options \['tangent_warmup'\]; its options: p, c, jvp"):
        objectives.get("mf")(model, x0, x1, r, t, tangent_warmup=0.5)
    with pytest.raises(ValueError, match="weighting needs finite p >= 0 and c > 0"):
        objectives.get("mf")(model, x0, x1, r, t, p=-1.0)
    with pytest.raises(TypeError, match="option 'tangent_norm_c' must be a float"):
        objectives.get("scm")(model, x0, x1, r, t, tangent_norm_c="big")
