"""One training loop: a model trained with a named objective on a named case.

The loop reads top to bottom like nanoGPT's: draw ``x0 ~ p0``, noise ``x1``, times
``(r, t)``; per-sample loss of the objective; mean; backward; optimiser step; EMA.
A non-finite loss stops the run and records it as diverged at that step.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm import tqdm

from mfverify import objectives
from mfverify.cases import get_case
from mfverify.io import save_torch
from mfverify.nets import NO_LABEL, Conditioned, build_network, network_options
from mfverify.times import KINDS as TIME_SAMPLERS
from mfverify.times import sample_times

DTYPES = {"float32": torch.float32, "float64": torch.float64}
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (with ``seed``, deterministic on CPU)."""

    case: str = "ring8"
    objective: str = "mf"
    steps: int = 2000
    batch: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    time_sampler: str = "logit_normal"
    time_mean: float = -0.4
    time_std: float = 1.0
    frac_r_eq_t: float = 0.75
    p: float = 0.0  # adaptive weighting, for objectives that take it (Objective.weighting)
    c: float = 1e-3
    jvp: str = "auto"  # JVP back-end, for objectives that take one
    conditional: bool = False  # class-conditional on a labelled case (the network gets n_classes)
    label_dropout: float = 0.1  # conditional: share of rows trained with the "none" label
    network: str = "mlp"  # a name in mfverify.nets.networks or "module:attr"
    network_options: tuple = ()  # ((key, value), ...) for the network's builder
    objective_options: tuple = ()  # ((key, value), ...) for the objective
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("network_options", "objective_options"):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = tuple(sorted(value.items()))
            if not isinstance(value, tuple) or not all(isinstance(kv, tuple) and len(kv) == 2 for kv in value):
                raise TypeError(f"{name} must be a dict or a tuple of (key, value) pairs, got {value!r}")
            object.__setattr__(self, name, tuple(sorted(value)))
        get_case(self.case)  # raises for an unknown case
        objective_options(self)  # raises for an unknown objective or options it does not take
        known = network_options(self.network)  # raises for an unknown network
        unknown = sorted(set(dict(self.network_options)) - set(known))
        if unknown:
            raise TypeError(f"network {self.network!r} got unexpected options {unknown}; its options: {', '.join(known)}")
        if not 0.0 <= self.label_dropout < 1.0 or isinstance(self.label_dropout, bool):
            raise ValueError(f"label_dropout must lie in [0, 1), got {self.label_dropout!r}")
        if not isinstance(self.conditional, bool):
            raise TypeError(f"conditional must be a bool, got {self.conditional!r}")
        if self.conditional and getattr(get_case(self.case), "labels", None) is None:
            raise ValueError(f"conditional = true needs a labelled case (a GaussianMixture with labels), "
                             f"{self.case!r} has none")
        if not self.conditional and objectives.get(self.objective).labels_needed(objective_options(self)):
            raise ValueError(f"objective {self.objective!r} with options {dict(self.objective_options)} trains a "
                             "class-conditional model: set conditional = true (on a labelled case)")
        network_options_of(self)  # raises where the objective's heads and the network disagree
        for name in ("steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "weight_decay", "ema_decay", "time_mean", "time_std", "frac_r_eq_t", "p", "c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.frac_r_eq_t <= 1.0:
            raise ValueError(f"frac_r_eq_t must lie in [0, 1], got {self.frac_r_eq_t!r}")
        if not self.time_std > 0:
            raise ValueError(f"time_std must be positive, got {self.time_std!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.time_sampler not in TIME_SAMPLERS:
            raise ValueError(f"time_sampler must be one of {TIME_SAMPLERS}, got {self.time_sampler!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: torch.nn.Module
    losses: list[float] = field(default_factory=list)
    diverged_step: int | None = None
    wall_seconds: float = 0.0
    ensemble: int = 1  # members trained together with this one (train_ensemble), itself included

    @property
    def final_loss(self) -> float:
        tail = [v for v in self.losses[-100:] if math.isfinite(v)]
        return sum(tail) / len(tail) if tail else float("nan")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but CUDA is not available")
    return torch.device(device)


def objective_options(cfg: TrainConfig) -> dict:
    """The options the run's objective is called with: ``cfg.objective_options``, and
    ``p, c`` and ``jvp`` from the config where the objective takes them. A weighting or
    a back-end asked of an objective that takes none is an error, not silently dropped."""
    objective = objectives.get(cfg.objective)
    options = dict(cfg.objective_options)
    if objective.weighting:
        options.setdefault("p", cfg.p)
        options.setdefault("c", cfg.c)
    elif cfg.p != 0:
        raise ValueError(f"p = {cfg.p!r}: objective {cfg.objective!r} takes no adaptive weighting (set p = 0 for it)")
    if "jvp" in objective.options:
        options.setdefault("jvp", cfg.jvp)
    elif cfg.jvp != "auto":
        raise ValueError(f"jvp = {cfg.jvp!r}: objective {cfg.objective!r} takes no JVP back-end")
    return objective.resolve_options(options)


def network_options_of(cfg: TrainConfig) -> dict:
    """The network's options: ``cfg.network_options``, ``heads`` where the objective trains more
    than one head (``Objective.heads``; the network must take ``heads``), ``n_classes`` for a
    conditional run and, for a network that takes a ``shape`` (``unet``), the case's image shape."""
    options = dict(cfg.network_options)
    heads = objectives.get(cfg.objective).heads
    if heads != 1:
        if "heads" not in network_options(cfg.network):
            raise ValueError(f"objective {cfg.objective!r} trains {heads} heads, but network {cfg.network!r} "
                             "takes no 'heads' option")
        if options.setdefault("heads", heads) != heads:
            raise ValueError(f"objective {cfg.objective!r} trains {heads} heads, network_options has "
                             f"heads = {options['heads']!r}")
    if "shape" in network_options(cfg.network) and options.get("shape") is None:
        options["shape"] = getattr(get_case(cfg.case), "shape", None)  # an image network gets the case's shape
        if options["shape"] is None:
            raise ValueError(f"network {cfg.network!r} needs the image shape (C, H, W), and case {cfg.case!r} "
                             "declares none: use an image case (digits, images32) or set network_options shape")
    if cfg.conditional:
        if "n_classes" not in network_options(cfg.network):
            raise ValueError(f"conditional = true, but network {cfg.network!r} takes no 'n_classes' option")
        n_classes = get_case(cfg.case).n_classes
        if options.setdefault("n_classes", n_classes) != n_classes:
            raise ValueError(f"case {cfg.case!r} has {n_classes} classes, network_options has "
                             f"n_classes = {options['n_classes']!r}")
    return options


def build_model(cfg: TrainConfig, d: int) -> torch.nn.Module:
    # initialised in float32 whatever torch's default dtype is (the initial draws depend
    # on it), then cast to cfg.dtype by the caller: a seed gives the same model everywhere
    return build_network(cfg.network, d, network_options_of(cfg), dtype=torch.float32)


def optimizer(cfg: TrainConfig, params):
    """``(optimiser, lr schedule or None)`` of a run."""
    opt_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[cfg.optimizer]
    opt = opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps) if cfg.lr_schedule == "cosine" else None
    return opt, schedule


_CHUNK = 100  # training steps whose batches are drawn (and, on a GPU, losses read) together


def _batches(cfg: TrainConfig, mixture, g: torch.Generator, device, dtype):
    """Per step ``(x0, x1, r, t)`` on ``device`` (and the labels, ``conditional``): drawn on the
    CPU in float64 from ``g``, step by step in the same order whatever the chunking, and moved
    a chunk at a time (one host-to-device copy per chunk instead of four per step). Labels
    come with the same draws of ``x0`` (``sample_labelled``); a share ``label_dropout`` of
    them, drawn after the times, is set to the "none" label."""
    for first in range(0, cfg.steps, _CHUNK):
        draws = []
        for _ in range(min(_CHUNK, cfg.steps - first)):
            if cfg.conditional:
                x0, labels = mixture.sample_labelled(cfg.batch, generator=g)
            else:
                x0 = mixture.sample(cfg.batch, generator=g)
            x1 = torch.randn(cfg.batch, mixture.d, generator=g, dtype=torch.float64)
            r, t = sample_times(
                cfg.batch, cfg.time_sampler, cfg.time_mean, cfg.time_std, cfg.frac_r_eq_t, g, dtype=torch.float64
            )
            if cfg.conditional:
                drop = torch.rand(cfg.batch, generator=g, dtype=torch.float64) < cfg.label_dropout
                draws.append((x0, x1, r, t, torch.where(drop, NO_LABEL, labels)))
            else:
                draws.append((x0, x1, r, t))
        stacked = [torch.stack(parts) for parts in zip(*draws)]
        # checked here, on the CPU, a chunk at a time: the objective then reads nothing back per step
        objectives.check_batch_values(*(a.flatten(0, 1) if a.ndim == 3 else a.flatten() for a in stacked[:4]))
        chunk = [a.to(device=device, dtype=dtype) for a in stacked[:4]] + [a.to(device) for a in stacked[4:]]
        yield from zip(*chunk)


def _loss_check_interval(device: torch.device) -> int:
    return 1 if device.type == "cpu" else _CHUNK


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    mixture = get_case(cfg.case)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, mixture.d).to(device=device, dtype=dtype)
    ema = copy.deepcopy(model).requires_grad_(False)
    model_params, ema_params = list(model.parameters()), list(ema.parameters())
    opt, schedule = optimizer(cfg, model.parameters())
    objective = objectives.get(cfg.objective)
    options = objective_options(cfg)
    if objective.needs_truth:
        options["mixture"] = mixture
    g = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(model=model, ema=ema)
    # on a GPU every host read of the loss waits for the queue to drain: the losses are
    # read (and checked) once per chunk there; on the CPU after every step as before
    check_every = _loss_check_interval(device)
    pending = []
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc=f"{cfg.case}/{cfg.objective}/seed{cfg.seed}", disable=not progress, leave=False)
    for step, (x0, x1, r, t, *labels) in enumerate(_batches(cfg, mixture, g, device, dtype)):
        net = Conditioned(model, labels[0]) if labels else model
        loss = objective.per_sample(net, x0, x1, r, t, **objective.options_at(step, cfg.steps, options)).mean()
        pending.append(loss.detach())
        if len(pending) == check_every or step == cfg.steps - 1:
            values = torch.stack(pending).tolist()
            pending = []
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                result.losses += values[: bad[0] + 1]
                result.diverged_step = step - len(values) + 1 + bad[0]
                break
            result.losses += values
            bar.update(len(values))
            bar.set_postfix(loss=f"{values[-1]:.4g}", refresh=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - cfg.ema_decay)
    bar.close()
    result.wall_seconds = time.perf_counter() - start
    return result


def checkpoint(cfg: TrainConfig, result: TrainResult) -> dict:
    """What ``save_checkpoint`` writes: model, EMA, config, losses."""
    return {
        "config": asdict(cfg),
        "model": result.model.state_dict(),
        "ema": result.ema.state_dict(),
        "diverged_step": result.diverged_step,
        "losses": result.losses,
    }


def save_checkpoint(path, cfg: TrainConfig, result: TrainResult):
    """Model, EMA and config, written atomically."""
    save_torch(path, checkpoint(cfg, result))


def load_checkpoint(path, map_location="cpu"):
    """``(cfg, model, ema)`` from ``save_checkpoint``'s file."""
    blob = torch.load(path, map_location=map_location, weights_only=False)
    config = dict(blob["config"])
    # checkpoints written before networks had their own options kept the MLP's in the config
    legacy = {"width": "width", "depth": "depth", "time_inputs": "time_inputs", "time_max_freq": "max_freq"}
    moved = {new: config.pop(old) for old, new in legacy.items() if old in config}
    if moved:
        config["network_options"] = {**moved, **dict(config.get("network_options", ()))}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: the checkpoint's config has keys this version does not know: {unknown}")
    cfg = TrainConfig(**config)
    d = get_case(cfg.case).d
    model, ema = build_model(cfg, d), build_model(cfg, d)
    model.load_state_dict(blob["model"])
    ema.load_state_dict(blob["ema"])
    dtype = DTYPES[cfg.dtype]
    return cfg, model.to(dtype), ema.to(dtype)
