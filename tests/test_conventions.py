"""Converters (mfverify.check.conventions): each an exact identity, values and gradients,
checked against mfverify's own objectives on random networks and batches."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mfverify import objectives
from mfverify.check import conventions
from mfverify.check.testing import assert_equivalent, batches

from . import public_losses as P

pytestmark = pytest.mark.float64  # numerical truth, compared at float64 tolerances

MF = objectives.get("mf")


def _grads(loss, model):
    return torch.autograd.grad(loss.sum(), list(model.parameters()))


def _assert_same(a, b, model):
    # the same arithmetic through other argument orders: equal to round-off (1e-12 relative)
    scale = max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= 1e-12 * scale
    for ga, gb in zip(_grads(a, model), _grads(b, model)):
        assert (ga - gb).abs().max().item() <= 1e-12 * max(1.0, ga.abs().max().item())


def _mf_tr_net(net, x0, x1, r, t):
    """mf for a network called as net(z, t, r)."""
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x1 - x0
    u, dudt = torch.func.jvp(net, (x_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    return (u - (v - (t - r)[:, None] * dudt).detach()).square().sum(1)


def _mf_th_net(net, x0, x1, r, t):
    """mf for a network called as net(z, t, h), h = t - r."""
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x1 - x0
    u_fn = lambda z, t_, r_: net(z, t_, t_ - r_)  # noqa: E731
    u, dudt = torch.func.jvp(u_fn, (x_t, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    return (u - (v - (t - r)[:, None] * dudt).detach()).square().sum(1)


@given(batches())
def test_model_args_t_r_is_exact(batch):
    model, x0, x1, r, t = batch
    _assert_same(conventions.model_args_t_r(_mf_tr_net)(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


@given(batches())
def test_model_inputs_t_h_is_exact(batch):
    model, x0, x1, r, t = batch
    _assert_same(conventions.model_inputs_t_h(_mf_th_net)(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


@given(batches())
def test_time_reversal_is_exact(batch):
    model, x0, x1, r, t = batch
    converted = conventions.time_reversed(P.reversed_meanflow_loss)
    _assert_same(converted(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


@given(batches())
def test_loss_times_t_r_is_exact(batch):
    model, x0, x1, r, t = batch
    swapped = lambda m, a, b, t_, r_: MF(m, a, b, r_, t_)  # noqa: E731
    _assert_same(conventions.loss_times_t_r(swapped)(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


@given(batches())
def test_coordinate_mean_is_exact(batch):
    model, x0, x1, r, t = batch
    mean = lambda m, a, b, r_, t_: MF(m, a, b, r_, t_) / a.shape[1]  # noqa: E731
    _assert_same(conventions.coordinate_mean(mean)(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


@given(batches(n=4))
def test_batch_mean_is_exact_for_independent_samples(batch):
    model, x0, x1, r, t = batch
    batch_loss = lambda m, a, b, r_, t_: MF(m, a, b, r_, t_).mean()  # noqa: E731
    _assert_same(conventions.batch_mean(batch_loss)(model, x0, x1, r, t), MF(model, x0, x1, r, t), model)


def test_batch_mean_rejects_a_per_sample_loss():
    from mfverify.nets import MeanFlowMLP

    model, x0, x1 = MeanFlowMLP(2, width=8, dtype=torch.float64), torch.randn(3, 2), torch.randn(3, 2)
    r, t = torch.zeros(3), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="must return a scalar"):
        conventions.batch_mean(lambda m, a, b, r_, t_: MF(m, a, b, r_, t_).expand(2))(model, x0, x1, r, t)


@given(batches(n=3), st.sampled_from(["x,r,t", "x,t,r", "x,t,h", "reversed"]))
def test_as_model_puts_a_network_in_mfverify_order(batch, inputs):
    model, x0, _, r, t = batch
    native = {
        "x,r,t": model,
        "x,t,r": lambda x, t_, r_: model(x, r_, t_),
        "x,t,h": lambda x, t_, h: model(x, t_ - h, t_),
        "reversed": lambda z, a, b: -model(z, 1 - b, 1 - a),
    }[inputs]
    # 1 - (1 - r) and t - (t - r) are r only to round-off: equal to 1e-12
    assert torch.allclose(conventions.as_model(native, inputs)(x0, r, t), model(x0, r, t), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="inputs must be one of"):
        conventions.as_model(native, "t,x")


def test_converted_public_losses_equal_mf_exactly():
    # the transcriptions of tests/public_losses.py, converted: mf itself (factor 1)
    assert_equivalent(P.haidog_meanflow, "mf", up_to_constant=False)
    assert_equivalent(P.py_meanflow, "mf", options={"norm_p": 0.0}, up_to_constant=False)
    # without the coordinate_mean converter haidog's loss is mf / d: not one factor over d = 1, 2, 3,
    # one per dimension (a coordinate mean), which the battery reports and assert_equivalent accepts on request
    raw = conventions.model_args_t_r(conventions.loss_times_t_r(P.haidog_meanflow_loss))
    with pytest.raises(AssertionError, match="equivalent_to_reference failed.*coordinate mean"):
        assert_equivalent(raw, "mf")
    assert assert_equivalent(raw, "mf", per_dimension=True) == pytest.approx(1.0, rel=1e-12)
