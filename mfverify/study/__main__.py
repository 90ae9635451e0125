"""``python -m mfverify.study NAME [--preset quick|default|paper] ...``: run a study."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from mfverify.study import divergence
from mfverify.study.config import (check_runs, defaults_in_effect, ema_warning, list_studies, load_study,
                                   study_presets, with_objectives)


def main(argv=None, prog: str = "mfverify study") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Run a study: train its objectives on its cases over its "
                                     "seeds, then write results.csv, the tables, the figures and summary.md "
                                     "(and claims.md for the claims study) into one folder.")
    parser.add_argument("name", nargs="?", help="a study name (see --list) or the path of a study TOML file")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--preset", help="a preset of the study, e.g. quick | default | paper "
                        "(default: 'default' where the study has one, else the study as written)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the study's device (default: the study's; auto picks cuda when present)")
    parser.add_argument("--seeds", type=int, help="override the number of seeds (default: the preset's)")
    parser.add_argument(
        "--objectives", help="override the objectives: comma-separated names or package.module:attr (e.g. fm,mf,my_pkg:loss)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="independent runs in parallel processes, one torch thread each (default 1)")
    parser.add_argument("--executor", choices=["serial", "processes", "ray"],
                        help="where runs execute (default: serial for --jobs 1, else processes); "
                        "ray needs the ray extra: pip install \"mfverify[ray]\" (in a clone: pip install -e \".[ray]\")")
    parser.add_argument("--address", help="--executor ray: a running cluster's address (auto | HOST:PORT); "
                        "without it a local cluster of --jobs CPUs is started and stopped")
    parser.add_argument("--ensemble", action="store_true",
                        help="train the seeds of each (case, objective) as one vmapped ensemble")
    parser.add_argument("--out", help="output folder (default runs/NAME/<timestamp>)")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted study in DIR (finished runs are kept)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.list:
        for name, description in list_studies().items():
            print(f"{name:24s} {description}")
        return 0
    if not args.name:
        parser.error("a study NAME is required (see --list)")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.address and args.executor != "ray":
        parser.error("--address is a Ray cluster's: it needs --executor ray")
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        parser.error(f"--resume {args.resume} and --out {args.out} name different folders; give one of them")
    try:
        preset = args.preset
        if preset is None and "default" in study_presets(args.name):
            preset = "default"
        study = load_study(args.name, preset=preset)
        if args.device:
            study = replace(study, train=replace(study.train, device=args.device))
        if args.seeds is not None:
            study = replace(study, study=replace(study.study, seeds=args.seeds))
        if args.objectives is not None:
            study = with_objectives(study, [o.strip() for o in args.objectives.split(",") if o.strip()])
        check_runs(study, study.source)  # the overridden study too (--device cuda without CUDA)
        unset = defaults_in_effect(args.name, preset)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if unset and not args.resume:
        print("defaults in effect (the study file's [train] does not set them): "
              + ", ".join(f"{k} = {v}" for k, v in unset.items())
              + " (objectives_compare sets lr_schedule = cosine, ema_decay = 0.995, p = 1, c = 0.03)", file=sys.stderr)
    warnings = {ema_warning(study.run_config(study.study.cases_for(o)[0], o, 0)) for o in study.study.objectives}
    for warning in sorted(w for w in warnings if w):
        print(f"warning: {warning}", file=sys.stderr)
    from mfverify.study.runner import run_study

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.toml").exists():
            print(f"error: --resume {out}: no study there (config.toml missing)", file=sys.stderr)
            return 2
    else:
        out = Path(args.out) if args.out else Path("runs") / args.name / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    try:
        run_study(study, out, jobs=args.jobs, progress=not args.no_progress, resume=bool(args.resume),
                  executor=args.executor, address=args.address, ensemble=args.ensemble)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001  (a run raised: exit 1, with where it came from)
        import traceback

        traceback.print_exc()
        print(f"error: a run failed ({type(err).__name__}: {err}); the finished runs are kept: "
              f"--resume {out} continues after a fix", file=sys.stderr)
        return 1
    print(f"{args.name} ({preset or 'as written'}) finished in {time.perf_counter() - start:.0f} s: {out}")
    print(written_files(out))
    diverged = diverged_runs(out)
    if diverged:
        print(f"warning: {len(diverged)} run{'s' if len(diverged) > 1 else ''} diverged ({divergence.RULE}): "
              f"{'; '.join(diverged)} (summary.md: Training runs)", file=sys.stderr)
    return 0


def written_files(out: Path) -> str:
    """What a study wrote at the top of ``out``, one line per name with its formats (``error_vs_nfe.{pdf,png}``),
    the summary and the claims first."""
    stems: dict[str, list[str]] = {}
    for path in sorted(out.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            stems.setdefault(path.stem, []).append(path.suffix.lstrip("."))
    first = [s for s in ("summary", "claims") if s in stems]
    lines = []
    for stem in first + [s for s in stems if s not in first]:
        kinds = stems[stem]
        lines.append(f"  {out / stem}.{kinds[0] if len(kinds) == 1 else '{' + ','.join(kinds) + '}'}")
    return "\n".join(lines)


def diverged_runs(out: Path) -> list[str]:
    """``case/objective/seedN: why`` of the runs of ``out`` that diverged (``mfverify.study.divergence``)."""
    from mfverify.study.store import read_csv

    if not (out / "runs.csv").is_file():
        return []
    rows = read_csv(out / "results.csv") if (out / "results.csv").is_file() else []
    return [f"{case}/{objective}/seed{seed}: {why}"
            for (case, objective, seed), why in divergence.reasons(read_csv(out / "runs.csv"), rows).items()]


if __name__ == "__main__":
    sys.exit(main())
