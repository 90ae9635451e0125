"""The mathematics checked: the identities of MATH.md §2 and §4 numerically (``identities``),
conditional expectations by Monte Carlo with their z-scores (``montecarlo``), the
stability of the stationary point (§7, ``stability``; ``python -m mfverify.stability``),
and the sympy derivations (``symbolic``). A new identity, population gradient or
derivation is a module here.

Imports: the truth, the objectives, the cases, the time laws and (to load a trained
network's directions) ``train``'s checkpoints; never the check or a study.
"""
