"""Throughput and accuracy of the ground-truth average velocity (issue: ground truth).

Prints, measured in one run:
- points/s (median of 3 timed solves) of ``truth.average_velocity`` at the default tolerance on 100k random
  ``(x, r, t)`` (a fifth of them the full interval t = 1, r = 0; x on the path),
  for ring8 and random16d (and narrow2d);
- the max error of those points against a tighter solve (rtol = atol = 1e-14);
- the ratio to ``scipy.integrate.solve_ivp(method="DOP853", rtol=atol=1e-10)``
  solving 10k of the same ring8 problems as one batch (vectorised right-hand side,
  time rescaled: tau = t - s (t - r), dx/ds = -(t - r) v(x, tau)), with two
  right-hand sides: the package's tuned torch velocity, and a textbook numpy one
  (batched solves per component; the "quick vectorised version" of the issue);
- solver cost (f evaluations per point) as component widths shrink;
- with --memory: peak resident memory for 1e5 and 1e6 points in d = 16;
- with --derivatives: ``truth.average_velocity_derivatives`` (u, J_x u, d_r u, d_t u: d + 2
  tangents, the compiled variational equation of ``truth/compiled/tangent.py``) against values on
  the same points in the same run, as a ratio (bar: within 10x, ring8 >= 2000 points/s,
  random16d >= 300), its max error against a solve at rtol = atol = 1e-13, and the torch
  solver's throughput on the same problems for comparison.

- with --lowrank (only that): the exact one-step ``u(x1, 0, 1)`` of ``images32`` (a ``LowRankMixture``,
  d = 3072, K = 10, q = 32) at rtol = atol = 1e-10 on ``--n-lowrank`` noise points (default 4096): wall
  time and points/s (bar: 4096 points in at most 300 s on 2 CPU cores; on a GPU, where one is present,
  at least 50x the CPU's points/s, measured in the same run), the max error of 64 of them against a
  solve at 1e-12, and the low-rank field's cost against the same mixture written densely at d = 512.

    python benchmarks/truth_bench.py [--n 100000] [--threads 2] [--repeats 3] [--memory] [--derivatives [--only-derivatives]]
    python benchmarks/truth_bench.py --lowrank [--n-lowrank 4096]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from mfverify import truth
from mfverify.cases import GaussianMixture, get_case
from mfverify.truth import ode
from mfverify.truth.fields import velocity_raw
from mfverify.truth.solver import SolverStats


def problems(mixture, n, seed=0, full_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    k = int(full_fraction * n)
    t[:k], r[:k] = 1.0, 0.0
    x0 = mixture.sample(n, generator=g)
    x = (1 - t[:, None]) * x0 + t[:, None] * torch.randn(n, mixture.d, generator=g, dtype=torch.float64)
    return x, r, t


def throughput(name, n, repeats):
    """Median points/s over ``repeats`` timed solves of the same n points (the machines
    here are noisy: one solve can be 10 % off); the best and every run are printed too."""
    m = get_case(name)
    x, r, t = problems(m, n)
    start = time.perf_counter()  # first call: compiles the kernel for this d, or loads it from numba's cache
    ode.average_velocity(m, x[:8], r[:8], t[:8], rtol=truth.DEFAULT_RTOL, atol=truth.DEFAULT_ATOL)
    print(f"{name:10s} warm-up (kernel compile or cache load): {time.perf_counter() - start:.1f} s")
    rates = []
    for _ in range(repeats):
        stats = SolverStats()
        start = time.perf_counter()
        u, _ = ode.average_velocity(m, x, r, t, rtol=truth.DEFAULT_RTOL, atol=truth.DEFAULT_ATOL, stats=stats)
        rates.append(n / (time.perf_counter() - start))
    ref, _ = ode.average_velocity(m, x, r, t, rtol=1e-14, atol=1e-14)
    err = (u - ref).abs().max().item()
    rate = float(np.median(rates))
    runs = ", ".join(f"{v:.0f}" for v in rates)
    print(f"{name:10s} n={n:7d}  {rate:8.0f} points/s (median; best {max(rates):.0f}; runs {runs})  "
          f"max |u - u_tight| = {err:.2e}  {stats}")
    return rate, err, (x, r, t)


def textbook_velocity(mixture, x, tau):
    """The mixture velocity as a quick numpy implementation would write it (MATH.md §3):
    per component, ``C = (1-tau)^2 S + tau^2 I``, ``e = x - (1-tau) mu``, a batched
    solve ``C^{-1} e``, the log-density for the posterior weights, and
    ``v_k = (tau I - (1-tau) S) C^{-1} e - mu``."""
    n, d = x.shape
    a, b = (1 - tau)[:, None, None], tau[:, None, None]
    logp, vk = [], []
    for w, mu, S in zip(mixture.weights.numpy(), mixture.means.numpy(), mixture.covs.numpy()):
        C = a**2 * S + b**2 * np.eye(d)
        e = x - (1 - tau)[:, None] * mu
        sol = np.linalg.solve(C, e[..., None])[..., 0]
        logp.append(np.log(w) - 0.5 * (e * sol).sum(1) - 0.5 * np.linalg.slogdet(C)[1])
        vk.append(tau[:, None] * sol - (1 - tau)[:, None] * (sol @ S) - mu)
    logp = np.stack(logp, 1)
    post = np.exp(logp - logp.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    return np.einsum("nk,knd->nd", post, np.stack(vk))


def scipy_batch(mixture, x, r, t, rhs="package"):
    """One solve_ivp over the whole batch: one shared step for every point.

    ``rhs="package"``: the package's vectorised torch velocity; ``"textbook"``:
    ``textbook_velocity``."""
    n, d = x.shape
    h = (t - r)[:, None]
    t_np, r_np, h_np = t.numpy(), r.numpy(), h.numpy()

    def f(s, flat):
        if rhs == "textbook":
            return (-h_np * textbook_velocity(mixture, flat.reshape(n, d), t_np - s * (t_np - r_np))).ravel()
        xs = torch.from_numpy(flat.reshape(n, d))
        tau = t - s * (t - r)
        return (-h * velocity_raw(mixture, xs, tau)).numpy().ravel()

    start = time.perf_counter()
    sol = solve_ivp(f, (0.0, 1.0), x.numpy().ravel(), method="DOP853", rtol=1e-10, atol=1e-10)
    seconds = time.perf_counter() - start
    phi = torch.from_numpy(sol.y[:, -1].reshape(n, d))
    return n / seconds, phi, sol.nfev


def width_scaling(n=2000):
    print("\ncost as component widths shrink (4 components at (+-1, +-1), 2-D, default tolerance):")
    means = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    for std in [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]:
        m = GaussianMixture(np.full(4, 0.25), means, np.broadcast_to(std**2 * np.eye(2), (4, 2, 2)))
        x, r, t = problems(m, n, seed=1)
        stats = SolverStats()
        start = time.perf_counter()
        ode.average_velocity(m, x, r, t, rtol=truth.DEFAULT_RTOL, atol=truth.DEFAULT_ATOL, stats=stats)
        seconds = time.perf_counter() - start
        print(f"  std {std:.0e}: {n / seconds:7.0f} points/s  {stats}")


def derivatives(name, n, repeats):
    """Points/s of the derivatives against values on the same n points, same run."""
    from mfverify.truth.compiled import tangent as kernel_tangent

    m = get_case(name)
    x, r, t = problems(m, n, seed=3)
    truth.average_velocity_derivatives(m, x[:8], r[:8], t[:8])  # compile or load the kernel
    truth.average_velocity(m, x[:8], r[:8], t[:8])
    values, derivs = [], []
    for _ in range(repeats):  # interleaved: machine noise hits both alike
        start = time.perf_counter()
        truth.average_velocity(m, x, r, t)
        values.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        out = truth.average_velocity_derivatives(m, x, r, t)
        derivs.append(n / (time.perf_counter() - start))
    v, dv = float(np.median(values)), float(np.median(derivs))
    k = min(n, 500)
    tight = truth.average_velocity_derivatives(m, x[:k], r[:k], t[:k], rtol=1e-13, atol=1e-13)
    err = max(((a[:k] - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() for a, b in zip(out, tight))
    kernel_tangent.USE = False
    try:
        kt = min(n, 200 if m.d > 4 else 2000)
        start = time.perf_counter()
        torch_out = truth.average_velocity_derivatives(m, x[:kt], r[:kt], t[:kt])
        torch_rate = kt / (time.perf_counter() - start)
    finally:
        kernel_tangent.USE = True
    agree = max(((a[:kt] - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() for a, b in zip(out, torch_out))
    print(f"{name:10s} derivatives {dv:8.0f} points/s, values {v:8.0f} points/s: ratio values / derivatives "
          f"{v / dv:5.1f}x (bar <= 10x); max rel error vs rtol 1e-13: {err:.1e}; torch solver {torch_rate:.0f} "
          f"points/s ({dv / torch_rate:.0f}x slower), max rel difference to it {agree:.1e}")
    return v, dv


def lowrank(n):
    from mfverify.cases import LowRankMixture

    mix = get_case("images32")
    print(f"images32: {mix!r}, rtol = atol = 1e-10, u(x1, 0, 1) at {n} noise points")
    x1 = torch.randn(n, mix.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    rates = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        x, r, t = x1.to(device), zeros.to(device), ones.to(device)
        ode.average_velocity(mix, x[:8], r[:8], t[:8], rtol=1e-10, atol=1e-10)  # warm-up (CUDA context, caches)
        stats = SolverStats()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        u, _ = ode.average_velocity(mix, x, r, t, rtol=1e-10, atol=1e-10, stats=stats)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        rates[device] = n / wall
        bar = "  (bar: <= 300 s on 2 CPU cores)" if device == "cpu" else ""
        print(f"  {device}: {wall:.1f} s, {rates[device]:.1f} points/s{bar}; {stats}")
        if device == "cpu":
            k = min(64, n)
            tight, _ = ode.average_velocity(mix, x[:k], r[:k], t[:k], rtol=1e-12, atol=1e-12)
            print(f"  max |u - u(rtol 1e-12)| over {k} points: {(u[:k] - tight).abs().max().item():.2e}")
            u_cpu = u
        else:
            print(f"  max |u_cuda - u_cpu|: {(u.cpu() - u_cpu).abs().max().item():.2e}")
    if "cuda" in rates:
        print(f"  ratio cuda / cpu points/s: {rates['cuda'] / rates['cpu']:.0f}x  (bar >= 50x)")
    # the field alone, low-rank against dense, d = 512 (dense costs K d^2 per point, low-rank K d q)
    rng = np.random.default_rng(0)
    K, d, q = 10, 512, 32
    small = LowRankMixture(np.full(K, 0.1), rng.normal(0, 0.5, (K, d)), rng.normal(0, 0.1, (K, d, q)),
                           np.full(K, 0.005))
    dense = small.to_dense()
    x = torch.as_tensor(rng.normal(0, 1, (2048, d)))
    t = torch.full((2048,), 0.5, dtype=torch.float64)
    times = {}
    for name, m in (("low-rank", small), ("dense", dense)):
        velocity_raw(m, x, t)
        start = time.perf_counter()
        for _ in range(5):
            velocity_raw(m, x, t)
        times[name] = (time.perf_counter() - start) / 5
    print(f"  the velocity field at d = {d}, K = {K}, q = {q}, 2048 points: low-rank {times['low-rank'] * 1e3:.1f} ms, "
          f"dense {times['dense'] * 1e3:.1f} ms: {times['dense'] / times['low-rank']:.1f}x")


def memory():
    print("\nmemory, random16d, intervals t - r = 1e-2 (chunks of", ode.CHUNK, "points):")
    m = get_case("random16d")
    for n in [100_000, 1_000_000]:
        g = torch.Generator().manual_seed(2)
        t = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
        r = t - 1e-2
        x = torch.randn(n, 16, generator=g, dtype=torch.float64)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        truth.average_velocity(m, x, r, t)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  n={n:8d}: {seconds:6.1f} s, peak RSS {after:7.0f} MiB (was {before:7.0f} MiB before)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="points per case (default 100000)")
    parser.add_argument("--n-scipy", type=int, default=10_000, help="points in the scipy batch (default 10000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed solves per case; the median is reported (default 3)")
    parser.add_argument("--memory", action="store_true", help="also measure 1e6 points in d=16")
    parser.add_argument("--derivatives", action="store_true", help="also measure the derivatives (J_x u, d_r u, d_t u)")
    parser.add_argument("--only-derivatives", action="store_true", help="only the derivatives")
    parser.add_argument("--n-derivatives", type=int, default=5000, help="points for --derivatives (default 5000)")
    parser.add_argument("--lowrank", action="store_true", help="only the low-rank truth at d = 3072 (images32)")
    parser.add_argument("--n-lowrank", type=int, default=4096, help="noise points for --lowrank (default 4096)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, default rtol=atol={truth.DEFAULT_RTOL:g}\n")
    if args.lowrank:
        lowrank(args.n_lowrank)
        return
    if args.derivatives or args.only_derivatives:
        for name in ["ring8", "random16d"]:
            derivatives(name, args.n_derivatives, args.repeats)
        if args.only_derivatives:
            return
        print()

    rates = {}
    for name in ["ring8", "random16d", "narrow2d"]:
        rates[name], _, batch = throughput(name, args.n, args.repeats)
        if name == "ring8":
            ring_batch = batch

    m = get_case("ring8")
    x, r, t = (a[: args.n_scipy] for a in ring_batch)
    ours = truth.flow_map(m, x, t, r)
    print()
    scipy_rates = {}
    for rhs in ["package", "textbook"]:
        scipy_rates[rhs], phi, nfev = scipy_batch(m, x, r, t, rhs)
        print(
            f"scipy DOP853 batch, {rhs} right-hand side (ring8, n={len(x)}): {scipy_rates[rhs]:.0f} points/s, "
            f"nfev={nfev}, max |Phi_scipy - Phi| = {(phi - ours).abs().max().item():.2e}"
        )
    for rhs, rate in scipy_rates.items():
        print(f"ratio ring8 per-point solver / scipy batch ({rhs} rhs): {rates['ring8'] / rate:.1f}x  (bar >= 50x)")
    print(f"ring8: {rates['ring8']:.0f} points/s (bar >= 30000); random16d: {rates['random16d']:.0f} (bar >= 8000); medians")

    width_scaling()
    if args.memory:
        memory()


if __name__ == "__main__":
    main()
