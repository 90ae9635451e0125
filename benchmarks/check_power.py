"""The as-written check's false-alarm rate and power, measured over seeds.

``false-alarm``: the correct MeanFlow loss (``tests/as_written_losses.py:meanflow``, or its JAX
transcription) on one or more cases, one run per seed; it prints how many runs passed, failed or
were undecided, and how the final z of every direction is distributed: under a correct loss each is
a mean over batches divided by its standard error, so about 5 % of them should exceed 1.96 and 1 %
2.58 (Student's t with the batches' degrees of freedom is a little wider). The verdict's bar is the
5-sigma family level (``mfverify.check.statistics.bonferroni_z``): a false alarm in this many seeds
would already be far above it.

``power``: MeanFlow with ``alpha`` times one defect (``defective(defect, alpha)`` of
``tests/as_written_losses.py`` / ``tests/jax_losses.py``: a share of the target's gradient kept,
the tangent ``(v, 0, 1 - alpha)``, the tangent term scaled by ``1 - alpha``, the target moved
``alpha`` of the way to its clip at +-4), one run per seed; the detection rate is the share of runs
that failed.

    python benchmarks/check_power.py false-alarm --cases gauss2d_aniso --seeds 60
    python benchmarks/check_power.py power --seeds 4 --grid no_stop_gradient:0.1,0.25,1 tangent_factor:0.05
    python benchmarks/check_power.py power --cases digits --seeds 2 --grid wrong_tangent:0.25,1
    python benchmarks/check_power.py power --framework jax --seeds 2 --grid no_stop_gradient:1

Everything runs in this process with ``--threads`` torch threads (default 2: CI's cores); ``--out``
appends one JSON line per run, so an interrupted measurement keeps what it finished and resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _loss(framework: str, defect: str | None, alpha: float):
    if framework == "jax":
        import tests.jax_losses as J

        return J.meanflow_jax_jit if defect is None else J.defective_jax(defect, alpha)
    import tests.as_written_losses as L

    if defect is None:
        def meanflow(model, x0):  # rows as Algorithm 1, (B, C, H, W) images as image code
            return (L.meanflow_images if x0.ndim == 4 else L.meanflow)(model, x0)

        return meanflow
    return L.defective(defect, alpha)


def _run(framework, defect, alpha, cases, seed):
    from mfverify.check.as_written import run_as_written

    fn = _loss(framework, defect, alpha)
    start = time.perf_counter()
    report = run_as_written(fn, name=fn.__name__, framework=framework, cases=cases, seed=seed)
    wall = time.perf_counter() - start
    check = report.checks["stationary_as_written"]
    zs = [v for d in check.details["per_case"].values() for k, v in d.items() if k.startswith("z_")]
    return {"framework": framework, "defect": defect, "alpha": alpha, "cases": list(cases), "seed": seed,
            "verdict": report.verdict, "wall": wall, "batches": sum(check.details["batches"].values()),
            "value": check.value, "z": zs}


def _load(path):
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _key(row):
    return (row["framework"], row["defect"], row["alpha"], tuple(row["cases"]), row["seed"])


def _measure(jobs, out):
    done = {_key(r): r for r in _load(out)}
    rows = []
    for i, job in enumerate(jobs):
        key = (job[0], job[1], job[2], tuple(job[3]), job[4])
        if key in done:
            rows.append(done[key])
            continue
        row = _run(*job)
        rows.append(row)
        print(f"[{i + 1}/{len(jobs)}] {row['defect'] or 'correct'} alpha={row['alpha']:g} seed {row['seed']}: "
              f"{row['verdict']} ({row['wall']:.1f} s, {row['batches']} batches)", file=sys.stderr, flush=True)
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def false_alarm(args) -> int:
    jobs = [(args.framework, None, 0.0, args.cases, s) for s in range(args.first_seed, args.first_seed + args.seeds)]
    rows = _measure(jobs, args.out)
    verdicts = [r["verdict"] for r in rows]
    zs = [z for r in rows for z in r["z"]]
    print(f"{args.framework}, the correct loss on {', '.join(args.cases)}: {len(rows)} seeds "
          f"({args.first_seed}-{args.first_seed + args.seeds - 1})")
    print(f"passed {verdicts.count('passed')}, failed {verdicts.count('failed')}, undecided "
          f"{verdicts.count('undecided')}; median wall {statistics.median(r['wall'] for r in rows):.1f} s, "
          f"median batches {statistics.median(r['batches'] for r in rows):g}")
    print(f"final z of {len(zs)} directions: share above 1.96 {sum(z > 1.96 for z in zs) / len(zs):.3f} "
          f"(normal: 0.050), above 2.58 {sum(z > 2.58 for z in zs) / len(zs):.3f} (0.010), above 3.29 "
          f"{sum(z > 3.29 for z in zs) / len(zs):.4f} (0.001); largest {max(zs):.2f}; largest verdict statistic "
          f"{max(r['value'] for r in rows):.2f}")
    return 0


def power(args) -> int:
    grid = []
    for item in args.grid:
        defect, _, alphas = item.partition(":")
        grid += [(defect, float(a)) for a in alphas.split(",")]
    jobs = [(args.framework, d, a, args.cases, s) for d, a in grid
            for s in range(args.first_seed, args.first_seed + args.seeds)]
    rows = _measure(jobs, args.out)
    print(f"{args.framework} on {', '.join(args.cases)}, {args.seeds} seeds each")
    print("| defect | alpha | runs | failed (exit 1) | undecided (exit 3) | passed | detection rate | median wall s | "
          "median batches |")
    print("|---|---|---|---|---|---|---|---|---|")
    for defect, alpha in grid:
        mine = [r for r in rows if r["defect"] == defect and r["alpha"] == alpha]
        v = [r["verdict"] for r in mine]
        print(f"| {defect} | {alpha:g} | {len(mine)} | {v.count('failed')} | {v.count('undecided')} | "
              f"{v.count('passed')} | {v.count('failed') / len(mine):.2f} | "
              f"{statistics.median(r['wall'] for r in mine):.1f} | {statistics.median(r['batches'] for r in mine):g} |")
    return 0


def main(argv=None) -> int:
    from mfverify.check.report import DEFAULT_CASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("false-alarm", "power"))
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--seeds", type=int, default=4, help="runs per setting (default 4)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--grid", nargs="+", default=["no_stop_gradient:0.1,0.25,1", "wrong_tangent:0.1,0.25,1",
                                                     "tangent_factor:0.02,0.05,0.1", "clipped_target:0.25,1"],
                        help="DEFECT:ALPHA,ALPHA,... (power)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="a JSON-lines file the runs are appended to and resumed from")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    if args.framework == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return false_alarm(args) if args.what == "false-alarm" else power(args)


if __name__ == "__main__":
    sys.exit(main())
