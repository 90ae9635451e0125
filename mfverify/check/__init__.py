"""Checking a loss: the battery run on any per-sample loss, the as-written battery on a
repository's own batch loss, and what a user needs to run them.

``battery``: the per-sample checks (``run``), each a row with its numbers, its rule and a
verdict; ``exact_network``: the exact model as an ``nn.Module`` a repository's code can
call (``ExactNetwork``: ``u*`` plus perturbations whose ``eps`` are its parameters, every
call's ``(r, t)`` recorded); ``as_written``: the checks of ``fn(model, x0) -> loss`` with
its own sampler and batch mean, and what that sampler trains (``run_as_written``);
``cli``: ``mfverify check LOSS`` and ``mfverify check --as-written MODULE:FN`` (``main``);
``testing``: the battery as pytest assertions and hypothesis strategies for a user's own
test suite (public path ``mfverify.testing``); ``conventions``: converters from other
repositories' conventions (argument orders, noise at 0, ``(t, h)``) to mfverify's
(public path ``mfverify.conventions``); ``jax_model``: the exact model as a JAX function
(public path ``mfverify.jax``; JAX is imported only when it is called). The JAX front of
the as-written check belongs here.

Imports: the theory (identities), objectives, networks, cases and truth; never a
study.
"""

from mfverify.check.battery import (DEFAULT_CASES, EQUAL_RTOL, REFERENCE, STATIONARY_RTOL, CheckResult, Report,
                                    bonferroni_z, check_equivalent, check_reduces_to_fm, check_scm_relation,
                                    check_stationary, check_weighting, run)
from mfverify.check.as_written import run_as_written
from mfverify.check.cli import main
from mfverify.check.exact_network import ExactNetwork

__all__ = ["run", "run_as_written", "ExactNetwork", "main", "Report", "CheckResult", "DEFAULT_CASES", "EQUAL_RTOL",
           "STATIONARY_RTOL", "REFERENCE", "bonferroni_z", "check_reduces_to_fm", "check_equivalent", "check_stationary", "check_weighting",
           "check_scm_relation"]
