"""The exact model as a JAX function, for losses written in JAX (``pip install -e ".[jax]"``).

Public path ``mfverify.jax``. ``apply, params, calls = exact_model(case)`` gives
``apply(params, x, r, t, labels=None) -> u``: the exact average velocity of the case plus
perturbation directions,

    ``u*(x, r, t) + sum_j eps_j h_j(x, r, t)``,  ``params = {"eps": zeros(J)}``,

so ``jax.grad(loss)(params)["eps"]`` is the loss's derivative along each direction at
the exact model. ``u*`` is a ``jax.custom_jvp`` whose primal and tangent call the
float64 truth on the host (``jax.pure_callback``, vectorised over rows): it works
under ``jax.jvp``, ``jax.grad``, ``jax.jit``, ``jax.vmap`` and ``jax.linearize``. Its
tangent is ``J dx + d_r u dr + d_t u dt`` with the truth's exact first derivatives;
the derivatives themselves are constants to JAX (second derivatives of ``u*`` are
zero, as in the torch ``ExactNetwork``; the directions are differentiated exactly).
Arrays of any float dtype go in; the host computes in float64 and answers in the
caller's dtype. ``x`` may be image-shaped ``(B, ...)``; times are ``(B,)``, ``(B, 1, ...)``
or scalars.

Everything the model answers is the torch side's, from one core
(``mfverify.check.exact_core``): the fields (``ExactField.outputs``: ``u*``, the velocities and
the flow map's stretch, per label, with their first derivatives), the conventions of the call
(``inputs``), the stand-in for times outside ``[0, 1]`` or ``r > t``, the directions (the tamed
field directions ``tamed linear``, ``tamed eulerian`` and, on a labelled case, ``tamed class``;
the cells of the triangle ``r < t`` and the diagonal: ``apply.direction_names``) and the cell
bins. ``apply.n_classes`` is a labelled case's null label. Every call's ``(r, t)``
is recorded in ``calls`` (a ``CallLog``), also under ``jit``. Host callbacks run one at a
time (a lock): XLA may call them from several threads, and the truth's own
``torch.func`` transforms are not thread-safe.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from mfverify.cases import get_case
from mfverify.check.exact_core import (GRID, INPUTS, LAYOUTS, CallLog, ExactField, cell_bins, convention,
                                       field_direction_names, field_directions, from_rows, stand_in, to_rows,
                                       triangle_cells)

__all__ = ["exact_model", "flax_module", "require_jax", "JaxExactModel", "INPUTS"]


def require_jax():
    """``jax`` and ``jax.numpy``, or an ImportError naming the extra."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as err:
        raise ImportError("mfverify.jax needs JAX: pip install -e \".[jax]\" (or pip install \"jax[cpu]\")") from err
    return jax, jnp


class JaxExactModel:
    """The exact model of ``case`` as ``model(params, x, a, b, labels=None)``; see the module docstring.

    ``params``: ``{"eps": zeros(J)}``; ``calls``: the ``CallLog``; ``velocity(params, x, s,
    labels=None)``: a second head's ``v(x, s)``; ``direction_names``, ``n_smooth``, ``cells``,
    ``grid``, ``inputs``, ``n_classes``, ``field`` (the host's ``ExactField``)."""

    def __init__(self, case, inputs: str = "x,r,t", seed: int = 0, layout: str = "NHWC", **route):
        self._jax, self._jnp = require_jax()
        self.convention = convention(inputs)
        self.inputs = inputs
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
        mixture = get_case(case) if isinstance(case, str) else case
        self._image = getattr(mixture, "shape", None)
        self.field = ExactField(mixture, **route)
        self.d, self.calls, self.grid = mixture.d, CallLog(), GRID
        self.n_classes = self.field.n_classes
        self._tamed = not self.field.lazy  # as the torch network: untamed at image scale
        self._layout = self.field.layout(tamed=self._tamed)
        fields, self.decisive = field_direction_names(self._tamed, self.field.labelled)
        self.cells = triangle_cells(GRID)
        self.direction_names = fields + [f"cell {i},{j}" for i, j in self.cells] + ["diagonal"]
        self.n_smooth = len(fields)
        self._table = np.full((GRID, GRID), -1, dtype=np.int32)
        for k, (i, j) in enumerate(self.cells):
            self._table[i, j] = k
        self.params = {"eps": self._jnp.zeros(len(self.direction_names))}  # float64 under jax_enable_x64
        self._lock = threading.Lock()
        self._plain = self._u_star(None)

    # ------------------------------------------------------------ the host

    def _host(self, x, r, t, labels):
        """float64 ``ExactField.outputs`` (values, d/dx, d/dr, d/dt of ``[u, v, v_all, ell]``) on the host
        for rows of any leading shape."""
        x = np.asarray(x, dtype=np.float64)
        lead, d, m = x.shape[:-1], self.d, self._layout.size
        rows = lambda a, dtype: torch.from_numpy(  # noqa: E731
            np.broadcast_to(np.asarray(a, dtype=dtype), lead).reshape(-1).copy())
        xf = torch.from_numpy(x.reshape(-1, d).copy())
        rf, tf = rows(r, np.float64), rows(t, np.float64)
        with self._lock:  # XLA may run callbacks concurrently; torch.func inside the truth is not thread-safe
            self.calls.add(rf, tf)
            rs, ts = stand_in(rf, tf)
            lab = None if labels is None else self.field.labels_of(rows(labels, np.int64), len(xf))
            out, J, dr, dt = (a.numpy() for a in self.field.outputs(xf, rs, ts, lab, tamed=self._tamed))
        return out.reshape(*lead, m), J.reshape(*lead, m, d), dr.reshape(*lead, m), dt.reshape(*lead, m)

    def _host_call(self, x, r, t, labels):
        jax = self._jax
        lead, d, m = x.shape[:-1], self.d, self._layout.size
        shapes = (jax.ShapeDtypeStruct((*lead, m), x.dtype), jax.ShapeDtypeStruct((*lead, m, d), x.dtype),
                  jax.ShapeDtypeStruct((*lead, m), x.dtype), jax.ShapeDtypeStruct((*lead, m), x.dtype))

        def fn(x_, r_, t_, *lab):
            return tuple(np.asarray(a, dtype=x.dtype) for a in self._host(x_, r_, t_, lab[0] if lab else None))

        args = (x, r, t) + ((labels,) if labels is not None else ())
        return jax.pure_callback(fn, shapes, *args, vmap_method="broadcast_all")

    def _u_star(self, labels):
        jax, jnp = self._jax, self._jnp

        @jax.custom_jvp
        def u_star(x, r, t):  # the stacked exact fields [u, v, v_all, ell] at (x, r, t)
            return self._host_call(x, r, t, labels)[0]

        @u_star.defjvp
        def u_star_jvp(primals, tangents):
            x, r, t = primals
            dx, dr, dt = tangents
            u, J, du_dr, du_dt = (jax.lax.stop_gradient(a) for a in self._host_call(x, r, t, labels))
            du = jnp.einsum("...ab,...b->...a", J, dx) + du_dr * dr[..., None] + du_dt * dt[..., None]
            return u, du

        return u_star

    # ------------------------------------------------------------ the directions

    def directions(self, x, r, t, fields):
        """``(n, J, d)``: the tamed field directions (from ``fields``: ``u, v, v_all, ell`` at the call),
        then the cells of the triangle and the diagonal (a constant unit vector on each cell, chosen
        without gradient)."""
        jax, jnp = self._jax, self._jnp
        smooth = field_directions(x, r, t, *fields, labelled=self.field.labelled, xp=jnp, tamed=self._tamed)
        rd, td = jax.lax.stop_gradient(r), jax.lax.stop_gradient(t)
        inside = (rd >= 0) & (td <= 1) & (rd <= td)
        diag = inside & (rd == td)
        i, j = (cell_bins(a, self.grid, jnp).astype(jnp.int32) for a in (rd, td))
        cell = jnp.asarray(self._table)[i, j]
        off = inside & ~diag & (cell >= 0)
        n_cells = len(self.cells)
        weights = jax.nn.one_hot(jnp.where(off, cell, 0), n_cells, dtype=x.dtype) * off[:, None]
        weights = jnp.concatenate([weights, diag[:, None].astype(x.dtype)], axis=-1)
        unit = jnp.full((self.d,), 1 / np.sqrt(self.d), dtype=x.dtype)
        return jnp.concatenate([smooth, weights[..., None] * unit], axis=-2)  # (n, J, d)

    # ------------------------------------------------------------ the call

    def _evaluate(self, params, x, r_of, a, b, labels):
        jnp = self._jnp
        x = jnp.asarray(x)
        shape, n = x.shape, x.shape[0]
        flat = to_rows(x, self.layout, self._image, self.d, jnp)

        def times(v):
            v = jnp.asarray(v, flat.dtype)
            return jnp.broadcast_to(v.reshape(-1) if v.size == n else v.reshape(()), (n,))

        r, t, sign = r_of(times(a), times(b))
        if labels is not None:
            if not self.field.labelled:
                raise ValueError(f"labels given to the exact model of an unlabelled case ({self.field.mixture!r})")
            if np.size(labels) not in (1, n):
                raise ValueError(f"labels has {np.size(labels)} entries for a batch of {n}")
            labels = jnp.broadcast_to(jnp.asarray(labels).reshape(-1), (n,))
        u_star = self._plain if labels is None else self._u_star(labels)
        fields = self._layout.split(u_star(flat, r, t))  # the host answers at the stand-in, and logs (r, t)
        eps = jnp.asarray(params["eps"]).astype(flat.dtype)
        u = fields[0] + jnp.einsum("j,...jd->...d", eps, self.directions(flat, r, t, fields))
        return from_rows(sign * u, shape, self.layout, self._image, jnp)

    def __call__(self, params, x, a, b, labels=None):
        return self._evaluate(params, x, self.convention.times, a, b, labels)

    def velocity(self, params, x, s, labels=None):
        """The instantaneous velocity ``u(x, t, t)`` (a second head's ``v(x, s)``, ``s`` in the call's clock)."""

        def at(s_, _):
            t, sign = self.convention.velocity_time(s_)
            return t, t, sign

        return self._evaluate(params, x, at, s, s, labels)


def exact_model(case, inputs: str = "x,r,t", seed: int = 0, layout: str = "NHWC"):
    """``(apply, params, calls)`` for ``case`` (a name or a mixture); see the module docstring.
    ``apply`` is a ``JaxExactModel``; ``layout``: an image case's arrays, ``"NHWC"`` (flax's, the
    default), ``"NCHW"`` or ``"flat"``."""
    model = JaxExactModel(case, inputs=inputs, seed=seed, layout=layout)
    return model, model.params, model.calls


def flax_module(apply, labels=None, heads: int = 1, times=None, name: str | None = None):
    """The exact model as a ``flax.linen`` Module, to stand in for a repository's network.

    Its only parameter is ``eps`` (``{"params": {"eps": (J,)}}``; as a submodule named
    ``"net"``, ``{"params": {"net": {"eps": ...}}}``). A call ``net(x, a, b, *rest, **kw)``
    is ``apply({"eps": eps}, x, *times(a, b), labels=...)``:

    - ``labels``: where the call carries the class labels: a position (0 is ``x``: the
      official MeanFlow's ``net(x, t, h, y)`` is 3, iMF's ``net(x, t, h, omega, t_min,
      t_max, y)`` is 6) or a keyword (``"y"``); ``None``: no labels;
    - ``times``: maps the call's two time arguments to ``apply``'s convention
      (``exact_model(inputs=...)``), e.g. Shortcut's step exponent
      ``lambda t, k: (t, 2.0 ** -k)`` with ``inputs="reversed,t,h"``; default: as given;
    - ``heads=2``: returns ``(u, v)``, ``v`` the exact instantaneous velocity at the
      time ``t`` (iMF's velocity head; its perturbation is the model's at ``r = t``: heads tied).

    Everything else the call passes (guidance scale, interval, ``train``, ``key``) is
    accepted and ignored: the exact model does not depend on it.
    """
    try:
        import flax.linen as nn
    except ImportError as err:
        raise ImportError("mfverify.jax.flax_module needs flax: pip install -e \".[jax]\" (or pip install flax)") \
            from err
    if heads not in (1, 2):
        raise ValueError(f"heads must be 1 (u) or 2 (u, v), got {heads!r}")
    if isinstance(labels, bool) or (labels is not None and not isinstance(labels, (int, str))):
        raise ValueError(f"labels must be a position (int, 0 is x), a keyword (str) or None, got {labels!r}")
    n_eps = len(apply.direction_names)

    class ExactNet(nn.Module):
        @nn.compact
        def __call__(self, x, a, b, *rest, **kwargs):
            eps = self.param("eps", nn.initializers.zeros, (n_eps,))
            if isinstance(labels, int):
                if labels < 3 or labels - 3 >= len(rest):
                    raise TypeError(f"the network call has {3 + len(rest)} positional arguments; labels are "
                                    f"expected at position {labels}")
                y = rest[labels - 3]
            else:
                y = kwargs.get(labels) if labels is not None else None
            a, b = (a, b) if times is None else times(a, b)
            u = apply({"eps": eps}, x, a, b, labels=y)
            if heads == 1:
                return u
            s = b if apply.inputs == "x,r,t" else a  # the time the interval starts from (t)
            return u, apply.velocity({"eps": eps}, x, s, labels=y)

    return ExactNet(name=name)
