"""Checking a loss: the battery run on any per-sample loss, the as-written battery on a
repository's own batch loss, and what a user needs to run them.

The rooms: ``report`` (the rows of a report, the report and its verdict, the errors and the
argument checks both batteries share); ``checks`` (checks as registered objects, what both
batteries loop over; a user's package adds one); ``statistics`` (the stationarity
statistics, in one place); ``exact_core`` (the exact model's core: the field per label, the
conventions of a call, the stand-in, the directions, the call log), with two thin fronts,
``exact_network`` (``ExactNetwork``, an ``nn.Module``) and ``jax_model`` (the same model as a
JAX function; public path ``mfverify.jax``; JAX is imported only when it is called);
``battery`` (the per-sample checks, ``run``); ``fronts`` (how the as-written battery draws a
batch and calls a loss, torch and JAX) and ``as_written`` (``run_as_written``), with
``sampler`` (what a loss's sampler trains); ``cli`` (``mfverify check``); ``testing`` (the
batteries as pytest assertions, public path ``mfverify.testing``); ``conventions``
(converters from other repositories' conventions, public path ``mfverify.conventions``).

Imports: the theory (identities), objectives, networks, cases, truth and ``path``; never a
study.
"""

from mfverify.check.report import DEFAULT_CASES, EXIT, CheckResult, LossError, Report
from mfverify.check.statistics import EQUAL_RTOL, STATIONARY_RTOL, bonferroni_z
from mfverify.check import checks
from mfverify.check.battery import (REFERENCE, check_equivalent, check_reduces_to_fm, check_scm_relation,
                                    check_stationary, check_weighting, run)
from mfverify.check.as_written import run_as_written
from mfverify.check.cli import main
from mfverify.check.exact_network import ExactNetwork

__all__ = ["run", "run_as_written", "ExactNetwork", "main", "Report", "CheckResult", "LossError", "DEFAULT_CASES",
           "EXIT", "EQUAL_RTOL", "STATIONARY_RTOL", "REFERENCE", "bonferroni_z", "checks", "check_reduces_to_fm",
           "check_equivalent", "check_stationary", "check_weighting", "check_scm_relation"]
