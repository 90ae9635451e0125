"""Relatives of MeanFlow (docs/MATH.md §9), registered as an outside package would:
through the package's own entry points in the group ``mfverify.objectives``
(``pyproject.toml``), each an ``Objective`` declaring its properties.

Conventions as everywhere: ``x_t = (1 - t) x0 + t x1``, ``v_c = x1 - x0``,
``U = u_theta(x_t, r, t)``, ``D[a] = J_x u_theta . a + d_t u_theta`` at ``(x_t, r, t)``.
Every relative trains the diagonal ``r = t`` by flow matching.

- ``split_mf`` (SplitMeanFlow, Guo et al. 2025, arXiv 2507.16884): for ``r < t``,
  ``lambda ~ U(0, 1)``, ``s = (1 - lambda) t + lambda r``, ``y = x_t - (t - s) u_theta(x_t, s, t)``,
  ``|U - sg[lambda u_theta(x_t, s, t) + (1 - lambda) u_theta(y, r, s)]|^2``: the
  interval-splitting identity ``(t - r) u(r, t) = (t - s) u(s, t) + (s - r) u(r, s)``,
  no JVP. ``lam`` fixes lambda (``lam = 0.5`` is ``shortcut``); by default it is drawn
  per sample from torch's global generator (so ``--ensemble`` trains its seeds one by
  one: members sharing one stream would not draw what their solo runs draw).
- ``modular_mf(lam)``: ``|U + (t - r) [lam D[v_c] + (1 - lam) sg(D[v_c])] - v_c|^2``;
  ``lam = 0`` is ``mf``, ``lam = 1`` is ``mf_nosg`` (the gradient through the tangent).
- ``mf_cv(beta)``: ``mf`` with the tangent ``a = beta v_c + (1 - beta) sg(u_theta(x_t, t, t))``:
  ``|U + (t - r) sg(D[a]) - v_c|^2``; ``beta = 1`` is ``mf``, ``beta = 0`` is ``mf_sg``.
  At ``u*`` the conditional mean of ``D[a]`` is ``D[v]`` for every ``beta`` (``E[v_c | x_t] = v``),
  so ``u*`` is stationary for every beta; beta trades the target's variance.
- ``alpha_flow(alpha)`` (alpha-Flow, Zhang et al. 2025, arXiv 2510.20771): for ``r < t``,
  ``s = t - alpha (t - r)``, ``y = x_t - alpha (t - r) v_c``, target
  ``sg{[alpha (t - r) v_c + (s - r) u_theta(y, r, s)] / (t - r)} = sg{alpha v_c + (1 - alpha) u_theta(y, r, s)}``;
  ``alpha = 1`` regresses ``U`` on ``v_c`` (optimum ``v(x_t, t)``, not ``u``); as
  ``alpha -> 0`` the loss value is ``alpha^2`` times ``mf``'s and its gradient
  ``alpha`` times (the target moves with alpha, the stop-gradient keeps it fixed).
  The paper's curriculum (``curriculum = "sigmoid"``): alpha falls smoothly from 1
  (trajectory flow matching) to the option ``alpha`` (near MeanFlow) between the
  fractions ``curriculum_from`` and ``curriculum_to`` of training, by a sigmoid ramp
  (``alpha_schedule``); ``"none"`` keeps ``alpha`` fixed. ``inverse_alpha = true`` weights
  the ``r < t`` rows by ``1 / alpha``, so that their gradient tends to ``mf``'s (not to 0)
  as alpha falls.
- ``imf`` (improved MeanFlow, Geng et al. 2025, arXiv 2512.02012): a model with two
  heads, ``u_theta(x, r, t)`` and ``v_theta(x, t) = model.velocity(x, t)``;
  ``|U + (t - r) sg(D[sg v_theta(x_t, t)]) - v_c|^2 + |v_theta(x_t, t) - v_c|^2``: the
  tangent is the network's own instantaneous velocity (no label noise in it), trained
  by flow matching on its own head. With the tied head ``v_theta = u_theta(., t, t)``
  (a one-head ``MeanFlowMLP``) it is ``mf_sg`` plus ``fm``.
"""

from __future__ import annotations

import torch

from mfverify.jvp import DEFAULT_BACKEND, jvp
from mfverify.objectives.core import Objective, _check_jvp, _col, _on_path, _sq


def _fm_rows(loss, model, x_t, v_c, r, t):
    """``loss`` where ``r < t``; flow matching where ``r = t``."""
    diag = r == t
    if not diag.any():
        return loss
    return torch.where(diag, _sq(model(x_t, t, t) - v_c), loss)


def _between(r, s, t):
    """The split point ``s`` clamped into ``[r, t]``: computed as ``(1 - lam) t + lam r`` (or ``r + lam (t - r)``)
    it may round one ulp past either end, and at ``r = t`` it must be ``t`` exactly (``u(y, r, s)`` needs
    ``r <= s``)."""
    return torch.minimum(torch.maximum(s, r), t)


def _split_mf(model, x_t, v_c, r, t, backend, lam=None):
    """SplitMeanFlow: ``|U - sg[lam u(x_t, s, t) + (1 - lam) u(y, r, s)]|^2``, ``s = (1 - lam) t + lam r``,
    ``y = x_t - (t - s) u(x_t, s, t)``, ``lam ~ U(0, 1)`` unless fixed; fm at ``r = t``."""
    if lam is None:
        lam = torch.rand(t.shape, device=t.device, dtype=t.dtype)
    else:
        lam = torch.full_like(t, lam)
    s = _between(r, (1 - lam) * t + lam * r, t)
    with torch.no_grad():
        u_st = model(x_t, s, t)
        y = x_t - _col(t - s) * u_st
        target = _col(lam) * u_st + _col(1 - lam) * model(y, r, s)
    return _fm_rows(_sq(model(x_t, r, t) - target), model, x_t, v_c, r, t)


def _modular_mf(model, x_t, v_c, r, t, backend, lam=0.5):
    """``|U + (t - r) [lam D[v_c] + (1 - lam) sg(D[v_c])] - v_c|^2``: ``mf`` (0) to ``mf_nosg`` (1)."""
    zero, one = torch.zeros_like(r), torch.ones_like(t)
    U, D = jvp(model, x_t, r, t, v_c, zero, one, backend, tangent_grad=lam != 0)
    mixed = lam * D + (1 - lam) * D.detach() if lam != 0 else D.detach()
    return _sq(U + _col(t - r) * mixed - v_c)


def _mf_cv(model, x_t, v_c, r, t, backend, beta=0.5):
    """``mf`` with the tangent ``beta v_c + (1 - beta) sg(u(x_t, t, t))``: ``mf`` (1) to ``mf_sg`` (0)."""
    zero, one = torch.zeros_like(r), torch.ones_like(t)
    with torch.no_grad():
        a = beta * v_c + (1 - beta) * model(x_t, t, t) if beta != 1 else v_c
    U, D = jvp(model, x_t, r, t, a, zero, one, backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c)


def _alpha_flow(model, x_t, v_c, r, t, backend, alpha=0.5, curriculum="none", curriculum_from=0.0,
                curriculum_to=1.0, inverse_alpha=False):
    """alpha-Flow: ``|U - sg[alpha v_c + (1 - alpha) u(x_t - alpha (t - r) v_c, r, t - alpha (t - r))]|^2``;
    fm at ``r = t``."""
    s = _between(r, t - alpha * (t - r), t)
    with torch.no_grad():
        y = x_t - _col(alpha * (t - r)) * v_c
        target = alpha * v_c + (1 - alpha) * model(y, r, s) if alpha != 1 else v_c
    loss = _sq(model(x_t, r, t) - target)
    if inverse_alpha:  # the off-diagonal rows weighted 1 / alpha: their gradient tends to mf's as alpha -> 0
        loss = loss / alpha
    return _fm_rows(loss, model, x_t, v_c, r, t)


def _imf(model, x_t, v_c, r, t, backend):
    """improved MeanFlow: ``|U + (t - r) sg(D[sg v_theta(x_t, t)]) - v_c|^2 + |v_theta(x_t, t) - v_c|^2``,
    ``v_theta = model.velocity`` (the second head)."""
    if not hasattr(model, "velocity"):
        raise TypeError("objective 'imf' needs a model with a second head, model.velocity(x, t) -> v_theta "
                        "(MeanFlowMLP(..., heads=2)); this model has none")
    v = model.velocity(x_t, t)
    U, D = jvp(model, x_t, r, t, v.detach(), torch.zeros_like(r), torch.ones_like(t), backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c) + _sq(v - v_c)


def alpha_schedule(step: int, steps: int, end: float, start_frac: float, end_frac: float) -> float:
    """alpha-Flow's curriculum: 1 until ``start_frac`` of ``steps``, ``end`` from ``end_frac`` on, and in
    between ``1 - (1 - end) ramp(s)``, ``ramp`` a sigmoid ``sig(12 (s - 1/2))`` rescaled to run exactly
    from 0 to 1 as ``s = (step / steps - start_frac) / (end_frac - start_frac)`` runs from 0 to 1."""
    import math

    s = (step / steps - start_frac) / (end_frac - start_frac)
    if s <= 0:
        return 1.0
    if s >= 1:
        return float(end)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    ramp = (sig(12 * (s - 0.5)) - sig(-6)) / (sig(6) - sig(-6))
    return 1 - (1 - end) * ramp


def _alpha_curriculum(step, steps, options):
    if options["curriculum"] == "none":
        return {}
    alpha = alpha_schedule(step, steps, options["alpha"], options["curriculum_from"], options["curriculum_to"])
    return {"alpha": alpha}


def _check_alpha(options):
    _in_unit("alpha_flow", "alpha", low_open=True)(options)
    if options["curriculum"] not in ("none", "sigmoid"):
        raise ValueError(f"objective 'alpha_flow': curriculum must be 'none' or 'sigmoid', got {options['curriculum']!r}")
    a, b = options["curriculum_from"], options["curriculum_to"]
    if not 0 <= a < b <= 1:
        raise ValueError(f"objective 'alpha_flow': need 0 <= curriculum_from < curriculum_to <= 1, got {a!r}, {b!r}")


def _lsd(model, x_t, v_c, r, t, backend):
    """Lagrangian self-distillation: ``|d_r X_{t->r}(x_t) - sg(u(X_{t->r}(x_t), r, r))|^2``,
    ``X_{t->r}(x) = x - (t - r) u(x, r, t)``, so ``d_r X = U - (t - r) d_r U``; fm at ``r = t``."""
    zero = torch.zeros_like(t)
    U, dU_dr = jvp(model, x_t, r, t, torch.zeros_like(x_t), torch.ones_like(r), zero, backend)
    with torch.no_grad():
        end = x_t - _col(t - r) * U
        target = model(end, r, r)
    return _fm_rows(_sq(U - _col(t - r) * dU_dr - target), model, x_t, v_c, r, t)


def _esd(model, x_t, v_c, r, t, backend):
    """Eulerian self-distillation: ``|d_t X_{t->r}(x_t) + J_x X_{t->r} . w|^2``, ``w = sg(u(x_t, t, t))``,
    which is ``|U + (t - r) D[w] - w|^2`` (gradients through ``U`` and ``D``); fm at ``r = t``."""
    with torch.no_grad():
        w = model(x_t, t, t)
    U, D = jvp(model, x_t, r, t, w, torch.zeros_like(r), torch.ones_like(t), backend)
    return _fm_rows(_sq(U + _col(t - r) * D - w), model, x_t, v_c, r, t)


def _psd(model, x_t, v_c, r, t, backend, split="uniform"):
    """Progressive self-distillation: ``|X_{t->r}(x_t) - sg(X_{s->r}(X_{t->s}(x_t)))|^2 / (t - r)^2``,
    ``s`` uniform on ``[r, t]`` (``split = "uniform"``) or the midpoint; fm at ``r = t``."""
    if split == "uniform":
        lam = torch.rand(t.shape, device=t.device, dtype=t.dtype)
    else:
        lam = torch.full_like(t, 0.5)
    s = _between(r, r + lam * (t - r), t)
    with torch.no_grad():
        y = x_t - _col(t - s) * model(x_t, s, t)  # X_{t->s}(x_t)
        two_step = y - _col(s - r) * model(y, r, s)  # X_{s->r}(y)
        # |X_{t->r} - two_step| / (t - r) = |U - (x_t - two_step) / (t - r)|, written without dividing
        # by t - r where r = t (those rows are flow matching)
        gap = torch.where(r < t, t - r, torch.ones_like(t))
        target = (x_t - two_step) / _col(gap)
    return _fm_rows(_sq(model(x_t, r, t) - target), model, x_t, v_c, r, t)


def _check_split(options):
    _check_jvp(options)
    if options["split"] not in ("uniform", "midpoint"):
        raise ValueError(f"objective 'psd': split must be 'uniform' or 'midpoint', got {options['split']!r}")


def _in_unit(name, key, low_open=False):
    def check(options):
        _check_jvp(options)
        value = options[key]
        if value is None:
            return
        ok = (0 < value <= 1) if low_open else (0 <= value <= 1)
        if not ok:
            bounds = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(f"objective {name!r}: {key} must lie in {bounds}, got {value!r}")

    return check


def _relative(name, inner, options=None, check=_check_jvp, **properties):
    inner.__name__ = name
    return Objective(name=name, loss=_on_path(inner), options={"jvp": DEFAULT_BACKEND, **(options or {})},
                     check_options=check, weighting=True, **properties)


# the eps-derivative along u* + eps h (p = 0): split_mf's and alpha_flow's targets carry no
# gradient, so it is 2 R . h with R affine in v_c (split_mf: free of v_c off the diagonal)
# or not polynomial in v_c (alpha_flow: u_theta(x_t - alpha (t - r) v_c, ...)) but at alpha = 1;
# modular_mf: dR = h + lam (t - r) D_h[v_c], quadratic; mf_cv: R affine in v_c, dR = h
split_mf = _relative("split_mf", _split_mf, {"lam": None}, _in_unit("split_mf", "lam"), quadratic_in_v_c=True)
modular_mf = _relative("modular_mf", _modular_mf, {"lam": 0.5}, _in_unit("modular_mf", "lam"), quadratic_in_v_c=True)
mf_cv = _relative("mf_cv", _mf_cv, {"beta": 0.5}, quadratic_in_v_c=True)  # any real beta
alpha_flow = _relative("alpha_flow", _alpha_flow, {"alpha": 0.5, "curriculum": "none", "curriculum_from": 0.0,
                                                  "curriculum_to": 1.0, "inverse_alpha": False},
                       _check_alpha, quadratic_in_v_c=lambda o: o["alpha"] == 1.0 and o["curriculum"] == "none",
                       schedule=_alpha_curriculum)
# imf: dR = h (u head) and h_v (v head), R affine in v_c: linear in v_c
imf = _relative("imf", _imf, quadratic_in_v_c=True, heads=2)
# the self-distillation losses hold no v_c off the diagonal: at u* their residual is zero pointwise
lsd = _relative("lsd", _lsd, quadratic_in_v_c=True)
esd = _relative("esd", _esd, quadratic_in_v_c=True)
psd = _relative("psd", _psd, {"split": "uniform"}, _check_split, quadratic_in_v_c=True)

RELATIVES = ("split_mf", "modular_mf", "mf_cv", "alpha_flow", "imf", "lsd", "esd", "psd")


# ------------------------------------------------------------ mf_cv's optimal coefficient


def _cv_terms(mixture, x, r, t, v_hat=None, jacobian=None):
    """Per point ``(tr Sigma, tr(A Sigma), tr(A Sigma A^T), |A (v_hat - v)|^2)``, ``A = (t - r) J_x u*``."""
    from mfverify import truth

    x = torch.as_tensor(x, dtype=torch.float64)
    n = x.shape[0]
    r, t = (torch.as_tensor(a, dtype=torch.float64).expand(n) for a in (r, t))
    J = truth.average_velocity_jacobian(mixture, x, r, t) if jacobian is None else jacobian
    mean, cov = truth.conditional_moments(mixture, x, t)
    A = (t - r)[:, None, None] * J
    tr_s = cov.diagonal(dim1=1, dim2=2).sum(-1)
    tr_as = torch.einsum("nab,nba->n", A, cov)
    tr_asa = torch.einsum("nab,nbc,nac->n", A, cov, A)
    bias = torch.zeros_like(tr_s) if v_hat is None else torch.einsum("nab,nb->na", A, v_hat - mean).square().sum(-1)
    return tr_s, tr_as, tr_asa, bias


def cv_target_error(mixture, x, r, t, betas, v_hat=None, jacobian=None) -> torch.Tensor:
    """``E[|T_beta - T*|^2 | x_t = x]`` (n, len(betas)): the mean-square error of ``mf_cv``'s
    regression target about the ideal ``T* = v - (t - r) D*[v]``, at the exact ``J_x u*``.

    The tangent is ``a = beta v_c + (1 - beta) v_hat``, ``v_hat`` the model's diagonal
    ``u_theta(x_t, t, t)`` (default: exact, ``v``). With ``A = (t - r) J_x u*`` and
    ``Sigma = Cov(v_c | x_t)`` (closed form), the error is
    ``tr Sigma - 2 beta tr(A Sigma) + beta^2 tr(A Sigma A^T) + (1 - beta)^2 |A (v_hat - v)|^2``
    (the cross term vanishes: ``v_hat`` is fixed given ``x_t``): ``v_c`` as an unbiased
    but noisy control variate against the model's biased but noiseless ``v_hat``. At the
    exact u it is the target's variance: ``beta = 1`` is ``mf``'s amplified noise
    ``tr(M Sigma M^T)``, ``beta = 0`` that of ``mf_sg``, ``imf`` and ``mf_full`` (``tr Sigma``).
    """
    tr_s, tr_as, tr_asa, bias = _cv_terms(mixture, x, r, t, v_hat, jacobian)
    b = torch.as_tensor(betas, dtype=torch.float64).reshape(1, -1)
    return tr_s[:, None] - 2 * b * tr_as[:, None] + b**2 * tr_asa[:, None] + (1 - b) ** 2 * bias[:, None]


def optimal_cv_beta(mixture, x, r, t, v_hat=None, jacobian=None) -> dict:
    """The coefficient minimising ``E |T_beta - T*|^2`` over the points (a sample of the
    training law of ``(x_t, r, t)``); the error is quadratic in beta, so
    ``beta* = (E tr(A Sigma) + E b) / (E tr(A Sigma A^T) + E b)``, ``b = |A (v_hat - v)|^2``
    (``cv_target_error``). At the exact u (``v_hat = v``) it is the variance-optimal
    ``E tr(A Sigma) / E tr(A Sigma A^T)``; as the model's ``v_hat`` worsens it tends to 1
    (``mf``). Returns ``beta`` and the mean errors at 0, ``beta*`` and 1."""
    tr_s, tr_as, tr_asa, bias = _cv_terms(mixture, x, r, t, v_hat, jacobian)
    beta = float((tr_as.mean() + bias.mean()) / (tr_asa.mean() + bias.mean()))
    err = lambda b: float((tr_s - 2 * b * tr_as + b * b * tr_asa + (1 - b) ** 2 * bias).mean())  # noqa: E731
    return {"beta": beta, "error_beta0": err(0.0), "error_beta_opt": err(beta), "error_beta1": err(1.0)}
