"""The conv U-Net: shapes at the boundary, forward-mode and vmap safety, every objective trains it."""

import pytest
import torch

from mfverify import objectives
from mfverify.nets import UNet, build_network
from mfverify.train import TrainConfig, train


def _net(**kw):
    torch.manual_seed(0)
    return UNet(64, shape=(1, 8, 8), channels=8, levels=2, emb=16, **kw).double()


def _inputs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    return torch.randn(n, 64, generator=g, dtype=torch.float64), t * torch.rand(n, generator=g, dtype=torch.float64), t


def test_flat_points_in_and_out_with_heads_and_labels():
    x, r, t = _inputs()
    net = _net(heads=2, n_classes=10)
    labels = torch.tensor([0, 3, -1, 9])
    u, v = net(x, r, t, labels=labels), net.velocity(x, t, labels=labels)
    assert u.shape == v.shape == (4, 64) and torch.isfinite(u).all()
    assert not torch.equal(u, v)  # two heads
    # a row's output depends on its own row only (GroupNorm normalises per sample)
    assert torch.allclose(net(x[:2], r[:2], t[:2], labels=labels[:2]), u[:2], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="labels given to an unconditional network"):
        _net()(x, r, t, labels=labels)


def test_torch_func_jvp_equals_reverse_mode():
    """Forward mode (``torch.func.jvp``) against reverse mode (``torch.autograd.functional.jvp``, the
    double-backward trick): two independent routes to the same derivative, equal to float64 round-off
    (1e-10 relative: the net's intermediate values are O(10), each op adds ~1e-16 relative)."""
    net = _net()
    x, r, t = _inputs()
    g = torch.Generator().manual_seed(1)
    dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dr, dt = torch.full_like(r, 0.3), torch.ones_like(t)
    _, du = torch.func.jvp(net, (x, r, t), (dx, dr, dt))
    _, du_reverse = torch.autograd.functional.jvp(net, (x, r, t), (dx, dr, dt))
    assert du.abs().max() > 0
    assert (du - du_reverse).abs().max() <= 1e-10 * du_reverse.abs().max()


def test_vmap_over_an_ensemble_equals_each_member():
    members = [_net() for _ in range(3)]
    for k, m in enumerate(members):
        torch.manual_seed(k)
        for p in m.parameters():
            p.data.normal_(0, 0.1)
    params, buffers = torch.func.stack_module_state(members)
    x, r, t = _inputs()

    def call(p, b):
        return torch.func.functional_call(members[0], (p, b), (x, r, t))

    out = torch.vmap(call)(params, buffers)
    for k, m in enumerate(members):
        assert torch.allclose(out[k], m(x, r, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("objective", sorted(objectives.names()))
def test_every_objective_trains_the_unet_on_digits(objective):
    opts = (("channels", 8), ("levels", 1), ("emb", 16))
    cfg = TrainConfig(case="digits", objective=objective, steps=2, batch=8, network="unet", network_options=opts,
                      device="cpu", ema_decay=0.5)
    result = train(cfg, progress=False)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in result.losses), objective
    before = build_network("unet", 64, dict(opts, shape=(1, 8, 8)), dtype=torch.float32)
    moved = any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), result.model.state_dict().values()))
    assert moved, f"{objective}: two steps left the U-Net's parameters where they started"


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="needs the image shape"):
        TrainConfig(case="ring8", network="unet")
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\) holds 16 values, but the points have d = 64"):
        UNet(64, shape=(1, 4, 4))
    with pytest.raises(ValueError, match="H = 8 and W = 8 must be divisible by 16"):
        UNet(64, shape=(1, 8, 8), levels=4)
