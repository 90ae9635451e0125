"""The linearised pseudo-gradient operator H (mfverify.theory.stability) against the closed-form
linearisations of docs/MATH.md §7: the generic computation (autograd inside, a central
difference outside, sigma points over v_c) must reproduce L for mf, mf_sg and shortcut."""

import math
import re

import pytest
import torch

from mfverify import truth
from mfverify.cases import get_case
from mfverify.theory.stability import FourierDirections, eigen_summary, pseudo_gradient_matrix, training_points


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
    from mfverify.theory.stability import stability

    s = stability("fm", "ring8", n_points=30, n_features=5, frac_r_eq_t=1.0, n_boot=10)
    assert s.min_real_normalised == pytest.approx(2.0, rel=1e-9) and s.asymmetry < 1e-12


# ------------------------------------------------ a network's own tangent features as directions


def test_network_directions_are_the_parameter_derivatives():
    from mfverify.nets import MeanFlowMLP
    from mfverify.theory.stability import NetworkDirections

    torch.manual_seed(0)
    net = MeanFlowMLP(2, width=8, depth=2)
    dirs = NetworkDirections(net, 3, seed=4)
    x, r, t = training_points(get_case("ring8"), 5, seed=1)
    h = dirs(x, r, t)
    eps = 1e-6
    plus, minus = (NetworkDirections(net, 3, seed=4) for _ in range(2))
    with torch.no_grad():
        for (name, p), (_, q) in zip(plus.net.named_parameters(), minus.net.named_parameters()):
            p.add_(eps * dirs.E[name][2])
            q.sub_(eps * dirs.E[name][2])
    fd = (plus.net(x, r, t) - minus.net(x, r, t)) / (2 * eps)
    # central difference: O(eps^2) truncation, float64 round-off ~1e-16 / eps = 1e-10
    assert torch.allclose(h[:, 2], fd, rtol=0, atol=1e-8), (h[:, 2] - fd).abs().max()


def test_generic_H_on_network_directions_equals_mf_closed_form():
    # mf (p = 0): L h = 2 (h + (t - r) D_v h), D_v h = J_x h . v + d_t h, here by forward mode
    # through the network's tangent features themselves
    from mfverify.nets import MeanFlowMLP
    from mfverify.theory.stability import NetworkDirections

    torch.manual_seed(1)
    mixture = get_case("ring8")
    dirs = NetworkDirections(MeanFlowMLP(2, width=8, depth=2), 4, seed=2)
    x, r, t = training_points(mixture, 10, frac_r_eq_t=0.25, seed=3)
    C = pseudo_gradient_matrix("mf", mixture, dirs, x, r, t, p=0.0)
    v = truth.velocity(mixture, x, t)
    h, dh = torch.func.jvp(dirs, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    ref = 2 * torch.einsum("nid,njd->nij", h, h + (t - r)[:, None, None] * dh)
    # H is linear in u for mf: the central difference is exact up to round-off
    assert torch.allclose(C, ref, rtol=0, atol=1e-8 * float(ref.abs().max())), (C - ref).abs().max()


def test_network_directions_refuse_a_mismatched_case():
    from mfverify.nets import MeanFlowMLP
    from mfverify.theory.stability import NetworkDirections, stability

    with pytest.raises(ValueError, match="dimension 3"):
        stability("mf", "ring8", n_points=4, directions=NetworkDirections(MeanFlowMLP(3, width=4, depth=1), 2))
    with pytest.raises(ValueError, match="n_features"):
        NetworkDirections(MeanFlowMLP(2, width=4, depth=1), 0)


# ------------------------------------------------ MATH.md §7's formula for the symmetric part


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_law_quadrature_integrates_the_law(kind):
    from mfverify.theory.stability import law_density, law_quadrature

    (td, wd), (rp, tp, wp) = law_quadrature(kind, -0.4, 1.0, 48)
    # int q = 1 and int int_{r<t} q(r) q(t) = 1/2 (an exchangeable pair); the logit-normal rule
    # is cut at 9 standard deviations (mass outside ~2e-19) and is Gauss-Legendre on a Gaussian
    assert float(wd.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(wp.sum()) == pytest.approx(0.5, abs=1e-12)
    assert bool((rp <= tp).all())
    # and its mean: E t = E over one draw, E[r] + E[t] = 2 E[one draw]
    assert float((wp * (rp + tp)).sum()) == pytest.approx(float((wd * td).sum()), abs=1e-10)
    t = torch.tensor([0.05, 0.3, 0.7], dtype=torch.float64)
    q, dlogq = law_density(kind, -0.4, 1.0, t)
    h = 1e-6
    log_q = lambda s: torch.log(law_density(kind, -0.4, 1.0, s)[0])  # noqa: E731
    fd = (log_q(t + h) - log_q(t - h)) / (2 * h)
    # central difference: truncation h^2/6 |d^3 log q| <= 1e-8 here (|d^3 log q| = 5e4 at t = 0.05),
    # round-off 1e-16 |log q| / h ~ 1e-10
    assert torch.allclose(dlogq, fd, rtol=1e-7, atol=1e-7)


def test_mixture_quadrature_has_the_moments_of_p_t():
    from mfverify.theory.stability import mixture_quadrature

    mixture = get_case("ring8")
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    x, w = mixture_quadrature(mixture, t, 6)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    mu, cov, pi = mixture.means.double(), mixture.covs.double(), mixture.weights.double()
    for i, s in enumerate(t.tolist()):
        mean = (1 - s) * (pi[:, None] * mu).sum(0)
        second = (pi[:, None, None] * ((1 - s) ** 2 * (cov + mu[:, :, None] * mu[:, None, :])
                                       + s**2 * torch.eye(2, dtype=torch.float64))).sum(0)
        # Gauss-Hermite with 6 nodes is exact for polynomials of degree <= 11
        assert torch.allclose((w[:, None] * x[i]).sum(0), mean, atol=1e-13)
        assert torch.allclose(torch.einsum("n,na,nb->ab", w, x[i], x[i]), second, atol=1e-13)


@pytest.mark.parametrize("kind, frac, n_t, n_gh", [("uniform", 0.5, 16, 12), ("logit_normal", 0.0, 48, 8)])
def test_math_7_formula_is_the_symmetric_part_of_mf_H(kind, frac, n_t, n_gh):
    # Two quadratures of the same nodes: E_mu[h_i . L h_j] with mf's closed-form L (tied to the
    # loss by test_generic_H_equals_the_closed_form_linearisation) and §7's formula, which
    # uses only m(r, t) = E_{p_t}|w|^2 and the law's density. They agree to the quadrature's
    # error (measured with more nodes: 9e-7 uniform, 2e-5 logit-normal at these sizes).
    from mfverify.theory.stability import symmetric_part_check

    c = symmetric_part_check(get_case("ring8"), FourierDirections(2, 4, seed=1), kind, -0.4, 1.0, frac, n_t=n_t,
                             n_gh=n_gh)
    assert c.relative_difference < 1e-4, c
    assert c.min_eig_normalised > 0
    if kind == "uniform":
        assert c.weight_min == 1.0 and c.mass_condition_fails == 0.0
    else:  # MATH.md §7: logit-normal(-0.4, 1) breaks the sufficient condition at small t
        assert c.weight_min < 0 and 0 < c.mass_condition_fails < 1e-3


def test_a_wrong_formula_would_be_caught():
    # the same check with the boundary term at t = 1 left out (a plausible slip) must disagree
    from mfverify.theory import stability

    mixture, dirs = get_case("ring8"), FourierDirections(2, 4, seed=1)
    good = stability.symmetric_part_check(mixture, dirs, "uniform", frac_r_eq_t=0.0, n_t=16, n_gh=12)
    original = stability._gauss_legendre
    calls = []

    def no_boundary(n, a, b):
        z, w = original(n, a, b)
        calls.append(1)
        return z, (w * 0 if len(calls) == 3 else w)  # the third rule built is the boundary's

    stability._gauss_legendre = no_boundary
    try:
        bad = stability.symmetric_part_check(mixture, dirs, "uniform", frac_r_eq_t=0.0, n_t=16, n_gh=12)
    finally:
        stability._gauss_legendre = original
    assert good.relative_difference < 1e-4 and bad.relative_difference > 1e-2, (good, bad)


def test_cli_refuses_a_bad_network_checkpoint(tmp_path, capsys):
    from mfverify.theory.stability import main

    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_text("garbage")
    assert main(["--network", str(bad), "--points", "4", "--features", "2"]) == 2
    assert "not a readable mfverify checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, pattern", [
    (["--points", "0"], "n_points must be a positive int, got 0"),
    (["--points", "-5"], "n_points must be a positive int, got -5"),
    (["--scale-x", "nan"], "scale_x must be a finite number > 0, got nan"),
    (["--boot", "0"], "n_boot must be a positive int, got 0"),
    (["--frac-r-eq-t", "1.5"], r"frac_r_eq_t must lie in \[0, 1\]"),
    (["--points", "3", "--features", "200"], "under-sampled: --points 3 in d = 2 cannot estimate 200 directions"),
    (["--objectives", "mf,nosuch"], "unknown objective 'nosuch'"),
    (["--case", "ring9"], "unknown case 'ring9'"),
])
def test_cli_refuses_bad_arguments_before_any_work(argv, pattern, capsys):
    from mfverify.theory.stability import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert re.search(pattern, captured.err), captured.err
    assert captured.out == ""  # not even the table's header: nothing was computed


def test_cli_refuses_an_empty_network_file(tmp_path, capsys):
    from mfverify.theory.stability import main

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["--network", str(empty), "--points", "4", "--features", "2"]) == 2
    assert "not a readable mfverify checkpoint" in capsys.readouterr().err


def test_an_ill_conditioned_gram_matrix_is_flagged_not_printed_as_a_plain_number(monkeypatch, capsys):
    """G = [[1, 1], [1, 1]] is singular: G^-1 H is not computed (NaN), the summary says so; the
    command line marks such a row and warns (here forced by a limit every estimate exceeds)."""
    from mfverify.theory import stability as module

    singular = eigen_summary(torch.eye(2).expand(3, 2, 2).clone(), torch.ones(3, 2, 2), n_boot=5)
    assert singular.ill_conditioned and math.isnan(singular.min_real_normalised)
    assert singular.min_real == 1.0  # H's own spectrum is still exact
    fine = eigen_summary(torch.eye(2).expand(3, 2, 2).clone(), torch.eye(2).expand(3, 2, 2).clone(), n_boot=5)
    assert not fine.ill_conditioned and fine.min_real_normalised == 1.0
    monkeypatch.setattr(module, "GRAM_CONDITION_LIMIT", 1.0)
    assert module.main(["--objectives", "fm", "--points", "8", "--features", "4", "--boot", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("ill-conditioned G") == 2  # both time laws
    assert "warning: the Gram matrix G is near singular" in captured.err
