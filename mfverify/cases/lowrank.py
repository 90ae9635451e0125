"""Low-rank-plus-isotropic Gaussian mixtures (docs/MATH.md §12): the data laws at image scale.

``LowRankMixture(weights, means, factors, noise)``: ``p0 = sum_k w_k N(mu_k, S_k)`` with
``S_k = F_k F_k^T + noise_k I``, ``F_k`` of shape ``(d, q)``. Nothing of size ``d x d`` is
ever formed: the thin SVD ``F_k = U_k diag(sigma_k) V_k^T`` (computed once) gives ``S_k``'s
eigen-decomposition, ``sigma_k^2 + noise_k`` on the ``q`` columns of ``U_k`` and ``noise_k``
on their orthogonal complement, and every field of ``mfverify.truth`` is evaluated in
O(K d q) per point from it (``mfverify.truth.lowrank``).

``shape``: the image shape ``(C, H, W)`` of a point (``C H W = d``), for cases whose points
are pictures; networks and figures read it. ``labels``: one class per component, as for
``GaussianMixture``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mfverify.cases.mixtures import (Components, GaussianMixture, _check_count, _check_labels, _check_sizes,
                                     _check_weights, _to_float64)

__all__ = ["LowRankMixture", "check_shape"]


def check_shape(shape, d: int):
    """``shape`` as a tuple of 3 positive ints ``(C, H, W)`` with ``C H W = d``, or None."""
    if shape is None:
        return None
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be (C, H, W), three positive ints, got {shape!r}") from None
    if len(dims) != 3 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a > 0
                                 for a in dims):
        raise ValueError(f"shape must be (C, H, W), three positive ints, got {shape!r}")
    if math.prod(dims) != d:
        raise ValueError(f"shape {tuple(int(a) for a in dims)} holds {math.prod(dims)} values, but the mixture's "
                         f"points have d = {d}")
    return tuple(int(a) for a in dims)


class LowRankMixture(Components):
    """``p0 = sum_k w_k N(mu_k, F_k F_k^T + noise_k I)``.

    weights (K,), means (K, d), factors (K, d, q) with ``1 <= q <= d``, noise (K,) >= 0.
    ``noise_k = 0`` makes component k singular (no density at t = 0); ``noise = 0`` and
    ``factors = 0`` everywhere is the Dirac limit (a finite data set).
    """

    def __init__(self, weights, means, factors, noise, description: str = "", labels=None, shape=None):
        w = _to_float64("weights", weights, ndim=1)
        mu = _to_float64("means", means, ndim=2)
        F = _to_float64("factors", factors, ndim=3)
        s = _to_float64("noise", noise, ndim=1)
        K, d = _check_sizes(w, mu)
        if F.shape[0] != K or F.shape[1] != d or not 1 <= F.shape[2] <= d:
            raise ValueError(f"factors must have shape ({K}, {d}, q) with 1 <= q <= {d} to match means, "
                             f"got {tuple(F.shape)}")
        if s.shape != (K,):
            raise ValueError(f"noise must have shape ({K},), one variance per component, got {tuple(s.shape)}")
        if (s < 0).any():
            raise ValueError(f"noise must be non-negative (a variance), found {s.min().item()!r}")
        _check_weights(w)
        U, sigma, _ = torch.linalg.svd(F, full_matrices=False)  # U (K, d, q), sigma (K, q)
        self.weights, self.means, self.factors, self.noise = w, mu, F, s
        self.basis = U  # (K, d, q): orthonormal columns spanning each F_k
        self.factor_vars = sigma.square()  # (K, q): S_k = U diag(factor_vars + noise) U^T + noise (I - U U^T)
        self.labels = _check_labels(labels, K)
        self.shape = check_shape(shape, d)
        self.description = description
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ sizes

    @property
    def q(self) -> int:
        return self.factors.shape[2]

    @property
    def is_dirac(self) -> bool:
        return bool((self.noise == 0).all() and (self.factor_vars == 0).all())

    @property
    def is_singular(self) -> bool:
        return bool((self.noise == 0).any())

    def __repr__(self) -> str:
        classes = "" if self.labels is None else f", classes={self.n_classes}"
        shape = "" if self.shape is None else f", shape={self.shape}"
        return f"LowRankMixture(K={self.K}, d={self.d}, q={self.q}{classes}{shape})"

    # ------------------------------------------------------------- evaluation

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Parameters on ``device`` for batched evaluation: ``Ucat`` (d, K q) stacks the bases so
        that ``x @ Ucat`` gives every component's coordinates at once; ``lam`` (K q,) the
        eigenvalues ``factor_vars + noise`` along them, ``noise`` (K,) the rest's; ``muU`` (K q,)
        ``U_k^T mu_k``; ``mu_sq`` (K,) ``|mu_k|^2``."""
        key = str(torch.device(device))
        if key not in self._cache:
            K, d, q = self.K, self.d, self.q
            ucat = self.basis.permute(1, 0, 2).reshape(d, K * q)  # [:, k*q + i] = U_k[:, i]
            cpu = {
                "log_w": torch.log(self.weights),
                "mu": self.means,
                "muT": self.means.T.contiguous(),
                "mu_sq": self.means.square().sum(1),
                "lam": (self.factor_vars + self.noise[:, None]).reshape(K * q),
                "noise": self.noise,
                "Ucat": ucat,
                "UcatT": ucat.T.contiguous(),
                "muU": torch.einsum("kd,kdi->ki", self.means, self.basis).reshape(K * q),
                "U": self.basis,
            }
            self._cache[key] = {k: v.to(device) for k, v in cpu.items()}
        return self._cache[key]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of ``x0 ~ p0`` (n, d) float64 on the CPU: ``mu_k + F_k e + sqrt(noise_k) e'``."""
        return self._draw(n, generator)[0]

    def _draw(self, n, generator):
        n = _check_count("n", n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        e = torch.randn(n, self.q, dtype=torch.float64, generator=generator)
        e2 = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        x = self.means[k] + torch.einsum("ndq,nq->nd", self.factors[k], e) + self.noise[k].sqrt()[:, None] * e2
        return x, k

    # --------------------------------------------------------- labelled mixtures

    def _subset(self, keep, description: str) -> "LowRankMixture":
        w = self.weights[keep]
        return LowRankMixture(w / w.sum(), self.means[keep], self.factors[keep], self.noise[keep],
                              description=description, shape=self.shape)

    def sample_labelled(self, n: int, generator: torch.Generator | None = None):
        """``(x0 (n, d), labels (n,))``: the same draws as ``sample``, with each draw's class."""
        self._need_labels()
        x, k = self._draw(n, generator)
        return x, self.labels[k]

    # ------------------------------------------------------------- dense form

    def cov_traces(self) -> torch.Tensor:
        """``tr S_k = |F_k|^2 + d noise_k`` (K,)."""
        return self.factors.square().sum((1, 2)) + self.d * self.noise

    def covariances(self, components=None) -> torch.Tensor:
        """The dense ``S_k`` (len(components), d, d); for tests and small d only."""
        idx = range(self.K) if components is None else components
        eye = torch.eye(self.d, dtype=torch.float64)
        return torch.stack([self.factors[k] @ self.factors[k].T + self.noise[k] * eye for k in idx])

    def projected_covariances(self, P: torch.Tensor) -> torch.Tensor:
        """``P^T S_k P = (P^T F_k)(P^T F_k)^T + noise_k P^T P`` (K, m, m) for ``P`` (d, m): no d x d matrix."""
        FP = self.factors.transpose(1, 2) @ P
        return FP.transpose(1, 2) @ FP + self.noise[:, None, None] * (P.T @ P)

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``E x0`` (d,) and ``Cov x0`` (d, d) of the whole mixture, without forming any ``S_k``."""
        w, mu = self.weights, self.means
        mean = w @ mu
        dev = mu - mean
        cov = torch.einsum("k,kdi,kei->de", w, self.factors, self.factors) + (dev.T * w) @ dev
        return mean, cov + (w @ self.noise) * torch.eye(self.d, dtype=torch.float64)

    def to_dense(self, max_d: int = 1024) -> GaussianMixture:
        """The same law as a ``GaussianMixture`` with full covariances (d <= ``max_d``)."""
        if self.d > max_d:
            raise ValueError(f"to_dense forms K d x d covariances; d = {self.d} is above max_d = {max_d}")
        return GaussianMixture(self.weights, self.means, self.covariances(), self.description,
                               labels=None if self.labels is None else self.labels.numpy())
