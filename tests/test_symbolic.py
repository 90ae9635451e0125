"""MATH.md §2 and §4 derived symbolically: every residual simplifies to 0."""

import pytest
import sympy as sp

from mfverify.theory import symbolic


def test_meanflow_identity_follows_from_the_definition_of_u():
    assert sp.simplify(symbolic.meanflow_identity_residual()) == 0


@pytest.mark.parametrize("d", [1, 2, 3])
def test_scm_gradient_is_half_t_times_mf_gradient_symbolically(d):
    assert all(sp.simplify(res) == 0 for res in symbolic.scm_gradient_residual(d))


def test_stationarity_of_the_sg_loss_is_a_conserved_bracket_that_vanishes_at_t_eq_r():
    first, at_t_eq_r = symbolic.stationarity_residual()
    assert sp.simplify(first) == 0
    assert sp.simplify(at_t_eq_r) == 0


def test_gaussian_flow_map_solves_the_ode_and_its_u_satisfies_the_identity():
    solves_ode, identity = symbolic.gaussian_flow_residuals()
    assert sp.simplify(solves_ode) == 0
    assert sp.simplify(identity) == 0


def test_mf_nosg_adds_a_u_dependent_extra_term():
    residual, d_extra_dJ, extra_at_r_eq_t = symbolic.nosg_extra_term_residual(2)
    assert sp.simplify(residual) == 0
    # the extra term depends on J_x u when r != t ...
    assert any(sp.simplify(entry) != 0 for entry in d_extra_dJ)
    t, r = sp.symbols("t r", real=True)
    S00, S11 = sp.symbols("S00 S11")
    assert sp.simplify(d_extra_dJ[0, 0].subs({sp.Symbol("J01"): 0, sp.Symbol("J00"): 0}) - 2 * (r - t) * S00) == 0
    # ... and is tr Sigma, free of u, at r = t
    assert sp.simplify(extra_at_r_eq_t - (S00 + S11)) == 0
