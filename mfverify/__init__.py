"""mfverify: a numerical verification testbed for MeanFlow and its relatives.

Conventions (../shared/MATH.md §1): data at t = 0, noise at t = 1, argument
order ``(x, r, t)`` with ``r <= t``.
"""

__version__ = "0.1.0"
