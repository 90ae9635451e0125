"""Oracle objectives (docs/MATH.md §8): each replaces one noisy part of a MeanFlow target by
the exact truth of a known mixture, so that the one-step error can be attributed.

Each takes the exact mixture as ``mixture=`` (``Objective.needs_truth``; ``mfverify.train``
passes the case's). The truth is computed in float64 on the CPU for every batch (the
closed-form ``v``; ``u*`` by the compiled ODE kernel), then cast to the batch's dtype and
device; it carries no gradient.

- ``fm_oracle``: ``|u_theta(x_t, t, t) - v(x_t, t)|^2`` (fm without label noise);
- ``mf_vtan``: ``|U + (t - r) sg(D[v(x_t, t)]) - v_c|^2`` (mf with the exact tangent: its
  target noise is ``v_c - v``, ``mf_full``'s, not ``M (v_c - v)``);
- ``mf_oracle``: ``|U + (t - r) sg(D[v(x_t, t)]) - v(x_t, t)|^2`` (no noise at all: what is
  left is the stop-gradient dynamics, optimisation and capacity);
- ``u_regress``: ``|U - u*(x_t, r, t)|^2`` (regression on the exact average velocity: the
  floor of this network at this budget).

At ``u*`` each is stationary (``u_regress`` and ``mf_oracle`` pointwise, ``mf_vtan`` and
``fm_oracle`` in conditional mean), and each is at most affine in ``v_c``: quadratic.
"""

from __future__ import annotations

import torch

from mfverify.jvp import DEFAULT_BACKEND, jvp
from mfverify.objectives.core import Objective, _check_jvp, _col, _on_path, _sq


def _need(mixture, name):
    if mixture is None:
        raise TypeError(f"objective {name!r} needs the exact mixture: call it with mixture=... "
                        "(mfverify.train passes the case's)")
    return mixture


def _exact_v(mixture, x_t, t):
    from mfverify import truth

    v = truth.velocity(mixture, x_t.detach().double().cpu(), t.detach().double().cpu())
    return v.to(device=x_t.device, dtype=x_t.dtype)


def _fm_oracle(model, x_t, v_c, r, t, backend, mixture=None):
    """``|u_theta(x_t, t, t) - v(x_t, t)|^2``."""
    return _sq(model(x_t, t, t) - _exact_v(_need(mixture, "fm_oracle"), x_t, t))


def _mf_with_tangent(model, x_t, target, tangent, r, t, backend):
    U, D = jvp(model, x_t, r, t, tangent, torch.zeros_like(r), torch.ones_like(t), backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - target)


def _mf_vtan(model, x_t, v_c, r, t, backend, mixture=None):
    """``|U + (t - r) sg(D[v(x_t, t)]) - v_c|^2``."""
    v = _exact_v(_need(mixture, "mf_vtan"), x_t, t)
    return _mf_with_tangent(model, x_t, v_c, v, r, t, backend)


def _mf_oracle(model, x_t, v_c, r, t, backend, mixture=None):
    """``|U + (t - r) sg(D[v(x_t, t)]) - v(x_t, t)|^2``."""
    v = _exact_v(_need(mixture, "mf_oracle"), x_t, t)
    return _mf_with_tangent(model, x_t, v, v, r, t, backend)


def _u_regress(model, x_t, v_c, r, t, backend, mixture=None):
    """``|U - u*(x_t, r, t)|^2``."""
    from mfverify import truth

    mixture = _need(mixture, "u_regress")
    u = truth.average_velocity(mixture, x_t.detach().double().cpu(), r.detach().double().cpu(),
                               t.detach().double().cpu()).to(device=x_t.device, dtype=x_t.dtype)
    return _sq(model(x_t, r, t) - u)


def _oracle(name, inner):
    inner.__name__ = name
    return Objective(name=name, loss=_on_path(inner), options={"jvp": DEFAULT_BACKEND}, check_options=_check_jvp,
                     weighting=True, needs_truth=True, quadratic_in_v_c=True)


fm_oracle = _oracle("fm_oracle", _fm_oracle)
mf_vtan = _oracle("mf_vtan", _mf_vtan)
mf_oracle = _oracle("mf_oracle", _mf_oracle)
u_regress = _oracle("u_regress", _u_regress)

ORACLES = ("fm_oracle", "mf_vtan", "mf_oracle", "u_regress")
