"""The compiled ODE kernels (truth/compiled/) against the batched torch solver it replaces on CPU."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfverify import truth
from mfverify.cases import GaussianMixture, get_case
from mfverify.truth import ode
from mfverify.truth.compiled import field, numba_setup, stepper
from mfverify.truth.compiled import tangent as kernel_tangent
from mfverify.truth.fields import velocity_raw
from mfverify.truth.solver import SolverStats

from .strategies import mixtures, points_on_path, times

pytestmark = pytest.mark.skipif(not numba_setup.available(), reason="numba is not installed")

# Both routes solve the same ODE with the same method; at 1e-13 each is within ~1e-11
# of the exact u (test_truth), so they agree to well under 1e-9 unless a formula differs.
TIGHT = dict(rtol=1e-13, atol=1e-13)


@st.composite
def diagonal_mixtures(draw, shared: bool):
    """Mixtures with diagonal covariances: one shared spectrum (ring8-like) or one per component."""
    K, d = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    w = rng.dirichlet(np.full(K, 2.0)) * 0.9 + 0.1 / K
    var = 10 ** rng.uniform(-4, 0.3, size=(1 if shared else K, d))
    covs = np.stack([np.diag(v) for v in np.broadcast_to(var, (K, d))])
    return GaussianMixture(w / w.sum(), rng.normal(0.0, 1.5, size=(K, d)), covs)


def _both_routes(mixture, x, r, t):
    fast = ode.average_velocity(mixture, x, r, t, **TIGHT)[0]
    try:
        ode.USE_KERNEL = False
        slow = ode.average_velocity(mixture, x, r, t, **TIGHT)[0]
    finally:
        ode.USE_KERNEL = True
    return fast, slow


@given(
    gm=st.one_of(mixtures(), diagonal_mixtures(shared=True), diagonal_mixtures(shared=False)),
    rt=times(5, t_min=0.02),
    seed=st.integers(0, 10**6),
)
def test_kernel_equals_torch_solver_on_random_mixtures(gm, rt, seed):
    r, t = rt
    x = points_on_path(gm, t, seed)
    fast, slow = _both_routes(gm, x, r, t)
    assert (fast - slow).abs().max() <= 1e-9


@pytest.mark.parametrize("name", ["ring8", "narrow2d", "random16d", "dirac2d"])
def test_kernel_equals_torch_solver_on_named_cases(name):
    m = get_case(name)
    g = torch.Generator().manual_seed(3)
    t = 0.05 + 0.95 * torch.rand(24, generator=g, dtype=torch.float64)
    r = t * torch.rand(24, generator=g, dtype=torch.float64)
    t[0], r[0] = 1.0, 0.0
    x = points_on_path(m, t, 4)
    fast, slow = _both_routes(m, x, r, t)
    assert (fast - slow).abs().max() <= 1e-9


def test_velocity_in_the_kernel_equals_the_torch_formula():
    """The kernel's inlined v at random (y, tau), for each layout, to round-off."""
    rng = np.random.default_rng(0)
    cases = {
        "shared": get_case("ring8"),
        "full": get_case("random16d"),
        "diag": GaussianMixture([0.3, 0.7], [[0.0, 1.0], [1.0, -1.0]], [np.diag([0.1, 0.01]), np.diag([0.5, 2.0])]),
    }
    for layout, gm in cases.items():
        args = field._mixture_arrays(gm)
        assert args[-2] == {"shared": numba_setup._SHARED, "diag": numba_setup._DIAG, "full": numba_setup._FULL}[layout]
        for tau in (0.01, 0.3, 0.99):
            y = points_on_path(gm, torch.full((20,), tau, dtype=torch.float64), int(rng.integers(1 << 30)))
            ref = velocity_raw(gm, y, torch.full((20,), tau, dtype=torch.float64))
            got = field.velocity(gm, y, tau)
            # round-off of sums of ~K*d terms of size |v| ~ 10 (1/c up to ~100 near the data)
            assert (got - ref).abs().max() <= 1e-11 * max(1.0, ref.abs().max().item())


def test_log_determinant_modes():
    ring = field._mixture_arrays(get_case("ring8"))
    full = field._mixture_arrays(get_case("random16d"))
    dirac = field._mixture_arrays(get_case("dirac2d"))
    assert ring[-1] == numba_setup._LOGDET_CANCELS  # one spectrum: cancels in the softmax
    assert full[-1] == numba_setup._LOGDET_PRODUCT
    singular = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.diag([1.0, 0.0]), np.diag([0.5, 0.5])])
    assert field._mixture_arrays(singular)[-1] == numba_setup._LOGDET_SUM  # c can reach tau^2 -> 0
    assert dirac[-1] == numba_setup._LOGDET_CANCELS


def test_stats_and_step_limit():
    m = get_case("ring8")
    x = points_on_path(m, torch.ones(6, dtype=torch.float64), 5)
    r, t = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    h_max = torch.full((6,), 0.05, dtype=torch.float64)
    stats = SolverStats()
    stepper.average_velocity(m, x, r, t, h_max, rtol=1e-12, atol=1e-12, stats=stats)
    assert stats.points == 6
    assert stats.accepted >= 6 * 20  # at most 0.05 of the interval per step
    assert stats.point_evals == 6 * 2 + 12 * (stats.accepted + stats.rejected)  # 2 for the first step, 12 per step
    with pytest.raises(RuntimeError, match="max_steps=3"):
        stepper.average_velocity(m, x, r, t, h_max, rtol=1e-12, atol=1e-12, max_steps=3)


def test_results_do_not_depend_on_the_number_of_threads():
    """Each point is integrated on its own: the split over threads cannot change a bit."""
    m = get_case("random16d")
    t = torch.linspace(0.1, 1.0, 40, dtype=torch.float64)
    r = 0.3 * t
    x = points_on_path(m, t, 6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ode.average_velocity(m, x, r, t, rtol=1e-12, atol=1e-12)[0]
        torch.set_num_threads(2)
        two = ode.average_velocity(m, x, r, t, rtol=1e-12, atol=1e-12)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.slow  # spawns processes
@pytest.mark.parametrize("slp", [True, False])
def test_a_fresh_compile_gives_the_same_bits_as_this_process(slp, tmp_path):
    """No fast-math: a kernel compiled from scratch (numba's cache off) and the one this
    process uses (possibly loaded from the cache) return identical bits; so does a build
    without the SLP vectoriser (vector lanes do the scalar code's operations in its order)."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, torch\n"
        "from mfverify.cases import get_case\n"
        "from mfverify import truth\n"
        "from mfverify.truth.compiled import numba_setup\n"
        f"numba_setup.SLP = {slp}\n"
        "m = get_case('random16d')\n"
        "x = torch.randn(64, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)\n"
        "print(hashlib.md5(truth.flow_map(m, x, 1.0, 0.0).numpy().tobytes()).hexdigest())\n"
    )
    # an empty cache directory forces the compile (numba has no switch to turn its cache
    # off, and its cache key ignores the SLP setting)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert any(tmp_path.rglob("*.nbi")), "the child did not compile into its own cache"
    m = get_case("random16d")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    here = truth.flow_map(m, x, 1.0, 0.0)
    assert fresh.stdout.strip() == hashlib.md5(here.numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------ tangents (compiled/tangent.py)


def _tangents(n, m, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, m, d, generator=g, dtype=torch.float64), torch.randn(n, m, generator=g, dtype=torch.float64),
            torch.randn(n, m, generator=g, dtype=torch.float64))


def _both_tangent_routes(mixture, x, r, t, tangent):
    fast = ode.average_velocity(mixture, x, r, t, tangent=tangent, **TIGHT)
    try:
        kernel_tangent.USE = False
        slow = ode.average_velocity(mixture, x, r, t, tangent=tangent, **TIGHT)
    finally:
        kernel_tangent.USE = True
    return fast, slow


def _close(a, b, tol=1e-9):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() <= tol


@given(gm=mixtures(K=st.integers(1, 4), d=st.integers(1, 4), min_log10_eig=-3.0), rt=times(n=3),
       seed=st.integers(0, 2**16))
def test_tangent_kernel_equals_torch_variational_equation_on_random_mixtures(gm, rt, seed):
    """The compiled variational equation (closed-form J_y v and d_tau v) against the torch solver's
    (forward-mode AD of the velocity): the same ODE, both at 1e-13, agree to 1e-9."""
    r, t = rt
    x = points_on_path(gm, t, seed)
    assert kernel_tangent.applies(gm, x)
    (u, du), (u_ref, du_ref) = _both_tangent_routes(gm, x, r, t, _tangents(x.shape[0], 3, gm.d, seed))
    assert _close(u, u_ref) and _close(du, du_ref)


@given(gm=mixtures(K=st.integers(1, 3), d=st.integers(8, 10), min_log10_eig=-2.0), rt=times(n=2),
       seed=st.integers(0, 2**16))
def test_tangent_kernel_blas_path_equals_torch_variational_equation(gm, rt, seed):
    """From d = 8 on (``kernel_tangent._BLAS_FROM``) J_y v is one matrix product: the same ODE as
    the torch solver's, both at 1e-13, agree to 1e-9."""
    assert gm.d >= kernel_tangent._BLAS_FROM
    r, t = rt
    x = points_on_path(gm, t, seed)
    (u, du), (u_ref, du_ref) = _both_tangent_routes(gm, x, r, t, _tangents(x.shape[0], 3, gm.d, seed))
    assert _close(u, u_ref) and _close(du, du_ref)


@given(K=st.integers(1, 5), d=st.sampled_from([1, 2, 3, 9]), seed=st.integers(0, 2**16), rt=times(n=3))
def test_tangent_kernel_shared_diagonal_path_equals_torch_variational_equation(K, d, seed, rt):
    """A diagonal covariance shared by every component (``numba_setup._SHARED``) has its own closed
    form for J_y v (a posterior covariance of the means, K d^2 work); d = 9 also takes the
    BLAS product for J dy."""
    g = torch.Generator().manual_seed(seed)
    lam = 10 ** (-2 + 2 * torch.rand(d, generator=g, dtype=torch.float64))
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    gm = GaussianMixture(w / w.sum(),
                         2 * torch.randn(K, d, generator=g, dtype=torch.float64), torch.diag(lam).expand(K, d, d))
    assert field._mixture_arrays(gm)[3] == numba_setup._SHARED and kernel_tangent.applies(gm, gm.means)
    r, t = rt
    x = points_on_path(gm, t, seed)
    (u, du), (u_ref, du_ref) = _both_tangent_routes(gm, x, r, t, _tangents(x.shape[0], 3, gm.d, seed))
    assert _close(u, u_ref) and _close(du, du_ref)


@pytest.mark.parametrize("name", ["ring8", "random16d", "gauss2d_aniso"])
def test_tangent_kernel_equals_torch_variational_equation_on_named_cases(name):
    m = get_case(name)
    g = torch.Generator().manual_seed(5)
    n = 6
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    r[0], t[0] = 0.0, 1.0
    x = (1 - t[:, None]) * m.sample(n, generator=g) + t[:, None] * torch.randn(n, m.d, generator=g, dtype=torch.float64)
    (u, du), (u_ref, du_ref) = _both_tangent_routes(m, x, r, t, _tangents(n, m.d + 2, m.d, 7))
    assert _close(u, u_ref) and _close(du, du_ref)


def test_tangent_kernel_runs_inside_a_torch_func_transform():
    """identities.ExactModel calls the truth inside torch.func.jvp (its inputs come wrapped)."""
    from mfverify.theory import identities

    m = get_case("random16d")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 16, generator=g, dtype=torch.float64)
    r, t = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.7, 0.9], dtype=torch.float64)
    model = identities.ExactModel(m)
    dx = torch.randn(3, 16, generator=g, dtype=torch.float64)
    _, du = torch.func.jvp(lambda a: model(a, r, t), (x,), (dx,))
    J = truth.average_velocity_jacobian(m, x, r, t)
    assert torch.allclose(du, torch.einsum("nab,nb->na", J, dx), rtol=0, atol=1e-12)


def test_the_compiled_packages_numba_caches_are_dropped_together_when_a_source_changes(tmp_path):
    """numba checks a cached kernel against its own file only; stepper.py inlines field.py, so an
    edit of either must drop both builds (truth/compiled/__init__.py)."""
    from mfverify.truth.compiled import _drop_stale_caches

    (tmp_path / "field.py").write_text("x = 1\n")
    (tmp_path / "stepper.py").write_text("y = 2\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    builds = [cache / "stepper._solve_all-10.py311.nbi", cache / "stepper._solve_all-10.py311.1.nbc"]
    for b in builds:
        b.write_text("build")
    _drop_stale_caches(tmp_path)  # no stamp yet: builds of unknown sources go
    assert not any(b.exists() for b in builds)
    for b in builds:
        b.write_text("build")
    _drop_stale_caches(tmp_path)  # the sources are those the stamp records: kept
    assert all(b.exists() for b in builds)
    (tmp_path / "field.py").write_text("x = 10\n")  # an edit of the inlined module
    _drop_stale_caches(tmp_path)
    assert not any(b.exists() for b in builds)
