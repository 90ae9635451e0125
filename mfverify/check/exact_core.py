"""The exact model's core, one for both fronts (the torch ``ExactNetwork`` and the JAX model).

What an exact model answers is decided here once:

- **the field** (``ExactField``): ``u*`` of a case and of each of its classes, its values,
  its exact first derivatives ``(u, J_x u, d_r u, d_t u)`` (remembered for the last few
  batches of points: a loss calls the model at the same points per direction), and one
  tangent at image scale (a ``LowRankMixture``: ``lazy``, where d + 2 derivatives per
  point would cost 30x a value); rows labelled with a class get the class's own field,
  the null label (``n_classes`` or ``-1``) or no label the mixture's;
- **the conventions** (``CONVENTIONS``): how a repository's network is called, each as a
  map from its two time arguments to mfverify's ``(r, t)`` and a sign (MATH.md §10), and
  back (``Convention.arguments``, for ``conventions.as_model``);
- **the stand-in** (``stand_in``): times outside ``[0, 1]`` are clamped into it and ``r``
  lowered to ``t``; such calls are answered there and counted, never NaN;
- **the directions**: the per-sample battery's smooth ones (``smooth_directions``: a random
  MLP and a wavy field), the tamed directions made of the exact fields
  (``field_directions``: ``w x``, ``w (u* - v)`` and, on a labelled case, ``w (v(.|c) - v)``,
  ``w = 1 / (1 + rho^2)`` with ``rho = p_t(x) / p_r(Phi(x, t -> r))`` the flow map's volume
  stretch; docs/MATH.md §13), and the cells of the ``(r, t)`` triangle (``cell_bins``,
  ``triangle_cells``);
- **the call log** (``CallLog``): every call's ``(r, t)``.

Functions that take ``xp`` work on torch tensors and on ``jax.numpy`` arrays alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mfverify import truth
from mfverify.cases import LowRankMixture
from mfverify.truth.fields import log_density_raw, variance_trace_raw, velocity_jvp_raw, velocity_raw
from mfverify.nets import build_network
from mfverify.theory.identities import ExactModel

__all__ = ["Convention", "CONVENTIONS", "INPUTS", "GRID", "LAYOUTS", "to_rows", "from_rows", "stand_in", "cell_bins", "triangle_cells",
           "smooth_directions", "field_directions", "FIELD_DIRECTIONS", "IMAGE_DIRECTIONS", "IMAGE_DECISIVE", "field_direction_names", "Outputs", "ExactField", "CallLog",
           "LABEL_KEYWORDS"]

GRID = 8  # cells per unit of r and of t
LABEL_KEYWORDS = ("labels", "y", "class_labels")


@dataclass(frozen=True)
class Convention:
    """How a network is called: ``net(z, a, b)``, ``(a, b)`` two times in its own clock.

    ``times(a, b) -> (r, t, sign)``: the call in mfverify's clock, ``net(z, a, b) = sign u(z, r, t)``;
    ``arguments(r, t) -> (a, b)``: the inverse; ``velocity_time(s) -> (t, sign)``: a second head
    ``v(z, s)`` called at the time ``s`` of its clock."""

    name: str
    meaning: str
    times: Callable
    arguments: Callable
    reversed: bool = False

    def velocity_time(self, s):
        return (1 - s, -1.0) if self.reversed else (s, 1.0)


CONVENTIONS = {c.name: c for c in (
    Convention("x,r,t", "mfverify's: net(x, r, t) = u(x, r, t), r <= t, data at t = 0",
               lambda a, b: (a, b, 1.0), lambda r, t: (r, t)),
    Convention("x,t,r", "net(x, t, r): the two times swapped",
               lambda a, b: (b, a, 1.0), lambda r, t: (t, r)),
    Convention("x,t,h", "net(x, t, h), h = t - r (MeanFlow's official code)",
               lambda a, b: (a - b, a, 1.0), lambda r, t: (t, t - r)),
    Convention("reversed", "noise at 0: net(z, a, b) steps z_b = z_a + (b - a) net, = -u(z, 1 - b, 1 - a)",
               lambda a, b: (1 - b, 1 - a, -1.0), lambda r, t: (1 - t, 1 - r), reversed=True),
    Convention("reversed,t,h", "noise at 0: net(z, tau, h) steps z_{tau+h} = z + h net (Shortcut models)",
               lambda a, b: (1 - a - b, 1 - a, -1.0), lambda r, t: (1 - t, t - r), reversed=True),
)}
INPUTS = tuple(CONVENTIONS)


def convention(inputs: str) -> Convention:
    """The convention named ``inputs``, or a ``ValueError`` listing them."""
    if inputs not in CONVENTIONS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    return CONVENTIONS[inputs]


LAYOUTS = ("NCHW", "NHWC", "flat")


def _permute(a, axes, xp):
    return a.permute(*axes) if xp is torch else xp.transpose(a, axes)


def to_rows(x, layout: str, shape, d: int, xp=torch):
    """A caller's ``x`` as rows ``(n, d)`` in the case's own order (``shape = (C, H, W)``, flattened C-major).

    ``layout``: ``"NCHW"`` (torch's images), ``"NHWC"`` (flax's: permuted to NCHW first), ``"flat"``
    (``(n, d)`` only). A flat ``(n, d)`` batch is read in the layout's order. On a case without a shape any
    batch of ``d`` values per row is taken as given. A batch that fits neither is a ``ValueError`` naming
    both shapes."""
    n = x.shape[0]
    if shape is None or len(shape) != 3:
        flat = x.reshape(n, -1)
        if flat.shape[1] != d:
            raise ValueError(f"the exact model of a {d}-dimensional case got x of shape {tuple(x.shape)} "
                             f"({flat.shape[1]} values per row)")
        return flat
    C, H, W = shape
    rest = tuple(x.shape[1:])
    if layout == "flat":
        if rest != (d,):
            raise ValueError(f"layout flat takes x of shape (n, {d}); got {tuple(x.shape)} (case shape {shape})")
        return x
    if layout == "NCHW" and rest in ((C, H, W), (d,)):
        return x.reshape(n, d)
    if layout == "NHWC" and rest in ((H, W, C), (d,)):
        return _permute(x.reshape(n, H, W, C), (0, 3, 1, 2), xp).reshape(n, d)
    want = (C, H, W) if layout == "NCHW" else (H, W, C)
    raise ValueError(f"x of shape {tuple(x.shape)} does not match the case's images {shape} in layout {layout}, "
                     f"which expects (n, {', '.join(map(str, want))}) or (n, {d}); give the loss's layout "
                     f"(--layout {'NHWC' if layout == 'NCHW' else 'NCHW'}?)")


def from_rows(u, like_shape, layout: str, shape, xp=torch):
    """Rows ``(n, d)`` back in the caller's shape and layout (the inverse of ``to_rows``)."""
    n = u.shape[0]
    if shape is None or len(shape) != 3 or layout == "flat":
        return u.reshape(like_shape)
    C, H, W = shape
    if layout == "NHWC":
        return _permute(u.reshape(n, C, H, W), (0, 2, 3, 1), xp).reshape(like_shape)
    return u.reshape(like_shape)


def stand_in(r, t, xp=torch):
    """``(r, t)`` where the exact model answers: ``t`` clamped into ``[0, 1]``, ``r`` into ``[0, t]``."""
    t_in = xp.clip(t, 0.0, 1.0)
    return xp.minimum(xp.clip(r, 0.0, 1.0), t_in), t_in


def cell_bins(a, grid: int = GRID, xp=torch):
    """The cell index ``floor(a grid)`` of a time, clipped into ``0 .. grid - 1`` (a float array)."""
    return xp.clip(xp.floor(a * grid), 0, grid - 1)


def triangle_cells(grid: int = GRID) -> list[tuple[int, int]]:
    """The cells ``(i, j)`` of the triangle ``r <= t``, ``i/G <= r < (i+1)/G``, ``j/G <= t < (j+1)/G``."""
    return [(i, j) for j in range(grid) for i in range(j + 1)]


def smooth_directions(d: int, seed: int) -> dict:
    """The per-sample battery's smooth directions h(x, r, t): a small random network, and
    ``sin(W x + b t + c r + e)`` with a Jacobian of order 1.5 (the effects of J_x h stand out of
    Monte Carlo noise)."""
    torch.manual_seed(seed)
    net = build_network("mlp", d, {"width": 16, "depth": 2}, dtype=torch.float64).double()
    g = torch.Generator().manual_seed(seed + 1)
    W = 1.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b, c, e = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3))

    def wavy(x, r, t):
        return torch.sin(x @ W.T + t[:, None] * b + r[:, None] * c + e)

    return {"network": net, "wavy": wavy}


class CallLog:
    """The ``(r, t)`` of every call of an exact model (float64, mfverify's clock)."""

    def __init__(self):
        self.r: list[torch.Tensor] = []
        self.t: list[torch.Tensor] = []

    def add(self, r, t) -> None:
        self.r.append(_plain(r))
        self.t.append(_plain(t))

    def extend(self, other: "CallLog") -> None:
        self.r += other.r
        self.t += other.t

    def times(self) -> tuple[torch.Tensor, torch.Tensor]:
        empty = torch.zeros(0, dtype=torch.float64)
        return (torch.cat(self.r) if self.r else empty), (torch.cat(self.t) if self.t else empty)

    def summary(self, grid: int = GRID) -> dict:
        """Rows over all calls: ``calls``, ``fraction_outside_unit_interval`` (r or t outside
        [0, 1]), ``fraction_r_gt_t``, ``fraction_diagonal`` (r = t exactly), the extremes, and
        the calls per cell of the triangle (``cells``: ``{(i, j): count}``)."""
        r, t = self.times()
        n = int(r.numel())
        outside = (r < 0) | (r > 1) | (t < 0) | (t > 1)
        frac = lambda m: float(m.sum()) / n if n else 0.0  # noqa: E731
        inside = ~outside & (r <= t)
        i, j = cell_bins(r[inside], grid).long(), cell_bins(t[inside], grid).long()
        cells: dict = {}
        for a, b in zip(i.tolist(), j.tolist()):
            cells[(a, b)] = cells.get((a, b), 0) + 1
        return {"calls": n, "fraction_outside_unit_interval": frac(outside), "fraction_r_gt_t": frac(r > t),
                "fraction_diagonal": frac(r == t), "min_time": float(torch.minimum(r, t).min()) if n else None,
                "max_time": float(torch.maximum(r, t).max()) if n else None, "cells": cells}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.equal(a, b)


def _plain(a) -> torch.Tensor:
    """The plain float64 values of ``a`` (a tensor, also inside ``torch.func`` transforms, whose
    wrappers are meaningless once the transform returns; or a numpy array)."""
    if not isinstance(a, torch.Tensor):
        return torch.as_tensor(a, dtype=torch.float64).reshape(-1).clone()
    from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor

    a = a.detach()
    while is_functorch_wrapped_tensor(a):
        a = get_unwrapped(a)
    return a.detach().double().cpu().clone()


class ExactField:
    """The exact fields of a case at the points a loss calls, per label: ``[u*, v, v_all, ell]`` stacked
    (``layout``), with their first derivatives where asked.

    ``u*`` is the average velocity of the row's field (its class's, or the mixture's for the null
    label and without labels), ``v`` that field's velocity, ``v_all`` the mixture's (a labelled case),
    ``ell`` the log volume stretch of the flow map (``tamed``). Three ways to ask, as a loss's
    autograd asks: ``values`` (no derivatives: a forward pass), ``along`` (one tangent: a JVP; one
    tangent solve of the flow with the closed forms' JVPs beside it) and ``outputs`` (all first
    derivatives: a cotangent, d + 2 tangent solves). Each remembers its last few answers: a loss
    calls the model at the same points per direction. ``derivatives`` is ``u*``'s alone.
    ``mixture``: the case; ``route``: the truth's ``method``, ``rtol``, ``atol``. Inputs are float64
    ``x (n, d)``, ``r, t (n,)`` at valid times (the fronts apply the stand-in), ``labels`` None or an
    int64 (n,) tensor (``labels_of`` checks a caller's)."""

    MEMO = 8  # point sets remembered per kind of answer

    def __init__(self, mixture, **route):
        self.mixture, self.route = mixture, route
        self.d = mixture.d
        self.lazy = isinstance(mixture, LowRankMixture)  # image scale: no stretch, derivatives only when asked
        self.labelled = getattr(mixture, "labels", None) is not None
        self.n_classes = mixture.n_classes if self.labelled else 0
        self._models: dict = {}
        self._memo: dict = {"values": [], "along": [], "outputs": []}

    def model(self, label=None) -> ExactModel:
        """The ``ExactModel`` of a class (``label``) or of the mixture (``None``), kept: its solves
        are remembered."""
        if label not in self._models:
            mixture = self.mixture if label is None else self.mixture.class_mixture(label)
            self._models[label] = ExactModel(mixture, **self.route)
        return self._models[label]

    def labels_of(self, given, n: int):
        """A caller's labels as an int64 (n,) tensor (one label for all rows allowed), or None."""
        if given is None:
            return None
        if not self.labelled:
            raise ValueError(f"labels given to the exact model of an unlabelled case ({self.mixture!r})")
        labels = torch.as_tensor(given).reshape(-1).long().cpu()
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.numel() != n:
            raise ValueError(f"labels has {labels.numel()} entries for a batch of {n}")
        return labels

    def layout(self, tamed: bool) -> "Outputs":
        return Outputs(self.d, self.labelled, tamed)

    def derivatives(self, x, r, t, labels=None):
        """``u*``'s ``(u (n, d), J_x u (n, d, d), d_r u (n, d), d_t u (n, d))``."""
        return self.per_label(labels, lambda m, *a: m._derivatives(*a), x, r, t)

    # ------------------------------------------------------------ the stacked fields

    def values(self, x, r, t, labels=None, tamed: bool = True):
        """``[u, v, v_all, ell]`` (n, m), no derivatives."""
        return self._remember("values", (x, r, t), labels, tamed, lambda: self._values(x, r, t, labels, tamed))

    def along(self, x, r, t, dx, dr, dt, labels=None, tamed: bool = True):
        """The tangent (n, m) of ``values`` along ``(dx, dr, dt)``."""
        dx, dr, dt = dx.double(), dr.double(), dt.double()
        return self._remember("along", (x, r, t, dx, dr, dt), labels, tamed,
                              lambda: self._along(x, r, t, dx, dr, dt, labels, tamed))

    def outputs(self, x, r, t, labels=None, tamed: bool = True):
        """``(values (n, m), d/dx (n, m, d), d/dr (n, m), d/dt (n, m))``: all first derivatives, exact."""
        return self._remember("outputs", (x, r, t), labels, tamed, lambda: self._outputs(x, r, t, labels, tamed))

    def _remember(self, kind, tensors, labels, tamed, compute):
        memo = self._memo[kind]
        for key, value in memo:
            if key[2] == tamed and _same(key[1], labels) and all(_same(a, b) for a, b in zip(key[0], tensors)):
                return value
        value = compute()
        self._memo[kind] = [((tensors, labels, tamed), value)] + memo[: self.MEMO - 1]
        return value

    def _values(self, x, r, t, labels, tamed):
        u = self.per_label(labels, lambda m, *a: truth.average_velocity(m.mixture, *a, **m.route), x, r, t)
        parts = [u, self.per_label(labels, lambda m, a, b: velocity_raw(m.mixture, a, b), x, t)]
        if self.labelled:
            parts.append(velocity_raw(self.mixture, x, t))
        if tamed:
            parts.append(self.per_label(labels, lambda m, a, b, c, e: _stretch_value(m.mixture, a, b, c, e),
                                        x, r, t, u)[:, None])
        parts.append(self.per_label(labels, lambda m, a, b: variance_trace_raw(m.mixture, a, b), x, t)[:, None])
        return torch.cat(parts, 1)

    def _along(self, x, r, t, dx, dr, dt, labels, tamed):
        u = self.values(x, r, t, labels, tamed)[:, : self.d]
        du = self.per_label(labels, lambda m, *a: truth.average_velocity_jvp(m.mixture, *a, **m.route)[1],
                            x, r, t, dx, dr, dt)
        parts = [du, self.per_label(labels, lambda m, a, b, c, e: velocity_jvp_raw(m.mixture, a, b, c, e)[1],
                                    x, t, dx, dt)]
        if self.labelled:
            parts.append(velocity_jvp_raw(self.mixture, x, t, dx, dt)[1])
        if tamed:
            parts.append(self.per_label(labels, lambda m, *a: _stretch_tangent(m.mixture, *a),
                                        x, r, t, u, dx, dr, dt, du)[:, None])
        parts.append(self.per_label(labels, lambda m, a, b, c, e: torch.func.jvp(
            lambda a_, b_: variance_trace_raw(m.mixture, a_, b_), (a, b), (c, e))[1], x, t, dx, dt)[:, None])
        return torch.cat(parts, 1)

    def _outputs(self, x, r, t, labels, tamed):
        u, J, du_dr, du_dt = self.derivatives(x, r, t, labels)
        parts = [(u, J, du_dr, du_dt)]
        parts.append(self.per_label(labels, lambda m, *a: _velocity_derivatives(m.mixture, *a), x, t))
        if self.labelled:
            parts.append(_velocity_derivatives(self.mixture, x, t))
        if tamed:
            ell = self.per_label(labels, lambda m, x_, r_, t_, *d_: _stretch(m.mixture, x_, r_, t_, d_), x, r, t,
                                 u, J, du_dr, du_dt)
            parts.append((ell[0][:, None], ell[1][:, None, :], ell[2][:, None], ell[3][:, None]))
        tau = self.per_label(labels, lambda m, a, b: _variance_trace(m.mixture, a, b), x, t)
        parts.append((tau[0][:, None], tau[1][:, None, :], torch.zeros_like(tau[0])[:, None], tau[2][:, None]))
        return tuple(torch.cat([p[k] for p in parts], 1) for k in range(4))

    def per_label(self, labels, fn, x, *rest):
        """``fn(exact model, x, *rest)`` (a tensor or a tuple of them) on each label's rows: the
        class's own model for a class label, the mixture's for the null label (or no labels)."""
        if labels is None:
            return fn(self.model(None), x, *rest)
        K = self.n_classes
        keys = torch.where((labels >= 0) & (labels < K), labels, torch.full_like(labels, -1))
        parts, single = None, False
        for key in keys.unique().tolist():
            rows = (keys == key).nonzero().flatten()
            got = fn(self.model(None if key < 0 else int(key)), x[rows], *(a[rows] for a in rest))
            if isinstance(got, torch.Tensor):
                got, single = (got,), True
            if parts is None:
                parts = [torch.zeros((x.shape[0],) + tuple(g.shape[1:]), dtype=g.dtype) for g in got]
            for p, g in zip(parts, got):
                p[rows] = g
        return parts[0] if single else tuple(parts)


# ------------------------------------------------------------------ the tamed directions (docs/MATH.md §13)


FIELD_DIRECTIONS = ("tamed linear", "tamed eulerian", "tamed class")
# at image scale the directions are untamed, and only the linear one decides a case: the eulerian and
# class ones cannot reach a useful resolution within a budget there (docs/MATH.md §13)
IMAGE_DIRECTIONS = ("linear", "interval linear", "eulerian", "class")
IMAGE_DECISIVE = ("linear", "interval linear")


def field_direction_names(tamed: bool, labelled: bool) -> tuple[list, list]:
    """``(names, deciding)`` of the field directions, in ``field_directions``' order."""
    names = list(FIELD_DIRECTIONS if tamed else IMAGE_DIRECTIONS)
    if not labelled:
        names = names[:-1]  # the class direction needs classes
    return names, [n for n in names if tamed or n in IMAGE_DECISIVE]


def field_directions(x, r, t, u, v, v_all, ell, tau, labelled: bool, xp=torch, tamed: bool = True):
    """The tamed directions ``(n, k, d)`` from the exact fields at the call: ``w x``, ``w (u* - v)`` and,
    on a labelled case, ``w (v(x, t | c) - v(x, t))`` (0 on the null label, where ``v`` is the
    mixture's), with ``w = 1 / ((1 + rho^2) (1 + tau))``: ``rho = e^ell = p_t(x) / p_r(Phi(x, t -> r))``
    the flow map's volume stretch (``ell`` None: 1, the image-scale route) and ``tau = tr Cov[v_c | x_t]``
    the label noise at the call. Each is a smooth function of ``(x, r, t)`` whose first derivatives
    are exact wherever those of the fields are. ``tamed=False`` (image scale): ``w = 1``, where in d = 64
    the noise weight spreads the rows' derivatives (measured: 26 times the standard error relative to
    the curvature on digits) instead of taming them, and ``(t - r) x`` (zero on the diagonal, whose
    flow-matching rows carry most of the noise there) after ``x``."""
    if not tamed:
        out = [x, (t - r)[:, None] * x, u - v]
        if labelled:
            out.append(v - v_all)
        return xp.stack(out, axis=1)
    w = 1 / (1 + tau)
    if ell is not None:
        w = w / (1 + xp.exp(2 * ell))
    w = w[:, None]
    out = [w * x, w * (u - v)]
    if labelled:
        out.append(w * (v - v_all))
    return xp.stack(out, axis=1)


@dataclass(frozen=True)
class Outputs:
    """The layout of the stacked exact fields: per row ``[u (d), v (d), v_all (d), ell (1), tau (1)]``; ``v``
    is the row's own field's velocity (its class's, or the mixture's), ``v_all`` the mixture's (a
    labelled case only), ``ell`` the log volume stretch of the flow map (``tamed``; not at image
    scale), ``tau = tr Cov[v_c | x_t]`` of the row's field (its noise)."""

    d: int
    labelled: bool
    tamed: bool

    @property
    def size(self) -> int:
        return self.d * (3 if self.labelled else 2) + (1 if self.tamed else 0) + 1

    def split(self, out):
        """``(u, v, v_all, ell, tau)`` from the stacked outputs (``v_all`` is ``v`` unlabelled, ``ell`` None
        untamed)."""
        d, m = self.d, out.shape[-1]  # out (n, m): plain slices, the same in torch and jax.numpy
        u, v = out[:, :d], out[:, d: 2 * d]
        v_all = out[:, 2 * d: 3 * d] if self.labelled else v
        ell = out[:, m - 2] if self.tamed else None
        return u, v, v_all, ell, out[:, m - 1]


def _velocity_derivatives(mixture, x, t):
    """``(v (n, d), J_x v (n, d, d), d_r v = 0, d_t v (n, d))`` of the closed form, by its hand-written JVP."""
    n, d = x.shape
    v, dv_dt = velocity_jvp_raw(mixture, x, t, torch.zeros_like(x), torch.ones_like(t))
    J = torch.empty(n, d, d, dtype=x.dtype)
    for i in range(d):
        e = torch.zeros_like(x)
        e[:, i] = 1.0
        J[:, :, i] = velocity_jvp_raw(mixture, x, t, e, torch.zeros_like(t))[1]
    return v, J, torch.zeros_like(v), dv_dt


def _variance_trace(mixture, x, t):
    """``(tau (n,), d tau / dx (n, d), d tau / dt (n,))``, ``tau = tr Cov[v_c | x_t = x]``, by autograd."""
    with torch.enable_grad():
        xx, tt = (a.detach().clone().requires_grad_(True) for a in (x, t))
        tau = variance_trace_raw(mixture, xx, tt)
        gx, gt = torch.autograd.grad(tau.sum(), (xx, tt))
    return tau.detach(), gx, gt


def _stretch_value(mixture, x, r, t, u):
    """``ell = log p_t(x) - log p_r(x - (t - r) u)`` (n,)."""
    return log_density_raw(mixture, x, t) - log_density_raw(mixture, x - (t - r)[:, None] * u, r)


def _stretch_tangent(mixture, x, r, t, u, dx, dr, dt, du):
    """The tangent of ``ell`` along ``(dx, dr, dt)`` given ``u*``'s own tangent ``du``: the closed-form
    densities' JVPs at ``x`` and at ``y = x - (t - r) u``, ``dy = dx - (dt - dr) u - (t - r) du``."""
    y = x - (t - r)[:, None] * u
    dy = dx - (dt - dr)[:, None] * u - (t - r)[:, None] * du
    at_x = torch.func.jvp(lambda a, b: log_density_raw(mixture, a, b), (x, t), (dx, dt))[1]
    at_y = torch.func.jvp(lambda a, b: log_density_raw(mixture, a, b), (y, r), (dy, dr))[1]
    return at_x - at_y


def _stretch(mixture, x, r, t, derivatives):
    """``(ell (n,), d ell / dx (n, d), d ell / dr (n,), d ell / dt (n,))``, ``ell = log p_t(x) - log p_r(y)``,
    ``y = x - (t - r) u*(x, r, t)``: by autograd through the closed-form densities and ``u*``'s
    first-order expansion (exact first derivatives). ``e^ell = |det d Phi / dx|`` (the flow carries
    ``p_t`` to ``p_r``)."""
    u, J, du_dr, du_dt = derivatives
    with torch.enable_grad():
        xx, rr, tt = (a.detach().clone().requires_grad_(True) for a in (x, r, t))
        uu = u + torch.einsum("nab,nb->na", J, xx - x) + du_dr * (rr - r)[:, None] + du_dt * (tt - t)[:, None]
        y = xx - (tt - rr)[:, None] * uu
        ell = log_density_raw(mixture, xx, tt) - log_density_raw(mixture, y, rr)
        gx, gr, gt = torch.autograd.grad(ell.sum(), (xx, rr, tt))
    return ell.detach(), gx, gr, gt
