import numpy as np
import pytest
import torch

from mfverify.cases import GaussianMixture, ProductMixture, get_case, list_cases
from mfverify.truth import log_density

pytestmark = pytest.mark.float64  # numerical truth, compared at float64 tolerances

NAMES = ["gauss1d", "bimodal1d", "gauss2d_aniso", "ring8", "narrow2d", "dirac2d", "product8d", "random16d"]


def test_every_required_case_is_listed_with_a_description():
    cases = list_cases()
    assert set(NAMES) <= set(cases)
    for name in NAMES:
        assert isinstance(cases[name], str) and len(cases[name]) > 10 and "\n" not in cases[name]


@pytest.mark.parametrize("name", NAMES)
def test_case_samples_have_the_case_mean(name):
    m = get_case(name)
    x = m.sample(20000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20000, m.d) and x.dtype == torch.float64
    if isinstance(m, ProductMixture):
        mean = (m.weights * m.means).sum(1)
        var = (m.weights * (m.variances + m.means**2)).sum(1) - mean**2
    else:
        mean = m.weights @ m.means
        second = torch.einsum("k,kij->ij", m.weights, m.covs + m.means[:, :, None] * m.means[:, None, :])
        var = torch.diagonal(second) - mean**2
    se = (var / x.shape[0]).sqrt()
    # 5 standard errors: a sampler bug (wrong component, wrong root) moves the mean by far more
    assert ((x.mean(0) - mean).abs() <= 5 * se + 1e-12).all()


def test_named_case_shapes():
    assert get_case("ring8").K == 8 and get_case("ring8").d == 2
    assert get_case("random16d").K == 8 and get_case("random16d").d == 16
    assert get_case("dirac2d").is_dirac
    assert get_case("product8d").d == 8
    ring = get_case("ring8")
    assert torch.allclose(ring.means.norm(dim=1), torch.full((8,), 2.0), rtol=0, atol=1e-15)
    assert torch.allclose(get_case("narrow2d").covs, torch.full((4,), 1e-6)[:, None, None] * torch.eye(2), rtol=0, atol=1e-21)  # (1e-3)**2 vs 1e-6: 1 ulp


def test_product_mixture_equals_its_full_mixture():
    pm = get_case("product8d")
    gm = pm.to_mixture()
    assert gm.K == 2**8
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(log_density(pm, x, 0.0), log_density(gm, x, 0.0), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ bad input


def test_unknown_case_names_the_known_ones():
    with pytest.raises(ValueError, match="ring8"):
        get_case("ring9")


def test_non_symmetric_covariance_is_rejected():
    with pytest.raises(ValueError, match=r"covs\[0\] is not symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])


def test_non_psd_covariance_is_rejected():
    with pytest.raises(ValueError, match=r"covs\[1\] is not positive semi-definite.*-1"):
        GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[[1.0]], [[-1.0]]])


def test_negative_weights_are_rejected():
    with pytest.raises(ValueError, match="weights must be non-negative.*-0.5"):
        GaussianMixture([1.5, -0.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]])


def test_weights_are_not_normalised_silently():
    with pytest.raises(ValueError, match="weights must sum to 1.*2.0"):
        GaussianMixture([1.0, 1.0], [[0.0], [1.0]], [[[1.0]], [[1.0]]])


@pytest.mark.parametrize(
    "weights, means, covs, pattern",
    [
        ([0.5, 0.5], [[0.0, 0.0]], np.eye(2)[None], "weights has 2 entries"),
        ([1.0], [[0.0, 0.0]], np.eye(3)[None], "covs must have shape"),
        ([1.0], [0.0, 0.0], np.eye(2)[None], "means must have 2 dimensions"),
    ],
)
def test_mismatched_shapes_are_rejected(weights, means, covs, pattern):
    with pytest.raises(ValueError, match=pattern):
        GaussianMixture(weights, means, covs)


@pytest.mark.parametrize("field", ["weights", "means", "covs"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_are_rejected(field, bad):
    args = {"weights": np.array([1.0]), "means": np.zeros((1, 2)), "covs": np.eye(2)[None].copy()}
    args[field].flat[0] = bad
    with pytest.raises(ValueError, match=f"{field} must be finite"):
        GaussianMixture(**args)


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="weights"):
        GaussianMixture("abc", [[0.0]], [[[1.0]]])
    with pytest.raises(TypeError, match="factors"):
        ProductMixture([object()])
    with pytest.raises(ValueError, match="one-dimensional"):
        ProductMixture([get_case("ring8")])
    with pytest.raises(TypeError, match="n must be an int"):
        get_case("ring8").sample(2.5)
