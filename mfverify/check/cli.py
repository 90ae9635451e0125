"""``mfverify check`` (``python -m mfverify.check``): the per-sample battery on ``LOSS``, or the
as-written battery on ``--as-written MODULE:FN``.

Exit status (``EXIT``), one meaning each: 0 every check passed; 1 a defect was found in the
loss; 2 a usage or environment error (bad input, a loss that fails or returns what a loss
cannot be, a module that does not import, a path that cannot be written, a batch that does not
fit in memory); 3 undecided (a check had too little evidence and none failed); 130
interrupted (Ctrl-C). An error that is not a verdict is one line on stderr, with the
traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mfverify import objectives
from mfverify.check.battery import run
from mfverify.check.report import DEFAULT_CASES, EXIT, LossError
from mfverify.registry import resolve_string

EPILOG = """exit status:
  0    every check passed
  1    a defect was found in the loss (a check failed)
  2    usage or environment error (bad input, a loss that raises, an unwritable path, ...)
  3    undecided: too little evidence on some case, and no check failed
  130  interrupted (Ctrl-C)"""


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


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description and epilog as written (line breaks kept); each default once, where the help does
    not already name it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _writable_folder(folder: Path, flag: str) -> None:
    """``folder`` exists (or can be made: its nearest existing parent is a writable folder)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"{flag} {folder}: {probe} is a file, not a folder")
    if not _can_write_in(probe):
        raise ValueError(f"{flag} {folder}: {probe} is not writable")


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder``: tried, not read off the permissions (which root ignores,
    and which a read-only file system or /proc do not show)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_json_path(path: Path, force: bool) -> None:
    """Before any work: ``--json PATH`` can be written, and replaces nothing of the user's."""
    if path.is_dir():
        raise ValueError(f"--json {path}: is a folder, expected a file path")
    if not path.parent.is_dir():
        if path.parent.exists():
            raise ValueError(f"--json {path}: {path.parent} is a file, not a folder")
        raise ValueError(f"--json {path}: its folder {path.parent} does not exist")
    if not _can_write_in(path.parent):
        raise ValueError(f"--json {path}: the folder {path.parent} is not writable")
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
    from mfverify.check.exact_core import CONVENTIONS

    conventions = "\n".join(f"    {c.name:13s} {c.meaning}" for c in CONVENTIONS.values())
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=_Help,
        description="Check a loss against the exact average velocity u* of Gaussian mixtures:\n"
                    "  mfverify check LOSS                   the per-sample battery (a registered name or module:attr)\n"
                    "  mfverify check --as-written MOD:FN    a batch loss as a repository writes it, fn(model, x0)\n\n"
                    "--inputs (how an as-written loss calls its network):\n" + conventions,
        epilog=EPILOG)
    parser.add_argument("loss", nargs="?", help="a per-sample loss: a registered objective (e.g. mf) or "
                        "package.module:attr; or give --as-written")
    parser.add_argument("--as-written", metavar="MODULE:FN", help="check a batch loss as a repository writes it, "
                        "fn(model, x0) -> scalar (fn(model, x0, labels) on labelled cases), with its own sampler")
    parser.add_argument("--reference", help="an objective the loss should equal up to a factor (per-sample battery)")
    parser.add_argument("--reference-option", action="append", default=[], type=_parse_option, metavar="K=V",
                        help="an option of the reference (repeatable; it gets the loss's p and c unless set here)")
    parser.add_argument("--cases", nargs="+", metavar="CASE",
                        help=f"cases of the stationarity check (default: {' '.join(DEFAULT_CASES)}; "
                        "mfverify cases lists them)")
    parser.add_argument("--option", action="append", default=[], type=_parse_option, metavar="K=V",
                        help="an option of the loss (repeatable)")
    parser.add_argument("--quadratic", action="store_true",
                        help="declare the loss quadratic in v_c (exact route; verified at run time)")
    parser.add_argument("--network", default="mlp", help="the random networks' kind")
    parser.add_argument("--rtol", type=float, help="relative tolerance of the exact comparisons and the exact "
                        "route, and the floor of the Monte Carlo statistics (default 1e-9 and 1e-8; 1e-6 as written)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the points, networks and batches")
    aw = parser.add_argument_group("--as-written")
    aw.add_argument("--inputs", default="x,r,t", choices=tuple(CONVENTIONS), metavar="CONVENTION",
                    help="how the loss calls its network (the list above)")
    aw.add_argument("--batch-size", type=int, help=f"rows of data per call of the loss (default "
                    f"{as_written.BATCH_SIZE}; {as_written.IMAGE_BATCH_SIZE} on image cases)")
    aw.add_argument("--min-batches", type=int, default=8, help="batches in the first round")
    aw.add_argument("--max-batches", type=int, default=512, help="batches at most per case")
    aw.add_argument("--resolution", type=float, default=as_written.RESOLUTION,
                    help="a case is decided when each tamed direction's standard error is at most this share of "
                    f"its curvature (default {as_written.RESOLUTION:g})")
    aw.add_argument("--framework", default="torch", choices=("torch", "jax"),
                    help="torch: fn(model, x0); jax: fn(apply, params, x0, key), differentiated by jax.grad "
                    "(needs pip install -e \".[jax]\")")
    aw.add_argument("--layout", choices=("NCHW", "NHWC", "flat"),
                    help="an image case's batches: NCHW (torch's, the default with --framework torch), NHWC "
                    "(flax's, the default with --framework jax) or flat rows")
    aw.add_argument("--dtype", default="float64", choices=("float32", "float64"),
                    help="of the data (with --framework jax, float64 turns on jax_enable_x64)")
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
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error that is not a verdict")
    return parser


def _import(text: str):
    """``package.module:attr`` (the current folder importable, as with ``python -m``); a module that does
    not import (missing, a syntax error, an error at import) is a usage error naming it."""
    module, sep, attr = text.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"--as-written takes MODULE:FN, got {text!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return resolve_string(text, "--as-written")


def _check_sampler_out(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--sampler-out {folder}: is a file, expected a folder")
    _writable_folder(folder, "--sampler-out")
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
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted: no verdict, nothing written", file=sys.stderr)
        return EXIT["interrupted"]
    except (ValueError, TypeError, ImportError, OSError, MemoryError, LossError) as err:
        return _usage_error(err, args.debug)
    except Exception as err:  # not a verdict: never a traceback without --debug
        if isinstance(err, RuntimeError) and _is_resource_error(err):
            return _usage_error(err, args.debug)
        return _usage_error(RuntimeError(f"mfverify stopped on {type(err).__name__}: {err} (a bug in mfverify: run "
                                         "with --debug for the traceback and report it)"), args.debug)


def _is_resource_error(err: BaseException) -> bool:
    text = str(err).lower()
    return any(k in text for k in ("out of memory", "can't allocate memory", "cannot allocate memory",
                                   "not enough memory"))


def _usage_error(err: BaseException, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exception(err)
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, (MemoryError, RuntimeError)) and _is_resource_error(err) or isinstance(err, MemoryError):
        message = f"out of memory ({message}): lower --batch-size"
    print(f"error: {message}", file=sys.stderr)
    return EXIT["usage"]


def _main(args) -> int:
    from mfverify.io import write_text

    if (args.loss is None) == (args.as_written is None):
        raise ValueError("give either a loss (the per-sample battery) or --as-written MODULE:FN, not both")
    if args.cases and len(set(args.cases)) != len(args.cases):
        twice = sorted({c for c in args.cases if args.cases.count(c) > 1})
        raise ValueError(f"--cases names {', '.join(twice)} more than once")
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
    print(report.table())
    if args.json:
        write_text(args.json, report.to_json() + "\n")
    if args.as_written is not None and args.sampler_out:
        from mfverify.check.sampler import draw_sampler, sampler_table

        folder = Path(args.sampler_out)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "sampler.csv", sampler_table(report.sampler))
        draw_sampler(report.sampler, folder / "sampler.png", title=report.loss.rsplit(":", 1)[-1])
        print(f"sampler: {folder / 'sampler.csv'}, {folder / 'sampler.png'}")
    return report.exit_status


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
                          jit=not args.no_jit, layout=args.layout)
