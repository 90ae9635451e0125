"""The seven objectives of MATH.md §4, one function each with its formula as docstring:
``fm``, ``mf_full``, ``mf_sg``, ``mf``, ``mf_nosg``, ``shortcut``, ``scm``."""

from __future__ import annotations

import torch

from mfverify.jvp import DEFAULT_BACKEND, jvp
from mfverify.objectives.core import Objective, _check_jvp, _col, _on_path, _sq, registry


def _builtin(inner, check_options=_check_jvp, **properties):
    options = {"jvp": DEFAULT_BACKEND, **properties.pop("options", {})}
    obj = Objective(name=inner.__name__, loss=_on_path(inner), options=options, check_options=check_options, **properties)
    registry.register(inner.__name__, obj)
    return inner


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


def mf(model, x_t, v_c, r, t, backend, w=1.0, k=0.0, guidance_from=0.0, guidance_to=1.0):
    """``|U + (t-r) sg(D[v_c]) - v_c|^2``: the MeanFlow paper's loss.

    Training-time guidance (a class-conditional model, ``models.Conditioned``): ``v_c`` is
    replaced, as target and as tangent, by ``v~ = w v_c + k sg(u(x_t, t, t | c)) +
    (1 - w - k) sg(u(x_t, t, t | none))`` on the rows with a label and
    ``guidance_from <= t <= guidance_to`` (``v_c`` elsewhere). Its fixed point is the
    average velocity of the guided field ``v_{w'}``, ``w' = w / (1 - k)`` in the interval
    and the class's own ``v(x, t | c)`` outside (``truth.guided_average_velocity``).
    """
    if w != 1.0 or k != 0.0:
        v_c = _guided_velocity_target(model, x_t, v_c, t, w, k, guidance_from, guidance_to)
    U, D = jvp(model, x_t, r, t, v_c, torch.zeros_like(r), torch.ones_like(t), backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c)


def _guided_velocity_target(model, x_t, v_c, t, w, k, lo, hi):
    if not hasattr(model, "unconditional"):
        raise TypeError("guidance (w != 1 or k != 0) needs a class-conditional model with its labels bound "
                        "(models.Conditioned; [train] conditional = true on a labelled case)")
    with torch.no_grad():
        u_c = model(x_t, t, t)
        u_none = model.unconditional()(x_t, t, t)
    guided = w * v_c + k * u_c + (1 - w - k) * u_none
    use = (model.labels >= 0) & (t >= lo) & (t <= hi)
    return torch.where(_col(use), guided, v_c)


def _check_mf(options):
    _check_jvp(options)
    if not options["k"] < 1:
        raise ValueError(f"objective 'mf': the mixing scale k must be < 1, got {options['k']!r}")
    if not 0 <= options["guidance_from"] <= options["guidance_to"] <= 1:
        raise ValueError("objective 'mf': need 0 <= guidance_from <= guidance_to <= 1, got "
                         f"{options['guidance_from']!r}, {options['guidance_to']!r}")


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


def scm(model, x_t, v_c, r, t, backend, tangent_norm_c=None, tangent_warmup=1.0, warmup_steps=0):
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


def _scm_warmup(step, steps, options):
    n = options["warmup_steps"]
    return {} if n == 0 else {"tangent_warmup": min(1.0, step / n)}


def _check_scm(options):
    _check_jvp(options)
    if options["tangent_norm_c"] is not None and not options["tangent_norm_c"] > 0:
        raise ValueError(f"objective 'scm': tangent_norm_c must be > 0 (or none), got {options['tangent_norm_c']!r}")
    if options["warmup_steps"] < 0:
        raise ValueError(f"objective 'scm': warmup_steps must be >= 0, got {options['warmup_steps']!r}")


# registration order is MATH.md §4's; the eps-derivative along u* + eps h of each is
# (at p = 0) linear in v_c (fm, mf_sg, mf, shortcut: 2 R . dR with R affine in v_c and
# dR free of it; mf_full: dR holds no v_c either) or quadratic (mf_nosg: dR = h +
# (t-r) D_h[v_c]); scm's is linear, unless its tangent is normalised (not polynomial)
for _inner in (fm, mf_full, mf_sg, mf, mf_nosg, shortcut):
    if _inner is mf:
        _builtin(mf, weighting=True, quadratic_in_v_c=True, check_options=_check_mf,
                 needs_labels=lambda o: o["w"] != 1.0 or o["k"] != 0.0,
                 guidance=lambda o: (o["w"] / (1 - o["k"]), (o["guidance_from"], o["guidance_to"])),
                 options={"w": 1.0, "k": 0.0, "guidance_from": 0.0, "guidance_to": 1.0})
        continue
    _builtin(_inner, weighting=True, quadratic_in_v_c=True)
_builtin(
    scm,
    trained_at_r0=True,
    surrogate=True,
    quadratic_in_v_c=lambda o: o["tangent_norm_c"] is None,
    options={"tangent_norm_c": None, "tangent_warmup": 1.0, "warmup_steps": 0},
    schedule=_scm_warmup,
    check_options=_check_scm,
)
del _inner
