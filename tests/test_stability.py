"""The linearised pseudo-gradient operator H (mfverify.stability) against the closed-form
linearisations of docs/MATH.md §7: the generic computation (autograd inside, a central
difference outside, sigma points over v_c) must reproduce L for mf, mf_sg and shortcut."""

import pytest
import torch

from mfverify import truth
from mfverify.cases import get_case
from mfverify.stability import FourierDirections, eigen_summary, pseudo_gradient_matrix, training_points


def _closed_form(objective, mixture, dirs, x, r, t):
    """``C[n, i, j] = h_i . L h_j`` at each point from MATH.md §7's formulas."""
    same = (dirs.axis[:, None] == dirs.axis[None, :]).double()
    H = lambda x_, r_, t_: dirs(x_, r_, t_)  # (n, P, d)  # noqa: E731
    h = H(x, r, t)
    lw = h.clone()  # L w / 2 for the r = t rows and the identity part
    gap = (t - r)[:, None, None]
    if objective in ("mf", "mf_sg"):
        v = truth.velocity(mixture, x, t)
        cos, msin = dirs.derivatives(x, r, t)
        dv = (msin * (v @ dirs.omega.T + dirs.beta))[:, :, None] * dirs.select  # D_v h_j
        extra = dv
        if objective == "mf_sg":
            J = truth.average_velocity_jacobian(mixture, x, r, t)
            extra = extra + torch.einsum("nab,npb->npa", J, H(x, t, t))
        lw = lw + gap * extra
    else:  # shortcut, r < t rows; r = t rows are flow matching (L w = 2 w)
        s = 0.5 * (r + t)
        y = x - (t - s)[:, None] * truth.average_velocity(mixture, x, s, t)
        J = truth.average_velocity_jacobian(mixture, y, r, s)
        h_st = H(x, s, t)
        moved = h_st - (t - s)[:, None, None] * torch.einsum("nab,npb->npa", J, h_st)
        off = h - 0.5 * (moved + H(y, r, s))
        lw = torch.where((r < t)[:, None, None], off, h)
    del same
    return 2 * torch.einsum("nid,njd->nij", h, lw)


@pytest.mark.parametrize("objective", ["mf", "mf_sg", "shortcut"])
def test_generic_H_equals_the_closed_form_linearisation(objective):
    mixture = get_case("ring8")
    dirs = FourierDirections(2, 6, seed=1)
    x, r, t = training_points(mixture, 12, frac_r_eq_t=0.25, seed=2)
    C = pseudo_gradient_matrix(objective, mixture, dirs, x, r, t, p=0.0)
    ref = _closed_form(objective, mixture, dirs, x, r, t)
    # mf: H is linear in u (central difference exact), mf_sg quadratic (exact too), shortcut
    # O(delta^2) = 1e-8; the exact model's derivatives carry the ODE's ~1e-10
    assert torch.allclose(C, ref, rtol=0, atol=1e-7 * float(ref.abs().max())), (C - ref).abs().max()


def test_eigen_summary_reads_the_spectrum():
    # a known non-symmetric matrix as every point's contribution: eigenvalues 0.75 +- i sqrt(3.9375)
    A = torch.tensor([[1.0, 2.0], [-2.0, 0.5]], dtype=torch.float64)
    s = eigen_summary(A.expand(10, 2, 2).clone(), n_boot=20)
    assert s.min_real == pytest.approx(0.75, rel=1e-12) and s.interval == pytest.approx((0.75, 0.75), rel=1e-12)
    assert s.min_real_symmetric == pytest.approx(0.5, rel=1e-12) and s.asymmetry > 0


def test_a_non_quadratic_loss_is_refused():
    mixture = get_case("ring8")
    with pytest.raises(ValueError, match="not declared quadratic"):
        pseudo_gradient_matrix("alpha_flow", mixture, FourierDirections(2, 2), *training_points(mixture, 2))


def test_flow_matching_is_2_in_function_space_units():
    # fm's pseudo-gradient is 2 (u(x_t, t, t) - v_c): on a law with r = t only, L = 2 on every
    # row, so H = 2 G and G^-1 H = 2 I (with r < t rows fm trains u(., t, t), not h(x, r, t))
    from mfverify.stability import stability

    s = stability("fm", "ring8", n_points=30, n_features=5, frac_r_eq_t=1.0, n_boot=10)
    assert s.min_real_normalised == pytest.approx(2.0, rel=1e-9) and s.asymmetry < 1e-12
