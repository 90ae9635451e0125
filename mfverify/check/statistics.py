"""The statistics of the stationarity checks, in one place (both batteries, both frameworks).

- ``bonferroni_z(m)``: the ``|z|`` above which one of ``m`` tests is significant at the
  5-sigma family level (two-sided ``p = 5.7e-7`` for the family);
- ``floored_z(mean, se, size, rtol)``: ``|mean| / sqrt(se^2 + (rtol size)^2)``, a z-score that
  does not call round-off significant;
- ``heavy_tail(G)``: how far the farthest batch lies from the median, in robust standard
  deviations (about 3 to 4 for Gaussian batch means at 512 batches).
"""

from __future__ import annotations

from statistics import NormalDist

import torch

__all__ = ["FIVE_SIGMA_P", "EQUAL_RTOL", "STATIONARY_RTOL", "bonferroni_z", "floored_z", "heavy_tail", "HEAVY_TAIL"]

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


def bonferroni_z(m: int) -> float:
    """The |z| above which one of ``m`` tests is significant at the 5-sigma family level."""
    return NormalDist().inv_cdf(1 - FIVE_SIGMA_P / (2 * max(m, 1)))


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
