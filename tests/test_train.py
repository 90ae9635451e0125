"""The training loop: determinism, the chunked loss check (the GPU path), checkpoints."""

import math

import pytest
import torch

from mfverify.train import TrainConfig, load_checkpoint, save_checkpoint, train
from mfverify.train import loop as train_module

SMALL = dict(case="ring8", objective="mf", steps=30, batch=32, network_options={"width": 16, "depth": 2}, device="cpu", p=1.0, c=0.03)


def _state(result):
    return {k: v.clone() for k, v in result.ema.state_dict().items()}


def test_a_seed_gives_the_same_run_twice_and_another_seed_does_not():
    a, b = train(TrainConfig(**SMALL), progress=False), train(TrainConfig(**SMALL), progress=False)
    c = train(TrainConfig(**SMALL, seed=1), progress=False)
    assert a.losses == b.losses and len(a.losses) == SMALL["steps"]
    assert all(torch.equal(v, _state(b)[k]) for k, v in _state(a).items())
    assert a.losses != c.losses


@pytest.mark.parametrize("interval", [7, 100])
def test_the_chunked_loss_check_changes_nothing_but_when_losses_are_read(monkeypatch, interval):
    # the GPU path reads the losses every `interval` steps; on the CPU it is run here
    # against the per-step path: the same bits, and nothing read twice or lost
    reference = train(TrainConfig(**SMALL), progress=False)
    monkeypatch.setattr(train_module, "_loss_check_interval", lambda device: interval)
    chunked = train(TrainConfig(**SMALL), progress=False)
    assert chunked.losses == reference.losses
    assert all(torch.equal(v, _state(reference)[k]) for k, v in _state(chunked).items())


def test_the_chunked_loss_check_finds_the_step_of_divergence(monkeypatch):
    cfg = TrainConfig(**{**SMALL, "lr": 1e30})
    reference = train(cfg, progress=False)
    assert reference.diverged_step is not None and 0 < reference.diverged_step < SMALL["steps"] - 1
    monkeypatch.setattr(train_module, "_loss_check_interval", lambda device: 7)
    chunked = train(cfg, progress=False)
    assert chunked.diverged_step == reference.diverged_step
    # the same losses up to the first non-finite one, which ends both lists
    assert chunked.losses[:-1] == reference.losses[:-1] and len(chunked.losses) == len(reference.losses)
    assert not math.isfinite(chunked.losses[-1]) and all(map(math.isfinite, chunked.losses[:-1]))


def test_a_checkpoint_reloads_the_same_model(tmp_path):
    cfg = TrainConfig(**SMALL)
    result = train(cfg, progress=False)
    save_checkpoint(tmp_path / "c.pt", cfg, result)
    cfg2, model, ema = load_checkpoint(tmp_path / "c.pt")
    assert cfg2 == cfg
    x = torch.randn(5, 2, dtype=torch.float32)
    r, t = torch.full((5,), 0.2, dtype=torch.float32), torch.full((5,), 0.7, dtype=torch.float32)
    assert torch.equal(ema(x, r, t), result.ema(x, r, t))
    assert torch.equal(model(x, r, t), result.model(x, r, t))


def test_a_schedule_sets_the_options_of_each_step():
    from mfverify import objectives

    scm = objectives.get("scm")
    options = scm.resolve_options({"warmup_steps": 4})
    assert [scm.options_at(s, 10, options)["tangent_warmup"] for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert scm.options_at(3, 10, scm.resolve_options())["tangent_warmup"] == 1.0  # no warm-up: as given
    # training with a warm-up differs from training without one, which is the default's bits
    base = dict(SMALL, objective="scm", p=0.0)
    plain = train(TrainConfig(**base), progress=False)
    zero = train(TrainConfig(**base, objective_options={"warmup_steps": 0}), progress=False)
    warm = train(TrainConfig(**base, objective_options={"warmup_steps": 20}), progress=False)
    assert plain.losses == zero.losses and plain.losses[1:] != warm.losses[1:]


def test_a_plain_network_from_the_registry_trains(tmp_path):
    cfg = TrainConfig(**{**SMALL, "network": "tests.test_registry:_tiny_network", "network_options": {"scale": 0.5}})
    result = train(cfg, progress=False)
    assert len(result.losses) == SMALL["steps"] and all(map(math.isfinite, result.losses))
    save_checkpoint(tmp_path / "c.pt", cfg, result)
    cfg2, _, ema = load_checkpoint(tmp_path / "c.pt")
    x = torch.randn(4, 2, dtype=torch.float32)
    r, t = torch.zeros(4, dtype=torch.float32), torch.full((4,), 0.5, dtype=torch.float32)
    assert cfg2 == cfg and torch.equal(ema(x, r, t), result.ema(x, r, t))


def test_an_objective_that_needs_the_truth_gets_the_mixture():
    from mfverify import objectives, truth

    seen = []

    def fm_oracle(model, x0, x1, r, t, mixture):
        """``|u(x_t, t, t) - v(x_t, t)|^2``: flow matching on the exact field."""
        seen.append(mixture)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        v = truth.velocity(mixture, x_t.detach().double(), t.detach().double()).to(x_t.dtype)
        return (model(x_t, t, t) - v).square().sum(1)

    objectives.register("fm_oracle_test", fm_oracle, needs_truth=True)
    try:
        result = train(TrainConfig(**{**SMALL, "objective": "fm_oracle_test", "p": 0.0, "steps": 3}), progress=False)
        assert len(result.losses) == 3 and all(m.K == 8 for m in seen)  # ring8, on every step
    finally:
        objectives.registry.unregister("fm_oracle_test")


def test_a_checkpoint_from_before_network_options_loads_its_own_network(tmp_path):
    cfg = TrainConfig(**SMALL)
    result = train(cfg, progress=False)
    save_checkpoint(tmp_path / "c.pt", cfg, result)
    blob = torch.load(tmp_path / "c.pt", weights_only=False)
    config = {k: v for k, v in blob["config"].items() if k not in ("network", "network_options", "objective_options")}
    blob["config"] = {**config, "width": 16, "depth": 2, "time_inputs": "t,t-r", "time_max_freq": 64.0}
    torch.save(blob, tmp_path / "old.pt")
    cfg2, _, ema = load_checkpoint(tmp_path / "old.pt")
    assert dict(cfg2.network_options) == {"width": 16, "depth": 2, "time_inputs": "t,t-r", "max_freq": 64.0}
    x = torch.randn(3, 2, dtype=torch.float32)
    r, t = torch.zeros(3, dtype=torch.float32), torch.full((3,), 0.5, dtype=torch.float32)
    assert torch.equal(ema(x, r, t), result.ema(x, r, t))
