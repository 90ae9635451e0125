"""Wall time of ``mfverify check --as-written`` per loss on the default cases, next to the
per-sample battery on the same loss, and the batches each case's stationarity verdict needed.

The losses are ``tests/as_written_losses.py`` (written as repositories write them); the
per-sample counterpart is the registered objective the loss transcribes, where there is
one. Both run in this process with ``--threads`` torch threads (default 2: CI's cores).

    python benchmarks/check_bench.py [--threads 2] [--losses meanflow shortcut ...]
    python benchmarks/check_bench.py --framework jax     # needs pip install -e ".[jax]"

Bar (issue 28): at most 60 s per loss for ``--as-written`` on 2 CPU cores.

``--framework jax`` times ``--as-written --framework jax`` on the JAX losses of
``tests/jax_losses.py`` next to the torch battery on the torch loss they transcribe
(the same cases, seeds and rules), as wall seconds and seconds per batch: their
batches differ in number because each framework draws its own randomness, so the
per-batch ratio is the like-for-like figure. Bar (issue 24): within 2x of torch's, at
most 90 s on 2 CPU cores.
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
    "wrong_tangent": None, "no_stop_gradient": "mf_nosg", "clipped_target": None, "diagonal_only": "fm",
    "shortcut": "shortcut", "shortcut_small_steps": None, "shortcut_past_the_end": None, "shortcut_clipped": None,
}


# JAX loss (tests/jax_losses.py) -> the torch loss it transcribes (tests/as_written_losses.py)
JAX_PAIRS = {"meanflow_jax": "meanflow", "meanflow_jax_jit": "meanflow", "wrong_tangent_jax": "wrong_tangent",
             "no_stop_gradient_jax": "no_stop_gradient"}


def jax_main(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64, as the CLI's default --dtype
    import tests.as_written_losses as T
    import tests.jax_losses as J
    from mfverify.check.as_written import DEFAULT_CASES, run_as_written

    print(f"torch threads: {args.threads}; jax {jax.__version__} on {jax.devices()[0].platform}; cases: "
          f"{', '.join(DEFAULT_CASES)}")
    print("| JAX loss | verdict | wall s | batches | s per batch | torch loss | verdict | wall s | batches | "
          "s per batch | wall ratio | per-batch ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    worst_wall, worst_ratio = 0.0, 0.0
    for name in args.losses:
        row = []
        for framework, fn in (("jax", getattr(J, name)), ("torch", getattr(T, JAX_PAIRS[name]))):
            start = time.perf_counter()
            report = run_as_written(fn, name=name, framework=framework)
            wall = time.perf_counter() - start
            n = sum(report.checks["stationary_as_written"].details["batches"].values()) + 8 * len(DEFAULT_CASES)
            row.append((report.passed, wall, n))
        (pj, wj, nj), (pt, wt, nt) = row
        worst_wall, worst_ratio = max(worst_wall, wj), max(worst_ratio, (wj / nj) / (wt / nt))
        verdict = lambda p: "passed" if p else "FAILED"  # noqa: E731
        print(f"| {name} | {verdict(pj)} | {wj:.1f} | {nj} | {wj / nj:.4f} | {JAX_PAIRS[name]} | {verdict(pt)} | "
              f"{wt:.1f} | {nt} | {wt / nt:.4f} | {wj / wt:.2f} | {(wj / nj) / (wt / nt):.2f} |", flush=True)
    print(f"\nslowest JAX run: {worst_wall:.1f} s (bar: 90 s on 2 cores); largest per-batch ratio JAX / torch: "
          f"{worst_ratio:.2f} (bar: 2)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--losses", nargs="+", help=f"torch: {', '.join(PAIRS)}; jax: {', '.join(JAX_PAIRS)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = PAIRS if args.framework == "torch" else JAX_PAIRS
    args.losses = args.losses or list(pairs)
    unknown = [n for n in args.losses if n not in pairs]
    if unknown:
        parser.error(f"--losses: unknown for --framework {args.framework}: {', '.join(unknown)}")
    if args.framework == "jax":
        return jax_main(args)
    import tests.as_written_losses as L
    from mfverify import check
    from mfverify.check.as_written import DEFAULT_CASES, run_as_written

    print(f"torch threads: {args.threads}; as-written cases: {', '.join(DEFAULT_CASES)}; per-sample cases: "
          f"{', '.join(check.DEFAULT_CASES)}")
    print("| loss | as written: verdict | failed checks | wall s | batches per case (x 1024 rows) | per-sample "
          "counterpart | its verdict | its wall s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name in args.losses:
        start = time.perf_counter()
        report = run_as_written(getattr(L, name), name=name)
        wall = time.perf_counter() - start
        worst = max(worst, wall)
        failed = ", ".join(k for k, c in report.checks.items() if not c.passed) or "-"
        batches = report.checks["stationary_as_written"].details["batches"]
        per = PAIRS[name]
        if per is None:
            cells = ["-", "-", "-", "-"]
        else:
            start = time.perf_counter()
            other = check.run(per)
            w2 = time.perf_counter() - start
            cells = [per, "passed" if other.passed else "FAILED", f"{w2:.1f}", f"{wall / w2:.2f}"]
        print(f"| {name} | {'passed' if report.passed else 'FAILED'} | {failed} | {wall:.1f} | "
              f"{' / '.join(str(b) for b in batches.values())} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nslowest as-written run: {worst:.1f} s (bar: 60 s on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
