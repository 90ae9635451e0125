"""The data laws p0 (docs/MATH.md §3): Gaussian mixtures and the named cases.

``mixtures`` holds the classes (``GaussianMixture``, ``ProductMixture``) and their
validation; ``lowrank`` the low-rank-plus-isotropic ``LowRankMixture`` (image scale);
``images`` the image cases (``digits``, ``images32``); ``named`` the registry of named cases
(``get_case("ring8")``, ``cases``). A new case family is a module here.

Imports: ``mfverify.registry`` only. A mixture knows nothing of the truth: its
densities and fields are ``mfverify.truth``'s.
"""

from mfverify.cases.lowrank import LowRankMixture
from mfverify.cases.mixtures import GaussianMixture, Mixture, ProductMixture
from mfverify.cases.named import cases, get_case, list_cases

__all__ = ["GaussianMixture", "ProductMixture", "LowRankMixture", "Mixture", "get_case", "list_cases", "cases"]
