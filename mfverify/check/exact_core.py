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
- **the directions**: the smooth ones (``smooth_directions``: a random MLP and a wavy
  field, with their numbers for another array library), the class sign of ``wavy by
  class`` (``class_sign``), and the cells of the ``(r, t)`` triangle (``cell_bins``,
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
from mfverify.nets import build_network
from mfverify.nets.mlp import mlp_numbers
from mfverify.theory.identities import ExactModel

__all__ = ["Convention", "CONVENTIONS", "INPUTS", "GRID", "stand_in", "class_sign", "cell_bins", "triangle_cells",
           "smooth_directions", "ExactField", "CallLog", "LABEL_KEYWORDS"]

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


def stand_in(r, t, xp=torch):
    """``(r, t)`` where the exact model answers: ``t`` clamped into ``[0, 1]``, ``r`` into ``[0, t]``."""
    t_in = xp.clip(t, 0.0, 1.0)
    return xp.minimum(xp.clip(r, 0.0, 1.0), t_in), t_in


def class_sign(labels, n_classes: int, xp=torch):
    """``(-1)^label`` on the classes, 0 on the null label (``n_classes`` or ``-1``): the sign of the
    ``wavy by class`` direction, which differs between classes."""
    return xp.where((labels >= 0) & (labels < n_classes), 1.0 - 2.0 * (labels % 2), 0.0)


def cell_bins(a, grid: int = GRID, xp=torch):
    """The cell index ``floor(a grid)`` of a time, clipped into ``0 .. grid - 1`` (a float array)."""
    return xp.clip(xp.floor(a * grid), 0, grid - 1)


def triangle_cells(grid: int = GRID) -> list[tuple[int, int]]:
    """The cells ``(i, j)`` of the triangle ``r <= t``, ``i/G <= r < (i+1)/G``, ``j/G <= t < (j+1)/G``."""
    return [(i, j) for j in range(grid) for i in range(j + 1)]


def smooth_directions(d: int, seed: int) -> dict:
    """Smooth directions h(x, r, t): a small random network, and ``sin(W x + b t + c r + e)``
    with a Jacobian of order 1.5 (the effects of J_x h stand out of Monte Carlo noise).
    ``numbers`` on each: the network's (``nets.mlp.mlp_numbers``) and ``(W, b, c, e)``, for the
    same directions in another array library."""
    torch.manual_seed(seed)
    net = build_network("mlp", d, {"width": 16, "depth": 2}, dtype=torch.float64).double()
    g = torch.Generator().manual_seed(seed + 1)
    W = 1.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b, c, e = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3))

    def wavy(x, r, t):
        return torch.sin(x @ W.T + t[:, None] * b + r[:, None] * c + e)

    wavy.numbers = tuple(a.numpy().copy() for a in (W, b, c, e))
    net.numbers = mlp_numbers(net)
    return {"network": net, "wavy": wavy}


def wavy_numbers(numbers, x, r, t, xp):
    """``sin(W x + b t + c r + e)`` from ``wavy.numbers`` in the array library ``xp``."""
    W, b, c, e = (xp.asarray(a, dtype=x.dtype) for a in numbers)
    return xp.sin(x @ W.T + t[:, None] * b + r[:, None] * c + e)


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
    """``u*`` of a case, per label: ``derivatives`` (values and exact first derivatives, remembered
    for the last few point sets), ``values`` and ``along`` (one tangent; the image-scale route).

    ``mixture``: the case; ``route``: the truth's ``method``, ``rtol``, ``atol``. ``lazy``: a
    ``LowRankMixture``, whose derivatives are solved along the tangents a loss asks for.
    Inputs are float64 ``x (n, d)``, ``r, t (n,)`` at valid times (the fronts apply the
    stand-in), ``labels`` None or an int64 (n,) tensor (``labels_of`` checks a caller's)."""

    def __init__(self, mixture, **route):
        self.mixture, self.route = mixture, route
        self.d = mixture.d
        self.lazy = isinstance(mixture, LowRankMixture)
        self.labelled = getattr(mixture, "labels", None) is not None
        self.n_classes = mixture.n_classes if self.labelled else 0
        self._models: dict = {}

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

    def derivatives(self, x, r, t, labels=None):
        """``(u (n, d), J_x u (n, d, d), d_r u (n, d), d_t u (n, d))``."""
        return self.per_label(labels, lambda m, *a: m._derivatives(*a), x, r, t)

    def values(self, x, r, t, labels=None):
        """``u (n, d)`` alone (the truth's values route)."""
        return self.per_label(labels, lambda m, *a: truth.average_velocity(m.mixture, *a, **m.route), x, r, t)

    def along(self, x, r, t, dx, dr, dt, labels=None):
        """``J_x u dx + d_r u dr + d_t u dt (n, d)``: one tangent, solved with the flow."""
        return self.per_label(labels, lambda m, *a: truth.average_velocity_jvp(m.mixture, *a, **m.route)[1],
                              x, r, t, dx.double(), dr.double(), dt.double())

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
