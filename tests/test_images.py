"""Image scale: the study on digits, the checks on image-shaped batches, the exact network's lazy route."""

import numpy as np
import pytest
import torch

from mfverify.cases import LowRankMixture
from mfverify.check import ExactNetwork
from mfverify.check.as_written import run_as_written
from mfverify.study.__main__ import main as study_main
from tests import as_written_losses


def test_images_compare_quick_draws_the_samples_as_images(tmp_path):
    out = tmp_path / "images"
    assert study_main(["images_compare", "--preset", "quick", "--out", str(out), "--no-progress"]) == 0
    png = out / "samples_digits.png"
    assert png.is_file() and png.stat().st_size > 10_000
    header, *rows = (out / "images_digits.csv").read_text().splitlines()
    assert "sample" in header.split(",") and rows
    first = dict(zip(header.split(","), rows[0].split(",")))
    assert first["shape"] == "1x8x8" and len(first["sample"].split()) == 64
    assert (out / "claims.md").is_file() and "## Claims asked again" in (out / "summary.md").read_text()


def test_the_as_written_battery_hands_an_image_case_image_batches():
    seen = []

    def loss(model, x0):
        seen.append(tuple(x0.shape))
        return as_written_losses.meanflow_images(model, x0)

    report = run_as_written(loss, cases=["digits"], batch_size=128, min_batches=2, max_batches=2)
    assert seen and all(s[1:] == (1, 8, 8) for s in seen)
    assert report.checks["times_in_range"].passed and report.checks["one_step_trained"].passed


def _small_lowrank():
    rng = np.random.default_rng(4)
    d = 6
    return LowRankMixture([0.3, 0.7], rng.normal(0, 1, (2, d)), rng.normal(0, 0.5, (2, d, 2)), [0.05, 0.1],
                          labels=[0, 1], shape=(1, 2, 3))


def test_the_lazy_exact_network_equals_the_eager_one():
    """At image scale the exact network solves values and one tangent (``_ExactAlong``) instead of all
    d + 2 derivatives (``_Exact``): values, JVPs and a loss's eps-gradient (through forward-mode and
    through a double backward) must be the same numbers, up to the two ODE routes' tolerance (1e-9)."""
    mix = _small_lowrank()
    lazy, eager = ExactNetwork(mix), ExactNetwork(mix)
    assert lazy.field.lazy
    eager.field.lazy = False
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(32, generator=g).reshape(32, 1, 2, 3)
    results = []
    for net in (lazy, eager):
        torch.manual_seed(1)
        loss = as_written_losses.meanflow_images(net, x0)
        (grad,) = torch.autograd.grad(loss, net.eps)
        torch.manual_seed(1)
        flat = as_written_losses.meanflow(net, x0.reshape(32, 6))  # forward-mode, flat batches
        (grad_flat,) = torch.autograd.grad(flat, net.eps)
        x = x0.reshape(32, 6)
        r, t = torch.full((32,), 0.2, dtype=torch.float64), torch.full((32,), 0.9, dtype=torch.float64)
        _, du_reverse = torch.autograd.functional.jvp(lambda a: net(a, r, t), (x,), (torch.ones_like(x),))
        results.append((loss.detach(), grad, grad_flat, du_reverse))
    for a, b in zip(*results):
        assert a.abs().max() > 0
        assert (a - b).abs().max() <= 1e-9 * max(b.abs().max().item(), 1.0)


def test_the_per_sample_battery_refuses_a_case_beyond_its_reach_before_any_work():
    import pytest

    from mfverify.check import run

    with pytest.raises(ValueError, match=r"case 'images32' has d = 3072: the per-sample battery"):
        run("mf", cases=["ring8", "images32"])


def _three_channels():
    """A small three-channel image case, 3 x 2 x 2 (d = 12), two components of rank 2."""
    from mfverify.cases import LowRankMixture

    g = np.random.default_rng(5)
    return LowRankMixture([0.5, 0.5], g.normal(0, 1.0, (2, 12)), g.normal(0, 0.5, (2, 12, 2)), [0.05, 0.08],
                          shape=(3, 2, 2))


def _channels_last(model, x0):
    """An image loss written for NHWC batches: it checks that the channels come last."""
    assert x0.shape[-1] == 3, x0.shape
    return as_written_losses.meanflow_images(model, x0)


def _channels_first_inside(model, x0):
    """Takes NHWC batches but hands its network NCHW images (a layout the check was not told)."""
    return as_written_losses.meanflow_images(model, x0.permute(0, 3, 1, 2))


def test_nhwc_and_nchw_versions_of_an_image_loss_get_the_same_verdict_and_a_mismatch_is_a_usage_error():
    case = _three_channels()
    nchw = run_as_written(as_written_losses.meanflow_images, cases=[case], batch_size=128, max_batches=16)
    nhwc = run_as_written(_channels_last, cases=[case], batch_size=128, max_batches=16, layout="NHWC")
    # the same verdict (16 batches: undecided, the resolution is not reached), neither a failure
    assert nchw.verdict == nhwc.verdict == "undecided", nhwc.table()
    from mfverify.check import LossError

    with pytest.raises(LossError, match=r"does not match the case's images \(3, 2, 2\) in layout NHWC"):
        run_as_written(_channels_first_inside, cases=[case], batch_size=64, max_batches=8, layout="NHWC")
