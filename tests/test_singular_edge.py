"""The truth at the singular edge: finite (or a clear error) as t -> 0 and r -> 0 for
Dirac and near-Dirac mixtures, with t and r swept over [1e-300, 1e-3]."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfverify import truth
from mfverify.cases import GaussianMixture, get_case
from mfverify.truth.fields import SMALL_T, posterior_raw, small_t_fields, velocity_raw


def _near_dirac():
    """Four components of std 1e-150 (variance 1e-300: just representable)."""
    means = [[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [0.5, -1.0]]
    return GaussianMixture([0.25] * 4, means, [[[1e-300, 0.0], [0.0, 1e-300]]] * 4)


CASES = {"dirac2d": lambda: get_case("dirac2d"), "near_dirac": _near_dirac}
log10 = st.floats(-300, -3)


@given(case=st.sampled_from(sorted(CASES)), lt=log10, seed=st.integers(0, 10**6))
def test_fields_are_finite_down_to_t_1e_300(case, lt, seed):
    m = CASES[case]()
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(3, 2, generator=g, dtype=torch.float64) - 1
    t = torch.full((3,), 10.0**lt, dtype=torch.float64)
    assert torch.isfinite(truth.velocity(m, x, t)).all()
    pi = truth.posterior_weights(m, x, t)
    assert torch.isfinite(pi).all() and torch.allclose(pi.sum(-1), torch.ones(3, dtype=torch.float64))
    try:
        assert torch.isfinite(truth.score(m, x, t)).all()
    except ValueError as err:  # ~ |x - mu| / t^2: beyond float64 below t ~ 1e-154
        assert "not representable in float64" in str(err) and lt < -150


@given(case=st.sampled_from(sorted(CASES)), lt=st.floats(-100, -3), seed=st.integers(0, 10**6))
def test_the_small_t_form_is_the_same_field(case, lt, seed):
    # where both forms are representable they agree: the rescaled one is a rewriting,
    # exact up to round-off (1e-12 relative)
    m = CASES[case]()
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(4, 2, generator=g, dtype=torch.float64) - 1
    t = torch.full((4,), 10.0**lt, dtype=torch.float64)
    pi, v, _ = small_t_fields(m, x, t)
    assert torch.allclose(v, velocity_raw(m, x, t), rtol=1e-12, atol=0)
    assert torch.allclose(pi, posterior_raw(m, x, t), rtol=1e-12, atol=1e-300)


@given(case=st.sampled_from(sorted(CASES)), lt=log10, lr=st.floats(-300, -3), zero_r=st.booleans(),
       seed=st.integers(0, 10**6))
def test_flow_map_and_average_velocity_are_finite_at_small_r_and_t(case, lt, lr, zero_r, seed):
    m = CASES[case]()
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(2, 2, generator=g, dtype=torch.float64) - 1
    t = 10.0**lt
    r = 0.0 if zero_r else min(10.0**lr, t)
    u = truth.average_velocity(m, x, r, t)
    phi = truth.flow_map(m, x, t, r)
    assert torch.isfinite(u).all() and torch.isfinite(phi).all()
    if r == 0.0 and m.is_dirac:  # the flow ends on a data point
        assert (torch.cdist(phi, m.means).amin(1) <= 1e-12).all()


def test_small_r_continues_the_ode_route():
    # below r = 1e-12 the solve follows the last straight segment: it must join the ODE
    # route above it to the solver's accuracy (displacement ~ r, errors ~ 1e-12 absolute)
    m = get_case("dirac2d")
    x = torch.tensor([[0.3, -0.2], [0.1, 0.1]], dtype=torch.float64)
    below = truth.flow_map(m, x, 1.0, 0.99e-12)
    above = truth.flow_map(m, x, 1.0, 1.01e-12)
    assert (below - above).abs().max().item() <= 1e-11
    assert math.isfinite(truth.flow_map(m, x, 1.0, 1e-17).sum().item())  # NaN before


def test_r_equal_t_at_tiny_t_is_the_velocity():
    m = get_case("dirac2d")
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    t = 1e-200
    assert torch.allclose(truth.average_velocity(m, x, t, t), truth.velocity(m, x, t), rtol=1e-14)
    assert t < SMALL_T
