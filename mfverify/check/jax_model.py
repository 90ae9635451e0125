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

The directions are ``ExactNetwork``'s, written in JAX with the same numbers: ``network``
(the random MLP), ``wavy`` (``sin(W x + b t + c r + e)``) and, on labelled cases, ``wavy by
class``; then the cells of the triangle ``r < t`` and the diagonal (``apply.direction_names``). Conventions of the call
(``inputs``) and the stand-in for times outside ``[0, 1]`` or ``r > t`` (clamped, ``r``
lowered to ``t``, counted) are those of ``mfverify.check.ExactNetwork``; labels go to
the class fields (the null label, ``n_classes`` or ``-1``, to the mixture's). Every
call's ``(r, t)`` is recorded in ``calls`` (a ``CallLog``), also under ``jit``.
"""

from __future__ import annotations

import numpy as np
import torch

from mfverify.check.exact_network import INPUTS, CallLog, ExactNetwork, smooth_directions

__all__ = ["exact_model", "flax_module", "require_jax"]


def require_jax():
    """``jax`` and ``jax.numpy``, or an ImportError naming the extra."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as err:
        raise ImportError("mfverify.jax needs JAX: pip install -e \".[jax]\" (or pip install \"jax[cpu]\")") from err
    return jax, jnp


def _smooth_numbers(d: int, seed: int, labelled: bool):
    """The torch battery's smooth directions as numbers (``smooth_directions(d, seed)``): the
    random MLP's layers and time frequencies, and the wavy direction's ``W, b, c, e``."""
    smooth = smooth_directions(d, seed)
    net = smooth["network"]
    layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy())
              for m in net.net if isinstance(m, torch.nn.Linear)]
    freqs = (net.time_a.freqs.numpy().copy(), net.time_b.freqs.numpy().copy())
    wavy = tuple(a.numpy().copy() for a in smooth["wavy"].numbers)
    names = list(smooth) + (["wavy by class"] if labelled else [])
    return names, layers, freqs, wavy


def exact_model(case, inputs: str = "x,r,t", seed: int = 0):
    """``(apply, params, calls)`` for ``case`` (a name or a mixture); see the module docstring."""
    jax, jnp = require_jax()
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    host = ExactNetwork(case, directions={}, inputs="x,r,t", seed=seed)
    d, calls = host.d, CallLog()
    labelled = getattr(host.mixture, "labels", None) is not None
    smooth_names, layers, freqs, wavy = _smooth_numbers(d, seed, labelled)

    def derivatives(x, r, t, labels):
        """float64 ``(u, J, d_r u, d_t u)`` on the host for rows of any leading shape."""
        x = np.asarray(x, dtype=np.float64)
        lead = x.shape[:-1]
        rows = lambda a, dtype: torch.from_numpy(  # noqa: E731
            np.broadcast_to(np.asarray(a, dtype=dtype), lead).reshape(-1).copy())
        xf = torch.from_numpy(x.reshape(-1, d).copy())
        rf, tf = rows(r, np.float64), rows(t, np.float64)
        calls.add(rf, tf)
        ts = tf.clamp(0.0, 1.0)  # the stand-in: times clamped into [0, 1], r lowered to t
        rs = torch.minimum(rf.clamp(0.0, 1.0), ts)
        lab = None if labels is None else host._labels({"labels": rows(labels, np.int64)}, len(xf))
        u, J, dr, dt = (a.numpy() for a in host._derivatives(xf, rs, ts, lab))
        return u.reshape(*lead, d), J.reshape(*lead, d, d), dr.reshape(*lead, d), dt.reshape(*lead, d)

    def host_call(x, r, t, labels):
        lead = x.shape[:-1]
        shapes = (jax.ShapeDtypeStruct((*lead, d), x.dtype), jax.ShapeDtypeStruct((*lead, d, d), x.dtype),
                  jax.ShapeDtypeStruct((*lead, d), x.dtype), jax.ShapeDtypeStruct((*lead, d), x.dtype))

        def fn(x_, r_, t_, *lab):
            out = derivatives(x_, r_, t_, lab[0] if lab else None)
            return tuple(np.asarray(a, dtype=x.dtype) for a in out)

        args = (x, r, t) + ((labels,) if labels is not None else ())
        return jax.pure_callback(fn, shapes, *args, vmap_method="broadcast_all")

    def make_u_star(labels):
        @jax.custom_jvp
        def u_star(x, r, t):
            return host_call(x, r, t, labels)[0]

        @u_star.defjvp
        def u_star_jvp(primals, tangents):
            x, r, t = primals
            dx, dr, dt = tangents
            u, J, du_dr, du_dt = (jax.lax.stop_gradient(a) for a in host_call(x, r, t, labels))
            du = jnp.einsum("...ab,...b->...a", J, dx) + du_dr * dr[..., None] + du_dt * dt[..., None]
            return u, du

        return u_star

    plain = make_u_star(None)

    grid = host.grid
    table = np.full((grid, grid), -1, dtype=np.int32)
    for k, (i, j) in enumerate(host.cells):
        table[i, j] = k
    n_cells = len(host.cells)

    def features(s, f):
        arg = s[:, None] * jnp.asarray(f, s.dtype)
        return jnp.concatenate([s[:, None], jnp.sin(arg), jnp.cos(arg)], axis=1)

    def network(x, r, t):
        """The torch battery's random MLP direction (``MeanFlowMLP``: ``x``, features of ``t`` and ``t - r``)."""
        h = jnp.concatenate([x, features(t, freqs[0]), features(t - r, freqs[1])], axis=1)
        for k, (weight, bias) in enumerate(layers):
            h = h @ jnp.asarray(weight, x.dtype).T + jnp.asarray(bias, x.dtype)
            if k < len(layers) - 1:
                h = jax.nn.silu(h)
        return h

    def wavy_direction(x, r, t):
        W, b, c, e = (jnp.asarray(a, x.dtype) for a in wavy)
        return jnp.sin(x @ W.T + t[:, None] * b + r[:, None] * c + e)

    def directions(x, r, t, labels):
        """``(n, J, d)``: the smooth directions (``ExactNetwork``'s: ``network``, ``wavy`` and, on a
        labelled case, ``wavy`` times ``(-1)^label``, 0 on the null label or without labels), then
        the cells of the triangle and the diagonal (a constant unit vector on each cell, chosen
        without gradient)."""
        w = wavy_direction(x, r, t)
        out = [network(x, r, t), w]
        if labelled:
            if labels is None:
                sign = jnp.zeros(x.shape[0], x.dtype)
            else:
                K = host.mixture.n_classes
                sign = jnp.where((labels >= 0) & (labels < K), 1.0 - 2.0 * (labels % 2), 0.0).astype(x.dtype)
            out.append(sign[:, None] * w)
        smooth = jnp.stack(out, axis=-2)
        rd, td = jax.lax.stop_gradient(r), jax.lax.stop_gradient(t)
        inside = (rd >= 0) & (td <= 1) & (rd <= td)
        diag = inside & (rd == td)
        i = jnp.clip(jnp.floor(rd * grid), 0, grid - 1).astype(jnp.int32)
        j = jnp.clip(jnp.floor(td * grid), 0, grid - 1).astype(jnp.int32)
        cell = jnp.asarray(table)[i, j]
        off = inside & ~diag & (cell >= 0)
        weights = jax.nn.one_hot(jnp.where(off, cell, 0), n_cells, dtype=x.dtype) * off[:, None]
        weights = jnp.concatenate([weights, diag[:, None].astype(x.dtype)], axis=-1)
        unit = jnp.full((d,), 1 / np.sqrt(d), dtype=x.dtype)
        return jnp.concatenate([smooth, weights[..., None] * unit], axis=-2)  # (n, J, d)

    def times(v, n, dtype):
        v = jnp.asarray(v, dtype)
        return jnp.broadcast_to(v.reshape(-1) if v.size == n else v.reshape(()), (n,))

    def evaluate(params, x, a, b, labels, convert):
        x = jnp.asarray(x)
        shape, n = x.shape, x.shape[0]
        flat = x.reshape(n, -1)
        if flat.shape[-1] != d:
            raise ValueError(f"the exact model of a {d}-dimensional case got x of shape {shape}")
        r, t, sign = convert(times(a, n, flat.dtype), times(b, n, flat.dtype))
        if labels is not None:
            if not labelled:
                raise ValueError(f"labels given to the exact model of an unlabelled case ({host.mixture!r})")
            if np.size(labels) not in (1, n):
                raise ValueError(f"labels has {np.size(labels)} entries for a batch of {n}")
            labels = jnp.broadcast_to(jnp.asarray(labels).reshape(-1), (n,))
        u_star = plain if labels is None else make_u_star(labels)
        u = u_star(flat, r, t)
        eps = jnp.asarray(params["eps"]).astype(flat.dtype)
        u = u + jnp.einsum("j,...jd->...d", eps, directions(flat, r, t, labels))
        return (sign * u).reshape(shape)

    def apply(params, x, a, b, labels=None):
        return evaluate(params, x, a, b, labels, lambda a_, b_: _convert(inputs, a_, b_))

    def velocity(params, x, s, labels=None):
        """The instantaneous velocity ``u(x, t, t)`` (a second head's ``v(x, s)``, ``s`` in the call's clock)."""
        reversed_clock = inputs.startswith("reversed")
        return evaluate(params, x, s, s, labels,
                        lambda a_, _: (1 - a_, 1 - a_, -1.0) if reversed_clock else (a_, a_, 1.0))

    names = smooth_names + [f"cell {i},{j}" for i, j in host.cells] + ["diagonal"]
    params = {"eps": jnp.zeros(len(names))}  # float64 where jax_enable_x64 is set, float32 otherwise
    apply.direction_names, apply.n_smooth, apply.cells, apply.grid = names, len(smooth_names), host.cells, grid
    apply.velocity, apply.inputs = velocity, inputs
    apply.n_classes = host.mixture.n_classes if labelled else 0  # the null label of a labelled case
    return apply, params, calls


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


def _convert(inputs, a, b):
    """``(r, t, sign)`` in mfverify's clock from the call's two time arguments (``INPUTS``)."""
    if inputs == "x,r,t":
        return a, b, 1.0
    if inputs == "x,t,r":
        return b, a, 1.0
    if inputs == "x,t,h":
        return a - b, a, 1.0
    if inputs == "reversed,t,h":
        return 1 - a - b, 1 - a, -1.0
    return 1 - b, 1 - a, -1.0  # reversed: net(z, a, b) = -u(z, 1 - b, 1 - a)
