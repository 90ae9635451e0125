"""The named cases: a registry of functions that build a mixture (``get_case("ring8")``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mfverify.cases.images import digits, images32
from mfverify.cases.lowrank import LowRankMixture
from mfverify.cases.mixtures import GaussianMixture, ProductMixture
from mfverify.registry import Registry


def _mixture1d(weights, means, stds) -> GaussianMixture:
    stds = np.asarray(stds, dtype=np.float64)
    return GaussianMixture(weights, np.asarray(means, dtype=np.float64)[:, None], (stds**2)[:, None, None])


def _gauss1d() -> GaussianMixture:
    return _mixture1d([1.0], [1.0], [0.5])


def _bimodal1d() -> GaussianMixture:
    return _mixture1d([0.3, 0.7], [-1.5, 1.0], [0.2, 0.5])


def _gauss2d_aniso() -> GaussianMixture:
    cov = np.array([[0.5, 0.35], [0.35, 0.4]])
    return GaussianMixture([1.0], [[1.0, -0.5]], cov[None])


def _ring8() -> GaussianMixture:
    angle = 2 * np.pi * np.arange(8) / 8
    means = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    covs = np.broadcast_to(0.1**2 * np.eye(2), (8, 2, 2))
    return GaussianMixture(np.full(8, 1 / 8), means, covs)


def _ring8_labelled() -> GaussianMixture:
    ring = _ring8()
    return GaussianMixture(ring.weights, ring.means, ring.covs, labels=np.arange(8))


def _ring8_two_classes() -> GaussianMixture:
    ring = _ring8()
    return GaussianMixture(ring.weights, ring.means, ring.covs, labels=np.arange(8) % 2)


def _ring8_halves() -> GaussianMixture:
    ring = _ring8()
    return GaussianMixture(ring.weights, ring.means, ring.covs, labels=np.arange(8) // 4)


def _bimodal1d_labelled() -> GaussianMixture:
    mix = _bimodal1d()
    return GaussianMixture(mix.weights, mix.means, mix.covs, labels=np.arange(2))


def _narrow2d() -> GaussianMixture:
    means = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    covs = np.broadcast_to(1e-3**2 * np.eye(2), (4, 2, 2))
    return GaussianMixture(np.full(4, 0.25), means, covs)


def _dirac2d() -> GaussianMixture:
    rng = np.random.default_rng(2)
    means = rng.uniform(-1.5, 1.5, size=(6, 2))
    return GaussianMixture(np.full(6, 1 / 6), means, np.zeros((6, 2, 2)))


def _wide2d() -> GaussianMixture:
    """Velocities well beyond 4: a loss that clips its target (kvfrans/shortcut-models clips
    bootstrap targets to +-4) moves its fixed point here and nowhere on the other 2-D cases."""
    means = np.array([[-6.0, 0.0], [6.0, 0.0]])
    covs = np.stack([np.diag([0.5**2, 0.8**2]), np.diag([0.3**2, 0.5**2])])
    return GaussianMixture(np.array([0.4, 0.6]), means, covs)


def _product8d() -> ProductMixture:
    factors = [
        _mixture1d([0.4, 0.6], [-1.0 - 0.1 * j, 1.0 + 0.05 * j], [0.3, 0.15 + 0.02 * j]) for j in range(8)
    ]
    return ProductMixture(factors)


def _random16d() -> GaussianMixture:
    rng = np.random.default_rng(16)
    K, d = 8, 16
    weights = rng.dirichlet(np.full(K, 5.0))
    weights /= weights.sum()
    means = rng.normal(0.0, 1.5, size=(K, d))
    covs = []
    for _ in range(K):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        lam = np.exp(rng.uniform(np.log(0.01), np.log(0.5), size=d))
        covs.append((q * lam) @ q.T)
    covs = np.stack(covs)
    covs = 0.5 * (covs + covs.transpose(0, 2, 1))
    return GaussianMixture(weights, means, covs)


_MIXTURES = (GaussianMixture, ProductMixture, LowRankMixture)


@dataclass(frozen=True)
class _Case:
    build: Callable[[], GaussianMixture | ProductMixture | LowRankMixture]
    description: str


def _as_case(obj, name: str, description: str | None = None) -> _Case:
    """A case is a mixture or a function of no arguments that builds one."""
    if isinstance(obj, _Case):
        return obj
    if isinstance(obj, _MIXTURES):
        mixture = obj
        return _Case(lambda: mixture, description or mixture.description)
    if not callable(obj):
        raise TypeError(f"a case is a GaussianMixture, ProductMixture, LowRankMixture or a function building one, "
                        f"got {type(obj).__name__}")
    doc = (obj.__doc__ or "").strip().splitlines()
    return _Case(obj, description or (doc[0] if doc else ""))


cases = Registry("case", "mfverify.cases", wrap=_as_case)
"""Named cases: ``@cases.register("name", description="...")`` on a function building a
mixture (or on a mixture), a ``"package.module:attr"`` string, or an entry point in
the group ``mfverify.cases``."""

for _name, _build, _description in [
    ("gauss1d", _gauss1d, "one Gaussian in 1-D, N(1, 0.5^2)"),
    ("bimodal1d", _bimodal1d, "1-D two components, unequal weights (0.3/0.7) and widths (0.2/0.5)"),
    ("gauss2d_aniso", _gauss2d_aniso, "one 2-D Gaussian with a correlated full covariance"),
    ("ring8", _ring8, "8 components on a circle of radius 2, std 0.1"),
    ("ring8_labelled", _ring8_labelled, "ring8 with class labels: component k is class k (8 classes)"),
    ("ring8_two_classes", _ring8_two_classes,
     "ring8 with two classes of four components each: even components class 0, odd class 1"),
    ("ring8_halves", _ring8_halves,
     "ring8 with two classes that are halves of the ring (components 0-3 and 4-7): the class fields differ "
     "on a side, so a guidance error moves the fixed point (docs/MATH.md §13)"),
    ("bimodal1d_labelled", _bimodal1d_labelled, "bimodal1d with each component a class"),
    ("narrow2d", _narrow2d, "4 components at (+-1, +-1) of std 1e-3"),
    ("wide2d", _wide2d, "2 components at (+-6, 0): conditional velocities of size 6, beyond a clip at 4"),
    ("dirac2d", _dirac2d, "a finite data set of 6 points in 2-D (covariances 0)"),
    ("product8d", _product8d, "product of 8 independent 1-D bimodal mixtures (exact by quantiles)"),
    ("random16d", _random16d, "K=8 random full covariances in 16-D, fixed seed"),
    ("digits", digits, "8x8 digits (d = 64, 10 classes x 3 low-rank components) fitted to scikit-learn's digits"),
    ("images32", images32, "3x32x32 images (d = 3072, 10 classes, rank 32): an image-like spectrum, not fitted"),
]:
    cases.register(_name, _build, description=_description)


def list_cases() -> dict[str, str]:
    """Names of the cases with a one-line description each."""
    return {name: cases.get(name).description for name in cases.names()}


def get_case(name: str) -> GaussianMixture | ProductMixture | LowRankMixture:
    """The named case (or ``"module:attr"``), freshly built (cases are deterministic)."""
    case = cases.get(name)
    mixture = case.build()
    if not isinstance(mixture, _MIXTURES):
        raise TypeError(f"case {name!r} must build a GaussianMixture, ProductMixture or LowRankMixture, got "
                        f"{type(mixture).__name__}")
    mixture.description = case.description
    return mixture
