"""A study as jobs: the runs without ``run.json`` (finished runs are not redone), a run that two
names of the study share trained once, and with ``--ensemble`` the pending seeds of a
(case, objective) as one job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mfverify import objectives
from mfverify.study.config import Study
from mfverify.study.exact import guided_target
from mfverify.study.store import run_dir


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
    return study.run_config(case, objective, seed), guided_target(study, case, objective)


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
