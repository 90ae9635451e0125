import numpy as np
import pytest
import torch

from mfverify import truth
from mfverify.cases import get_case
from mfverify.sample import average_velocity_sampler, euler, heun, rk4, uniform_grid


def _noise(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("nfe", [1, 2, 3, 8])
def test_sampler_with_the_exact_u_is_exact_at_every_nfe(nfe):
    m = get_case("gauss2d_aniso")  # closed form: exact to round-off
    x1 = _noise(500, 2)
    exact = truth.flow_map(m, x1, 1.0, 0.0)
    x, n = average_velocity_sampler(lambda x, r, t: truth.average_velocity(m, x, r, t), x1, uniform_grid(nfe))
    assert n == nfe
    assert (x - exact).abs().max() <= 1e-12  # a composition of nfe exact maps: round-off only


def test_nfe_is_counted_as_math_section_5_says():
    calls = {"n": 0}

    def v(x, t):
        calls["n"] += 1
        return x

    def u(x, r, t):
        calls["n"] += 1
        return x

    x1 = _noise(4, 2)
    for sampler, field, per_step in ((euler, v, 1), (heun, v, 2), (rk4, v, 4), (average_velocity_sampler, u, 1)):
        calls["n"] = 0
        _, nfe = sampler(field, x1, uniform_grid(5))
        assert nfe == calls["n"] == 5 * per_step


def test_one_euler_step_from_noise_lands_on_the_data_mean():
    m = get_case("ring8")
    x, _ = euler(lambda x, t: truth.velocity(m, x, t), _noise(100, 2), uniform_grid(1))
    # v(x, 1) = x - E[x0]: one step gives E[x0] = sum_k w_k mu_k for every x
    assert torch.allclose(x, (m.weights @ m.means).expand_as(x), rtol=0, atol=1e-14)


def _slope(sampler, m, x1, exact, nfes, per_step):
    errors = []
    for nfe in nfes:
        x, _ = sampler(lambda x, t: truth.velocity(m, x, t), x1, uniform_grid(nfe // per_step))
        errors.append((x - exact).norm(dim=1).mean().item())
    return np.polyfit(np.log(nfes), np.log(errors), 1)[0]


def test_euler_and_heun_converge_at_orders_one_and_two():
    m = get_case("ring8")
    x1 = _noise(512, 2, seed=1)
    exact = truth.flow_map(m, x1, 1.0, 0.0)
    assert -1.15 <= _slope(euler, m, x1, exact, [8, 16, 32, 64], 1) <= -0.85
    assert -2.3 <= _slope(heun, m, x1, exact, [8, 16, 32, 64], 2) <= -1.7


@pytest.mark.parametrize("grid, pattern", [([1.0, 0.5], "from 1 to 0"), ([1.0, 0.6, 0.7, 0.0], "strictly decreasing"), ([1.0], "at least 2")])
def test_bad_grids_are_rejected(grid, pattern):
    with pytest.raises(ValueError, match=pattern):
        euler(lambda x, t: x, _noise(2, 2), grid)


def test_uniform_grid_rejects_non_positive_steps():
    with pytest.raises(ValueError, match="n \\(the number of steps\\)"):
        uniform_grid(0)
