"""Wall time of ``mfverify check --as-written`` per loss on the default cases, next to the
per-sample battery on the same loss, and the batches each case's stationarity verdict needed.

The losses are ``tests/as_written_losses.py`` (written as repositories write them); the
per-sample counterpart is the registered objective the loss transcribes, where there is
one. Both run in this process with ``--threads`` torch threads (default 2: CI's cores).

    python benchmarks/check_bench.py [--threads 2] [--losses meanflow shortcut ...]

Bar (issue 28): at most 60 s per loss for ``--as-written`` on 2 CPU cores.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--losses", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
