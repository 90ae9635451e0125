"""Ground truth (MATH.md §2-3): closed forms, routes, identities, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from mfverify import truth
from mfverify.cases import GaussianMixture, get_case, list_cases
from mfverify.theory import identities
from mfverify.theory.montecarlo import conditional_mean_mc, z_scores
from mfverify.truth import ode as ode_route
from mfverify.truth.fields import velocity_jvp_raw, velocity_raw

from .strategies import gaussians, mixtures, mixtures_1d, points_on_path, product_mixtures, times

pytestmark = pytest.mark.float64  # numerical truth, compared at float64 tolerances

ODE_CASES = ["ring8", "narrow2d", "dirac2d", "random16d"]
EXACT_CASES = ["gauss1d", "bimodal1d", "gauss2d_aniso", "product8d"]
# Tight ODE tolerances for route comparisons: the solver's own error is then
# ~1e-11, far below the 1e-9 bar, so a disagreement is a formula error.
TIGHT = dict(rtol=1e-13, atol=1e-13)


def _path_points(mixture, n, seed, t_min=0.05, r_min=0.0):
    g = torch.Generator().manual_seed(seed)
    t = t_min + (1 - t_min) * torch.rand(n, generator=g)
    r = r_min + (t - r_min).clamp_min(0) * torch.rand(n, generator=g)
    t[0], r[0] = 1.0, r_min  # always include the full interval
    return points_on_path(mixture, t, seed + 1), r, t


# --------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", list(list_cases()))
def test_velocity_is_minus_x_plus_t_score_over_one_minus_t(name):
    m = get_case(name)
    x, _, t = _path_points(m, 40, 0)
    t = t.clamp_max(0.99)
    v = truth.velocity(m, x, t)
    s = truth.score(m, x, t)
    ref = -(x + t[:, None] * s) / (1 - t[:, None])
    # both closed forms are O(1); round-off amplified by 1/(1-t) <= 100
    assert torch.allclose(v, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", ["ring8", "random16d", "product8d", "bimodal1d"])
def test_score_is_the_gradient_of_log_density(name):
    m = get_case(name)
    x, _, t = _path_points(m, 20, 1)
    from mfverify.truth.fields import log_density_raw

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density_raw(m, xg, t).sum(), xg)
    assert torch.allclose(truth.score(m, x, t), grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(list_cases()))
def test_velocity_jvp_by_hand_equals_autodiff(name):
    m = get_case(name)
    x, _, t = _path_points(m, 30, 2)
    g = torch.Generator().manual_seed(3)
    dx, dt = torch.randn(x.shape, generator=g), torch.randn(t.shape, generator=g)
    ref_v, ref_dv = torch.func.jvp(lambda a, b: velocity_raw(m, a, b), (x, t), (dx, dt))
    v, dv = velocity_jvp_raw(m, x, t, dx, dt)
    scale = ref_dv.abs().max().clamp_min(1.0)
    assert (v - ref_v).abs().max() <= 1e-14 * scale.clamp_min(10)
    # relative round-off: the formulas differ only in the order of operations
    assert (dv - ref_dv).abs().max() <= 1e-12 * scale


# the conditional covariance is (n, d, d): images32 (d = 3072) would form 25 of 9.4M entries each
@pytest.mark.parametrize("name", [name for name in list_cases() if name != "images32"])
def test_moments_mean_is_velocity_and_covariance_is_psd(name):
    m = get_case(name)
    x, _, t = _path_points(m, 25, 4)
    mean, cov = truth.conditional_moments(m, x, t)
    assert torch.allclose(mean, truth.velocity(m, x, t), rtol=1e-12, atol=1e-12)
    assert torch.allclose(cov, cov.transpose(1, 2), rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(cov).min() >= -1e-10
    w = truth.posterior_weights(m, x, t)
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), rtol=0, atol=1e-14)


def test_product_mixture_fields_equal_the_full_mixture():
    pm = get_case("product8d")
    gm = pm.to_mixture()
    x, r, t = _path_points(pm, 20, 5)
    assert torch.allclose(truth.velocity(pm, x, t), truth.velocity(gm, x, t), rtol=1e-11, atol=1e-11)
    mp, cp = truth.conditional_moments(pm, x, t)
    mg, cg = truth.conditional_moments(gm, x, t)
    assert torch.allclose(cp, cg, rtol=1e-10, atol=1e-10)


# ------------------------------------------------ closed forms vs Monte Carlo

MC_T = [0.3, 0.6, 0.9]


# Enough samples that 5 standard errors are well below 1% of the quantities,
# so that the 1.01 x (wrong) check fails by a margin.
MC_SAMPLES = {"bimodal1d": 4_000_000, "ring8": 1_500_000, "gauss2d_aniso": 1_000_000}


def _mc_setup(name, t, n_points=6, seed=0):
    m = get_case(name)
    x = points_on_path(m, torch.full((n_points,), t), seed)
    return m, x, MC_SAMPLES[name]


@pytest.mark.parametrize("name", ["bimodal1d", "ring8", "gauss2d_aniso"])
@pytest.mark.parametrize("t", MC_T)
def test_velocity_agrees_with_monte_carlo_and_a_wrong_field_does_not(name, t):
    m, x, n = _mc_setup(name, t)
    est, se = conditional_mean_mc(m, x, t, n_samples=n, generator=torch.Generator().manual_seed(7))
    v = truth.velocity(m, x, t)
    assert z_scores(v, est, se).max() <= 5.0  # 5 standard errors (MC noise, not a tolerance)
    # the same check must reject a 1% error somewhere: it has the power to see one
    assert z_scores(1.01 * v, est, se).max() > 5.0


@pytest.mark.parametrize("name", ["bimodal1d", "ring8"])
@pytest.mark.parametrize("t", MC_T)
def test_conditional_covariance_agrees_with_monte_carlo(name, t):
    m, x, n = _mc_setup(name, t, seed=1)
    mean, cov = truth.conditional_moments(m, x, t)
    d = m.d
    # E[(v_c - m)(v_c - m)^T | x] with the exact mean m equals Cov[v_c | x]
    f = lambda vc: ((vc - mean[:, None]) [..., :, None] * (vc - mean[:, None])[..., None, :]).reshape(*vc.shape[:2], d * d)  # noqa: E731
    est, se = conditional_mean_mc(m, x, t, f=f, n_samples=n, generator=torch.Generator().manual_seed(8))
    exact = cov.reshape(-1, d * d)
    assert z_scores(exact, est, se).max() <= 5.0
    assert z_scores(1.01 * exact, est, se).max() > 5.0


# ------------------------------------------------------------------- routes


@given(gm=gaussians(d=st.integers(1, 8)), rt=times(6, t_min=0.02), seed=st.integers(0, 10**6))
def test_closed_form_equals_ode_route_on_single_gaussians(gm, rt, seed):
    r, t = rt
    x = points_on_path(gm, t, seed)
    cf = truth.average_velocity(gm, x, r, t, method="closed_form")
    od = truth.average_velocity(gm, x, r, t, method="ode", **TIGHT)
    assert (cf - od).abs().max() <= 1e-9


@given(gm=mixtures_1d(), rt=times(6, t_min=0.05, min_gap=0.02), seed=st.integers(0, 10**6))
def test_quantile_equals_ode_route_on_1d_mixtures(gm, rt, seed):
    r, t = rt
    x = points_on_path(gm, t, seed)
    q = truth.average_velocity(gm, x, r, t, method="quantile")
    od = truth.average_velocity(gm, x, r, t, method="ode", **TIGHT)
    assert (q - od).abs().max() <= 1e-9


def test_quantile_equals_ode_route_on_product8d():
    pm = get_case("product8d")
    x, r, t = _path_points(pm, 40, 11)
    r = torch.minimum(r, t - 0.02).clamp_min(0)
    q = truth.average_velocity(pm, x, r, t, method="quantile")
    od = truth.average_velocity(pm, x, r, t, method="ode", **TIGHT)
    assert (q - od).abs().max() <= 1e-9
    phi_q = truth.flow_map(pm, x, t, r, method="quantile")
    phi_o = truth.flow_map(pm, x, t, r, method="ode", **TIGHT)
    assert (phi_q - phi_o).abs().max() <= 1e-9


@pytest.mark.parametrize("name", ["ring8", "random16d"])
def test_default_tolerance_meets_1e_9_against_a_tight_solve(name):
    m = get_case(name)
    x, r, t = _path_points(m, 60, 12)
    u = truth.average_velocity(m, x, r, t)
    ref = truth.average_velocity(m, x, r, t, rtol=1e-13, atol=1e-13)
    assert (u - ref).abs().max() <= 1e-9


def test_default_route_uses_ode_for_short_intervals_and_stays_exact():
    m = get_case("bimodal1d")
    x = points_on_path(m, torch.full((5,), 0.5), 13)
    t = torch.full((5,), 0.5)
    r = t - torch.tensor([0.0, 1e-12, 1e-6, 1e-3, 0.3])
    u = truth.average_velocity(m, x, r, t)
    ref = truth.average_velocity(m, x, r, t, method="ode", **TIGHT)
    assert (u - ref).abs().max() <= 1e-11
    v = truth.velocity(m, x, t)
    assert torch.equal(u[0], v[0])


def test_dirac_flow_ends_on_a_data_point():
    m = get_case("dirac2d")
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(14))
    phi = truth.flow_map(m, x, 1.0, 0.0)
    dist = (phi[:, None, :] - m.means[None]).norm(dim=-1).min(1).values  # not cdist: its GEMM form loses ~1e-8
    assert dist.max() <= 1e-12
    # and it is the point the flow reaches: compare with a solve to r = 1e-6
    near = truth.flow_map(m, x, 1.0, 1e-6, **TIGHT)
    assert (near - phi).abs().max() <= 1e-4  # straight segment of length ~1e-6 * |v|


def test_chunked_solve_equals_one_solve(monkeypatch):
    m = get_case("ring8")
    x, r, t = _path_points(m, 37, 15)
    whole = truth.average_velocity(m, x, r, t, method="ode")
    monkeypatch.setattr(ode_route, "CHUNK", 8)
    chunked = truth.average_velocity(m, x, r, t, method="ode")
    # per-point step control: a point's steps do not depend on its neighbours; only
    # GEMM round-off (blocking depends on the batch size) may tip a step decision,
    # which moves a result by at most the solver's error (<= 1e-9 at the default)
    assert (whole - chunked).abs().max() <= 1e-9


def test_flow_map_at_r_equal_t_is_the_identity():
    m = get_case("random16d")
    x, r, t = _path_points(m, 10, 16, t_min=0.2)
    assert torch.equal(truth.flow_map(m, x, t, t), x)


def test_flow_map_carries_p_t_to_p_r_for_a_gaussian():
    # for N(mu, S) the map is affine, Phi = A x + b with A = I - (t-r) J_x u; it must send
    # mean (1-t) mu to (1-r) mu and covariance C(t) to C(r) = (1-r)^2 S + r^2 I
    gm = get_case("gauss2d_aniso")
    mu, S = gm.means[0], gm.covs[0]
    x, r, t = _path_points(gm, 6, 17)
    A = torch.eye(2) - (t - r)[:, None, None] * truth.average_velocity_jacobian(gm, x, r, t)
    mapped_mean = truth.flow_map(gm, ((1 - t)[:, None] * mu), t, r)
    C = lambda s: (1 - s) ** 2 * S + s**2 * torch.eye(2)  # noqa: E731
    for i in range(len(t)):
        assert torch.allclose(mapped_mean[i], (1 - r[i]) * mu, rtol=0, atol=1e-14)  # round-off of O(1) terms
        assert torch.allclose(A[i] @ C(t[i]) @ A[i].T, C(r[i]), rtol=0, atol=1e-13)


# --------------------------------------------------------------- identities


def _rel(res_scale):
    res, scale = res_scale
    return (res.abs().amax(1) / scale).max().item()


@pytest.mark.parametrize("name", EXACT_CASES + ODE_CASES)
def test_exact_u_satisfies_the_identities_of_math_section_2(name):
    m = get_case(name)
    # Dirac mixtures: the Lagrangian identity needs v(., r), undefined at r = 0
    x, r, t = _path_points(m, 12, 18, r_min=0.01 if m.is_dirac else 0.0)
    s = 0.5 * (r + t)
    # closed form / quantile: round-off only; ODE: solver error (1e-11 tolerances)
    # amplified by the O(1) derivatives of the flow
    bar = 1e-10 if name in EXACT_CASES else 1e-7
    assert _rel(identities.eulerian(m, x, r, t)) <= bar
    assert _rel(identities.lagrangian(m, x, r, t)) <= bar
    assert _rel(identities.splitting(m, x, r, s, t)) <= bar
    assert _rel(identities.boundary(m, x, t)) <= 1e-12


@pytest.mark.parametrize("name", ["bimodal1d", "gauss2d_aniso", "ring8"])
def test_average_velocity_tends_to_velocity_at_first_order(name):
    # u(x, t - h, t) = v - (h/2) dv/dt|flow + O(h^2): checks the boundary is a limit, not a convention
    m = get_case(name)
    x, _, t = _path_points(m, 8, 19, t_min=0.3)
    v = truth.velocity(m, x, t)
    _, a = velocity_jvp_raw(m, x, t, v, torch.ones_like(t))

    def remainder(h):
        return (truth.average_velocity(m, x, t - h, t, **TIGHT) - (v - 0.5 * h * a)).abs().max()

    # the remainder is O(h^2): halving h divides it by 4 (3 to 5 allows the O(h^3) term);
    # h = 2e-3 keeps it (~1e-6) far above the 1e-12 solver error
    ratio = remainder(2e-3) / remainder(1e-3)
    assert 3.0 <= ratio <= 5.0


def test_jacobian_matches_finite_differences():
    m = get_case("ring8")
    x, r, t = _path_points(m, 4, 20)
    J = truth.average_velocity_jacobian(m, x, r, t, **TIGHT)
    eps = 1e-5  # central differences: truncation ~eps^2 |u'''| ~ 1e-9, round-off ~1e-12/eps
    for b in range(2):
        e = torch.zeros_like(x)
        e[:, b] = eps
        fd = (truth.average_velocity(m, x + e, r, t, **TIGHT) - truth.average_velocity(m, x - e, r, t, **TIGHT)) / (2 * eps)
        assert (J[:, :, b] - fd).abs().max() <= 1e-6 * J.abs().max().clamp_min(1)


@given(gm=mixtures(), rt=times(4, t_min=0.05), seed=st.integers(0, 10**6))
def test_eulerian_identity_holds_on_random_mixtures(gm, rt, seed):
    r, t = rt
    x = points_on_path(gm, t, seed)
    assert _rel(identities.eulerian(gm, x, r, t, **TIGHT)) <= 1e-7


@given(gm=mixtures(), rt=times(4, t_min=0.05), seed=st.integers(0, 10**6))
def test_splitting_identity_holds_on_random_mixtures(gm, rt, seed):
    r, t = rt
    x = points_on_path(gm, t, seed)
    assert _rel(identities.splitting(gm, x, r, 0.5 * (r + t), t, **TIGHT)) <= 1e-8


@given(pm=product_mixtures(), rt=times(4, t_min=0.05, min_gap=0.02), seed=st.integers(0, 10**6))
def test_lagrangian_identity_holds_on_random_product_mixtures(pm, rt, seed):
    r, t = rt
    x = points_on_path(pm, t, seed)
    assert _rel(identities.lagrangian(pm, x, r, t)) <= 1e-10


@given(gm=mixtures(), seed=st.integers(0, 10**6), t=st.floats(0.01, 0.99))
def test_velocity_equals_score_form_on_random_mixtures(gm, seed, t):
    x = points_on_path(gm, torch.full((5,), t), seed)
    v = truth.velocity(gm, x, t)
    ref = -(x + t * truth.score(gm, x, t)) / (1 - t)
    scale = max(1.0, v.abs().max().item(), ref.abs().max().item())
    assert (v - ref).abs().max() <= 1e-9 * scale  # score of near-singular components ~1e6: round-off


# ---------------------------------------------------------------- bad input


@pytest.fixture
def ring():
    return get_case("ring8")


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(t=1.5), ValueError, r"t must lie in \[0, 1\], found 1.5"),
        (dict(t=-0.1), ValueError, r"t must lie in \[0, 1\]"),
        (dict(r=-0.2), ValueError, r"r must lie in \[0, 1\]"),
        (dict(r=0.9, t=0.5), ValueError, "r must be <= t, found r=0.9 > t=0.5"),
        (dict(t=float("nan")), ValueError, "t must be finite"),
        (dict(r=float("inf")), ValueError, "r must be finite"),
        (dict(x=np.array([[np.nan, 0.0]])), ValueError, "x must be finite"),
        (dict(x=np.zeros((3, 3))), ValueError, r"x must have shape \(n, 2\)"),
        (dict(x=np.zeros(2)), ValueError, r"x must have shape \(n, 2\)"),
        (dict(x="abc"), TypeError, "x must be a torch tensor"),
        (dict(t=torch.zeros(5)), ValueError, r"t must be a float or have shape \(1,\)"),
        (dict(method="euler"), ValueError, "method must be None or one of"),
        (dict(method="closed_form"), ValueError, "closed_form.*single Gaussian"),
        (dict(method="quantile"), ValueError, "quantile.*1-D and product"),
        (dict(rtol=0.0), ValueError, r"rtol must lie in \(0, 1\)"),
    ],
)
def test_bad_input_raises_a_clear_error(ring, kwargs, error, pattern):
    args = dict(x=np.zeros((1, 2)), r=0.2, t=0.5)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        truth.average_velocity(ring, **args)


def test_bad_mixture_type(ring):
    with pytest.raises(TypeError, match="mixture must be a GaussianMixture"):
        truth.velocity("ring8", np.zeros((1, 2)), 0.5)


def test_dirac_velocity_at_t_zero_is_an_error_not_nan():
    m = get_case("dirac2d")
    with pytest.raises(ValueError, match="t = 0 is not allowed for a Dirac mixture"):
        truth.velocity(m, np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match="t = 0 is not allowed"):
        truth.average_velocity(m, np.zeros((2, 2)), 0.0, 0.0)
    # t > 0 is fine, and finite
    assert torch.isfinite(truth.velocity(m, np.zeros((2, 2)), 1e-3)).all()


def test_singular_non_dirac_mixture_to_r_zero_is_an_error():
    gm = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.diag([1.0, 0.0]), np.eye(2)])
    with pytest.raises(ValueError, match="r = 0 is not supported"):
        truth.average_velocity(gm, np.zeros((1, 2)), 0.0, 0.5)


@pytest.mark.parametrize(
    "name, method", [("gauss2d_aniso", "closed_form"), ("bimodal1d", "quantile"), ("product8d", "quantile"), ("ring8", "ode")]
)
def test_derivatives_of_u_match_finite_differences_and_the_identity(name, method):
    m = get_case(name)
    x, r, t = _path_points(m, 4, 21, t_min=0.3)
    t = t.clamp_max(0.95)
    r = torch.minimum(r, t - 0.05).clamp_min(0.01)  # room for central differences in r and t
    opts = dict(method=method, **TIGHT) if method == "ode" else dict(method=method)
    u, J, du_dr, du_dt = truth.average_velocity_derivatives(m, x, r, t, **opts)
    f = lambda x_, r_, t_: truth.average_velocity(m, x_, r_, t_, **opts)  # noqa: E731
    eps = 1e-5  # central differences: truncation ~eps^2 |u'''| ~1e-9, round-off ~1e-13/eps ~1e-8
    scale = J.abs().max().clamp_min(1)
    for b in range(m.d):
        e = torch.zeros_like(x)
        e[:, b] = eps
        fd = (f(x + e, r, t) - f(x - e, r, t)) / (2 * eps)
        assert (J[:, :, b] - fd).abs().max() <= 1e-6 * scale
    assert (du_dr - (f(x, r + eps, t) - f(x, r - eps, t)) / (2 * eps)).abs().max() <= 1e-6 * scale
    assert (du_dt - (f(x, r, t + eps) - f(x, r, t - eps)) / (2 * eps)).abs().max() <= 1e-6 * scale
    # J_x u . v + d_t u = (v - u) / (t - r): the MeanFlow identity rearranged
    v = truth.velocity(m, x, t)
    lhs = torch.einsum("nab,nb->na", J, v) + du_dt
    rhs = (v - u) / (t - r)[:, None]
    bar = 1e-7 if method == "ode" else 1e-10
    assert (lhs - rhs).abs().max() <= bar * rhs.abs().max().clamp_min(1)


def test_log_density_at_0_is_scipys_log_pdf():
    m = get_case("gauss2d_aniso")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2))
    ref = multivariate_normal(m.means[0].numpy(), m.covs[0].numpy()).logpdf(x)
    assert np.allclose(truth.log_density(m, x, 0.0).numpy(), ref, rtol=1e-13, atol=1e-13)  # float64 round-off
    m = get_case("random16d")
    x = rng.normal(size=(20, 16))
    parts = [
        math.log(w) + multivariate_normal(mu.numpy(), S.numpy()).logpdf(x)
        for w, mu, S in zip(m.weights.tolist(), m.means, m.covs)
    ]
    ref = np.logaddexp.reduce(np.stack(parts), axis=0)
    assert np.allclose(truth.log_density(m, x, 0.0).numpy(), ref, rtol=1e-11)  # eigh vs Cholesky round-off
