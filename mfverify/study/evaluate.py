"""Evaluating a model against the exact references: sample at every NFE from the shared noise,
the flow-map metrics, the model baselines (a trained fm as a velocity), the field error
and the field-error grid; and the exact baselines (``exact_u``, ``exact_v_euler``,
``exact_v_heun``). Reads no file and writes none, except ``run_baselines`` (the driver's)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from mfverify import objectives, truth
from mfverify.path import sample as sample_x_t
from mfverify.cases import get_case
from mfverify.io import save_torch
from mfverify.metrics import field_error, sample_metrics
from mfverify.sample import average_velocity_sampler, euler, heun, model_as_velocity, uniform_grid
from mfverify.study.config import MODEL_BASELINES, Study
from mfverify.study.exact import guided_target
from mfverify.study.store import truth_path, write_rows
from mfverify.times import sample_times


def field_grid_errors(u_theta, grid: dict, r0_only: bool = False) -> list[dict]:
    """Per node: ``E|u_theta - u|^2`` and its ratio to ``E|u|^2`` over the node's points
    (nodes with r > 0 are left out when the model is trained at r = 0 only)."""
    k = int(grid["samples"])
    out = []
    with torch.no_grad():
        err = (u_theta(grid["x"], grid["r"], grid["t"]).double() - grid["u"]).square().sum(1)
    size = grid["u"].square().sum(1)
    for j in range(0, len(err), k):
        r, t = float(grid["r"][j]), float(grid["t"][j])
        if r0_only and r != 0:
            continue
        e, s = err[j : j + k].mean().item(), size[j : j + k].mean().item()
        out.append({"r": r, "t": t, "field_error": e, "u_sq": s, "relative": e / s if s > 0 else math.inf})
    return out


def _keep_samples(store: dict, method: str, nfe: int, x: torch.Tensor, k: int, phi=None) -> None:
    """``phi``: the exact images these samples are compared with, where they are not the
    case's own (a conditional run: the guided map)."""
    store.setdefault("method", []).append(method)
    store.setdefault("nfe", []).append(int(nfe))
    store.setdefault("x", []).append(x[:k].double().cpu().clone())
    if phi is not None:
        store.setdefault("phi", []).append(phi[:k].double().cpu().clone())


def metric_rows(study, case, method, seed, nfe, metrics):
    return [
        {"study": study, "case": case, "method": method, "seed": seed, "nfe": nfe, "metric": k, "value": v}
        for k, v in metrics.items()
    ]


# the instantaneous-velocity baselines made from a trained model (config.MODEL_BASELINES)
_SAMPLERS = {"fm_euler": euler, "fm_heun": heun}


def _as_u(model, device, dtype, labels=None):
    """A trained model as ``u(x, r, t)`` on float64 CPU points (with ``labels``: conditioned
    on them, row by row; a conditional model without them: the "none" label)."""

    @torch.no_grad()
    def u(x, r, t):
        extra = {} if labels is None else {"labels": labels.to(device)}
        return model(x.to(device, dtype), r.to(device, dtype), t.to(device, dtype), **extra).double().cpu()

    return u


def evaluate(study: Study, truth_blob: dict, case: str, objective: str, seed: int, model, device, dtype):
    """Rows, seed-0 samples and field-grid errors of one trained model (reads no file).

    A conditional model samples each noise row with its class label and is compared with
    the exact guided map of its guidance target; its field errors are those of its
    unconditional ("none") output against the case's own u."""
    mixture = get_case(case)
    x1, phi = truth_blob["x1"], truth_blob["phi"]
    name = study.study.name
    target_of = guided_target(study, case, objective)
    key = None if target_of is None else target_of[0]
    field_u = _as_u(model, device, dtype)
    if key is None:
        u, target = field_u, None
    else:
        guided = truth_blob["guided"][key]
        u, phi = _as_u(model, device, dtype, guided["labels"]), guided["phi"]
        target = phi
    rows, samples = [], {}
    shown = study.eval.figure_nfe() if seed == 0 else ()  # the samples figure shows seed 0
    r0_only = objectives.get(study.study.objective_of(objective)).trained_at_r0
    # trained at r = 0 only (scm): its multi-step use would query u(x, r > 0, t), never trained
    nfes = [1] if r0_only else list(study.eval.nfe)
    for nfe in nfes:
        x, n = average_velocity_sampler(u, x1, uniform_grid(nfe))
        rows += metric_rows(name, case, objective, seed, n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
        if n in shown:
            _keep_samples(samples, objective, n, x, study.eval.sample_points, target)
    v = model_as_velocity(u)
    for nfe in study.eval.nfe:
        for baseline, (source, per_step) in MODEL_BASELINES.items():
            if source == objective and baseline in study.study.baselines and nfe % per_step == 0:
                x, n = _SAMPLERS[baseline](v, x1, uniform_grid(nfe // per_step))
                rows += metric_rows(name, case, baseline, seed, n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
                if n in shown:
                    _keep_samples(samples, baseline, n, x, study.eval.sample_points, target)
    # field error E|u_theta - u|^2 over x_t ~ p_t, (r, t) from the training time law
    g = torch.Generator().manual_seed(study.eval.noise_seed + 1000 + seed)
    k = study.eval.field_samples
    r, t = sample_times(k, "uniform", frac_r_eq_t=0.0, generator=g, dtype=torch.float64)
    if r0_only:
        r = torch.zeros_like(t)
    t = t.clamp_min(1e-3)
    xt = sample_x_t(mixture, t, g)
    rows += metric_rows(name, case, objective, seed, 0, {"field_error": field_error(field_u, mixture, xt, r, t)})
    return rows, samples, field_grid_errors(field_u, truth_blob["grid"], r0_only)


# --------------------------------------------------------------- baselines


@contextlib.contextmanager
def one_thread():
    """One torch thread inside, the caller's count restored after: metrics computed in the
    driver (the baselines') then have the bits of those computed in a one-thread worker,
    whatever the machine's cores or the calling process's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_baselines(study: Study, out: Path, case: str) -> None:
    path = out / "runs" / case / "baselines" / "rows.csv"
    samples_path = path.with_name("samples.pt")
    if path.exists() and samples_path.exists():
        return
    with one_thread():
        _run_baselines(study, out, case, path, samples_path)


def _run_baselines(study: Study, out: Path, case: str, path: Path, samples_path: Path) -> None:
    mixture = get_case(case)
    blob = torch.load(truth_path(out, case), weights_only=True)
    x1, phi = blob["x1"], blob["phi"]
    name = study.study.name
    u = lambda x, r, t: truth.average_velocity(mixture, x, r, t)  # noqa: E731
    v = lambda x, t: truth.velocity(mixture, x, t)  # noqa: E731
    rows, samples = [], {}
    shown = study.eval.figure_nfe()

    def record(method, x, n):
        nonlocal rows
        rows += metric_rows(name, case, method, "", n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
        if n in shown:
            _keep_samples(samples, method, n, x, study.eval.sample_points)

    for nfe in study.eval.nfe:
        if "exact_u" in study.study.baselines:
            record("exact_u", *average_velocity_sampler(u, x1, uniform_grid(nfe)))
        if "exact_v_euler" in study.study.baselines:
            record("exact_v_euler", *euler(v, x1, uniform_grid(nfe)))
        if "exact_v_heun" in study.study.baselines and nfe % 2 == 0:
            record("exact_v_heun", *heun(v, x1, uniform_grid(nfe // 2)))  # NFE = 2 per step
    save_torch(samples_path, samples)
    write_rows(path, rows)
