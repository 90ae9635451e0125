"""Exact ground truth for classifier-free guidance on a labelled mixture (docs/MATH.md §9).

A ``GaussianMixture`` with ``labels`` has, per class ``c``, its own law
``p0(x | c)`` (the class's components, weights renormalised), so both
``v(x, t | c)`` (the class's sub-mixture's velocity) and ``v(x, t)`` are closed
form, and so is the guided field

    v_w(x, t | c) = w v(x, t | c) + (1 - w) v(x, t).

It is not the velocity of any mixture, but its flow map and average velocity
are well defined: ``guided_average_velocity`` integrates

    dz/ds = v_w(x - (t - r) z, t - s (t - r) | c),   z(0) = 0,   u_w(x, r, t | c) = z(1)

(``ode.py``'s formulation) with the adaptive float64 DOP853 of ``solver.py``,
the points of each class in one batch. ``w = 1`` is the class's own flow,
``w = 0`` the unconditional one (tests check both against the mixtures' own
routes). At ``r = t`` the value is ``v_w`` itself.

Where the guided field comes from in training: MeanFlow's guided target
``v~ = w v_c + k u(x_t, t, t | c) + (1 - w - k) u(x_t, t, t | none)`` has the
fixed point ``u(., t, t | c) = v_{w / (1 - k)}`` (``effective_guidance``).
"""

from __future__ import annotations

import torch

from mfverify.cases import GaussianMixture, LowRankMixture
from mfverify.truth import ode, solver
from mfverify.truth.fields import velocity_raw
from mfverify.truth.inputs import DEFAULT_ATOL, DEFAULT_RTOL, _check_tolerance, prepare

__all__ = ["conditional_velocity", "guided_velocity", "guided_average_velocity", "guided_flow_map",
           "effective_guidance"]


def effective_guidance(w: float, k: float = 0.0) -> float:
    """The guidance scale ``w / (1 - k)`` that MeanFlow's training target with ``(w, k)`` learns."""
    if not k < 1:
        raise ValueError(f"the mixing scale k must be < 1, got {k!r}")
    return w / (1 - k)


def _labels(mixture, labels, n: int, device) -> torch.Tensor:
    if not isinstance(mixture, (GaussianMixture, LowRankMixture)) or mixture.labels is None:
        raise ValueError(f"guidance needs a labelled GaussianMixture or LowRankMixture (labels=...), got {mixture!r}")
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = torch.full((n,), labels, dtype=torch.int64)
    labels = torch.as_tensor(labels)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or labels.shape != (n,):
        raise ValueError(f"labels must be an int or an ({n},) integer tensor, got {tuple(labels.shape)} {labels.dtype}")
    labels = labels.to(device=device, dtype=torch.int64)
    bad = (labels < 0) | (labels >= mixture.n_classes)
    if bool(bad.any()):
        raise ValueError(f"labels must lie in [0, {mixture.n_classes}), found {int(labels[bad][0])}")
    return labels


def _check_w(w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not torch.isfinite(torch.tensor(float(w))):
        raise ValueError(f"w must be a finite float, got {w!r}")
    return float(w)


def _check_interval(interval):
    if interval is None:
        return None
    try:
        lo, hi = (float(a) for a in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (lo, hi) of times, got {interval!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"interval must satisfy 0 <= lo <= hi <= 1, got {interval!r}")
    return lo, hi


def _field(mixture, y, tau, labels, w, interval=None):
    """``v_w(y, tau | labels)`` for validated inputs, class by class; with ``interval = (lo, hi)``
    the scale is ``w`` where ``lo <= tau <= hi`` and 1 (the class's own field) elsewhere."""
    if interval is None:
        scale = torch.full_like(tau, w)
    else:
        scale = torch.where((tau >= interval[0]) & (tau <= interval[1]), w, 1.0)
    v = velocity_raw(mixture, y, tau)
    out = (1 - scale)[:, None] * v
    for c in labels.unique().tolist():
        rows = labels == c
        if bool((scale[rows] != 0).any()):
            out[rows] += scale[rows][:, None] * velocity_raw(mixture.class_mixture(c), y[rows], tau[rows])
    return out


def conditional_velocity(mixture, x, t, labels) -> torch.Tensor:
    """``v(x, t | c)`` (n, d): the velocity of the class's own sub-mixture, per row's label."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    labels = _labels(mixture, labels, x.shape[0], x.device)
    return _field(mixture, x, t, labels, 1.0)


def guided_velocity(mixture, x, t, labels, w, interval=None) -> torch.Tensor:
    """``v_w(x, t | c) = w v(x, t | c) + (1 - w) v(x, t)`` (n, d); with ``interval = (lo, hi)``
    guidance acts for ``lo <= t <= hi`` only (``v(x, t | c)`` elsewhere)."""
    x, t, _ = prepare(mixture, x, t, need_density=True)
    labels = _labels(mixture, labels, x.shape[0], x.device)
    return _field(mixture, x, t, labels, _check_w(w), _check_interval(interval))


def guided_average_velocity(mixture, x, r, t, labels, w, interval=None, rtol=None, atol=None) -> torch.Tensor:
    """``u_w(x, r, t | c) = (x - Phi_w(x, t -> r | c)) / (t - r)`` (n, d); ``v_w`` where ``r = t``;
    ``interval`` as ``guided_velocity``'s."""
    x, t, r = prepare(mixture, x, t, r, need_density=True)
    labels = _labels(mixture, labels, x.shape[0], x.device)
    w = _check_w(w)
    interval = _check_interval(interval)
    rtol = _check_tolerance("rtol", rtol, DEFAULT_RTOL)
    atol = _check_tolerance("atol", atol, DEFAULT_ATOL)
    if mixture.is_singular and bool(((r == 0) & (t > 0)).any()):
        raise ValueError("r = 0 is not supported for a mixture with a singular covariance: v(x, 0) is undefined")
    u = torch.empty_like(x)
    diag = r == t
    if bool(diag.any()):
        u[diag] = _field(mixture, x[diag], t[diag], labels[diag], w, interval)
    rest = ~diag
    if bool(rest.any()):
        u[rest] = _solve(mixture, x[rest], r[rest], t[rest], labels[rest], w, interval, rtol, atol)
    return u


def guided_flow_map(mixture, x, t, r, labels, w, interval=None, rtol=None, atol=None) -> torch.Tensor:
    """``Phi_w(x, t -> r | c)`` (n, d): the guided ODE's solution at ``r`` from ``x`` at ``t``."""
    x_, t_, r_ = prepare(mixture, x, t, r, need_density=True)
    u = guided_average_velocity(mixture, x_, r_, t_, labels, w, interval=interval, rtol=rtol, atol=atol)
    return x_ - (t_ - r_)[:, None] * u


def _solve(mixture, x, r, t, labels, w, interval, rtol, atol):
    def rhs(s, z, x, r, t, labels):
        h = (t - r)[:, None]
        return _field(mixture, x - h * z, t - s * (t - r), labels, w, interval)

    max_step = (ode.MAX_DTAU / (t - r).clamp_min(1e-300)).clamp_max(1.0)
    out = torch.empty_like(x)
    chunk = ode.chunk_size(x.shape[1])
    for start in range(0, x.shape[0], chunk):
        sl = slice(start, start + chunk)
        out[sl] = solver.solve(rhs, torch.zeros_like(x[sl]), (x[sl], r[sl], t[sl], labels[sl]), rtol=rtol,
                               atol=atol, max_step=max_step[sl])
    return out
