"""Checking a loss: the battery run on any per-sample loss, and what a user needs to run it.

``battery``: the checks (``run``, ``main``: ``mfverify check LOSS``), each a row with
its numbers, its rule and a verdict; ``testing``: the battery as pytest assertions and
hypothesis strategies for a user's own test suite (public path ``mfverify.testing``);
``conventions``: converters from other repositories' conventions (argument orders,
noise at 0, ``(t, h)``) to mfverify's (public path ``mfverify.conventions``). The
as-written check of a repository's own batch loss and a JAX front belong here.

Imports: the theory (identities), objectives, networks, cases and truth; never a
study.
"""

from mfverify.check.battery import (DEFAULT_CASES, EQUAL_RTOL, REFERENCE, STATIONARY_RTOL, CheckResult, Report,
                                    bonferroni_z, check_equivalent, check_reduces_to_fm, check_scm_relation,
                                    check_stationary, check_weighting, main, run)

__all__ = ["run", "main", "Report", "CheckResult", "DEFAULT_CASES", "EQUAL_RTOL", "STATIONARY_RTOL", "REFERENCE",
           "bonferroni_z", "check_reduces_to_fm", "check_equivalent", "check_stationary", "check_weighting",
           "check_scm_relation"]
