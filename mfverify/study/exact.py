"""The study's exact references, computed once per case before any run and stored under
``truth/``: the shared noise ``x1`` and its exact map ``Phi(x1, 1 -> 0)``, the points and
exact ``u`` of the field-error grid, and for conditional runs the guided targets."""

from __future__ import annotations

from pathlib import Path

import torch

from mfverify import objectives, truth
from mfverify.path import sample as sample_x_t
from mfverify.cases import get_case
from mfverify.io import save_torch
from mfverify.study.config import Study
from mfverify.study.store import field_grid_path, guided_path, truth_path


def prepare_truth(study: Study, out: Path, case_index: int, case: str) -> None:
    """The shared noise ``x1`` of a case and its exact map ``Phi(x1, 1 -> 0)`` (once per case)."""
    path = truth_path(out, case)
    if path.exists():
        return
    mixture = get_case(case)
    g = torch.Generator().manual_seed(study.eval.noise_seed + case_index)
    x1 = torch.randn(study.eval.n_noise, mixture.d, generator=g, dtype=torch.float64)
    phi = truth.flow_map(mixture, x1, 1.0, 0.0)
    save_torch(path, {"x1": x1, "phi": phi})


def guided_target(study: Study, case: str, objective: str):
    """``(key, w, interval)`` of a conditional run's guided field (``Objective.guidance``;
    ``interval`` None for all of [0, 1]), or None for an unconditional run; ``key`` names
    the target's file."""
    cfg = study.run_config(case, objective, 0)
    if not cfg.conditional:
        return None
    w, interval = objectives.get(cfg.objective).guided_target(dict(cfg.objective_options))
    if interval is not None and tuple(interval) == (0.0, 1.0):
        interval = None
    key = f"w{w:g}" + ("" if interval is None else f"_t{interval[0]:g}-{interval[1]:g}")
    return key, w, interval


def guided_targets(study: Study, case: str) -> dict:
    """``{key: (w, interval)}`` of the study's conditional runs on ``case``."""
    targets = (guided_target(study, case, obj) for obj in study.study.objectives)
    return {key: (w, interval) for key, w, interval in filter(None, targets)}


def prepare_guided(study: Study, out: Path, case_index: int, case: str) -> None:
    """For conditional runs: a class label per noise sample (drawn from the class weights, the
    same for every run) and the exact guided map ``Phi_w(x1, 1 -> 0 | c)`` per guidance target."""
    targets = guided_targets(study, case)
    if not targets:
        return
    mixture = get_case(case)
    x1 = torch.load(truth_path(out, case), weights_only=True)["x1"]
    g = torch.Generator().manual_seed(study.eval.noise_seed + 3000 + case_index)
    labels = torch.multinomial(mixture.class_weights(), len(x1), replacement=True, generator=g)
    for key, (w, interval) in targets.items():
        path = guided_path(out, case, key)
        if not path.exists():
            phi = truth.guided_flow_map(mixture, x1, t=1.0, r=0.0, labels=labels, w=w, interval=interval)
            save_torch(path, {"labels": labels, "phi": phi, "w": w,
                              "interval": torch.tensor(interval if interval is not None else (0.0, 1.0))})


def prepare_field_grid(study: Study, out: Path, case_index: int, case: str) -> None:
    """Points of the field-error heatmap and the exact ``u`` there (once per case): at
    each node ``(r, t)`` of ``EvalConfig.field_nodes``, ``field_grid_samples`` points
    ``x_t = (1 - t) x0 + t eps`` with ``x0`` from the data."""
    path = field_grid_path(out, case)
    if path.exists():
        return
    mixture = get_case(case)
    k = study.eval.field_grid_samples
    nodes = torch.tensor(study.eval.field_nodes(), dtype=torch.float64)
    g = torch.Generator().manual_seed(study.eval.noise_seed + 2000 + case_index)
    r = nodes[:, 0].repeat_interleave(k)
    t = nodes[:, 1].repeat_interleave(k)
    xt = sample_x_t(mixture, t, g)
    u = truth.average_velocity(mixture, xt, r, t)
    save_torch(path, {"r": r, "t": t, "x": xt, "u": u, "samples": k})


def load_truth(out: Path, case: str, study: Study | None = None) -> dict:
    """What a job needs of a case's truth: the noise, its exact image, the field grid, and
    (conditional runs) the guided targets."""
    blob = torch.load(truth_path(out, case), weights_only=True)
    out_blob = {"x1": blob["x1"], "phi": blob["phi"], "grid": torch.load(field_grid_path(out, case), weights_only=True)}
    if study is not None:
        out_blob["guided"] = {key: torch.load(guided_path(out, case, key), weights_only=True)
                              for key in guided_targets(study, case)}
    return out_blob
