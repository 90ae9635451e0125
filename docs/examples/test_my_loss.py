"""Checks of my_loss.my_meanflow with mfverify.testing, as a researcher would keep them.

Run with ``python -m pytest docs/examples/test_my_loss.py``.
"""

from hypothesis import given, settings

from mfverify.testing import assert_equivalent, assert_reduces_to_fm, assert_stationary, batches, mixtures

import my_loss  # noqa: F401  registers "my_meanflow"

# the first call compiles the ground truth's kernel: no per-example deadline
checks = settings(deadline=None, max_examples=10)


@checks
@given(batches(r_eq_t=True))
def test_reduces_to_flow_matching_where_r_equals_t(batch):
    model, x0, x1, _, t = batch
    assert assert_reduces_to_fm("my_meanflow", model=model, x0=x0, x1=x1, t=t) > 0


@checks
@given(batches())
def test_is_the_meanflow_paper_loss(batch):
    model, x0, x1, r, t = batch
    assert_equivalent("my_meanflow", "mf", model=model, x0=x0, x1=x1, r=r, t=t, up_to_constant=False)


def test_exact_average_velocity_is_stationary_on_ring8():
    assert_stationary("my_meanflow", "ring8")


@settings(max_examples=3, deadline=None)
@given(mixtures(d=__import__("hypothesis").strategies.integers(1, 2)))
def test_exact_average_velocity_is_stationary_on_random_mixtures(mixture):
    assert_stationary("my_meanflow", mixture, n_points=2)
