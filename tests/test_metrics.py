import math

import pytest
import torch
from torch.special import ndtri

from mfverify.cases import get_case
from mfverify.metrics import coverage, energy_distance, flow_map_errors, sample_metrics, sliced_w2, w2


def _quantile_sample(mean, std, n):
    """Deterministic 1-D sample at the (i + 1/2)/n quantiles: no sampling noise."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (mean + std * ndtri(p))[:, None]


def test_flow_map_errors_of_a_constant_shift():
    x = torch.randn(100, 3, dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4, 0.0], dtype=torch.float64)
    out = flow_map_errors(x + shift, x)
    for key in ("flow_map_mean", "flow_map_rmse", "flow_map_p99", "flow_map_max"):
        assert out[key] == pytest.approx(0.5, abs=1e-14)


def test_w2_between_two_gaussians_matches_the_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2; quantile samples of
    # size n carry only the O(log(n)/n) truncation of the tails
    a, b = _quantile_sample(0.0, 1.0, 800), _quantile_sample(1.5, 0.5, 800)
    exact = math.sqrt(1.5**2 + 0.5**2)
    assert w2(a, b) == pytest.approx(exact, rel=2e-3)
    assert sliced_w2(a, b) == pytest.approx(exact, rel=2e-3)  # in 1-D every slice is the line


def test_identical_samples_are_at_distance_zero():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert w2(x, x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_w2(x, x) == 0.0
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x + 1.0) > 0.1


def test_coverage_sees_mode_collapse():
    m = get_case("ring8")
    x = m.sample(4000, generator=torch.Generator().manual_seed(1))
    assert coverage(m, x) == 1.0
    one_mode = m.means[0] + 0.1 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert coverage(m, one_mode) == pytest.approx(1 / 8)


def test_sample_metrics_report_every_measure():
    m = get_case("ring8")
    x = m.sample(512, generator=torch.Generator().manual_seed(3))
    out = sample_metrics(m, x + 0.01, x, w2_samples=256)
    assert set(out) == {"flow_map_mean", "flow_map_rmse", "flow_map_p99", "flow_map_max", "w2", "sliced_w2", "energy", "nll", "coverage"}
    assert out["w2"] == pytest.approx(0.01 * math.sqrt(2), rel=1e-6)  # a shift: OT is the identity


def test_metrics_reject_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        flow_map_errors(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="singular"):
        coverage(get_case("dirac2d"), torch.zeros(3, 2, dtype=torch.float64))
