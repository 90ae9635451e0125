"""Image-shaped cases (docs/MATH.md §12): ``digits``, fitted to real images, and ``images32``.

``digits``: a labelled low-rank mixture fitted to scikit-learn's bundled 8 x 8 handwritten
digits (1,797 images, d = 64, pixels scaled from 0..16 to [-1, 1]). Per digit class,
``COMPONENTS`` clusters by Lloyd's k-means (k-means++ start, a fixed seed per class), then the
maximum-likelihood probabilistic PCA of each cluster (Tipping & Bishop 1999): the cluster's
mean, ``noise`` the mean of its covariance's eigenvalues beyond the ``RANK`` largest (at least
the pixels' rounding variance ``NOISE_FLOOR``), and
``F = U_q diag(sqrt(lam_q - noise))``, each cluster's covariance first shrunk toward all
images' (``SHRINK``: the weight of 10 images; it lifts the held-out likelihood by ~20 nats).
10 classes x 3 components, q = 24. The fit runs once,
in ``fit_digits`` (``python benchmarks/fit_digits.py`` writes the file); the package ships
its result, ``data/digits.npz`` (no fit and no scikit-learn at import).

``images32``: a labelled low-rank mixture of 3 x 32 x 32 images (d = 3072, 10 classes, one
component each, q = 32). No image data set ships with a package mfverify may depend on,
so its means and factors are drawn from a documented image-like law instead: Gaussian
random fields with the power spectrum ``1 / (1 + |f|^2 / f0^2)`` (``f0`` = 2 cycles per
image, natural images' roughly ``1/f^2`` fall-off), colour channels mixed by a fixed
correlated matrix (most variance in luminance); factor ``j`` scaled so that the factors'
per-pixel variances fall like ``1 / (1 + j)``; ``noise`` 0.005 per pixel.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from mfverify.cases.lowrank import LowRankMixture

__all__ = ["digits", "images32", "fit_digits", "DIGITS_FILE"]

DIGITS_FILE = "digits.npz"
COMPONENTS = 3  # per digit class
RANK = 24  # q, the factors' columns per component
SHRINK = 10.0  # each cluster's covariance is shrunk toward all images' with the weight of this many images
KMEANS_ITERATIONS = 300
# pixels are whole numbers 0..16, so 1/8 apart once scaled: uniform rounding noise of that
# step has variance (1/8)^2 / 12; no component is narrower than the data's own resolution
NOISE_FLOOR = (1.0 / 8.0) ** 2 / 12.0


def digits() -> LowRankMixture:
    """The fitted ``digits`` case from the file the package ships."""
    with resources.files("mfverify.cases").joinpath("data", DIGITS_FILE).open("rb") as f:
        blob = np.load(f)
        fields = {k: blob[k] for k in ("weights", "means", "factors", "noise", "labels")}
    return LowRankMixture(fields["weights"], fields["means"], fields["factors"], fields["noise"],
                          labels=fields["labels"], shape=(1, 8, 8))


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """``(x (1797, 64) in [-1, 1], class labels)``: scikit-learn's bundled digits, scaled."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError('fitting the digits case needs scikit-learn: pip install "mfverify[test]"') from None
    data = load_digits()
    return data.data.astype(np.float64) / 8.0 - 1.0, data.target.astype(np.int64)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; the cluster of each row."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        dist = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(x[rng.choice(len(x), p=dist / dist.sum())])
    centres = np.array(centres)
    assign = np.full(len(x), -1)
    for _ in range(KMEANS_ITERATIONS):
        new = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        if (new == assign).all():
            break
        assign = new
        centres = np.array([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    return assign


def _ppca(x: np.ndarray, rank: int, prior: np.ndarray):
    """Probabilistic PCA of the rows: ``(mean, F (d, rank), noise)``, maximum likelihood for the
    covariance ``(n S + SHRINK prior) / (n + SHRINK)`` (``S`` the rows' own); each column's sign
    fixed (its largest entry positive) so that the fit is the same bits on any LAPACK."""
    mean = x.mean(0)
    dev = x - mean
    lam, vec = np.linalg.eigh((dev.T @ dev + SHRINK * prior) / (len(x) + SHRINK))
    lam, vec = lam[::-1], vec[:, ::-1]
    noise = max(float(lam[rank:].mean()) if rank < len(lam) else 0.0, NOISE_FLOOR)
    F = vec[:, :rank] * np.sqrt(np.clip(lam[:rank] - noise, 0.0, None))
    flip = np.sign(F[np.abs(F).argmax(0), np.arange(rank)])
    return mean, F * np.where(flip == 0, 1.0, flip), noise


def fit_digits(components: int = COMPONENTS, rank: int = RANK, seed: int = 0, data=None) -> dict[str, np.ndarray]:
    """The digits fit (module docstring): ``{weights, means, factors, noise, labels}``; ``data``: other
    ``(x, labels)`` to fit (a held-out split), scikit-learn's digits by default."""
    x, y = digits_data() if data is None else data
    prior = np.cov(x.T, bias=True)
    weights, means, factors, noise, labels = [], [], [], [], []
    for c in range(10):
        xc = x[y == c]
        assign = _kmeans(xc, components, seed + c)
        for j in range(components):
            mean, F, s = _ppca(xc[assign == j], rank, prior)
            weights.append((assign == j).sum() / len(x))
            means.append(mean)
            factors.append(F)
            noise.append(s)
            labels.append(c)
    w = np.array(weights)
    return {"weights": w / w.sum(), "means": np.array(means), "factors": np.array(factors),
            "noise": np.array(noise), "labels": np.array(labels, dtype=np.int64)}


# ------------------------------------------------------------------ images32


def _random_field(rng, n: int, size: int = 32, f0: float = 2.0) -> np.ndarray:
    """``n`` colour images (n, 3, size, size), unit variance per pixel: white noise filtered to
    the spectrum ``1 / (1 + |f|^2 / f0^2)``, channels mixed by ``_COLOUR``."""
    f = np.fft.fftfreq(size) * size  # cycles per image
    amp = 1.0 / np.sqrt(1.0 + (f[:, None] ** 2 + f[None, :] ** 2) / f0**2)
    white = rng.standard_normal((n, 3, size, size))
    smooth = np.fft.ifft2(np.fft.fft2(white) * amp).real
    mixed = np.einsum("ij,njhw->nihw", _COLOUR, smooth)
    return mixed / mixed.std(axis=(2, 3), keepdims=True).mean(axis=1, keepdims=True)


# luminance-dominated colour mixing: every channel mostly the same signal
_COLOUR = np.array([[0.9, 0.3, 0.1], [0.9, 0.0, 0.3], [0.9, -0.3, 0.1]])


def images32(classes: int = 10, rank: int = 32, noise: float = 0.005, seed: int = 32) -> LowRankMixture:
    """The ``images32`` case (module docstring)."""
    rng = np.random.default_rng(seed)
    d = 3 * 32 * 32
    means = 0.5 * _random_field(rng, classes).reshape(classes, d)
    scale = np.sqrt(0.1 / (1.0 + np.arange(rank)) / np.sum(1.0 / (1.0 + np.arange(rank))))
    cols = _random_field(rng, classes * rank).reshape(classes, rank, d)
    factors = np.transpose(cols * scale[None, :, None], (0, 2, 1))  # per-pixel variance 0.1 in all
    return LowRankMixture(np.full(classes, 1.0 / classes), means, factors, np.full(classes, noise),
                          labels=np.arange(classes), shape=(3, 32, 32))
