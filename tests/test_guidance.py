"""Labelled mixtures, the exact guided field and its flow map (mfverify.truth.guided),
class-conditional networks and MeanFlow's training-time guidance (docs/MATH.md §9)."""

import pytest
import torch

from mfverify import objectives, truth
from mfverify.cases import GaussianMixture, get_case
from mfverify.nets import NO_LABEL, Conditioned, MeanFlowMLP


def _noise(n, d=2, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def test_labelled_cases_sample_as_their_unlabelled_mixture_and_split_into_classes():
    ring, two = get_case("ring8"), get_case("ring8_two_classes")
    x, labels = two.sample_labelled(500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, ring.sample(500, generator=torch.Generator().manual_seed(4)))
    assert two.n_classes == 2 and get_case("ring8_labelled").n_classes == 8 and ring.n_classes == 0
    assert torch.allclose(two.class_weights(), torch.tensor([0.5, 0.5], dtype=torch.float64), rtol=0, atol=1e-15)
    sub = two.class_mixture(1)
    assert sub.K == 4 and torch.equal(sub.means, ring.means[1::2])
    # each draw's label is its component's: the nearest mean's parity
    nearest = torch.cdist(x, ring.means).argmin(1)
    assert torch.equal(labels, nearest % 2)
    with pytest.raises(ValueError, match="every class"):
        GaussianMixture(ring.weights, ring.means, ring.covs, labels=[0, 2, 0, 2, 0, 2, 0, 2])
    with pytest.raises(ValueError, match="no class labels"):
        ring.class_weights()


@pytest.mark.parametrize("case", ["ring8_two_classes", "ring8_labelled"])
def test_guided_map_at_w_0_and_1_is_the_unconditional_and_the_class_map(case):
    mixture = get_case(case)
    x, labels = _noise(40, classes=mixture.n_classes)
    # tolerance: both routes solve to rtol 1e-12 (global error <= ~1e-9 on ring8, truth_bench)
    uncond = truth.guided_flow_map(mixture, x, t=1.0, r=0.0, labels=labels, w=0.0)
    assert torch.allclose(uncond, truth.flow_map(mixture, x, 1.0, 0.0), rtol=0, atol=1e-9)
    own = truth.guided_flow_map(mixture, x, t=0.9, r=0.1, labels=labels, w=1.0)
    for c in labels.unique().tolist():
        rows = labels == c
        ref = truth.flow_map(mixture.class_mixture(c), x[rows], 0.9, 0.1)
        assert torch.allclose(own[rows], ref, rtol=0, atol=1e-9)


def _rk4(mixture, x, labels, w, interval, t=1.0, r=0.0, steps=1000):
    """Fixed-step classical RK4 on dx/dtau = v_w(x, tau | c) from t to r: an independent route
    (global error O(h^4)). The grid holds the interval's ends, where v_w jumps; each step uses
    the smooth field of its side (the scale at the step's midpoint)."""
    y = x.clone()
    taus = [t - (t - r) * i / steps for i in range(steps + 1)]
    for a, b in zip(taus, taus[1:]):
        m = 0.5 * (a + b)
        scale = w if interval is None or interval[0] <= m <= interval[1] else 1.0
        f = lambda y, tau: truth.guided_velocity(  # noqa: E731
            mixture, y, torch.full((len(y),), tau, dtype=torch.float64), labels, scale)
        h = b - a
        k1 = f(y, a)
        k2 = f(y + h / 2 * k1, a + h / 2)
        k3 = f(y + h / 2 * k2, a + h / 2)
        k4 = f(y + h * k3, b)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


@pytest.mark.parametrize("w, interval", [(2.5, None), (2.0, (0.4, 1.0))])
def test_guided_map_agrees_with_an_independent_rk4(w, interval):
    mixture = get_case("ring8_two_classes")
    x, labels = _noise(12, seed=2)
    exact = truth.guided_flow_map(mixture, x, t=1.0, r=0.0, labels=labels, w=w, interval=interval)
    # RK4 with h = 1e-3 on this field: error ~1e-11 (halving h changes it 16x less; measured 2.5e-12)
    assert torch.allclose(exact, _rk4(mixture, x, labels, w, interval), rtol=0, atol=1e-8)


def test_guided_average_velocity_at_r_equal_t_is_the_guided_field_and_inputs_are_checked():
    mixture = get_case("ring8_two_classes")
    x, labels = _noise(10)
    t = torch.full((10,), 0.6, dtype=torch.float64)
    v_w = truth.guided_velocity(mixture, x, t, labels, 2.0)
    both = 2.0 * truth.conditional_velocity(mixture, x, t, labels) - truth.velocity(mixture, x, t)
    assert torch.allclose(v_w, both, rtol=1e-13, atol=1e-13)
    assert torch.equal(truth.guided_average_velocity(mixture, x, r=t, t=t, labels=labels, w=2.0), v_w)
    with pytest.raises(ValueError, match="labelled"):
        truth.guided_velocity(get_case("ring8"), x, t, labels, 2.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        truth.guided_velocity(mixture, x, t, labels + 2, 2.0)
    with pytest.raises(ValueError, match="w must be a finite float"):
        truth.guided_velocity(mixture, x, t, labels, float("nan"))
    with pytest.raises(ValueError, match="interval"):
        truth.guided_flow_map(mixture, x, t=1.0, r=0.0, labels=labels, w=2.0, interval=(0.8, 0.2))


def test_meanflow_guided_target_has_the_effective_scale_as_its_fixed_point():
    # E[v~ | x_t, c] = w v(.|c) + k u(., t, t | c) + (1 - w - k) u(., t, t | none); with
    # u(.|c) = v_{w'} and u(.|none) = v it equals v_{w'} exactly when w' = w / (1 - k)
    mixture = get_case("ring8_two_classes")
    x, labels = _noise(20)
    t = torch.full((20,), 0.7, dtype=torch.float64)
    w, k = 1.5, 0.4
    w_eff = truth.effective_guidance(w, k)
    v_eff = truth.guided_velocity(mixture, x, t, labels, w_eff)
    mean = w * truth.conditional_velocity(mixture, x, t, labels) + k * v_eff + (1 - w - k) * truth.velocity(mixture, x, t)
    assert torch.allclose(mean, v_eff, rtol=1e-13, atol=1e-13)
    assert objectives.get("mf").guided_target({"w": w, "k": k})[0] == w_eff


def test_conditional_network_labels_and_the_none_label():
    torch.manual_seed(0)
    net = MeanFlowMLP(2, width=16, depth=2, n_classes=3, dtype=torch.float64)
    x, labels = _noise(6, classes=3)
    r, t = torch.full((6,), 0.2, dtype=torch.float64), torch.full((6,), 0.8, dtype=torch.float64)
    none = torch.full((6,), NO_LABEL)
    assert torch.equal(net(x, r, t), net(x, r, t, labels=none))
    assert (net(x, r, t, labels=labels) - net(x, r, t)).abs().max() > 1e-4
    from mfverify.jvp import jvp

    bound = Conditioned(net, labels)
    zero, one = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    _, d_a = jvp(bound, x, r, t, x, zero, one, "analytic")
    _, d_f = jvp(bound, x, r, t, x, zero, one, "func")
    assert torch.allclose(d_a, d_f, rtol=0, atol=1e-12)
    assert torch.equal(bound.unconditional()(x, r, t), net(x, r, t))
    with pytest.raises(ValueError, match="whole batch"):
        bound(x[:3], r[:3], t[:3])
    with pytest.raises(ValueError, match="unconditional network"):
        MeanFlowMLP(2, width=8, depth=1)(x, r, t, labels=labels)


def test_guided_mf_is_checked_before_training():
    from mfverify.train import TrainConfig, train

    with pytest.raises(ValueError, match="conditional = true"):
        TrainConfig(case="ring8_labelled", objective="mf", objective_options={"w": 2.0})
    with pytest.raises(ValueError, match="needs a labelled case"):
        TrainConfig(case="ring8", conditional=True)
    with pytest.raises(ValueError, match="k must be < 1"):
        TrainConfig(case="ring8_labelled", objective="mf", conditional=True, objective_options={"k": 1.0})
    cfg = TrainConfig(case="ring8_labelled", objective="mf", conditional=True, steps=5, batch=32,
                      objective_options={"w": 2.0, "k": 0.2})
    result = train(cfg, progress=False)
    assert result.model.n_classes == 8 and result.diverged_step is None
