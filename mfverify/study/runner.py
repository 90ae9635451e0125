"""The study runner: train every (case, objective, seed), sample at every NFE from the
same noise, measure against the exact flow map, and write the tables and figures.

Output folder::

    config.toml  env.json  results.csv  runs.csv  summary.md
    error_vs_nfe_<case>.pdf / .png / .csv     (mfverify.study.figures: figures; .tables: their CSVs)
    samples_<case>.pdf / .png / .csv, density_<case>.csv
    field_error_<case>.pdf / .png / .csv
    truth/<case>.pt                      noise x1 and exact Phi(x1, 1 -> 0)
    truth/field_grid/<case>.pt           the field-error grid's points and exact u
    runs/<case>/<objective>/seed<k>/     checkpoint.pt, rows.csv, field_grid.csv, samples.pt (seed 0),
                                         run.json (written last)
    runs/<case>/baselines/rows.csv, samples.pt

Every file is written atomically; a run whose ``run.json`` exists is finished and
is not redone on ``--resume``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mfverify import objectives, truth
from mfverify.cases import cases as case_registry
from mfverify.cases import get_case
from mfverify.io import save_torch, torch_bytes, write_bytes, write_text
from mfverify.metrics import field_error, sample_metrics
from mfverify.sample import average_velocity_sampler, euler, heun, model_as_velocity, uniform_grid
from mfverify.models import networks
from mfverify.registry import import_modules
from mfverify.study.config import MODEL_BASELINES, Study, as_dict, to_toml
from mfverify.study.tables import csv_text
from mfverify.train import DTYPES, checkpoint, resolve_device, train
from mfverify.times import sample_times

COLUMNS = ["study", "case", "method", "seed", "nfe", "metric", "value"]
RUN_COLUMNS = ["study", "case", "objective", "seed", "steps", "wall_seconds", "final_loss", "diverged_step", "device",
               "ensemble"]


class StudyInterrupted(RuntimeError):
    """Raised by ``run_study(stop_after=k)`` after k training runs (to test resuming)."""


# ------------------------------------------------------------------ truth


def truth_path(out: Path, case: str) -> Path:
    return out / "truth" / f"{case}.pt"


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


def _guided_target(study: Study, case: str, objective: str):
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
    targets = (_guided_target(study, case, obj) for obj in study.study.objectives)
    return {key: (w, interval) for key, w, interval in filter(None, targets)}


def guided_path(out: Path, case: str, key: str) -> Path:
    return out / "truth" / "guided" / f"{_slug(case)}__{_slug(key)}.pt"


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


def field_grid_path(out: Path, case: str) -> Path:
    return out / "truth" / "field_grid" / f"{_slug(case)}.pt"


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
    x0 = mixture.sample(len(t), generator=g)
    xt = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(len(t), mixture.d, generator=g, dtype=torch.float64)
    u = truth.average_velocity(mixture, xt, r, t)
    save_torch(path, {"r": r, "t": t, "x": xt, "u": u, "samples": k})


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


FIELD_COLUMNS = ["r", "t", "field_error", "u_sq", "relative"]


def _keep_samples(store: dict, method: str, nfe: int, x: torch.Tensor, k: int, phi=None) -> None:
    """``phi``: the exact images these samples are compared with, where they are not the
    case's own (a conditional run: the guided map)."""
    store.setdefault("method", []).append(method)
    store.setdefault("nfe", []).append(int(nfe))
    store.setdefault("x", []).append(x[:k].double().cpu().clone())
    if phi is not None:
        store.setdefault("phi", []).append(phi[:k].double().cpu().clone())


def _rows(study, case, method, seed, nfe, metrics):
    return [
        {"study": study, "case": case, "method": method, "seed": seed, "nfe": nfe, "metric": k, "value": v}
        for k, v in metrics.items()
    ]


def _rows_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(float(row["value"]))})
    return buf.getvalue()


def _write_rows(path: Path, rows) -> None:
    write_text(path, _rows_text(rows))


def _read_rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
        rows += _rows(name, case, method, "", n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
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
    _write_rows(path, rows)


# ---------------------------------------------------------------- training


def _slug(name: str) -> str:
    """A name as one folder name ("pkg.mod:attr" -> "pkg.mod_attr")."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def run_dir(out: Path, case: str, objective: str, seed: int) -> Path:
    return out / "runs" / _slug(case) / _slug(objective) / f"seed{seed}"


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


def load_truth(out: Path, case: str, study: Study | None = None) -> dict:
    """What a job needs of a case's truth: the noise, its exact image, the field grid, and
    (conditional runs) the guided targets."""
    blob = torch.load(truth_path(out, case), weights_only=True)
    out_blob = {"x1": blob["x1"], "phi": blob["phi"], "grid": torch.load(field_grid_path(out, case), weights_only=True)}
    if study is not None:
        out_blob["guided"] = {key: torch.load(guided_path(out, case, key), weights_only=True)
                              for key in guided_targets(study, case)}
    return out_blob


def evaluate(study: Study, truth_blob: dict, case: str, objective: str, seed: int, model, device, dtype):
    """Rows, seed-0 samples and field-grid errors of one trained model (reads no file).

    A conditional model samples each noise row with its class label and is compared with
    the exact guided map of its guidance target; its field errors are those of its
    unconditional ("none") output against the case's own u."""
    mixture = get_case(case)
    x1, phi = truth_blob["x1"], truth_blob["phi"]
    name = study.study.name
    target_of = _guided_target(study, case, objective)
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
        rows += _rows(name, case, objective, seed, n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
        if n in shown:
            _keep_samples(samples, objective, n, x, study.eval.sample_points, target)
    v = model_as_velocity(u)
    for nfe in study.eval.nfe:
        for baseline, (source, per_step) in MODEL_BASELINES.items():
            if source == objective and baseline in study.study.baselines and nfe % per_step == 0:
                x, n = _SAMPLERS[baseline](v, x1, uniform_grid(nfe // per_step))
                rows += _rows(name, case, baseline, seed, n, sample_metrics(mixture, x, phi, study.eval.w2_samples))
                if n in shown:
                    _keep_samples(samples, baseline, n, x, study.eval.sample_points, target)
    # field error E|u_theta - u|^2 over x_t ~ p_t, (r, t) from the training time law
    g = torch.Generator().manual_seed(study.eval.noise_seed + 1000 + seed)
    k = study.eval.field_samples
    r, t = sample_times(k, "uniform", frac_r_eq_t=0.0, generator=g, dtype=torch.float64)
    if r0_only:
        r = torch.zeros_like(t)
    t = t.clamp_min(1e-3)
    x0 = mixture.sample(k, generator=g)
    xt = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(k, mixture.d, generator=g, dtype=torch.float64)
    rows += _rows(name, case, objective, seed, 0, {"field_error": field_error(field_u, mixture, xt, r, t)})
    return rows, samples, field_grid_errors(field_u, truth_blob["grid"], r0_only)


@dataclass(frozen=True)
class Job:
    """Training runs done together: one seed, or (``--ensemble``) the pending seeds of one
    (case, objective) trained as one vmapped ensemble. ``aliases``: ``(name, seed)`` of
    other objectives of the study whose run is this very run (the same resolved
    configuration, ``run_identity``): trained once, evaluated and stored under each name."""

    case: str
    objective: str
    seeds: tuple
    aliases: tuple = ()


def _ensembles(cfg) -> bool:
    """Whether ``--ensemble`` can train these runs together (one-head, unconditional);
    the others are trained one by one."""
    return not cfg.conditional and objectives.get(cfg.objective).heads == 1


def run_identity(study: Study, case: str, objective: str, seed: int):
    """What identifies a run: its resolved training configuration (the registered objective,
    not the study's name for it) and the target it is evaluated against. Two names of a
    study with the same identity are one run."""
    return study.run_config(case, objective, seed), _guided_target(study, case, objective)


def plan(study: Study, out: Path, ensemble: bool = False) -> list[Job]:
    """The jobs of the runs without ``run.json`` (finished runs are not redone); a run
    whose resolved configuration another name of the study shares is trained once."""
    first, aliases = {}, {}
    for case, obj, seed in study.study.runs():
        key = run_identity(study, case, obj, seed)
        if key in first:
            aliases.setdefault(first[key], []).append((obj, seed))
        else:
            first[key] = (case, obj, seed)
    done = lambda case, obj, seed: (run_dir(out, case, obj, seed) / "run.json").exists()  # noqa: E731
    jobs = []
    for case in study.study.cases:
        for obj in study.study.objectives:
            if case not in study.study.cases_for(obj):
                continue
            pending = []
            for seed in range(study.study.seeds_for(obj)):
                if first[run_identity(study, case, obj, seed)] != (case, obj, seed):
                    continue  # an alias: stored with the run it is
                todo = [a for a in aliases.get((case, obj, seed), ()) if not done(case, *a)]
                if not done(case, obj, seed) or todo:
                    pending.append((seed, tuple(todo)))
            if ensemble and len(pending) > 1 and _ensembles(study.run_config(case, obj, 0)):
                jobs.append(Job(case, obj, tuple(s for s, _ in pending), tuple(a for _, al in pending for a in al)))
            else:
                jobs += [Job(case, obj, (s,), al) for s, al in pending]
    return jobs


def execute(study: Study, job: Job, truth_blob: dict, progress: bool = False, modules=()) -> list[dict]:
    """Train and evaluate a job's runs where it runs (a worker, another node): reads no
    file and writes none; returns per run its files (name -> bytes) and runs.csv record,
    for the driver to store (``store``)."""
    import_modules(modules)
    cfgs = [study.run_config(job.case, job.objective, seed) for seed in job.seeds]
    device, dtype = resolve_device(cfgs[0].device), DTYPES[cfgs[0].dtype]
    if device.type == "cpu":
        # one thread per run whatever --jobs is: results do not depend on --jobs
        # (GEMM blocking varies with the thread count), and --jobs N uses N cores
        torch.set_num_threads(1)
    if len(cfgs) > 1:
        from mfverify.ensemble import train_ensemble

        results = train_ensemble(cfgs, progress=progress)
    else:
        results = [train(cfgs[0], progress=progress)]
    outputs = []
    for cfg, result in zip(cfgs, results):
        ckpt = torch_bytes(checkpoint(cfg, result))
        names = [job.objective] + [name for name, seed in job.aliases if seed == cfg.seed]
        for name in names:
            files = {"checkpoint.pt": ckpt}
            if result.diverged_step is not None:
                rows, samples, field = [], {}, []
            else:
                rows, samples, field = evaluate(study, truth_blob, job.case, name, cfg.seed, result.ema, device, dtype)
            if samples:
                files["samples.pt"] = torch_bytes(samples)
            files["field_grid.csv"] = csv_text(field, FIELD_COLUMNS).encode()
            files["rows.csv"] = _rows_text(rows).encode()
            record = {
                "study": study.study.name,
                "case": job.case,
                "objective": name,
                "seed": cfg.seed,
                "steps": len(result.losses),
                "wall_seconds": round(result.wall_seconds, 3),
                "final_loss": result.final_loss,
                "diverged_step": "" if result.diverged_step is None else result.diverged_step,
                "device": str(device),
                "ensemble": len(cfgs),
            }
            if name != job.objective:
                record["same_run_as"] = job.objective  # trained once, under the first name
            outputs.append({"case": job.case, "objective": name, "seed": cfg.seed, "files": files, "record": record})
    return outputs


def store(out: Path, output: dict) -> dict:
    """Write one run's files (the driver, the only writer), ``run.json`` last: it marks the
    run finished."""
    folder = run_dir(out, output["case"], output["objective"], output["seed"])
    for name, data in output["files"].items():
        write_bytes(folder / name, data)
    write_text(folder / "run.json", json.dumps(output["record"], indent=1))
    return output["record"]


def _worker_init(modules=(), parent=None):
    torch.set_num_threads(1)
    if parent is not None:
        _die_with_parent(parent)
    # a spawned worker knows only what it imports: the modules that registered outside
    # objectives, networks and cases in the parent register them here too
    import_modules(modules)


def _die_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker whose parent is gone (killed with -9, say) exits instead of running on:
    a daemon thread watches for the worker's reparenting."""
    import threading

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=watch, name="mfverify-parent-watch", daemon=True).start()


def registered_modules() -> list[str]:
    """Modules outside mfverify whose import registered an objective, network or case."""
    return sorted({m for reg in (objectives.registry, networks, case_registry) for m in reg.modules()})


# --------------------------------------------------------------- the study


def run_study(
    study: Study, out, jobs: int = 1, progress: bool = True, resume: bool = False, stop_after=None, start_method=None,
    executor: str | None = None, address: str | None = None, ensemble: bool = False,
) -> Path:
    """Run ``study`` into the folder ``out`` (created); ``resume`` continues a study there.

    ``executor``: ``serial``, ``processes`` or ``ray`` (``mfverify.study.executors``;
    default: ``serial`` for ``jobs = 1``, else ``processes``); ``address``: a Ray
    cluster's (None: a local one for the study); ``ensemble``: the pending seeds of each
    (case, objective) trained as one vmapped ensemble (``mfverify.ensemble``).

    Before anything is written the study is validated, ``out`` is checked (a folder
    that is not empty must hold this same study) and locked against a second
    writer (``.lock``, the owner's pid; a lock left by a dead process is taken over).
    """
    from mfverify.study.config import check_runs

    from mfverify.study.executors import EXECUTORS, import_ray

    out = Path(out)
    if executor is not None and executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"address {address!r} is a Ray cluster's: it needs executor 'ray'")
    if executor == "ray":
        import_ray()  # missing: a clear error before anything is written
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    check_runs(study, study.source or "study")
    config_text = to_toml(study, header=f"resolved configuration of study {study.study.name} ({study.source})")
    _check_out(out, config_text, resume)
    out.mkdir(parents=True, exist_ok=True)
    with StudyLock(out):
        _check_out(out, config_text, resume)  # again, now that no one else writes here
        remove_stale_temporaries(out)
        if not (out / "config.toml").exists():
            write_text(out / "config.toml", config_text)
        record_environment(out, environment(study))
        _run_locked(study, out, jobs, progress, stop_after, start_method, executor, address, ensemble)
    return out


def _check_out(out: Path, config_text: str, resume: bool) -> None:
    """``out`` is absent, empty, or (with ``resume``) a study of this very configuration."""
    if not out.exists():
        if resume:
            raise ValueError(f"--resume {out}: no such folder")
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    entries = [p.name for p in out.iterdir() if p.name != ".lock"]
    if not entries:
        return
    config = out / "config.toml"
    if not config.exists():
        raise ValueError(f"{out} is not empty and holds no study ({', '.join(sorted(entries)[:5])}"
                         f"{', ...' if len(entries) > 5 else ''}): refusing to write into it; choose another --out")
    if not resume:
        raise ValueError(f"{out} already holds a study; use --resume {out} to continue it")
    old = config.read_text()
    if _settings(old) != _settings(config_text):  # the header comment names the source file: not a setting
        raise ValueError(f"{out}/config.toml differs from the study being resumed ({_first_difference(old, config_text)}); "
                         "resume with the same settings")


def _first_difference(old: str, new: str) -> str:
    """The first differing setting, as ``[section] key: old -> new``."""
    section = ""
    olds, news = _settings(old), _settings(new)
    for i in range(max(len(olds), len(news))):
        a = olds[i] if i < len(olds) else "(nothing)"
        b = news[i] if i < len(news) else "(nothing)"
        if a.startswith("["):
            section = a
        if a != b:
            return f"{section} {a} (in the folder) vs {b} (now)".strip()
    return "no line differs"


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class StudyLock:
    """An advisory lock on an output folder: ``.lock`` holding the owner's pid, created
    exclusively; a lock whose process is gone is stale and taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.held = False

    def __enter__(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_owner(self.path)
                if pid is not None and _alive(pid):
                    raise ValueError(f"{self.path.parent} is in use by another study (pid {pid}, {self.path}); "
                                     "wait for it to finish, or remove the lock if that process is gone") from None
                self.path.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise ValueError(f"could not lock {self.path.parent}")

    def __exit__(self, *exc):
        if self.held and _lock_owner(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _lock_owner(path: Path):
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Remove what an interrupted atomic write leaves: ``.NAME.*.tmp`` (``mfverify.io``),
    in a folder this process has locked."""
    for tmp in out.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def record_environment(out: Path, env: dict) -> None:
    """``env.json`` is the environment of the first run; a resume in another environment adds
    ``env-2.json``, ``env-3.json``, ... and never rewrites an earlier one."""
    first = out / "env.json"
    if not first.exists():
        write_text(first, json.dumps(env, indent=1))
        return
    files = [first] + sorted(out.glob("env-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    same = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "recorded"} == {  # noqa: E731
        k: v for k, v in env.items() if k != "recorded"}
    if any(same(p) for p in files):
        return
    write_text(out / f"env-{len(files) + 1}.json", json.dumps(env, indent=1))


def _run_locked(study, out, jobs, progress, stop_after, start_method, executor=None, address=None, ensemble=False):
    cases = list(study.study.cases)
    for i, case in enumerate(tqdm(cases, desc="exact maps", disable=not progress, leave=False)):
        prepare_truth(study, out, i, case)
        prepare_field_grid(study, out, i, case)
        prepare_guided(study, out, i, case)
    for case in tqdm(cases, desc="baselines", disable=not progress, leave=False):
        run_baselines(study, out, case)

    todo = plan(study, out, ensemble)
    total = len(study.study.runs())
    pending = sum(1 for case, obj, seed in study.study.runs() if not (run_dir(out, case, obj, seed) / "run.json").exists())
    bar = tqdm(total=total, initial=total - pending, desc="runs", disable=not progress)
    if executor is None:
        executor = "serial" if jobs <= 1 else "processes"
    from mfverify.study.executors import make_executor

    gpu = resolve_device(study.train.device).type == "cuda"
    modules = tuple(registered_modules())
    pool = make_executor(executor, jobs=jobs, start_method=start_method, gpu=gpu, modules=modules, address=address)
    truths = {case: load_truth(out, case, study) for case in cases}
    solo_progress = progress and executor == "serial"
    done = 0
    try:
        for outputs in pool.run((study, job, truths[job.case], solo_progress, modules) for job in todo):
            for output in outputs:
                store(out, output)
                bar.update()
                done += 1
            if stop_after is not None and done >= stop_after:
                raise StudyInterrupted(f"stopped after {done} runs")
    finally:
        pool.close()
    bar.close()
    assemble(study, out)
    if study.study.report:
        from mfverify.registry import resolve_string

        resolve_string(study.study.report, "report")(study, out)


def assemble(study: Study, out: Path) -> None:
    """results.csv, runs.csv, summary.md and the figures from the per-run files."""
    from mfverify.study.figures import build
    from mfverify.study.tables import write_tables

    rows = []
    for case in study.study.cases:
        rows += _read_rows(out / "runs" / case / "baselines" / "rows.csv")
    records = []
    for case, obj, seed in study.study.runs():
        folder = run_dir(out, case, obj, seed)
        rows += _read_rows(folder / "rows.csv")
        records.append({k: v for k, v in json.loads((folder / "run.json").read_text()).items() if k in RUN_COLUMNS})
    order = {m: i for i, m in enumerate(list(study.study.objectives) + list(study.study.baselines))}
    rows.sort(key=lambda r: (r["case"], order.get(r["method"], 99), str(r["seed"]), int(r["nfe"]), r["metric"]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buf.getvalue())

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RUN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    write_text(out / "runs.csv", buf.getvalue())

    write_tables(study, out, rows)
    build(out)  # the figures from the tables just written: as `python -m mfverify.study.figures` draws them
    write_text(out / "summary.md", summary(study, rows, records, out))


FIGURE_CAPTIONS = {
    "error_vs_nfe": "flow-map error against NFE: trained objectives, baselines, one-step errors",
    "samples": "seed-0 samples at a few NFEs over the data density, joined to their exact images",
    "field_error": "relative field error E|u_theta - u|^2 / E|u|^2 over (r, t)",
}


def _figure_links(out, case) -> list[str]:
    """Markdown image links to the case's figures that exist in ``out``."""
    if out is None:
        return []
    lines = []
    for kind, caption in FIGURE_CAPTIONS.items():
        name = f"{kind}_{_slug(case)}.png"
        if (Path(out) / name).exists():
            lines += [f"![{case}: {caption}]({name})", ""]
    return lines


def _mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def _what_runs_are(study: Study) -> list[str]:
    """For a study with variants or conditional runs: what each such run trains and what it is
    compared with (nothing for a study without them)."""
    lines = []
    for obj in study.study.objectives:
        cfg = study.run_config(study.study.cases[0], obj, 0)
        if obj == cfg.objective and not cfg.conditional:
            continue
        what = f"`{cfg.objective}`" + (f" with {dict(cfg.objective_options)}" if cfg.objective_options else "")
        if cfg.conditional:
            w, interval = objectives.get(cfg.objective).guided_target(dict(cfg.objective_options))
            span = "" if interval is None or tuple(interval) == (0.0, 1.0) else f" for t in [{interval[0]:g}, {interval[1]:g}]"
            what += (f", class-conditional (label dropout {cfg.label_dropout:g}); compared with the exact guided map "
                     f"Phi_w(x1, 1 -> 0 | c), w = {w:g}{span}, each noise sample with a class drawn from the class weights")
        lines.append(f"- `{obj}`: {what}")
    return (["Runs:", ""] + lines + [""]) if lines else []


def summary(study: Study, rows, records, out: Path | None = None) -> str:
    lines = [f"# {study.study.name}", "", f"Seeds: {study.study.seeds}. Mean ± std over seeds "
             "(the exact_* baselines are deterministic). Metric: flow_map_mean = mean |x_gen - Phi(x1, 1 -> 0)|; "
             "Heun's NFE is 2 per step; scm is trained at r = 0 only, so it is reported at NFE 1.", ""]
    lines += _what_runs_are(study)
    for case in study.study.cases:
        sub = [r for r in rows if r["case"] == case and r["metric"] == "flow_map_mean"]
        nfes = sorted({int(r["nfe"]) for r in sub})
        methods = [m for m in list(study.study.objectives) + list(study.study.baselines) if any(r["method"] == m for r in sub)]
        lines += [f"## {case}", "", "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        for m in methods:
            cells = []
            for n in nfes:
                vals = [float(r["value"]) for r in sub if r["method"] == m and int(r["nfe"]) == n]
                if not vals:
                    cells.append("")
                    continue
                mean, std = _mean_std(vals)
                cells.append(f"{mean:.3g}" if m in study.study.baselines and m.startswith("exact") else f"{mean:.3g} ± {std:.2g}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += _figure_links(out, case)
    lines += ["## Training runs", "", "| case | objective | seed | steps | wall s | final loss | diverged at |",
              "|---|---|---|---|---|---|---|"]
    for rec in records:
        lines.append(f"| {rec['case']} | {rec['objective']} | {rec['seed']} | {rec['steps']} | "
                     f"{rec['wall_seconds']} | {float(rec['final_loss']):.4g} | {rec['diverged_step']} |")
    return "\n".join(lines) + "\n"


# environment variables that change which CPU kernels run, hence the trained numbers' bits
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str):
    try:
        return __import__(module).__version__
    except ImportError:  # pragma: no cover
        return None


def environment(study: Study) -> dict:
    import numpy
    import scipy

    import mfverify

    try:
        import ot

        pot = ot.__version__
    except ImportError:  # pragma: no cover
        pot = None
    device = resolve_device(study.train.device)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numeric_env": {k: os.environ.get(k) for k in NUMERIC_ENV},
        "mfverify": mfverify.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pot": pot,
        "numba": _version("numba"),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()} for k, v in as_dict(study).items()},
    }


__all__ = ["run_study", "assemble", "StudyInterrupted"]
