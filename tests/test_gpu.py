"""The GPU path (run where CUDA is present; reported as skipped elsewhere, never as passed).

What differs on a GPU: the training loop reads its losses once per chunk of steps
(``train._loss_check_interval``), studies start their workers with spawn, and models
are evaluated on the GPU against the CPU truth.
"""

import csv
import math

import pytest
import torch

from mfverify import objectives
from mfverify.jvp import BACKENDS
from mfverify.nets import MeanFlowMLP
from mfverify.study.config import load_study
from mfverify.study.runner import run_study
from mfverify.times import sample_times
from mfverify.train import TrainConfig, train

from .test_study import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = dict(case="ring8", objective="mf", steps=250, batch=64, network_options={"width": 16, "depth": 2}, p=1.0, c=0.03)


def test_training_on_the_gpu_reads_every_loss_and_matches_the_cpu_run():
    gpu = train(TrainConfig(**SMALL, device="cuda"), progress=False)
    cpu = train(TrainConfig(**SMALL, device="cpu"), progress=False)
    assert next(gpu.ema.parameters()).device.type == "cuda"
    assert gpu.diverged_step is None and len(gpu.losses) == SMALL["steps"]  # 3 chunks, the last partial
    # same draws and initial weights: before the first update the two devices compute the
    # same float32 loss up to round-off (about 1e-7 relative per operation; 1e-5 allows
    # for the sums over the batch and the network's layers); later steps may drift apart
    assert math.isclose(gpu.losses[0], cpu.losses[0], rel_tol=1e-5)
    assert all(map(math.isfinite, gpu.losses))


def test_a_diverging_gpu_run_is_stopped_at_the_first_non_finite_loss():
    result = train(TrainConfig(**{**SMALL, "lr": 1e30}, device="cuda"), progress=False)
    assert result.diverged_step is not None and result.diverged_step == len(result.losses) - 1
    assert not math.isfinite(result.losses[-1]) and all(map(math.isfinite, result.losses[:-1]))


def test_jvp_back_ends_agree_on_the_gpu():
    torch.manual_seed(0)
    model = MeanFlowMLP(3, width=16, depth=2).double().cuda()
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(16, 3, generator=g).cuda(), torch.randn(16, 3, generator=g).cuda()
    r, t = (a.cuda() for a in sample_times(16, frac_r_eq_t=0.0, generator=g, dtype=torch.float64))
    values = [objectives.get("mf_full")(model, x0, x1, r, t, jvp=b) for b in BACKENDS]
    for v in values[1:]:  # float64: the back-ends differ only in summation order
        assert (v - values[0]).abs().max() <= 1e-12 * max(1.0, values[0].abs().max().item())


def test_a_gpu_study_with_spawned_workers_completes(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace('device = "cpu"', 'device = "cuda"'))
    out = run_study(load_study(path), tmp_path / "gpu", jobs=2, progress=False)
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 6 and all(r["device"] == "cuda" for r in runs)
    with open(out / "results.csv") as f:
        exact_u = [float(r["value"]) for r in csv.DictReader(f) if r["method"] == "exact_u" and r["metric"] == "flow_map_mean"]
    assert exact_u and max(exact_u) <= 1e-8


def test_an_ensemble_on_the_gpu_starts_as_its_solo_runs_and_reads_nothing_per_step():
    from mfverify.train.ensemble import train_ensemble

    cfgs = [TrainConfig(**SMALL, device="cuda", seed=s) for s in range(3)]
    ens = train_ensemble(cfgs, progress=False)
    for cfg, member in zip(cfgs, ens):
        solo = train(cfg, progress=False)
        assert next(member.ema.parameters()).device.type == "cuda"
        # the same first-step loss to float32 round-off (one batched evaluation vs one solo)
        assert math.isclose(member.losses[0], solo.losses[0], rel_tol=1e-5)
        assert len(member.losses) == SMALL["steps"] and member.diverged_step is None
