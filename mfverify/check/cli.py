"""``mfverify check`` (``python -m mfverify.check``): the per-sample battery on ``LOSS``, or the
as-written battery on ``--as-written MODULE:FN``. Exit status: 0 every check passed, 1 one
failed, 2 a usage error (bad input, a loss that fails or returns what a loss cannot be).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mfverify import objectives
from mfverify.check.battery import run
from mfverify.check.report import DEFAULT_CASES
from mfverify.registry import resolve_string

def _parse_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low in ("none", "null"):
        return key, None
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def _check_json_path(path: Path, force: bool) -> None:
    """Before any work: ``--json PATH`` can be written, and replaces nothing of the user's."""
    if path.is_dir():
        raise ValueError(f"--json {path}: is a folder, expected a file path")
    if not path.parent.is_dir():
        raise ValueError(f"--json {path}: its folder {path.parent} does not exist or is not a folder")
    if path.exists() and not force and not _is_report(path):
        raise ValueError(f"--json {path}: the file exists and is not an earlier check report; choose another path "
                         "or pass --force to replace it")


def _is_report(path: Path) -> bool:
    try:
        blob = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(blob, dict) and {"loss", "passed", "checks"} <= set(blob)


def _parser(prog: str = "mfverify check") -> argparse.ArgumentParser:
    from mfverify.check import as_written
    from mfverify.check.exact_core import INPUTS

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 every check passed, 1 one failed, 2 a usage error.")
    parser.add_argument("loss", nargs="?", help="a per-sample loss: a registered objective (e.g. mf) or "
                        "package.module:attr; or give --as-written")
    parser.add_argument("--as-written", metavar="MODULE:FN", help="check a batch loss as a repository writes it, "
                        "fn(model, x0) -> scalar (fn(model, x0, labels) on labelled cases), with its own sampler")
    parser.add_argument("--reference", help="an objective the loss should equal up to a factor (per-sample battery)")
    parser.add_argument("--reference-option", action="append", default=[], type=_parse_option, metavar="K=V",
                        help="an option of the reference (repeatable; it gets the loss's p and c unless set here)")
    parser.add_argument("--cases", nargs="+", help="cases of the stationarity check (default: "
                        f"{' '.join(DEFAULT_CASES)}; with --as-written {' '.join(as_written.DEFAULT_CASES)})")
    parser.add_argument("--option", action="append", default=[], type=_parse_option, metavar="K=V",
                        help="an option of the loss (repeatable)")
    parser.add_argument("--quadratic", action="store_true",
                        help="declare the loss quadratic in v_c (exact route; verified at run time)")
    parser.add_argument("--network", default="mlp", help="the random networks' kind (default mlp)")
    parser.add_argument("--rtol", type=float, help="relative tolerance of the exact comparisons and the exact "
                        "route, and the floor of the Monte Carlo statistics (default 1e-9 and 1e-8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points, networks and batches (default 0)")
    aw = parser.add_argument_group("--as-written")
    aw.add_argument("--inputs", default="x,r,t", choices=INPUTS,
                    help="how the loss calls its network (default x,r,t; x,t,h: h = t - r; reversed: noise at 0)")
    aw.add_argument("--batch-size", type=int, default=1024, help="rows of data per call of the loss (default 1024)")
    aw.add_argument("--min-batches", type=int, default=8, help="batches in the first round (default 8)")
    aw.add_argument("--max-batches", type=int, default=512, help="batches at most per case (default 512)")
    aw.add_argument("--resolution", type=float, default=as_written.RESOLUTION,
                    help=f"standard error, relative to the derivative's size off u*, at which a case is resolved "
                    f"(default {as_written.RESOLUTION:g})")
    aw.add_argument("--framework", default="torch", choices=("torch", "jax"),
                    help="torch: fn(model, x0); jax: fn(apply, params, x0, key), differentiated by jax.grad "
                    "(needs pip install -e \".[jax]\")")
    aw.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                    help="of the data (default float64; with --framework jax it turns on jax_enable_x64)")
    aw.add_argument("--no-jit", action="store_true",
                    help="--framework jax: run the loss op by op instead of compiling it once per case with "
                    "jax.jit (a loss that draws with numpy or Python's random needs this: under jit those draws "
                    "are frozen); a loss that cannot be traced runs op by op anyway")
    aw.add_argument("--sampler-out", metavar="DIR", help="write what the sampler trains: DIR/sampler.csv and "
                    "DIR/sampler.png (a heatmap of the (r, t) triangle)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON (atomically; an existing file "
                        "is replaced only if it is an earlier report, or with --force)")
    parser.add_argument("--force", action="store_true", help="--json and --sampler-out may replace files that are "
                        "not earlier reports")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return parser


def _import(text: str):
    """``package.module:attr`` (the current folder importable, as with ``python -m``)."""
    import os

    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"--as-written takes MODULE:FN, got {text!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return resolve_string(text, "--as-written")


def _check_sampler_out(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--sampler-out {folder}: is a file, expected a folder")
    for name in ("sampler.csv", "sampler.png"):
        path = folder / name
        if path.exists() and not force and not (name.endswith(".csv") and path.read_text(errors="replace")
                                                .startswith("r_lo,r_hi,t_lo,t_hi,calls")):
            if name.endswith(".png") and (folder / "sampler.csv").exists():
                continue  # an earlier report's figure, beside its table
            raise ValueError(f"--sampler-out {folder}: {name} exists and is not an earlier report; choose another "
                             "folder or pass --force")


def main(argv=None, prog: str = "mfverify check") -> int:
    args = _parser(prog).parse_args(argv)
    from mfverify.io import write_text

    try:
        if (args.loss is None) == (args.as_written is None):
            raise ValueError("give either a loss (the per-sample battery) or --as-written MODULE:FN, not both")
        if args.json:
            _check_json_path(Path(args.json), args.force)
        if args.as_written is not None:
            report = _run_as_written(args)
        else:
            if args.sampler_out:
                raise ValueError("--sampler-out goes with --as-written")
            loss = objectives.get(args.loss)
            if args.quadratic:
                from dataclasses import replace

                loss = replace(loss, quadratic_in_v_c=True)
            report = run(loss, reference=args.reference, cases=args.cases, options=dict(args.option),
                         seed=args.seed, network=args.network, progress=not args.no_progress,
                         reference_options=dict(args.reference_option) or None, rtol=args.rtol)
    except (ValueError, TypeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json:
        write_text(args.json, report.to_json() + "\n")
    if args.as_written is not None and args.sampler_out:
        from mfverify.check.as_written import draw_sampler, sampler_table

        folder = Path(args.sampler_out)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "sampler.csv", sampler_table(report.sampler))
        draw_sampler(report.sampler, folder / "sampler.png", title=report.loss.rsplit(":", 1)[-1])
        print(f"sampler: {folder / 'sampler.csv'}, {folder / 'sampler.png'}")
    return 0 if report.passed else 1


def _run_as_written(args):
    import torch

    from mfverify.check.as_written import run_as_written

    per_sample_only = [flag for flag, given in (("--reference", args.reference), ("--option", args.option),
                                                ("--quadratic", args.quadratic), ("--reference-option",
                                                                                  args.reference_option))
                       if given]
    if per_sample_only:
        raise ValueError(f"{', '.join(per_sample_only)} belong to the per-sample battery, not --as-written (a "
                         "loss as written sets its own options)")
    if args.no_jit and args.framework != "jax":
        raise ValueError("--no-jit belongs to --framework jax")
    if args.sampler_out:
        _check_sampler_out(Path(args.sampler_out), args.force)
    fn = _import(args.as_written)
    if args.framework == "jax" and args.dtype == "float64":
        from mfverify.check.jax_model import require_jax

        require_jax()[0].config.update("jax_enable_x64", True)
    return run_as_written(fn, cases=args.cases, seed=args.seed, batch_size=args.batch_size,
                          min_batches=args.min_batches, max_batches=args.max_batches, resolution=args.resolution,
                          inputs=args.inputs, dtype=getattr(torch, args.dtype), rtol=args.rtol,
                          progress=not args.no_progress, name=args.as_written, framework=args.framework,
                          jit=not args.no_jit)
