"""The exact model as a network a repository's own loss can call: ``ExactNetwork``.

Its output is the exact average velocity plus perturbation directions,

    ``u*(x, r, t) + sum_j (eps_j + offset_j) h_j(x, r, t)``,

whose only parameters are the ``eps`` (zero), so ``loss.backward()`` on any loss
written against a network gives ``d loss / d eps_j``: the loss's derivative along
each direction at the exact model. ``offset`` (a buffer, zero unless set) moves the
model off ``u*`` along the directions, to see where a loss's gradient reaches.

Directions (``direction_names``):

- the smooth ones, ``network`` (a small random MLP) and ``wavy``
  (``sin(W x + b t + c r + e)``), the per-sample battery's; on a labelled case also
  ``wavy by class``, ``wavy`` times ``(-1)^label`` (0 on the null label), so that a
  loss that should train the class fields is asked about them;
- ``cell i,j``: a constant unit vector on the cell ``i/G <= r < (i+1)/G``,
  ``j/G <= t < (j+1)/G`` of the triangle ``r <= t`` (``G = grid``), off the
  diagonal ``r = t``; and ``diagonal``, the same on ``r = t`` exactly. Together
  they partition the triangle: which of them a loss's gradient reaches is where
  in ``(r, t)`` its sampler trains the model.

Values come from ``truth.average_velocity_derivatives`` in float64 at the detached
call point, as ``theory.identities.ExactModel`` does: the first-order expansion
``u0 + J dx + d_r u dr + d_t u dt`` carries exact first derivatives through
``torch.func.jvp``, ``torch.autograd.forward_ad`` and double-backward JVPs (second
derivatives of ``u*`` are zero in it; the directions are differentiated exactly).
At image scale (a ``LowRankMixture``, such as ``digits``) the d + 2 derivatives are not
solved up front: a call solves for the values, a tangent for its one directional
derivative, and only a double-backward JVP for all of them (``_ExactAlong``).
Inputs may be float32 (computed in float64, returned in the input's dtype), any
batch size and row order, image-shaped ``(B, C, H, W)`` (flattened to the case's
``d``), with times as floats or tensors of ``B`` entries in any shape
(``(B,)``, ``(B, 1, 1, 1)``).

Conventions of the call (``inputs``, as ``conventions.as_model``): ``"x,r,t"``
(mfverify's), ``"x,t,r"``, ``"x,t,h"`` (``h = t - r``), ``"reversed"`` (noise at
``tau = 0``: ``net(z, a, b) = -u(z, 1 - b, 1 - a)``), ``"reversed,t,h"`` (noise at 0 and
``net(z, tau, h)`` stepping ``z_{tau + h} = z + h net``: ``-u(z, 1 - tau - h, 1 - tau)``). A two-head loss calls
``model.velocity(x, t)`` (in the same clock).

Labels: ``model(x, r, t, labels=y)`` (also ``y=`` or ``class_labels=``) on a
labelled case answers with the class's own field; a label outside
``0 .. n_classes - 1`` (the null label of label dropout, ``n_classes`` or ``-1``)
with the unconditional one.

Every call's ``(r, t)`` is recorded (``calls``). Times outside ``[0, 1]`` or with
``r > t`` never raise and never give NaN: they are answered by a **stand-in**, the
exact model at the times clamped into ``[0, 1]`` and ``r`` lowered to ``t`` (the
velocity), and counted; the as-written check fails such a loss with a sentence
naming the fraction.
"""

from __future__ import annotations

import torch

from mfverify.cases import get_case
from mfverify.check.exact_core import (GRID, INPUTS, LABEL_KEYWORDS, CallLog, ExactField, cell_bins, class_sign,
                                       convention, smooth_directions, stand_in, triangle_cells)

__all__ = ["ExactNetwork", "CallLog", "INPUTS", "GRID", "smooth_directions"]


class _Exact(torch.autograd.Function):
    """``u*(x, r, t)`` with its exact first derivatives, for every autograd mode.

    The truth runs transforms of its own (``torch.func.jvp`` in the closed forms), which
    must not see the caller's: under ``torch.func`` transforms the forward of an
    ``autograd.Function`` runs below them, on plain tensors. Its tangent (``jvp``: both
    ``torch.func.jvp`` and ``forward_ad``) and its cotangent (``backward``, itself
    differentiable for double-backward JVPs) are ``J dx + d_r u dr + d_t u dt`` and the
    transpose, with the derivatives of the call point (second derivatives zero)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, r, t, derivatives):
        from torch.autograd.forward_ad import _set_fwd_grad_enabled

        with _set_fwd_grad_enabled(False):  # inside a caller's forward_ad level: the truth's own jvp runs apart
            u, J, du_dr, du_dt = derivatives(x.detach(), r.detach(), t.detach())
        return u.clone(), J, du_dr, du_dt

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, J, du_dr, du_dt = output
        ctx.mark_non_differentiable(J, du_dr, du_dt)
        ctx.save_for_backward(J, du_dr, du_dt)
        ctx.save_for_forward(J, du_dr, du_dt)

    @staticmethod
    def jvp(ctx, dx, dr, dt, _):
        J, du_dr, du_dt = ctx.saved_tensors
        du = torch.einsum("nab,nb->na", J, dx) + du_dr * dr[:, None] + du_dt * dt[:, None]
        return du, None, None, None

    @staticmethod
    def backward(ctx, g, *_):
        J, du_dr, du_dt = ctx.saved_tensors
        return torch.einsum("nab,na->nb", J, g), (du_dr * g).sum(1), (du_dt * g).sum(1), None


class _ExactAlong(torch.autograd.Function):
    """``u*(x, r, t)`` for a case at image scale (a ``LowRankMixture``): the forward solves for the
    values only, a tangent (``jvp``) solves the variational equation along that one tangent, and
    only a cotangent (``backward``, a double-backward JVP) pays for the full derivatives (d + 2
    tangents). ``_Exact`` solves the d + 2 up front, which at d = 64 costs 30x a value."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, r, t, exact):
        from torch.autograd.forward_ad import _set_fwd_grad_enabled

        with _set_fwd_grad_enabled(False):
            return exact.value(x.detach(), r.detach(), t.detach())

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, r, t, exact = inputs
        ctx.exact = exact
        ctx.save_for_backward(x, r, t)
        ctx.save_for_forward(x, r, t)

    @staticmethod
    def jvp(ctx, dx, dr, dt, _):
        from torch.autograd.forward_ad import _set_fwd_grad_enabled

        x, r, t = ctx.saved_tensors
        zero = lambda a, like: torch.zeros_like(like) if a is None else a  # noqa: E731
        with _set_fwd_grad_enabled(False):
            return ctx.exact.along(x.detach(), r.detach(), t.detach(), zero(dx, x), zero(dr, r), zero(dt, t))

    @staticmethod
    def backward(ctx, g):
        x, r, t = ctx.saved_tensors
        _, J, du_dr, du_dt = ctx.exact.derivatives(x.detach(), r.detach(), t.detach())
        return torch.einsum("nab,na->nb", J, g), (du_dr * g).sum(1), (du_dt * g).sum(1), None


class _Along:
    """The exact field of one call, its rows' labels bound: values, one tangent, all derivatives
    (``_ExactAlong``)."""

    def __init__(self, field: ExactField, labels):
        self.field, self.labels = field, labels

    def value(self, x, r, t):
        return self.field.values(x, r, t, self.labels)

    def along(self, x, r, t, dx, dr, dt):
        return self.field.along(x, r, t, dx, dr, dt, self.labels)

    def derivatives(self, x, r, t):
        return self.field.derivatives(x, r, t, self.labels)


def _times(value, n: int, name: str) -> torch.Tensor:
    """A time argument as (n,): a float, or a tensor of n entries (any shape) or one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value), dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the exact model's time argument {name} must be a float or a tensor, got "
                        f"{type(value).__name__}")
    if value.numel() == n:
        return value.reshape(n)
    if value.numel() == 1:
        return value.reshape(1).expand(n)
    raise ValueError(f"the exact model's time argument {name} has {value.numel()} entries for a batch of {n} "
                     f"(shape {tuple(value.shape)}); expected {n} or 1")


class ExactNetwork(torch.nn.Module):
    """``u*(x, r, t) + sum_j (eps_j + offset_j) h_j``: see the module's docstring.

    ``case``: a name or a mixture; ``directions``: ``{name: h(x, r, t)}`` replacing the
    smooth ones (default ``smooth_directions(d, seed)``); ``inputs``: the call's
    convention; ``grid``: cells per unit time. ``calls`` records every call; ``field``
    is the ``ExactField`` that answers; ``n_classes`` the number of classes of a labelled
    case (0 otherwise; its null label)."""

    def __init__(self, case, directions=None, inputs: str = "x,r,t", grid: int = GRID, seed: int = 0, **route):
        super().__init__()
        self.convention = convention(inputs)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an int >= 2, got {grid!r}")
        self.mixture = get_case(case) if isinstance(case, str) else case
        self.field = ExactField(self.mixture, **route)
        self.d, self.inputs, self.grid, self.route = self.mixture.d, inputs, grid, route
        self.n_classes = self.field.n_classes
        smooth = smooth_directions(self.d, seed) if directions is None else dict(directions)
        if self.field.labelled and directions is None:
            # a direction that differs between classes: a loss that trains the class fields must be
            # stationary along it too (the label-blind ones cannot tell a class field from the mixture's)
            smooth["wavy by class"] = smooth["wavy"]
        self._smooth = list(smooth.values())
        self._by_class = [name.endswith("by class") for name in smooth]
        for i, h in enumerate(self._smooth):  # a network direction's weights are buffers, not parameters
            if isinstance(h, torch.nn.Module):
                for p in h.parameters():
                    p.requires_grad_(False)
                self.add_module(f"_direction{i}", h)
        self.cells = triangle_cells(grid)
        self.direction_names = (list(smooth) + [f"cell {i},{j}" for i, j in self.cells] + ["diagonal"])
        J = len(self.direction_names)
        self.eps = torch.nn.Parameter(torch.zeros(J, dtype=torch.float64))
        self.register_buffer("offset", torch.zeros(J, dtype=torch.float64))
        self._cell_index = torch.full((grid, grid), -1, dtype=torch.long)
        for k, (i, j) in enumerate(self.cells):
            self._cell_index[i, j] = k
        self._unit = torch.ones(self.d, dtype=torch.float64) / self.d**0.5
        self.calls = CallLog()

    @property
    def n_smooth(self) -> int:
        return len(self._smooth)

    # ---------------------------------------------------------------- the call

    def forward(self, x, a, b, **kwargs):
        n = x.shape[0]
        r, t, sign = self.convention.times(_times(a, n, "second argument"), _times(b, n, "third argument"))
        return self._answer(x, r, t, sign, kwargs)

    def velocity(self, x, a, **kwargs):
        """The second head ``v(x, t) = u(x, t, t)`` (``a``: the time in the call's clock)."""
        t, sign = self.convention.velocity_time(_times(a, x.shape[0], "t"))
        return self._answer(x, t, t, sign, kwargs)

    def _answer(self, x, r, t, sign, kwargs):
        labels = self._labels(kwargs, x.shape[0])
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"the exact model takes a floating-point tensor x, got {getattr(x, 'dtype', type(x))}")
        shape, n = x.shape, x.shape[0]
        flat = x.reshape(n, -1)
        if flat.shape[1] != self.d:
            raise ValueError(f"the exact model of a {self.d}-dimensional case got x of shape {tuple(shape)} "
                             f"({flat.shape[1]} values per row)")
        self.calls.add(r, t)
        rd, td = r.detach().double(), t.detach().double()
        r_in, t_in = stand_in(r.double(), t.double())
        if self.field.lazy:
            u = _ExactAlong.apply(flat.double(), r_in, t_in, _Along(self.field, labels))
        else:
            u = _Exact.apply(flat.double(), r_in, t_in, lambda a, b, c: self.field.derivatives(a, b, c, labels))[0]
        u = u + self._perturbation(flat, r, t, rd, td, labels)
        u = u.to(x.dtype)
        return (sign * u).reshape(shape)

    def _perturbation(self, x, r, t, rd, td, labels):
        coeff = self.eps + self.offset
        x64, r64, t64 = x.double(), r.double(), t.double()
        out = 0.0
        for k, h in enumerate(self._smooth):
            if self._by_class[k]:  # (-1)^label on the classes, 0 on the null label or without labels
                if labels is None:
                    continue
                sign = class_sign(labels, self.n_classes).double()
                out = out + coeff[k] * sign[:, None] * h(x64, r64, t64)
                continue
            out = out + coeff[k] * h(x64, r64, t64)
        S = self.n_smooth
        inside = (rd >= 0) & (td <= 1) & (rd <= td)
        diag = inside & (rd == td)
        cell = self._cell_index[cell_bins(rd, self.grid).long(), cell_bins(td, self.grid).long()]
        off = inside & ~diag & (cell >= 0)
        weight = torch.where(off, coeff[S:-1][cell.clamp_min(0)], torch.zeros_like(rd))
        weight = weight + torch.where(diag, coeff[-1].expand_as(rd), torch.zeros_like(rd))
        return out + weight[:, None] * self._unit

    def _labels(self, kwargs, n):
        extra = set(kwargs) - set(LABEL_KEYWORDS)
        if extra:
            raise TypeError(f"the exact model takes x, two times and optionally labels ({', '.join(LABEL_KEYWORDS)}"
                            f"=...); got the keyword(s) {', '.join(sorted(extra))}")
        given = [kwargs[k] for k in LABEL_KEYWORDS if kwargs.get(k) is not None]
        return self.field.labels_of(given[0] if given else None, n)
