"""The statistics of the stationarity checks, in one place (both batteries, both frameworks).

- ``bonferroni_z(m)``: the ``|z|`` above which one of ``m`` tests is significant at the
  5-sigma family level (two-sided ``p = 5.7e-7`` for the family);
- ``floored_z(mean, se, size, rtol)``: ``|mean| / sqrt(se^2 + (rtol size)^2)``, a z-score that
  does not call round-off significant;
- ``heavy_tail(G)``: how far the farthest batch lies from the median, in robust standard
  deviations (about 3 to 4 for Gaussian batch means at 512 batches);
- ``Summary`` (``summarize``): per direction the batch mean of the derivative, its standard
  error, the curvature ``H`` (the derivative's rate of change as the model moves along the
  direction: ``d^2 J / d eps^2`` at ``u*``), ``z``, the resolution ``se / |H|`` and the
  **detectable move** ``(z_bar + z_power) se / |H|``: a loss whose minimiser along the direction
  lies ``delta h`` from ``u*`` has the population derivative ``-delta H`` (to first order), and is
  detected with probability ``POWER`` once ``delta`` is at least that (docs/MATH.md §13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

__all__ = ["FIVE_SIGMA_P", "EQUAL_RTOL", "STATIONARY_RTOL", "POWER", "Z_POWER", "bonferroni_z", "floored_z", "heavy_tail",
           "HEAVY_TAIL", "Summary", "summarize", "curvature", "Combined", "combine"]

# float64 throughout; two computation graphs of the same value differ by round-off
# (~1e-14 relative); 1e-9 leaves five orders for sums over many parameters
EQUAL_RTOL = 1e-9
# the exact route: the truth's derivatives are accurate to ~1e-10 relative (ODE route,
# rtol 1e-12), times O(1) factors (tests/test_objectives.py uses the same bar); also the
# floor of the Monte Carlo statistics, relative to the derivative's size
STATIONARY_RTOL = 1e-8

# 5 sigma (two-sided p = 5.7e-7) for the family of tests, Bonferroni
FIVE_SIGMA_P = 2 * (1 - NormalDist().cdf(5.0))
HEAVY_TAIL = 10.0  # robust standard deviations: a batch this far out is a heavy tail, not Gaussian noise
POWER = 0.95  # the probability with which a report's detectable move is detected
Z_POWER = NormalDist().inv_cdf(POWER)  # 1.645: a mean z_bar + Z_POWER standard errors from 0 exceeds z_bar w.p. POWER


def bonferroni_z(m: int, batches: int | None = None) -> float:
    """The |z| above which one of ``m`` tests is significant at the 5-sigma family level; with
    ``batches``, the quantile of Student's t with ``batches - 1`` degrees of freedom (a mean over
    batches divided by its estimated standard error), which the normal's approaches as the
    batches grow (8 batches: 31.6 where the normal gives 6.0 at m = 100)."""
    p = FIVE_SIGMA_P / (2 * max(m, 1))
    if batches is None:
        return NormalDist().inv_cdf(1 - p)
    from scipy.stats import t as student

    return float(student.isf(p, batches - 1))


def floored_z(mean, se, size, rtol: float):
    """``|mean| / sqrt(se^2 + (rtol size)^2)``: without noise (every draw the same derivative, ``se``
    ~0) the mean is the exact model's error (~1e-12 of the terms), which ``rtol`` times the
    derivative's ``size`` (its scale with the model off ``u*``) keeps from reading as significant."""
    if isinstance(size, torch.Tensor):
        floor = (rtol * size).square()
    else:
        floor = (rtol * size) ** 2
    return mean.abs() / (se.square() + floor).sqrt().clamp_min(1e-300)


def heavy_tail(G: torch.Tensor) -> float:
    """The farthest batch from the median in robust standard deviations (1.4826 MAD), the largest
    over directions (the columns of ``G``)."""
    med = G.median(0).values
    mad = 1.4826 * (G - med).abs().median(0).values
    return float(((G - med).abs().max(0).values / mad.clamp_min(1e-300)).max())


def curvature(plus: torch.Tensor, minus: torch.Tensor, delta: float):
    """``(H (S,), se (S,), reached (S,) bool)`` from derivatives at ``eps_j = +delta`` and ``-delta`` (``(k, S)``,
    the same batches: common random numbers): the central difference ``(g(+delta) - g(-delta)) / (2 delta)``
    averaged over the ``k`` batches, exact for a loss whose derivative is at most cubic in ``eps``;
    ``reached`` is False where every difference is exactly 0 (the direction never reaches a term
    of the loss that keeps its gradient)."""
    diff = (plus - minus) / (2 * delta)
    k = diff.shape[0]
    se = diff.std(0) / math.sqrt(k) if k > 1 else torch.full_like(diff[0], float("inf"))
    return diff.mean(0), se, (diff != 0).any(0)


@dataclass
class Summary:
    """Per direction (tensors of ``S``): ``mean`` and ``se`` of the batch derivatives, ``H`` (curvature),
    ``z``, ``resolution`` (``se / |H|``) and ``move`` (the detectable move), over ``batches`` batches."""

    mean: torch.Tensor
    se: torch.Tensor
    H: torch.Tensor
    z: torch.Tensor
    resolution: torch.Tensor
    move: torch.Tensor
    batches: int


def summarize(G: torch.Tensor, H: torch.Tensor, rtol: float, z_bar: float) -> Summary:
    """The statistic of each direction from the batch derivatives ``G (batches, S)`` at ``u*`` and
    the curvature ``H (S,)``: ``z = |mean| / sqrt(se^2 + (rtol |H|)^2)`` (the floor keeps the exact
    model's round-off from reading as significant, and scales with the loss, so a loss times 1e-8
    gets the same z)."""
    n = G.shape[0]
    mean, se = G.mean(0), G.std(0) / math.sqrt(n)
    scale = H.abs()
    z = floored_z(mean, se, scale, rtol)
    resolution = torch.where(scale > 0, se / scale.clamp_min(1e-300), torch.full_like(se, float("inf")))
    return Summary(mean, se, H, z, resolution, (z_bar + Z_POWER) * resolution, n)


@dataclass
class Combined:
    """One direction over the cases where it applies: the inverse-variance mean of the per-case moves
    ``mean / H`` (a systematic move, the same on every case), its standard error ``se``, ``z`` and the
    detectable ``move``; ``cases`` the number combined."""

    name: str
    mean: float
    se: float
    z: float
    move: float
    cases: int


def combine(name: str, moves, resolutions, rtol: float, z_bar: float) -> Combined:
    """The systematic move along a direction from the per-case moves ``mean_c / H_c`` and their
    resolutions ``se_c / |H_c|`` (floored at ``rtol``): ``sum (m_c / s_c^2) / sum (1 / s_c^2)``, with the
    standard error ``1 / sqrt(sum 1 / s_c^2)``. A defect that moves the fixed point the same way on
    every case (a tangent factor) is seen with the power of all cases together."""
    s2 = [max(float(s), rtol) ** 2 for s in resolutions]
    weight = sum(1 / v for v in s2)
    mean = sum(float(m) / v for m, v in zip(moves, s2)) / weight
    se = 1 / math.sqrt(weight)
    return Combined(name, mean, se, abs(mean) / se, (z_bar + Z_POWER) * se, len(s2))
