"""The one Jacobian-vector product helper every objective uses (MATH.md §1, §4).

``jvp(model, x, r, t, dx, dr, dt)`` returns ``(u, D)`` with ``u = model(x, r, t)``
and ``D = J_x u . dx + d_r u dr + d_t u dt``. With the tangent ``(a, 0, 1)`` this
is ``D[a] = J_x u . a + d_t u`` of MATH.md §4.

Back-ends (all exact; tested equal to 1e-12 in float64):

- ``"func"``: ``torch.func.jvp`` (forward mode);
- ``"forward_ad"``: ``torch.autograd.forward_ad`` dual tensors (forward mode);
- ``"double_backward"``: the double-backward trick, ``J v = d/dw [(J^T w) . v]``
  (two reverse passes; works for models without forward-mode support);
- ``"analytic"``: the model's own ``model.jvp(x, r, t, dx, dr, dt, tangent_grad)``
  (``MeanFlowMLP`` writes forward mode out by hand: one pass, and no graph for
  the tangent when the objective stops its gradient);
- ``"compiled"``: ``torch.func.jvp`` under ``torch.compile`` (one compiled graph per
  model and input shape, cached; the first call of a shape compiles for seconds and
  needs a C++ compiler). For any ``nn.Module`` or function: the fastest generic
  back-end where the tangent's gradient is stopped (``mf``, ``mf_sg``, ``scm``);
  where it is not (``mf_full``, ``mf_nosg``) it is ``"func"``.

``"auto"`` (the default) takes ``"analytic"`` when the model has it, else
``"func"`` (no compile step): benchmarks/objectives_bench.py measures them all.

Where the caller stops the tangent's gradient (``tangent_grad=False``) the generic
back-ends compute ``u`` by a plain forward pass (the graph the loss needs) and the
tangent without recording a graph: the backward pass then costs what ``fm``'s does.

Both outputs stay differentiable: gradients reach the model's parameters through
``u`` and ``D``, and through ``D`` also to the tangent (needed by ``mf_full``).
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD

BACKENDS = ("func", "forward_ad", "double_backward", "analytic", "compiled")
DEFAULT_BACKEND = "auto"

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def jvp(model: Model, x, r, t, dx, dr, dt, backend: str = DEFAULT_BACKEND, tangent_grad: bool = True):
    """``(u, J_x u . dx + d_r u dr + d_t u dt)``; x, dx (n, d), r, t, dr, dt (n,).

    ``tangent_grad=False``: the caller stops the tangent's gradient (a back-end may
    then skip recording its graph; the returned tangent is detached either way).
    """
    if backend == "auto":
        backend = "analytic" if hasattr(model, "jvp") else "func"
    if backend == "analytic":
        if not hasattr(model, "jvp"):
            raise ValueError(f"backend 'analytic' needs a model with a jvp method; {type(model).__name__} has none")
        u, du = model.jvp(x, r, t, dx, dr, dt, tangent_grad=tangent_grad)
        return u, du if tangent_grad else du.detach()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend == "compiled" and tangent_grad:
        backend = "func"  # gradients through a compiled forward-mode graph: not supported, func is exact
    if not tangent_grad and backend != "double_backward":
        u = model(x, r, t)
        with torch.no_grad():
            if backend == "compiled":
                _, du = _compiled(model)(x, r, t, dx, dr, dt)
                if hasattr(model, "_check"):
                    model._check(du, x)
            else:
                _, du = jvp(model, x, r, t, dx, dr, dt, backend, tangent_grad=True)
        return u, du
    if backend == "func":
        return torch.func.jvp(model, (x, r, t), (dx, dr, dt))
    if backend == "forward_ad":
        with fwAD.dual_level():
            out = model(fwAD.make_dual(x, dx), fwAD.make_dual(r, dr), fwAD.make_dual(t, dt))
            u, du = fwAD.unpack_dual(out)
        if du is None:  # the output does not depend on the inputs
            du = torch.zeros_like(u)
        return u, du
    if backend == "double_backward":
        return _double_backward(model, x, r, t, dx, dr, dt)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled(model):
    """``torch.func.jvp`` of the model under ``torch.compile``, one per model (the module
    itself, not the objectives' shape-checking wrapper around it)."""
    inner = getattr(model, "model", model)
    if inner not in _COMPILED:
        def f(x, r, t, dx, dr, dt):
            return torch.func.jvp(inner, (x, r, t), (dx, dr, dt))

        # static shapes: a training batch has one shape; symbolic shapes fail in forward AD
        _COMPILED[inner] = torch.compile(f, dynamic=False)
    return _COMPILED[inner]


def _double_backward(model, x, r, t, dx, dr, dt):
    inputs = [a.detach().requires_grad_(True) if not a.requires_grad else a for a in (x, r, t)]
    with torch.enable_grad():
        u = model(*inputs)
        w = torch.zeros_like(u, requires_grad=True)  # dummy cotangent
        grads = torch.autograd.grad(u, inputs, grad_outputs=w, create_graph=True, allow_unused=True)
        vjp_dot = sum(
            (g * tan).sum() for g, tan in zip(grads, (dx, dr, dt)) if g is not None
        )
        if not torch.is_tensor(vjp_dot) or not vjp_dot.requires_grad:
            return u, torch.zeros_like(u)
        (du,) = torch.autograd.grad(vjp_dot, w, create_graph=True)
    return u, du
