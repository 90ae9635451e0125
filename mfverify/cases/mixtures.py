"""Gaussian-mixture data laws p0 (MATH.md §3): the classes and their validation.

``GaussianMixture``: ``p0 = sum_k w_k N(mu_k, S_k)`` with full covariances.
``ProductMixture``: independent coordinates, each a 1-D mixture; as a single
mixture it would have ``prod_j K_j`` components, so the truth treats it
coordinate by coordinate.

Both hold float64 CPU tensors and hand out copies on other devices through
``tensors(device)`` (cached). Validation is strict: nothing is normalised or
symmetrised silently beyond round-off.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["GaussianMixture", "ProductMixture", "Mixture"]

# Round-off allowances for validating user parameters: a covariance built in
# float64 from exact symmetric formulas is symmetric to ~1e-16 relative, and
# weights written as decimals sum to 1 within a few ulps.
_SYM_RTOL = 1e-10
_PSD_RTOL = 1e-10
_WEIGHT_SUM_TOL = 1e-10


def _to_float64(name: str, value, ndim: int | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(device="cpu", dtype=torch.float64)
    elif isinstance(value, (np.ndarray, list, tuple, float, int)):
        try:
            tensor = torch.as_tensor(np.array(value, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be numeric, got {value!r}") from err
    else:
        raise TypeError(f"{name} must be a torch tensor, numpy array or sequence, got {type(value).__name__}")
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
        raise ValueError(f"{name} must be finite, found {bad}")
    return tensor


def _check_labels(labels, K: int) -> torch.Tensor | None:
    """Per-component class labels (K,) int64, every class in ``0 .. max`` used; None: unlabelled."""
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.shape != (K,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be {K} integers (one class per component), got {labels!r}")
    if arr.min() < 0 or set(arr.tolist()) != set(range(int(arr.max()) + 1)):
        raise ValueError(f"labels must use every class 0 .. n_classes - 1 (a class without components has no "
                         f"law), got {arr.tolist()}")
    return torch.as_tensor(arr, dtype=torch.int64)


def _check_sizes(w: torch.Tensor, mu: torch.Tensor) -> tuple[int, int]:
    """``(K, d)`` of ``means`` (K, d), with ``weights`` (K,) to match."""
    K, d = mu.shape
    if K == 0 or d == 0:
        raise ValueError(f"means must have at least one component and one dimension, got shape {(K, d)}")
    if w.shape[0] != K:
        raise ValueError(f"weights has {w.shape[0]} entries but means has {K} components")
    return K, d


def _check_weights(weights: torch.Tensor, name: str = "weights") -> None:
    if (weights < 0).any():
        raise ValueError(f"{name} must be non-negative, found {weights.min().item()}")
    total = weights.sum().item()
    if abs(total - 1.0) > _WEIGHT_SUM_TOL:
        raise ValueError(f"{name} must sum to 1 (they are not normalised for you), they sum to {total!r}")


class Components:
    """What ``GaussianMixture`` and ``LowRankMixture`` share: ``weights`` (K,), ``means`` (K, d) and
    class labels of the components (``labels``: (K,) int64 or None); a subclass gives
    ``_subset(keep, description)``, the mixture of the components ``keep``."""

    weights: torch.Tensor
    means: torch.Tensor
    labels: torch.Tensor | None

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of class labels (0 for an unlabelled mixture); labels are ``0 .. n_classes - 1``."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def class_weights(self) -> torch.Tensor:
        """``P(c)`` (n_classes,): the summed weights of each class's components."""
        self._need_labels()
        return torch.zeros(self.n_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)

    def class_mixture(self, c: int):
        """The class's own law ``p0(x | c)``: its components, weights renormalised (cached)."""
        self._need_labels()
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < self.n_classes:
            raise ValueError(f"class label must be an int in [0, {self.n_classes}), got {c!r}")
        cache = self.__dict__.setdefault("_classes", {})
        if int(c) not in cache:
            cache[int(c)] = self._subset(self.labels == int(c),
                                         f"class {int(c)} of {self.description or repr(self)}")
        return cache[int(c)]

    def _need_labels(self):
        if self.labels is None:
            raise ValueError(f"{self!r} has no class labels (build it with labels=...)")


class GaussianMixture(Components):
    """``p0 = sum_k w_k N(mu_k, S_k)``; weights (K,), means (K, d), covs (K, d, d).

    Each ``S_k`` must be symmetric positive semi-definite. ``S_k = 0`` for all k
    is a Dirac mixture (a finite data set). The eigendecomposition
    ``S_k = Q_k diag(lam_k) Q_k^T`` is computed once and cached.
    """

    def __init__(self, weights, means, covs, description: str = "", labels=None):
        w = _to_float64("weights", weights, ndim=1)
        mu = _to_float64("means", means, ndim=2)
        S = _to_float64("covs", covs, ndim=3)
        K, d = _check_sizes(w, mu)
        if S.shape != (K, d, d):
            raise ValueError(f"covs must have shape {(K, d, d)} to match means, got {tuple(S.shape)}")
        _check_weights(w)
        scale = S.abs().amax(dim=(1, 2)).clamp_min(1.0)
        asym = (S - S.transpose(1, 2)).abs().amax(dim=(1, 2))
        if (asym > _SYM_RTOL * scale).any():
            k = int(torch.argmax(asym / scale))
            raise ValueError(f"covs[{k}] is not symmetric: max |S - S^T| = {asym[k].item():.3e}")
        S = 0.5 * (S + S.transpose(1, 2))
        lam, Q = torch.linalg.eigh(S)
        if (lam < -_PSD_RTOL * scale[:, None]).any():
            k = int(torch.argmin(lam.min(dim=1).values / scale))
            raise ValueError(
                f"covs[{k}] is not positive semi-definite: smallest eigenvalue {lam[k].min().item():.3e}"
            )
        self.weights, self.means, self.covs = w, mu, S
        self.labels = _check_labels(labels, K)
        self.eigvals = lam.clamp_min(0.0)  # (K, d), round-off negatives -> 0
        self.eigvecs = Q  # (K, d, d), columns are eigenvectors
        self.description = description
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def is_dirac(self) -> bool:
        """True when every covariance is zero: a finite data set."""
        return bool((self.eigvals == 0).all())

    @property
    def is_singular(self) -> bool:
        """True when some covariance has a zero eigenvalue (p0 has no density)."""
        return bool((self.eigvals == 0).any())

    def __repr__(self) -> str:
        classes = "" if self.labels is None else f", classes={self.n_classes}"
        return f"GaussianMixture(K={self.K}, d={self.d}{classes})"

    # ------------------------------------------------------------ labelled mixtures

    def _subset(self, keep, description: str) -> "GaussianMixture":
        w = self.weights[keep]
        return GaussianMixture(w / w.sum(), self.means[keep], self.covs[keep], description=description)

    def sample_labelled(self, n: int, generator: torch.Generator | None = None):
        """``(x0 (n, d), labels (n,) int64)``: the same draws as ``sample`` (same generator state,
        same ``x0``), with each draw's class label."""
        self._need_labels()
        n = _check_count("n", n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        root = self.eigvecs * self.eigvals.sqrt()[:, None, :]
        return self.means[k] + torch.einsum("nij,nj->ni", root[k], eps), self.labels[k]

    def mean_and_covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``E x0`` (d,) and ``Cov x0`` (d, d) of the whole mixture."""
        w, mu, S = self.weights, self.means, self.covs
        mean = (w[:, None] * mu).sum(0)
        dev = mu - mean
        return mean, (w[:, None, None] * (S + dev[:, :, None] * dev[:, None, :])).sum(0)

    def cov_traces(self) -> torch.Tensor:
        """``tr S_k`` (K,)."""
        return self.covs.diagonal(dim1=-2, dim2=-1).sum(-1)

    def projected_covariances(self, P: torch.Tensor) -> torch.Tensor:
        """``P^T S_k P`` (K, m, m) for ``P`` (d, m)."""
        return P.T @ self.covs @ P

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Parameters on ``device``, laid out for batched evaluation.

        ``Qcat`` (d, K*d) stacks the eigenbases so that ``x @ Qcat`` gives every
        component's eigen-coordinates at once; ``muQ`` (K*d,) is ``Q_k^T mu_k``.
        """
        key = str(torch.device(device))
        if key not in self._cache:
            K, d = self.K, self.d
            Q = self.eigvecs
            qcat = Q.permute(1, 0, 2).reshape(d, K * d)  # [:, k*d + i] = Q_k[:, i]
            muq = torch.einsum("kd,kde->ke", self.means, Q).reshape(K * d)
            cpu = {
                "log_w": torch.log(self.weights),
                "mu": self.means,
                "lam": self.eigvals.reshape(K * d),
                "Qcat": qcat,
                "QcatT": qcat.T.contiguous(),
                "muQ": muq,
                "Q": Q,
            }
            self._cache[key] = {k: v.to(device) for k, v in cpu.items()}
        return self._cache[key]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of ``x0 ~ p0`` as an (n, d) float64 CPU tensor."""
        n = _check_count("n", n)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        root = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # S_k = root root^T
        return self.means[k] + torch.einsum("nij,nj->ni", root[k], eps)


class ProductMixture:
    """Independent coordinates, coordinate j distributed as the 1-D mixture ``factors[j]``.

    Stored padded: ``weights, means, variances`` of shape (d, Kmax); padding has
    weight 0. ``K`` is the number of components of the equivalent full mixture.
    """

    def __init__(self, factors: Sequence[GaussianMixture], description: str = ""):
        factors = list(factors)
        if not factors:
            raise ValueError("factors must hold at least one 1-D mixture, got none")
        for j, f in enumerate(factors):
            if not isinstance(f, GaussianMixture):
                raise TypeError(f"factors[{j}] must be a GaussianMixture, got {type(f).__name__}")
            if f.d != 1:
                raise ValueError(f"factors[{j}] must be one-dimensional, got d={f.d}")
        kmax = max(f.K for f in factors)
        d = len(factors)
        w = torch.zeros(d, kmax, dtype=torch.float64)
        mu = torch.zeros(d, kmax, dtype=torch.float64)
        var = torch.ones(d, kmax, dtype=torch.float64)
        for j, f in enumerate(factors):
            w[j, : f.K] = f.weights
            mu[j, : f.K] = f.means[:, 0]
            var[j, : f.K] = f.covs[:, 0, 0]
        self.factors = factors
        self.weights, self.means, self.variances = w, mu, var
        self.description = description
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    @property
    def d(self) -> int:
        return len(self.factors)

    @property
    def K(self) -> int:
        return math.prod(f.K for f in self.factors)

    @property
    def is_dirac(self) -> bool:
        return all(f.is_dirac for f in self.factors)

    @property
    def is_singular(self) -> bool:
        return any(f.is_singular for f in self.factors)

    def __repr__(self) -> str:
        return f"ProductMixture(d={self.d}, K={self.K})"

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        key = str(torch.device(device))
        if key not in self._cache:
            log_w = torch.log(self.weights)  # padding -> -inf, dropped by the softmax
            cpu = {"log_w": log_w, "mu": self.means, "var": self.variances}
            self._cache[key] = {k: v.to(device) for k, v in cpu.items()}
        return self._cache[key]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        n = _check_count("n", n)
        return torch.cat([f.sample(n, generator=generator) for f in self.factors], dim=1)

    def to_mixture(self, max_components: int = 4096) -> GaussianMixture:
        """The same law as one ``GaussianMixture`` with ``prod_j K_j`` diagonal components."""
        if self.K > max_components:
            raise ValueError(f"the product has {self.K} components, more than max_components={max_components}")
        w = torch.ones(1, dtype=torch.float64)
        mu = torch.zeros(1, 0, dtype=torch.float64)
        var = torch.zeros(1, 0, dtype=torch.float64)
        for f in self.factors:
            w = (w[:, None] * f.weights[None, :]).reshape(-1)
            mu = torch.cat([mu.repeat_interleave(f.K, 0), f.means.repeat(mu.shape[0], 1)], dim=1)
            var = torch.cat([var.repeat_interleave(f.K, 0), f.covs[:, 0, :].repeat(var.shape[0], 1)], dim=1)
        return GaussianMixture(w / w.sum(), mu, torch.diag_embed(var), self.description)


Mixture = GaussianMixture | ProductMixture


def _check_count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be non-negative, got {n}")
    return int(n)
