"""Seeds as one vmapped ensemble against the same seeds trained one after another.

For k members and an objective: the wall time of ``train_ensemble`` on k seeds
against k ``train`` runs in sequence, the same steps each (data drawing, checks and
EMA included: what a study pays). Rounds alternate ensemble and solo, and the
median of each is taken, so that machine noise hits both alike; the ratio is
solo / ensemble in the same run (> 1: the ensemble is faster).

    python benchmarks/ensemble_bench.py [--threads 1] [--steps 100] [--rounds 3] [--device cpu|cuda|all]

Bar (one CPU thread, batch 256, ``mf``): an ensemble of 3 at least 1.5x as fast as
the 3 solo runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mfverify.train import TrainConfig, train
from mfverify.train.ensemble import train_ensemble


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(objective, k, device, steps, batch, rounds, width=128):
    cfgs = [TrainConfig(case="ring8", objective=objective, steps=steps, batch=batch, device=device, seed=s,
                        lr_schedule="cosine", p=1.0 if objective != "fm" else 0.0, c=0.03,
                        network_options={"width": width}) for s in range(k)]
    ens, solo = [], []
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        train_ensemble(cfgs, progress=False)
        _sync(device)
        ens.append(time.perf_counter() - start)
        start = time.perf_counter()
        for cfg in cfgs:
            train(cfg, progress=False)
        _sync(device)
        solo.append(time.perf_counter() - start)
    return statistics.median(ens), statistics.median(solo)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", default="1,3,5,15")
    parser.add_argument("--widths", default="128,32", help="MLP widths (128: the studies' network)")
    parser.add_argument("--objectives", default="fm,mf")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    members = [int(k) for k in args.members.split(",")]
    print(f"threads {args.threads}, batch {args.batch}, {args.steps} steps per member, median of {args.rounds} rounds")
    print(f"{'device':6s} {'width':>5s} {'objective':9s} {'k':>3s} {'ensemble s':>10s} {'k solo s':>9s} "
          f"{'member-steps/s ens':>18s} {'solo':>8s} {'ratio':>6s}")
    for device in devices:
        for width in [int(w) for w in args.widths.split(",")]:
            for objective in args.objectives.split(","):
                for k in members:
                    # one untimed warm-up of each (first-call costs: allocator, vmap set-up)
                    measure(objective, k, device, 5, args.batch, 1, width)
                    e, s = measure(objective, k, device, args.steps, args.batch, args.rounds, width)
                    total = k * args.steps
                    print(f"{device:6s} {width:5d} {objective:9s} {k:3d} {e:10.3f} {s:9.3f} {total / e:18.0f} "
                          f"{total / s:8.0f} {s / e:6.2f}", flush=True)
    if not torch.cuda.is_available():
        print("(no CUDA here: CPU figures only)")


if __name__ == "__main__":
    main()
