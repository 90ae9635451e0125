"""The project's strategies are the public ones (``mfverify.testing``)."""

from mfverify.testing import covariances, gaussians, mixtures, mixtures_1d, points_on_path, product_mixtures, times

__all__ = ["covariances", "gaussians", "mixtures", "mixtures_1d", "points_on_path", "product_mixtures", "times"]
