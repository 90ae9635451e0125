"""The exact model's core (``check/exact_core.py``) and its torch front (``check/exact_network.py``):
the truth under every JVP, in every convention, shape and dtype, per label; the conventions
table read both ways; the stand-in; the tamed directions' first derivatives and the stretch."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfverify import truth
from mfverify.cases import get_case
from mfverify.check import conventions
from mfverify.check.exact_core import CONVENTIONS, INPUTS, ExactField, cell_bins, stand_in, triangle_cells
from mfverify.check.exact_network import ExactNetwork

pytestmark = pytest.mark.float64  # numerical truth, compared at float64 tolerances

CASES = ("gauss2d_aniso", "bimodal1d", "ring8", "wide2d")
# the exact model's values and derivatives are the truth's own (the same solve); the ODE
# route's answers at the same points agree to round-off, 1e-12 relative with margin
RTOL = 1e-12


def _points(mixture, n, seed):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.95 * torch.rand(n, generator=g)
    r = t * torch.rand(n, generator=g)
    x = (1 - t[:, None]) * mixture.sample(n, generator=g) + t[:, None] * torch.randn(n, mixture.d, generator=g)
    v = torch.randn(n, mixture.d, generator=g)
    return x, r, t, v


def _close(a, b, rtol=RTOL):
    return (a - b).abs().max().item() <= rtol * max(b.abs().max().item(), 1.0)


@given(case=st.sampled_from(CASES), seed=st.integers(0, 10_000))
def test_the_exact_network_is_the_truth_under_every_jvp(case, seed):
    mixture = get_case(case)
    net = ExactNetwork(mixture)
    x, r, t, v = _points(mixture, 5, seed)
    u_true, du_true = truth.average_velocity_jvp(mixture, x, r, t, v, 0.0, 1.0)
    assert _close(net(x, r, t).detach(), u_true)
    _, d_func = torch.func.jvp(net, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        d_fwd = fwAD.unpack_dual(net(fwAD.make_dual(x, v), r, fwAD.make_dual(t, torch.ones_like(t)))).tangent
    xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
    out = net(xx, r, tt)
    w = torch.zeros_like(out, requires_grad=True)
    gx, gt = torch.autograd.grad(out, (xx, tt), w, create_graph=True)
    (d_double,) = torch.autograd.grad((gx * v).sum() + gt.sum(), w)
    for d in (d_func, d_fwd, d_double):
        assert _close(d.detach(), du_true)


def test_the_exact_network_in_other_conventions_shapes_and_dtypes():
    mixture = get_case("ring8")
    x, r, t, _ = _points(mixture, 6, 1)
    u = truth.average_velocity(mixture, x, r, t)
    assert _close(ExactNetwork(mixture, inputs="x,t,r")(x, t, r).detach(), u)
    assert _close(ExactNetwork(mixture, inputs="x,t,h")(x, t, t - r).detach(), u)
    assert _close(ExactNetwork(mixture, inputs="reversed")(x, 1 - t, 1 - r).detach(), -u)
    assert _close(ExactNetwork(mixture, inputs="reversed,t,h")(x, 1 - t, t - r).detach(), -u)
    net = ExactNetwork(mixture)
    assert _close(net(x, r[:, None, None, None], t[:, None]).detach(), u)  # times in any shape
    u32 = net(x.float(), r.float(), t.float())
    assert u32.dtype == torch.float32
    # computed in float64 from the rounded inputs: off by float32's rounding of inputs and output
    assert (u32.double() - u).abs().max().item() <= 1e-5 * max(u.abs().max().item(), 1.0)
    rows = torch.randperm(6)
    assert _close(net(x[rows], r[rows], t[rows]).detach(), u[rows])
    img = get_case("random16d")
    xi, ri, ti, _ = _points(img, 3, 2)
    out = ExactNetwork(img)(xi.reshape(3, 1, 4, 4), ri, ti)
    assert out.shape == (3, 1, 4, 4) and _close(out.reshape(3, 16).detach(), truth.average_velocity(img, xi, ri, ti))


def test_the_exact_network_answers_labels_with_the_class_field_and_the_null_label_with_all():
    mixture = get_case("ring8_two_classes")
    x, r, t, _ = _points(mixture, 6, 3)
    labels = torch.tensor([0, 1, 0, 1, 2, -1])  # 2 and -1: the null label of label dropout
    u = ExactNetwork(mixture)(x, r, t, labels=labels).detach()
    for i, c in enumerate(labels.tolist()):
        m = mixture.class_mixture(c) if c in (0, 1) else mixture
        assert _close(u[i : i + 1], truth.average_velocity(m, x[i : i + 1], r[i : i + 1], t[i : i + 1]))
    with pytest.raises(TypeError, match="keyword"):
        ExactNetwork(mixture)(x, r, t, mask=labels)


def test_the_exact_network_gradient_is_the_directional_derivative_and_calls_are_recorded():
    mixture = get_case("ring8")
    net = ExactNetwork(mixture)
    x, r, t, _ = _points(mixture, 6, 4)
    target = torch.randn(6, 2)
    (net(x, r, t) - target).square().sum().backward()
    u = truth.average_velocity(mixture, x, r, t)
    h = _direction(ExactNetwork(mixture), 1, x, r, t)  # tamed eulerian
    assert net.direction_names[1] == "tamed eulerian"
    assert _close(net.eps.grad[1], (2 * (u - target) * h).sum(), 1e-10)
    # outside [0, 1] and r > t: finite, counted, never NaN
    half = 0.5 * t
    out = net(x, torch.full((6,), -0.5), t) + net(x, half + 0.3, half)
    assert torch.isfinite(out).all()
    s = net.calls.summary()
    assert s["calls"] == 18 and s["fraction_outside_unit_interval"] == pytest.approx(6 / 18)
    assert s["fraction_r_gt_t"] == pytest.approx(6 / 18) and s["min_time"] == -0.5


@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_every_convention_maps_its_times_to_mfverifys_and_back(a, b):
    r, t = min(a, b), max(a, b)
    for name, conv in CONVENTIONS.items():
        r2, t2, sign = conv.times(*conv.arguments(torch.tensor([r]), torch.tensor([t])))
        # one subtraction each way: exact to the rounding of t - r (one ulp of 1)
        assert abs(float(r2) - r) <= 2.3e-16 and abs(float(t2) - t) <= 2.3e-16, name
        assert sign == (-1.0 if conv.reversed else 1.0)


def test_as_model_reads_the_same_table_as_the_exact_network():
    mixture = get_case("bimodal1d")
    x, r, t, _ = _points(mixture, 4, 5)
    u = truth.average_velocity(mixture, x, r, t)
    for name in INPUTS:
        native = ExactNetwork(mixture, inputs=name)
        assert _close(conventions.as_model(native, name)(x, r, t).detach(), u), name


def test_the_stand_in_clamps_into_the_unit_interval_and_lowers_r_to_t():
    r, t = stand_in(torch.tensor([-0.5, 0.2, 0.9, 0.3]), torch.tensor([0.4, 1.5, 0.5, -0.1]))
    assert r.tolist() == [0.0, 0.2, 0.5, 0.0] and t.tolist() == [0.4, 1.0, 0.5, 0.0]


def test_the_cells_partition_the_triangle():
    assert cell_bins(torch.tensor([0.0, 0.124, 0.125, 0.999, 1.0, -0.1]), 8).tolist() == [0, 0, 1, 7, 7, 0]
    cells = triangle_cells(8)
    assert len(cells) == 36 and all(i <= j for i, j in cells)


def _direction(net, j, x, r, t, **kw):
    """``h_j`` read off the network: the output with ``offset = e_j`` less the output at ``u*``."""
    with torch.no_grad():
        net.offset.zero_()
        base = net(x, r, t, **kw)
        net.offset[j] = 1.0
        h = net(x, r, t, **kw) - base
        net.offset.zero_()
    return h


@pytest.mark.parametrize("case", ["ring8", "ring8_two_classes", "bimodal1d"])
def test_the_tamed_directions_first_derivatives_are_exact(case):
    """The JVP of each tamed direction (the exact fields' first derivatives, chained through the
    stretch) equals the central difference of the direction itself, evaluated anew at each point
    (u* solved there): step 1e-4, error O(1e-8) from the third derivative plus 1e-12 / 1e-4 of
    round-off, against directions of size 1."""
    mixture = get_case(case)
    net = ExactNetwork(mixture)
    x, r, t, v = _points(mixture, 5, 11)
    kw = {"labels": torch.tensor([0, 1, 2, 1, 0])} if mixture.labels is not None else {}
    dt = torch.ones_like(t)
    for j, name in enumerate(net.decisive):
        moved = ExactNetwork(mixture)
        moved.offset[j] = 1.0

        def h(a, c):
            return moved(a, r, c, **kw) - net(a, r, c, **kw)

        _, dh = torch.func.jvp(h, (x, t), (v, dt))
        s = 1e-4
        fd = (h(x + s * v, t + s * dt) - h(x - s * v, t - s * dt)) / (2 * s)
        assert (dh.detach() - fd.detach()).abs().max().item() <= 1e-5 * max(fd.abs().max().item(), 1.0), name


@pytest.mark.parametrize("case", ["ring8", "random16d"])
def test_the_stretch_is_the_flow_maps_volume_change(case):
    """Liouville: the flow carries p_t to p_r, so e^ell = p_t(x) / p_r(Phi(x, t -> r)) = |det dPhi/dx|
    with dPhi/dx = I - (t - r) J_x u*; both from the ODE route at rtol 1e-12, agreeing to 1e-8."""
    mixture = get_case(case)
    field = ExactField(mixture)
    x, r, t, _ = _points(mixture, 6, 12)
    ell = field.layout(tamed=True).split(field.values(x, r, t))[3]
    _, J, _, _ = field.derivatives(x, r, t)
    M = torch.eye(mixture.d) - (t - r)[:, None, None] * J
    assert torch.allclose(ell.exp(), torch.linalg.det(M).abs(), rtol=1e-8)


def test_the_field_answers_each_label_with_its_class_and_checks_the_labels():
    mixture = get_case("ring8_two_classes")
    field = ExactField(mixture)
    x, r, t, _ = _points(mixture, 5, 6)
    labels = field.labels_of(torch.tensor([0, 1, 2, -1, 1]), 5)
    u = field.values(x, r, t, labels)[:, : mixture.d]
    for i, c in enumerate(labels.tolist()):
        m = mixture.class_mixture(c) if c in (0, 1) else mixture
        assert _close(u[i : i + 1], truth.average_velocity(m, x[i : i + 1], r[i : i + 1], t[i : i + 1]))
    assert field.labels_of(1, 5).tolist() == [1] * 5
    with pytest.raises(ValueError, match="3 entries for a batch of 5"):
        field.labels_of(torch.tensor([0, 1, 0]), 5)
    with pytest.raises(ValueError, match="unlabelled"):
        ExactField(get_case("ring8")).labels_of(torch.tensor([0]), 1)


def test_the_exact_network_in_float32_answers_in_float32_at_float32s_resolution():
    mixture = get_case("ring8")
    x, r, t, v = _points(mixture, 6, 7)
    net = ExactNetwork(mixture)
    u, du = torch.func.jvp(net, (x.float(), r.float(), t.float()),
                           (v.float(), torch.zeros(6), torch.ones(6)))
    u_true, du_true = truth.average_velocity_jvp(mixture, x.float().double(), r.float().double(),
                                                 t.float().double(), v.float().double(), 0.0, 1.0)
    assert u.dtype == torch.float32 and du.dtype == torch.float32
    # computed in float64 at the rounded inputs; the output rounded once: half an ulp of float32
    assert (u.double() - u_true).abs().max().item() <= 2 ** -24 * max(u_true.abs().max().item(), 1.0)
    assert (du.double() - du_true).abs().max().item() <= 2 ** -24 * max(du_true.abs().max().item(), 1.0)
