"""Checks as registered objects (``mfverify.check.checks``): a check defined outside the package is
run by both batteries, counts towards the verdict, and can decline a loss it does not apply to."""

import pytest

import tests.as_written_losses as L
from mfverify import check
from mfverify.check import CheckResult, checks
from mfverify.check.as_written import run_as_written


@pytest.fixture
def outside_check():
    seen = []

    def rows_seen(context):
        """An outside check: passes when the battery handed it a context, fails on request."""
        seen.append(type(context).__name__)
        return CheckResult("rows_seen", not getattr(context, "fail_me", False), float(len(seen)), "a context arrives")

    checks.register("rows_seen", rows_seen, batteries=("per_sample", "as_written"))
    yield seen
    checks.unregister("rows_seen")


def test_a_check_registered_outside_the_package_runs_in_both_batteries(outside_check):
    per_sample = check.run("mf", cases=["gauss2d_aniso"], weighting=False, n_points=2)
    as_written = run_as_written(L.meanflow, cases=["bimodal1d"])
    assert "rows_seen" in per_sample.checks and "rows_seen" in as_written.checks
    assert outside_check == ["PerSample", "Evidence"]
    assert per_sample.passed and as_written.passed
    # it runs after the built-in checks, in registration order
    assert list(per_sample.checks)[-1] == "rows_seen" and list(as_written.checks)[-1] == "rows_seen"


def test_a_failing_outside_check_decides_the_verdict_and_an_informational_one_does_not():
    def always_fails(context):
        return CheckResult("always_fails", False, 1.0, "never holds")

    checks.register("always_fails", always_fails, batteries="per_sample")
    try:
        assert check.run("mf", cases=["gauss2d_aniso"], weighting=False, n_points=2).verdict == "failed"
        checks.register("always_fails", always_fails, batteries="per_sample", counts=False, replace=True)
        report = check.run("mf", cases=["gauss2d_aniso"], weighting=False, n_points=2)
        assert report.verdict == "passed" and not report.checks["always_fails"].counts
    finally:
        checks.unregister("always_fails")


def test_the_registry_lists_the_built_in_checks_of_each_battery_and_refuses_bad_ones():
    names = lambda b: [c.name for c in checks.for_battery(b)]  # noqa: E731
    assert names("per_sample")[:6] == ["reduces_to_fm", "equivalent_to_reference", "stationary_at_exact_u",
                                       "trains_off_diagonal", "weighting_moves_fixed_point", "scm_relation"]
    assert names("as_written")[:4] == ["stationary_as_written", "times_in_range", "trains_off_diagonal",
                                       "one_step_trained"]
    assert all(c.asks for c in checks.for_battery("as_written"))  # each says what it asks
    with pytest.raises(ValueError, match="batteries must name"):
        checks.register("nowhere", lambda c: None, batteries=("elsewhere",))
    with pytest.raises(TypeError, match="a check is a function"):
        checks.register("not_callable", 3)
    with pytest.raises(ValueError, match="battery must be one of"):
        checks.for_battery("both")
