import pytest
import torch

from mfverify.nets import MeanFlowMLP
from mfverify.times import sample_times


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("time_inputs", ["t,t-r", "t,r"])
@pytest.mark.parametrize("time_features", ["sinusoidal", "fourier"])
def test_meanflow_mlp_shapes_and_dtypes(dtype, time_inputs, time_features):
    model = MeanFlowMLP(3, width=16, depth=2, time_inputs=time_inputs, time_features=time_features).to(dtype)
    x = torch.randn(5, 3, dtype=dtype)
    r, t = sample_times(5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    u = model(x, r, t)
    assert u.shape == (5, 3) and u.dtype == dtype and torch.isfinite(u).all()


def test_time_inputs_are_what_they_say():
    torch.manual_seed(0)
    a = MeanFlowMLP(2, width=8, time_inputs="t,t-r").double()
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.8, dtype=torch.float64)
    # "t,t-r": shifting r and t together changes only the first time input
    b = MeanFlowMLP(2, width=8, time_inputs="t,r").double()
    b.load_state_dict(a.state_dict())
    r = torch.full((3,), 0.3, dtype=torch.float64)
    assert torch.equal(a(x, r, t), b(x, t - r, t))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="time_inputs must be one of"):
        MeanFlowMLP(2, time_inputs="r,t")
    with pytest.raises(ValueError, match="width must be a positive int"):
        MeanFlowMLP(2, width=0)
    with pytest.raises(ValueError, match="time_features must be one of"):
        MeanFlowMLP(2, time_features="gaussian")


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_time_sampler_gives_r_le_t_and_the_exact_share_of_r_eq_t(kind):
    r, t = sample_times(1000, kind=kind, frac_r_eq_t=0.3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert ((0 <= r) & (r <= t) & (t <= 1)).all()
    assert int((r == t).sum()) == 300  # exactly round(0.3 n); continuous draws never tie
    r, t = sample_times(1000, kind=kind, frac_r_eq_t=0.0, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert int((r == t).sum()) == 0


def test_logit_normal_times_have_the_right_median():
    # t = max of two draws: P(t <= q) = F(q)^2, so t's median is F^-1(sqrt(1/2))
    r, t = sample_times(40000, kind="logit_normal", mean=0.0, std=1.0, frac_r_eq_t=0.0,
                        generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    from torch.special import ndtri

    expected = torch.sigmoid(ndtri(torch.tensor(0.5**0.5, dtype=torch.float64)))
    # 5 standard errors of a sample median (density of t at its median ~1.1)
    assert abs(t.median() - expected) <= 5 * 0.5 / (1.1 * 200)


def test_bad_time_sampler_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        sample_times(4, kind="beta")
    with pytest.raises(ValueError, match="frac_r_eq_t must lie in"):
        sample_times(4, frac_r_eq_t=1.5)
