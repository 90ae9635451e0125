"""Wall time of ``mfverify check --as-written`` per loss, the batches each case's verdict needed and the
move a pass rules out, next to the per-sample battery on the same loss.

The losses are ``tests/as_written_losses.py`` (written as repositories write them); the per-sample
counterpart is the registered objective the loss transcribes, where there is one. Everything runs in
this process with ``--threads`` torch threads (default 2: CI's cores).

    python benchmarks/check_bench.py [--threads 2] [--losses meanflow shortcut ...] [--cases digits]
    python benchmarks/check_bench.py --framework jax     # needs pip install -e ".[jax]"

Bars (issue 34): at most 60 s per torch loss on the default cases, 120 s on ``digits``, 90 s per JAX
loss, on 2 CPU cores. ``detectable move``: the largest over cases of the move (in units of a tamed
direction) detected with probability 0.95 (``shared``: the same move on every case).

``--framework jax`` times ``--as-written --framework jax`` on the JAX losses of ``tests/jax_losses.py``
next to the torch battery on the torch loss they transcribe (the same cases and rules): their batches
differ in number because each framework draws its own randomness, so the per-batch ratio is the
like-for-like figure.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# as written -> the per-sample objective it transcribes (None: no per-sample counterpart)
PAIRS = {
    "meanflow": "mf", "meanflow_forward_ad": "mf", "meanflow_mse": "mf", "meanflow_adaptive": None,
    "wrong_tangent": None, "no_stop_gradient": "mf_nosg", "tangent_factor": None, "clipped_target": None,
    "quartic": None, "diagonal_only": "fm", "shortcut": "shortcut", "shortcut_small_steps": None,
    "shortcut_past_the_end": None, "shortcut_clipped": None,
}
IMAGE_LOSSES = ("meanflow_images", "meanflow_images_no_stop_gradient", "meanflow_images_wrong_tangent")

# JAX loss (tests/jax_losses.py) -> the torch loss it transcribes (tests/as_written_losses.py)
JAX_PAIRS = {"meanflow_jax": "meanflow", "meanflow_jax_jit": "meanflow", "wrong_tangent_jax": "wrong_tangent",
             "no_stop_gradient_jax": "no_stop_gradient"}


def _row(report, wall):
    check = report.checks["stationary_as_written"]
    batches = check.details["batches"]
    shared = [c["detectable_move"] for c in check.details.get("combined", {}).values()]
    move = check.details["detectable_move"]
    n = sum(batches.values())
    return report.verdict, wall, n, batches, move, max(shared) if shared else float("nan")


def jax_main(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64, as the CLI's default --dtype
    import tests.as_written_losses as T
    import tests.jax_losses as J
    from mfverify.check.as_written import run_as_written
    from mfverify.check.report import DEFAULT_CASES

    cases = args.cases or DEFAULT_CASES
    print(f"torch threads: {args.threads}; jax {jax.__version__} on {jax.devices()[0].platform}; cases: "
          f"{', '.join(cases)}")
    print("| JAX loss | verdict | wall s | batches | s per batch | torch loss | verdict | wall s | batches | "
          "s per batch | per-batch ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst_wall, worst_ratio = 0.0, 0.0
    for name in args.losses:
        row = []
        for framework, fn in (("jax", getattr(J, name)), ("torch", getattr(T, JAX_PAIRS[name]))):
            start = time.perf_counter()
            report = run_as_written(fn, name=name, framework=framework, cases=cases)
            row.append(_row(report, time.perf_counter() - start))
        (vj, wj, nj, *_), (vt, wt, nt, *_) = row
        worst_wall, worst_ratio = max(worst_wall, wj), max(worst_ratio, (wj / nj) / (wt / nt))
        print(f"| {name} | {vj} | {wj:.1f} | {nj} | {wj / nj:.4f} | {JAX_PAIRS[name]} | {vt} | {wt:.1f} | {nt} | "
              f"{wt / nt:.4f} | {(wj / nj) / (wt / nt):.2f} |", flush=True)
    print(f"\nslowest JAX run: {worst_wall:.1f} s (bar: 90 s on 2 cores); largest per-batch ratio JAX / torch: "
          f"{worst_ratio:.2f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--losses", nargs="+", help=f"torch: {', '.join(PAIRS)}, {', '.join(IMAGE_LOSSES)}; "
                        f"jax: {', '.join(JAX_PAIRS)}")
    parser.add_argument("--cases", nargs="+", help="the cases (default: the battery's; digits: the image losses)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = args.cases is not None and any(c in ("digits", "images32") for c in args.cases)
    pairs = JAX_PAIRS if args.framework == "jax" else (dict.fromkeys(IMAGE_LOSSES) if image else PAIRS)
    args.losses = args.losses or list(pairs)
    unknown = [n for n in args.losses if n not in pairs]
    if unknown:
        parser.error(f"--losses: unknown here: {', '.join(unknown)}")
    if args.framework == "jax":
        return jax_main(args)
    import tests.as_written_losses as L
    from mfverify import check
    from mfverify.check.as_written import run_as_written
    from mfverify.check.report import DEFAULT_CASES

    cases = args.cases or DEFAULT_CASES
    print(f"torch threads: {args.threads}; cases: {', '.join(cases)}")
    print("| loss | as written: verdict | failed checks | wall s | batches per case | detectable move (per case / "
          "shared) | per-sample counterpart | its verdict | its wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in args.losses:
        start = time.perf_counter()
        report = run_as_written(getattr(L, name), name=name, cases=cases)
        verdict, wall, _, batches, move, shared = _row(report, time.perf_counter() - start)
        worst = max(worst, wall)
        failed = ", ".join(k for k, c in report.checks.items() if c.status == "fail") or "-"
        per = pairs.get(name)
        if per is None:
            cells = ["-", "-", "-"]
        else:
            start = time.perf_counter()
            other = check.run(per)
            cells = [per, other.verdict, f"{time.perf_counter() - start:.1f}"]
        moves = "-" if verdict == "failed" else f"{move:.3g} / " + ("-" if shared != shared else f"{shared:.3g}")
        print(f"| {name} | {verdict} | {failed} | {wall:.1f} | {' / '.join(str(b) for b in batches.values())} | "
              f"{moves} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nslowest as-written run: {worst:.1f} s (bar: {120 if image else 60} s on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
