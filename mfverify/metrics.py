"""Error measures against the truth (MATH.md §6).

- ``flow_map_errors``: the same noise pushed through the model and through the exact
  map; statistics of ``|x_gen - Phi(x1, 1 -> 0)|`` (mean, RMS, p99, max).
- ``field_error``: ``E|u_theta - u|^2`` over given points ``(x, r, t)``.
- ``w2``: Wasserstein-2 between two equal-size samples by exact optimal transport (POT).
- ``sliced_w2``: the root mean over random directions of the 1-D W2^2 (sorted projections).
- ``energy_distance``: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic).
- ``nll`` and ``coverage``: mean ``-log p0`` under the true mixture, and the share of
  components that receive at least half their expected share of samples (samples
  assigned to the component of highest posterior at t = 0); likelihood alone rewards collapse.
"""

from __future__ import annotations

import numpy as np
import torch

from mfverify.cases import GaussianMixture, LowRankMixture, ProductMixture

COVERAGE_FRACTION = 0.5  # a component is covered with >= half its expected share of samples


def flow_map_errors(x_gen: torch.Tensor, x_exact: torch.Tensor) -> dict[str, float]:
    """``{flow_map_mean, flow_map_rmse, flow_map_p99, flow_map_max}`` of ``|x_gen - x_exact|``."""
    if x_gen.shape != x_exact.shape:
        raise ValueError(f"x_gen and x_exact must have the same shape, got {tuple(x_gen.shape)} and {tuple(x_exact.shape)}")
    err = (x_gen.double() - x_exact.double()).norm(dim=1)
    return {
        "flow_map_mean": err.mean().item(),
        "flow_map_rmse": err.square().mean().sqrt().item(),
        "flow_map_p99": torch.quantile(err, 0.99).item(),
        "flow_map_max": err.max().item(),
    }


def field_error(u_theta, mixture, x, r, t) -> float:
    """``E|u_theta(x, r, t) - u(x, r, t)|^2`` over the given points (the law is the caller's).

    ``u_theta`` takes and returns float64 CPU tensors (the runner wraps a model so).
    """
    from mfverify import truth

    u = truth.average_velocity(mixture, x, r, t)
    with torch.no_grad():
        return (u_theta(x, r, t).double() - u).square().sum(1).mean().item()


def w2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W2 between the empirical laws of ``a`` and ``b`` (n, d) (POT network simplex)."""
    import ot

    a, b = a.double().cpu(), b.double().cpu()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[1]} and {b.shape[1]}")
    # squared distances from differences, not |a|^2 + |b|^2 - 2 a.b (which leaves ~1e-8 at zero)
    cost = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square().numpy()
    wa, wb = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    return float(np.sqrt(max(ot.emd2(wa, wb, cost, numItermax=10**8), 0.0)))


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    if a.shape != b.shape:
        raise ValueError("sliced_w2 needs samples of equal size and dimension")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a.double().cpu() @ dirs, dim=0).values
    pb = torch.sort(b.double().cpu() @ dirs, dim=0).values
    return (pa - pb).square().mean().sqrt().item()


def _mean_pairwise(a, b, chunk=2048):
    total = 0.0
    for i in range(0, len(a), chunk):
        diff = a[i : i + chunk, None, :] - b[None, :, :]
        total += diff.norm(dim=-1).sum().item()
    return total / (len(a) * len(b))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return 2 * _mean_pairwise(a, b) - _mean_pairwise(a, a) - _mean_pairwise(b, b)


def nll(mixture, x: torch.Tensor) -> float:
    """Mean ``-log p0(x)`` under the true mixture (nats)."""
    from mfverify.truth import log_density

    return -log_density(mixture, x.double().cpu(), 0.0).mean().item()


def coverage(mixture, x: torch.Tensor) -> float:
    """Share of components with at least ``COVERAGE_FRACTION`` of their expected share of samples."""
    from mfverify.truth.fields import posterior_raw

    x = x.double().cpu()
    if isinstance(mixture, ProductMixture):
        mixture = mixture.to_mixture()
    if not isinstance(mixture, (GaussianMixture, LowRankMixture)):
        raise TypeError(f"mixture must be a GaussianMixture, ProductMixture or LowRankMixture, got "
                        f"{type(mixture).__name__}")
    if mixture.is_singular:
        raise ValueError("coverage needs component densities at t = 0; this mixture has singular covariances")
    owner = posterior_raw(mixture, x, torch.zeros(len(x), dtype=torch.float64)).argmax(1)
    counts = torch.bincount(owner, minlength=mixture.K).double()
    expected = mixture.weights * len(x)
    return (counts >= COVERAGE_FRACTION * expected).double().mean().item()


def sample_metrics(mixture, x_gen, x_exact, w2_samples: int = 1024) -> dict[str, float]:
    """Every §6 measure of generated samples against the exact map of the same noise.

    ``w2`` uses the first ``w2_samples`` samples of each (exact OT is O(n^3)).
    """
    out = flow_map_errors(x_gen, x_exact)
    finite = bool(torch.isfinite(x_gen).all())
    if not finite:
        return out
    k = min(w2_samples, len(x_gen))
    out["w2"] = w2(x_gen[:k], x_exact[:k])
    out["sliced_w2"] = sliced_w2(x_gen, x_exact)
    out["energy"] = energy_distance(x_gen[:k], x_exact[:k])
    if not mixture.is_singular:
        out["nll"] = nll(mixture, x_gen)
        out["coverage"] = coverage(mixture, x_gen)
    return out
