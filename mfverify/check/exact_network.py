"""The exact model as a network a repository's own loss can call: ``ExactNetwork``.

Its output is the exact average velocity plus perturbation directions,

    ``u*(x, r, t) + sum_j (eps_j + offset_j) h_j(x, r, t)``,

whose only parameters are the ``eps`` (zero), so ``loss.backward()`` on any loss
written against a network gives ``d loss / d eps_j``: the loss's derivative along
each direction at the exact model. ``offset`` (a buffer, zero unless set) moves the
model off ``u*`` along the directions.

Directions (``direction_names``):

- the **tamed field directions** (``exact_core.field_directions``, docs/MATH.md §13), which
  decide a case (``decisive``): ``tamed linear`` ``w x``, ``tamed eulerian`` ``w (u* - v)``
  and, on a labelled case, ``tamed class`` ``w (v(x, t | c) - v(x, t))``, with ``w = 1 / ((1 +
  rho^2) (1 + tau))``, ``rho`` the flow map's volume stretch and ``tau`` the label noise
  ``tr Cov[v_c | x_t]``; at image scale untamed, ``linear``, ``eulerian``, ``class`` (``w = 1``),
  of which ``linear`` alone decides; or the user's own smooth ``directions``;
- ``cell i,j``: a constant unit vector on the cell ``i/G <= r < (i+1)/G``,
  ``j/G <= t < (j+1)/G`` of the triangle ``r <= t`` (``G = grid``), off the
  diagonal ``r = t``; and ``diagonal``, the same on ``r = t`` exactly. Together
  they partition the triangle: which of them a loss's gradient reaches is where
  in ``(r, t)`` its sampler trains the model.

The fields come from ``exact_core.ExactField`` in float64 at the detached call point, as a
loss's autograd asks for them (``_ExactAlong``): a call solves for the values, a tangent
(``torch.func.jvp``, ``torch.autograd.forward_ad``) for its one directional derivative,
and only a cotangent (a double-backward JVP, or a call at a point that depends on the
parameters) for all d + 2 first derivatives. Second derivatives of ``u*`` are zero in
this first-order model; the directions are differentiated exactly to first order.
Inputs may be float32 (computed in float64, returned in the input's dtype), any
batch size and row order, image-shaped ``(B, C, H, W)`` (flattened to the case's
``d``), with times as floats or tensors of ``B`` entries in any shape
(``(B,)``, ``(B, 1, 1, 1)``).

Conventions of the call (``inputs``, ``exact_core.CONVENTIONS``, as ``conventions.as_model``):
``"x,r,t"`` (mfverify's), ``"x,t,r"``, ``"x,t,h"`` (``h = t - r``), ``"reversed"`` (noise at
``tau = 0``: ``net(z, a, b) = -u(z, 1 - b, 1 - a)``), ``"reversed,t,h"`` (noise at 0 and
``net(z, tau, h)`` stepping ``z_{tau + h} = z + h net``: ``-u(z, 1 - tau - h, 1 - tau)``). A two-head loss calls
``model.velocity(x, t)`` (in the same clock).

Labels: ``model(x, r, t, labels=y)`` (also ``y=`` or ``class_labels=``) on a
labelled case answers with the class's own field; a label outside
``0 .. n_classes - 1`` (the null label of label dropout, ``n_classes`` or ``-1``)
with the unconditional one. ``n_classes`` is the number of classes (0 unlabelled).

Every call's ``(r, t)`` is recorded (``calls``). Times outside ``[0, 1]`` or with
``r > t`` never raise and never give NaN: they are answered by a **stand-in**, the
exact model at the times clamped into ``[0, 1]`` and ``r`` lowered to ``t`` (the
velocity), and counted; the as-written check fails such a loss with a sentence
naming the fraction.
"""

from __future__ import annotations

import torch

from mfverify.cases import get_case
from mfverify.check.exact_core import (GRID, INPUTS, LABEL_KEYWORDS, LAYOUTS, CallLog, ExactField, cell_bins,
                                       convention, field_direction_names, field_directions, from_rows, stand_in,
                                       to_rows, triangle_cells)

__all__ = ["ExactNetwork", "CallLog", "INPUTS", "GRID"]


class _ExactAlong(torch.autograd.Function):
    """The exact fields ``[u*, v, v_all, ell](x, r, t)`` (``ExactField``) for every autograd mode: the
    forward solves for the values only, a tangent (``jvp``: ``torch.func.jvp`` and ``forward_ad``)
    along that one tangent, and only a cotangent (``backward``, itself differentiable for
    double-backward JVPs) pays for all first derivatives. The truth runs transforms of its own
    (``torch.func.jvp`` in the closed forms), which must not see the caller's: under ``torch.func``
    transforms the forward of an ``autograd.Function`` runs below them, on plain tensors."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, r, t, exact):
        from torch.autograd.forward_ad import _set_fwd_grad_enabled

        with _set_fwd_grad_enabled(False):  # inside a caller's forward_ad level: the truth's own jvp runs apart
            return exact.value(x.detach(), r.detach(), t.detach()).clone()  # remembered: a fresh tensor out

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
            return ctx.exact.along(x.detach(), r.detach(), t.detach(), zero(dx, x), zero(dr, r), zero(dt, t)).clone()

    @staticmethod
    def backward(ctx, g):
        x, r, t = ctx.saved_tensors
        _, J, d_r, d_t = ctx.exact.derivatives(x.detach(), r.detach(), t.detach())
        return torch.einsum("nab,na->nb", J, g), (d_r * g).sum(1), (d_t * g).sum(1), None


class _Along:
    """The exact fields of one call, its rows' labels bound: values, one tangent, all derivatives
    (``_ExactAlong``). Below image scale one solve gives every first derivative for about the cost of
    one tangent (the flow's Jacobian dominates each step), so there everything comes from
    ``ExactField.outputs``; at image scale (``field.lazy``) each is solved when asked."""

    def __init__(self, field: ExactField, labels, tamed: bool):
        self.field, self.labels, self.tamed = field, labels, tamed

    def value(self, x, r, t):
        if self.field.lazy:
            return self.field.values(x, r, t, self.labels, self.tamed)
        return self.derivatives(x, r, t)[0]

    def along(self, x, r, t, dx, dr, dt):
        if self.field.lazy:
            return self.field.along(x, r, t, dx, dr, dt, self.labels, self.tamed)
        _, J, d_r, d_t = self.derivatives(x, r, t)
        return torch.einsum("nab,nb->na", J, dx.to(J.dtype)) + d_r * dr[:, None] + d_t * dt[:, None]

    def derivatives(self, x, r, t):
        return self.field.outputs(x, r, t, self.labels, self.tamed)


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

    ``case``: a name or a mixture; ``directions``: ``{name: h(x, r, t)}`` (smooth functions of
    torch tensors) in place of the tamed field directions; ``inputs``: the call's convention;
    ``grid``: cells per unit time; ``layout``: an image case's batches, ``"NCHW"`` (default),
    ``"NHWC"`` or ``"flat"`` (``exact_core.to_rows``). ``calls`` records every call; ``field`` is the
    ``ExactField`` that answers; ``decisive`` the directions whose resolution decides a case."""

    def __init__(self, case, directions=None, inputs: str = "x,r,t", grid: int = GRID, seed: int = 0,
                 layout: str = "NCHW", **route):
        super().__init__()
        self.convention = convention(inputs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
            raise ValueError(f"grid must be an int >= 2, got {grid!r}")
        self.mixture = get_case(case) if isinstance(case, str) else case
        self.field = ExactField(self.mixture, **route)
        self.d, self.inputs, self.grid, self.route, self.seed = self.mixture.d, inputs, grid, route, seed
        self.n_classes = self.field.n_classes
        self._tamed = not self.field.lazy  # at image scale the stretch is not computed: w = 1
        self._layout = self.field.layout(self._tamed)
        own = {} if directions is None else dict(directions)
        fields, deciding = field_direction_names(self._tamed, self.field.labelled)
        if directions is not None:
            fields, deciding = [], list(own)
        self._fields = fields
        self._own = list(own.values())
        for i, h in enumerate(self._own):  # a network direction's weights are buffers, not parameters
            if isinstance(h, torch.nn.Module):
                for p in h.parameters():
                    p.requires_grad_(False)
                self.add_module(f"_direction{i}", h)
        self.decisive = deciding
        self.cells = triangle_cells(grid)
        self.direction_names = list(own) + fields + [f"cell {i},{j}" for i, j in self.cells] + ["diagonal"]
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
        """The directions that test stationarity (the user's or the tamed field directions); the
        cells and the diagonal follow them."""
        return len(self._own) + len(self._fields)

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
        image = getattr(self.mixture, "shape", None)
        flat = to_rows(x, self.layout, image, self.d)
        self.calls.add(r, t)
        r_in, t_in = stand_in(r.double(), t.double())
        x64 = flat.double()
        fields = self._layout.split(_ExactAlong.apply(x64, r_in, t_in, _Along(self.field, labels, self._tamed)))
        u = fields[0] + self._perturbation(x64, r.double(), t.double(), fields)
        return from_rows(sign * u.to(x.dtype), shape, self.layout, image)

    def _perturbation(self, x, r, t, fields):
        coeff = self.eps + self.offset
        out = 0.0
        for k, h in enumerate(self._own):
            out = out + coeff[k] * h(x, r, t)
        if self._fields:
            a = len(self._own)
            F = field_directions(x, r, t, *fields, labelled=self.field.labelled, tamed=self._tamed)
            out = out + torch.einsum("k,nkd->nd", coeff[a: a + len(self._fields)], F)
        rd, td = r.detach(), t.detach()
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
