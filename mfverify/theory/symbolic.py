"""Symbolic derivations (sympy) of the identities and claims of MATH.md §2 and §4.

Each function returns a residual that is zero exactly when the derivation holds;
``simplify`` of it must give 0. Stands alone: it imports nothing of ours.

- ``meanflow_identity_residual``: (a) the MeanFlow identity from the definition of u.
- ``scm_gradient_residual(d)``: (b) grad L_scm - (t/2) grad L_mf at r = 0, symbolic u,
  its partial derivatives and a parameter derivative, in d dimensions.
- ``stationarity_residual``: (c) from the sg loss's stationarity condition to
  d/dt[(t-r) u - (x_t - x_r)] = 0, and the constant fixed at t = r.
- ``gaussian_flow_residuals``: (d) the 1-D Gaussian flow map solves the ODE and its
  u satisfies the MeanFlow identity exactly.
- ``nosg_extra_term_residual(d)``: (e) mf_nosg's population loss = |R_bar|^2 + the
  extra term, which depends on u when r != t and vanishes at r = t.
"""

from __future__ import annotations

import sympy as sp

t, r = sp.symbols("t r", real=True)


def meanflow_identity_residual() -> sp.Expr:
    """(a) With ``(t - r) u(x_t, r, t) = x_t - x_r`` and ``dx_t/dt = v``:
    ``u - [v - (t - r) du/dt]`` along the flow."""
    X = sp.Function("X")(t)  # the trajectory x_t
    V = sp.Function("V")(t)  # the velocity along it, v(x_t, t)
    x_r = sp.Symbol("x_r")
    u = (X - x_r) / (t - r)  # the definition of the average velocity
    du_dt = sp.diff(u, t).subs(sp.Derivative(X, t), V)
    return sp.simplify(u - (V - (t - r) * du_dt))


def scm_gradient_residual(d: int = 1) -> list[sp.Expr]:
    """(b) ``d/d theta`` of L_scm minus ``t/2`` times that of L_mf, at r = 0, per coordinate of theta.

    ``u_i(y, t; theta)`` are undefined functions; ``D_i = sum_j d_j u_i v_j + d_t u_i``;
    the stop-gradients are fresh symbols while differentiating in ``theta``.
    """
    theta = sp.Symbol("theta")
    y = sp.symbols(f"y1:{d + 1}")  # the spatial argument, at x_t
    vc = sp.symbols(f"v1:{d + 1}")  # v_c = x1 - x0
    U = [sp.Function(f"u{i + 1}")(*y, t, theta) for i in range(d)]
    D = [sum(sp.diff(U[i], y[j]) * vc[j] for j in range(d)) + sp.diff(U[i], t) for i in range(d)]
    sgD = sp.symbols(f"sgD1:{d + 1}")  # sg(D[v_c])
    sgG = sp.symbols(f"sgG1:{d + 1}")  # sg(df/dt)
    L_mf = sum((U[i] + t * sgD[i] - vc[i]) ** 2 for i in range(d))  # r = 0
    f = [y[i] - t * U[i] for i in range(d)]  # f = x_t - t u(x_t, 0, t)
    L_scm = sum(f[i] * sgG[i] for i in range(d))
    back = {**{sgD[i]: D[i] for i in range(d)}, **{sgG[i]: vc[i] - U[i] - t * D[i] for i in range(d)}}
    g_mf = sp.diff(L_mf, theta).subs(back)
    g_scm = sp.diff(L_scm, theta).subs(back)
    return [sp.simplify(sp.expand(g_scm - t / 2 * g_mf))]


def stationarity_residual() -> tuple[sp.Expr, sp.Expr]:
    """(c) Stationarity of the sg loss in u, averaged over v_c given x_t, is
    ``d/dt[(t - r) u(x_t, r, t) - (x_t - x_r)] = 0``; at ``t = r`` the bracket is 0.

    Returns ``(stationarity - d/dt bracket, bracket at t = r)``.
    """
    X = sp.Function("X")(t)  # trajectory, dX/dt = V
    V = sp.Function("V")(t)
    u = sp.Function("u")  # u(x, t) at fixed r
    Uc, S, vc = sp.symbols("U S v_c")
    loss = (Uc + (t - r) * S - vc) ** 2  # S = sg(D[v_c])
    dloss_dU = sp.diff(loss, Uc)  # the gradient reaches u only through U
    # given x_t = X(t): E[v_c] = V and E[D[v_c]] = D[V] = u_x V + u_t (D is linear in v_c)
    u_at = u(X, t)
    # J_x u . V + d_t u: the chain rule's total derivative along a path with velocity V
    D_mean = sp.diff(u_at, t).subs(sp.Derivative(X, t), V)
    stationarity = sp.expand(dloss_dU.subs({Uc: u_at, S: D_mean, vc: V}) / 2)
    bracket = (t - r) * u_at - (X - sp.Function("X")(r))
    d_bracket = sp.diff(bracket, t).subs(sp.Derivative(X, t), V)
    first = sp.simplify(stationarity - d_bracket.doit())
    at_t_eq_r = sp.simplify(bracket.subs(t, r))
    return first, at_t_eq_r


def gaussian_flow_residuals() -> tuple[sp.Expr, sp.Expr]:
    """(d) 1-D ``N(mu, s2)``: ``d Phi / d r - v(Phi, r)`` and the MeanFlow identity of
    ``u = (x - Phi) / (t - r)``, both zero."""
    x, mu = sp.symbols("x mu", real=True)
    s2 = sp.Symbol("s2", positive=True)
    sig = lambda s: sp.sqrt((1 - s) ** 2 * s2 + s**2)  # noqa: E731
    v = lambda y, s: (s - (1 - s) * s2) / sig(s) ** 2 * (y - (1 - s) * mu) - mu  # noqa: E731
    phi = (1 - r) * mu + sig(r) / sig(t) * (x - (1 - t) * mu)
    solves_ode = sp.simplify(sp.diff(phi, r) - v(phi, r))
    u = (x - phi) / (t - r)
    identity = sp.simplify(u - (v(x, t) - (t - r) * (sp.diff(u, x) * v(x, t) + sp.diff(u, t))))
    return solves_ode, identity


def nosg_extra_term_residual(d: int = 2) -> tuple[sp.Expr, sp.Matrix, sp.Matrix]:
    """(e) ``E|R|^2`` for ``R = U + (t-r)(J v_c + u_t) - v_c``, ``v_c = m + xi``,
    ``E xi = 0``, ``E xi xi^T = Sigma``, minus ``|R_bar|^2 + tr[((t-r)J - I) Sigma ((t-r)J - I)^T]``.

    Returns ``(residual, d extra / d J, extra at r = t)``: the residual is 0, the
    derivative ``2 (t-r) ((t-r) J - I) Sigma`` is not (the minimiser is biased), and
    the extra term at ``r = t`` is ``tr Sigma``, independent of u.
    """
    J = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"J{i}{j}"))
    Sigma = sp.Matrix(d, d, lambda i, j: sp.Symbol(f"S{min(i, j)}{max(i, j)}"))
    U = sp.Matrix(sp.symbols(f"U0:{d}"))
    ut = sp.Matrix(sp.symbols(f"ut0:{d}"))
    m = sp.Matrix(sp.symbols(f"m0:{d}"))
    xi = sp.Matrix(sp.symbols(f"xi0:{d}"))
    vc = m + xi
    R = U + (t - r) * (J * vc + ut) - vc
    sq = sp.expand((R.T * R)[0])
    # expectation: a polynomial of degree 2 in xi; E[xi_i] = 0, E[xi_i xi_j] = Sigma_ij
    poly = sp.Poly(sq, *xi)
    expectation = 0
    for monom, coeff in poly.terms():
        idx = [i for i, k in enumerate(monom) for _ in range(k)]
        if len(idx) == 0:
            expectation += coeff
        elif len(idx) == 2:
            expectation += coeff * Sigma[idx[0], idx[1]]
    R_bar = U + (t - r) * (J * m + ut) - m
    A = (t - r) * J - sp.eye(d)
    extra = (A * Sigma * A.T).trace()
    residual = sp.simplify(sp.expand(expectation - (R_bar.T * R_bar)[0] - extra))
    d_extra_dJ = sp.Matrix(d, d, lambda i, j: sp.simplify(sp.diff(extra, J[i, j])))
    return residual, d_extra_dJ, sp.simplify(extra.subs(r, t))
