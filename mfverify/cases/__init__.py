"""The data laws p0 (docs/MATH.md §3): Gaussian mixtures and the named cases.

``mixtures`` holds the classes (``GaussianMixture``, ``ProductMixture``) and their
validation; ``named`` the registry of named cases (``get_case("ring8")``, ``cases``).
A new case family (a low-rank mixture, a case fitted to data) is a module here.

Imports: ``mfverify.registry`` only. A mixture knows nothing of the truth: its
densities and fields are ``mfverify.truth``'s.
"""

from mfverify.cases.mixtures import GaussianMixture, Mixture, ProductMixture
from mfverify.cases.named import cases, get_case, list_cases

__all__ = ["GaussianMixture", "ProductMixture", "Mixture", "get_case", "list_cases", "cases"]
