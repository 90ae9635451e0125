"""The project's strategies are the public ones (``mfverify.check.testing``)."""

from mfverify.check.testing import (covariances, gaussians, lowrank_mixtures, mixtures, mixtures_1d, points_on_path,
                                    product_mixtures, times)

__all__ = ["covariances", "gaussians", "lowrank_mixtures", "mixtures", "mixtures_1d", "points_on_path",
           "product_mixtures", "times"]
