"""The one Jacobian-vector product helper every objective uses (MATH.md §1, §4).

``jvp(model, x, r, t, dx, dr, dt)`` returns ``(u, D)`` with ``u = model(x, r, t)``
and ``D = J_x u . dx + d_r u dr + d_t u dt``. With the tangent ``(a, 0, 1)`` this
is ``D[a] = J_x u . a + d_t u`` of MATH.md §4.

Back-ends (all exact; tested equal to 1e-12 in float64):

- ``"func"``: ``torch.func.jvp`` (forward mode);
- ``"forward_ad"``: ``torch.autograd.forward_ad`` dual tensors (forward mode);
- ``"double_backward"``: the double-backward trick, ``J v = d/dw [(J^T w) . v]``
  (two reverse passes; works for models without forward-mode support).

Both outputs stay differentiable: gradients reach the model's parameters through
``u`` and ``D``, and through ``D`` also to the tangent (needed by ``mf_full``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD

BACKENDS = ("func", "forward_ad", "double_backward")
DEFAULT_BACKEND = "func"  # benchmarks/objectives_bench.py: the fastest exact one on CPU

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def jvp(model: Model, x, r, t, dx, dr, dt, backend: str = DEFAULT_BACKEND):
    """``(u, J_x u . dx + d_r u dr + d_t u dt)``; x, dx (n, d), r, t, dr, dt (n,)."""
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
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


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
