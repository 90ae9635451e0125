"""Running a study: ``run_study(study, out)`` trains every (case, objective, seed), samples
at every NFE from the same noise, measures against the exact flow map, and writes the
tables and figures into ``out``. A study reads, once each:

    exact references (``exact``) -> plan (``plan``) -> execute (``executors``, ``execute``)
    -> store (``store``) -> report (``report``)

Every file is written atomically; a run whose ``run.json`` exists is finished and is
not redone on ``--resume``. The folder's layout is ``store``'s docstring.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from mfverify.io import write_text
from mfverify.registry import resolve_string
from mfverify.study.config import Study, check_runs, to_toml
from mfverify.study.environment import environment
from mfverify.study.evaluate import run_baselines
from mfverify.study.exact import load_truth, prepare_field_grid, prepare_guided, prepare_truth
from mfverify.study.execute import registered_modules
from mfverify.study.executors import EXECUTORS, check_address, import_ray, make_executor
from mfverify.study.plan import plan
from mfverify.study.report import assemble
from mfverify.study.store import (StudyLock, check_ensemble_setting, check_out, record_environment,
                                  remove_stale_temporaries, run_dir, store)
from mfverify.train import resolve_device


class StudyInterrupted(RuntimeError):
    """Raised by ``run_study(stop_after=k)`` after k training runs (to test resuming)."""


def run_study(
    study: Study, out, jobs: int = 1, progress: bool = True, resume: bool = False, stop_after=None, start_method=None,
    executor: str | None = None, address: str | None = None, ensemble: bool = False,
) -> Path:
    """Run ``study`` into the folder ``out`` (created); ``resume`` continues a study there.

    ``executor``: ``serial``, ``processes`` or ``ray`` (``mfverify.study.executors``;
    default: ``serial`` for ``jobs = 1``, else ``processes``); ``address``: a Ray
    cluster's (None: a local one for the study); ``ensemble``: the pending seeds of each
    (case, objective) trained as one vmapped ensemble (``mfverify.train.ensemble``).

    Before anything is written the study is validated, ``out`` is checked (a folder
    that is not empty must hold this same study) and locked against a second
    writer (``.lock``, the owner's pid; a lock left by a dead process is taken over).
    """
    out = Path(out)
    if executor is not None and executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address is not None and executor != "ray":
        raise ValueError(f"address {address!r} is a Ray cluster's: it needs executor 'ray'")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if executor == "ray":
        import_ray()  # missing: a clear error before anything is written
        if address is not None:
            check_address(address)  # nothing answering: a clear error in seconds, not a hang
    check_runs(study, study.source or "study")
    config_text = to_toml(study, header=f"resolved configuration of study {study.study.name} ({study.source})")
    check_out(out, config_text, resume)
    check_ensemble_setting(out, ensemble)
    if executor is None:
        executor = "serial" if jobs <= 1 else "processes"
    gpu = resolve_device(study.train.device).type == "cuda"
    modules = tuple(registered_modules())
    # the executor first (a Ray cluster joined or started): one that fails leaves --out untouched
    pool = make_executor(executor, jobs=jobs, start_method=start_method, gpu=gpu, modules=modules, address=address)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with StudyLock(out):
            check_out(out, config_text, resume)  # again, now that no one else writes here
            check_ensemble_setting(out, ensemble)
            remove_stale_temporaries(out)
            if not (out / "config.toml").exists():
                write_text(out / "config.toml", config_text)
            record_environment(out, {**environment(study), "ensemble": bool(ensemble)})
            _run_locked(study, out, pool, modules, progress, stop_after, executor == "serial", ensemble)
    finally:
        pool.close()
    return out


def _run_locked(study, out, pool, modules, progress, stop_after, serial, ensemble=False):
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
    truths = {case: load_truth(out, case, study) for case in cases}
    solo_progress = progress and serial
    done = 0
    for outputs in pool.run((study, job, truths[job.case], solo_progress, modules) for job in todo):
        for output in outputs:
            store(out, output)
            bar.update()
            done += 1
        if stop_after is not None and done >= stop_after:
            raise StudyInterrupted(f"stopped after {done} runs")
    bar.close()
    assemble(study, out)
    if study.study.report:
        resolve_string(study.study.report, "report")(study, out)


__all__ = ["run_study", "assemble", "StudyInterrupted"]
