"""The seven training objectives of MATH.md §4, per sample, found by name.

Every objective has the signature ``loss = objective(model, x0, x1, r, t, **options)``
with ``x0, x1 (n, d)``, ``r, t (n,)`` and returns the per-sample loss (n,).
``model(x, r, t) -> u`` is any callable (an ``nn.Module`` or a function).

Notation (MATH.md §4): ``x_t = (1-t) x0 + t x1``, ``v_c = x1 - x0``,
``U = u_theta(x_t, r, t)``, ``D[a] = J_x u_theta . a + d_t u_theta`` at
``(x_t, r, t)`` (the tangent ``(a, 0, 1)`` of ``mfverify.jvp``), ``sg`` = detach,
``|.|^2`` summed over coordinates.

Options (keywords): ``jvp`` the back-end (``mfverify.jvp.BACKENDS``); ``p, c``
adaptive weighting ``loss / sg(loss + c)^p`` (default ``p = 0``: none); for
``scm``: ``tangent_norm_c`` (tangent normalisation ``g / (|g| + c)``, default off)
and ``tangent_warmup`` (factor on the ``t D`` term of ``df/dt``, default 1).
"""

from __future__ import annotations

from typing import Callable

import torch

from mfverify.jvp import BACKENDS, DEFAULT_BACKEND, jvp

__all__ = ["names", "get"]


def _sq(a: torch.Tensor) -> torch.Tensor:
    return a.square().sum(-1)


def _col(a: torch.Tensor) -> torch.Tensor:
    return a[:, None]


def fm(model, x_t, v_c, r, t, backend):
    """``|u_theta(x_t, t, t) - v_c|^2``."""
    return _sq(model(x_t, t, t) - v_c)


def mf_full(model, x_t, v_c, r, t, backend):
    """``|U + (t-r) D[u_theta(x_t,t,t)] - v_c|^2``, no stop-gradient."""
    w = model(x_t, t, t)
    U, D = jvp(model, x_t, r, t, w, torch.zeros_like(r), torch.ones_like(t), backend)
    return _sq(U + _col(t - r) * D - v_c)


def mf_sg(model, x_t, v_c, r, t, backend):
    """``|U + (t-r) sg(D[u_theta(x_t,t,t)]) - v_c|^2``: two forward passes, no double backward."""
    with torch.no_grad():
        w = model(x_t, t, t)
    U, D = jvp(model, x_t, r, t, w, torch.zeros_like(r), torch.ones_like(t), backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c)


def mf(model, x_t, v_c, r, t, backend):
    """``|U + (t-r) sg(D[v_c]) - v_c|^2``: the MeanFlow paper's loss."""
    U, D = jvp(model, x_t, r, t, v_c, torch.zeros_like(r), torch.ones_like(t), backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c)


def mf_nosg(model, x_t, v_c, r, t, backend):
    """``|U + (t-r) D[v_c] - v_c|^2``: ``mf`` without the stop-gradient (ablation)."""
    U, D = jvp(model, x_t, r, t, v_c, torch.zeros_like(r), torch.ones_like(t), backend)
    return _sq(U + _col(t - r) * D - v_c)


def shortcut(model, x_t, v_c, r, t, backend):
    """``fm`` where ``r = t``; else ``|U - sg((u(x_t,s,t) + u(x_s,r,s)) / 2)|^2``, ``s = (r+t)/2``."""
    s = 0.5 * (r + t)
    with torch.no_grad():
        u_st = model(x_t, s, t)
        x_s = x_t - _col(t - s) * u_st
        target = 0.5 * (u_st + model(x_s, r, s))
    target = torch.where(_col(r == t), v_c, target)
    return _sq(model(x_t, r, t) - target)


def scm(model, x_t, v_c, r, t, backend, tangent_norm_c=None, tangent_warmup=1.0):
    """``f . sg(df/dt)``, ``f = x_t - t u(x_t, 0, t)``, ``df/dt = v_c - u - t D[v_c]`` at r = 0.

    The value means nothing; the gradient is ``(t/2)`` times ``mf``'s at ``r = 0``.
    """
    zero = torch.zeros_like(t)
    U, D = jvp(model, x_t, zero, t, v_c, zero, torch.ones_like(t), backend, tangent_grad=False)
    f = x_t - _col(t) * U
    g = (v_c - U - tangent_warmup * _col(t) * D).detach()
    if tangent_norm_c is not None:
        g = g / (g.norm(dim=-1, keepdim=True) + tangent_norm_c)
    return (f * g).sum(-1)


_OBJECTIVES: dict[str, Callable] = {
    "fm": fm,
    "mf_full": mf_full,
    "mf_sg": mf_sg,
    "mf": mf,
    "mf_nosg": mf_nosg,
    "shortcut": shortcut,
    "scm": scm,
}


def names() -> list[str]:
    """The objectives' names, in MATH.md's order."""
    return list(_OBJECTIVES)


def get(name: str) -> Callable[..., torch.Tensor]:
    """The objective ``name`` as ``loss(model, x0, x1, r, t, **options) -> (n,)``."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(_OBJECTIVES)}")
    inner = _OBJECTIVES[name]

    def objective(model, x0, x1, r, t, *, jvp: str = DEFAULT_BACKEND, p: float = 0.0, c: float = 1e-3, **options):
        if jvp != "auto" and jvp not in BACKENDS:
            raise ValueError(f"jvp must be 'auto' or one of {BACKENDS}, got {jvp!r}")
        if options and name != "scm":
            raise TypeError(f"objective {name!r} got unexpected options {sorted(options)}")
        if p != 0 and name == "scm":
            raise ValueError("adaptive weighting (p != 0) is undefined for 'scm': its value can be negative")
        if p < 0 or c <= 0:
            raise ValueError(f"weighting needs p >= 0 and c > 0, got p={p!r}, c={c!r}")
        x0, x1, r, t = _check_batch(x0, x1, r, t)
        checked = _CheckedModel(model)
        x_t = (1 - _col(t)) * x0 + _col(t) * x1
        loss = inner(checked, x_t, x1 - x0, r, t, jvp, **options)
        if p:
            loss = loss / (loss.detach() + c) ** p
        return loss

    objective.__name__ = name
    objective.__doc__ = inner.__doc__
    return objective


def _check_batch(x0, x1, r, t):
    for name, a in (("x0", x0), ("x1", x1), ("r", r), ("t", t)):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(a).__name__}")
        if not a.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {a.dtype}")
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} must be finite")
    if x0.ndim != 2 or x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must both have shape (n, d), got {tuple(x0.shape)} and {tuple(x1.shape)}")
    n = x0.shape[0]
    if r.shape != (n,) or t.shape != (n,):
        raise ValueError(f"r and t must have shape ({n},), got {tuple(r.shape)} and {tuple(t.shape)}")
    if ((t < 0) | (t > 1)).any() or ((r < 0) | (r > 1)).any():
        raise ValueError("r and t must lie in [0, 1]")
    if (r > t).any():
        i = int((r > t).nonzero()[0])
        raise ValueError(f"r must be <= t, found r={r[i].item()!r} > t={t[i].item()!r} at index {i}")
    return x0, x1, r, t


class _CheckedModel:
    """The model, with its output shape checked at every call (and its ``jvp``, if any)."""

    def __init__(self, model):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, r, t), got {type(model).__name__}")
        self.model = model
        if hasattr(model, "jvp"):
            self.jvp = self._jvp

    @staticmethod
    def _check(u, x):
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"model(x, r, t) must return a tensor of shape {tuple(x.shape)} like x, got {got}")
        return u

    def __call__(self, x, r, t):
        return self._check(self.model(x, r, t), x)

    def _jvp(self, x, r, t, dx, dr, dt, tangent_grad=True):
        u, du = self.model.jvp(x, r, t, dx, dr, dt, tangent_grad=tangent_grad)
        return self._check(u, x), self._check(du, x)
