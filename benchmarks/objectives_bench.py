"""Training-step time of every objective and JVP back-end, as a ratio to ``fm``.

One step = forward, backward and an Adam step, ``MeanFlowMLP`` defaults, float32.
Steps of all (objective, back-end) pairs are interleaved round by round and the
median per pair is taken, so that machine noise hits every pair alike; ratios
are to ``fm``'s median in the same run.

    python benchmarks/objectives_bench.py [--rounds 30] [--threads 2] [--device cpu|cuda|all]

Bars (2 CPU cores, batch 1024, d = 2): mf <= 1.6x fm, mf_sg <= 2.2x, mf_full <= 3x.

``--plain``: the same for a plain ``nn.Module`` (``MeanFlowMLP`` behind a module with
no ``jvp`` method, so only the generic back-ends apply: a user's own network).
Bar: ``mf`` <= 2.0x ``fm`` with the best generic back-end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mfverify import objectives
from mfverify.jvp import BACKENDS, DEFAULT_BACKEND
from mfverify.nets import MeanFlowMLP
from mfverify.times import sample_times


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class PlainModule(torch.nn.Module):
    """``MeanFlowMLP`` without its ``jvp`` method: the network a user brings."""

    def __init__(self, d):
        super().__init__()
        self.inner = MeanFlowMLP(d)

    def forward(self, x, r, t):
        return self.inner(x, r, t)


GENERIC = ("func", "forward_ad", "double_backward", "compiled")


def bench(device, batch, d, rounds, plain=False, names=None):
    torch.manual_seed(0)
    model = (PlainModule(d) if plain else MeanFlowMLP(d)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, d, generator=g).to(device)
    x1 = torch.randn(batch, d, generator=g).to(device)
    r, t = sample_times(batch, generator=g)
    r, t = r.to(device), t.to(device)
    backends = GENERIC if plain else BACKENDS
    names = names or [n for n in objectives.names() if n != "fm"]
    pairs = [("fm", DEFAULT_BACKEND)] + [(n, b) for n in names for b in backends]
    times = {p: [] for p in pairs}

    def step(name, backend):
        opt.zero_grad(set_to_none=True)
        loss = objectives.get(name)(model, x0, x1, r, t, jvp=backend).mean()
        loss.backward()
        opt.step()

    for p in pairs:  # warm-up
        step(*p)
    for _ in range(rounds):
        for p in pairs:
            _sync(device)
            start = time.perf_counter()
            step(*p)
            _sync(device)
            times[p].append(time.perf_counter() - start)
    return {p: statistics.median(v) for p, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--only-bar", action="store_true", help="only the configuration with bars (d=2, batch 1024)")
    parser.add_argument("--plain", action="store_true", help="only the plain-module comparison (generic back-ends)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, default jvp back-end {DEFAULT_BACKEND!r}")
    for dev in devices:
        device = torch.device(dev)
        med = bench(device, 1024, 2, args.rounds, plain=True, names=["mf", "mf_sg"])
        base = med[("fm", DEFAULT_BACKEND)]
        print(f"\n{dev} plain nn.Module (no jvp method), d=2 batch=1024: fm step {base * 1e3:.2f} ms; ratio to fm")
        print("  " + " ".join(f"{b:>16s}" for b in GENERIC))
        for name in ("mf", "mf_sg"):
            print(f"  {name:9s}" + " ".join(f"{med[(name, b)] / base:16.2f}" for b in GENERIC))
        best = min(GENERIC, key=lambda b: med[("mf", b)])
        print(f"  best generic back-end for mf: {best} {med[('mf', best)] / base:.2f}x (bar 2.0)")
        if args.plain:
            continue
        for d in (2,) if args.only_bar else (2, 16):
            for batch in (1024,) if args.only_bar else (256, 1024):
                med = bench(device, batch, d, args.rounds)
                base = med[("fm", DEFAULT_BACKEND)]
                print(f"\n{dev} d={d} batch={batch}: fm step {base * 1e3:.2f} ms; ratio to fm (median of {args.rounds})")
                print("  " + " ".join(f"{b:>16s}" for b in BACKENDS))
                for name in objectives.names():
                    if name == "fm":
                        continue
                    row = " ".join(f"{med[(name, b)] / base:16.2f}" for b in BACKENDS)
                    print(f"  {name:9s}{row}")
                best = {n: min(med[(n, b)] for b in BACKENDS) for n in objectives.names() if n != "fm"}
                print(
                    f"  best back-end: mf {best['mf'] / base:.2f}x (bar 1.6), mf_sg {best['mf_sg'] / base:.2f}x (bar 2.2), "
                    f"mf_full {best['mf_full'] / base:.2f}x (bar 3.0); mf_full / mf_sg = {best['mf_full'] / best['mf_sg']:.2f}"
                )


if __name__ == "__main__":
    main()
