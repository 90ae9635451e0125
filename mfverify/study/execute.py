"""Running one job where it runs (this process, a worker, another node): train its runs,
evaluate each against the exact references, and return the files for the driver to
store. Reads no file and writes none (``executors`` decide where; ``store`` writes)."""

from __future__ import annotations

import os
import threading
import time

import torch

from mfverify import objectives
from mfverify.cases import cases as case_registry
from mfverify.io import torch_bytes
from mfverify.nets import networks
from mfverify.registry import import_modules
from mfverify.study.config import Study
from mfverify.study.evaluate import evaluate
from mfverify.study.plan import Job
from mfverify.study.store import FIELD_COLUMNS, csv_text, rows_text
from mfverify.train import DTYPES, checkpoint, resolve_device, train
from mfverify.train.ensemble import train_ensemble


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
            files["rows.csv"] = rows_text(rows).encode()
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
                "ensemble": result.ensemble,
            }
            if name != job.objective:
                record["same_run_as"] = job.objective  # trained once, under the first name
            outputs.append({"case": job.case, "objective": name, "seed": cfg.seed, "files": files, "record": record})
    return outputs


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
    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    threading.Thread(target=watch, name="mfverify-parent-watch", daemon=True).start()


def registered_modules() -> list[str]:
    """Modules outside mfverify whose import registered an objective, network or case."""
    return sorted({m for reg in (objectives.registry, networks, case_registry) for m in reg.modules()})
