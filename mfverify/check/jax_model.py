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

The directions are written in JAX: ``wavy`` (``sin(W x + b t + c r + e)``, the torch
battery's, the same numbers) and ``wavy2`` (another draw), then the cells of the
triangle ``r < t`` and the diagonal, as in ``ExactNetwork`` (``apply.direction_names``). Conventions of the call
(``inputs``) and the stand-in for times outside ``[0, 1]`` or ``r > t`` (clamped, ``r``
lowered to ``t``, counted) are those of ``mfverify.check.ExactNetwork``; labels go to
the class fields (the null label, ``n_classes`` or ``-1``, to the mixture's). Every
call's ``(r, t)`` is recorded in ``calls`` (a ``CallLog``), also under ``jit``.
"""

from __future__ import annotations

import numpy as np
import torch

from mfverify.check.exact_network import INPUTS, CallLog, ExactNetwork

__all__ = ["exact_model", "require_jax"]


def require_jax():
    """``jax`` and ``jax.numpy``, or an ImportError naming the extra."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as err:
        raise ImportError("mfverify.jax needs JAX: pip install -e \".[jax]\" (or pip install \"jax[cpu]\")") from err
    return jax, jnp


def _wavy_numbers(d: int, seed: int):
    g = torch.Generator().manual_seed(seed + 1)  # smooth_directions' draw: the same W, b, c, e
    W = 1.5 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b, c, e = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(3))
    return tuple(a.numpy() for a in (W, b, c, e))


def exact_model(case, inputs: str = "x,r,t", seed: int = 0):
    """``(apply, params, calls)`` for ``case`` (a name or a mixture); see the module docstring."""
    jax, jnp = require_jax()
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    host = ExactNetwork(case, directions={}, inputs="x,r,t", seed=seed)
    d, calls = host.d, CallLog()
    waves = [_wavy_numbers(d, seed), _wavy_numbers(d, seed + 1000)]

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

    def directions(x, r, t):
        """``(n, J, d)``: the smooth directions, then the cells of the triangle and the diagonal
        (``ExactNetwork``'s layout: a constant unit vector on each cell, chosen without gradient)."""
        out = []
        for W, b, c, e in waves:
            out.append(jnp.sin(x @ jnp.asarray(W, x.dtype).T + t[..., None] * jnp.asarray(b, x.dtype)
                               + r[..., None] * jnp.asarray(c, x.dtype) + jnp.asarray(e, x.dtype)))
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

    def apply(params, x, a, b, labels=None):
        x = jnp.asarray(x)
        shape, n = x.shape, x.shape[0]
        flat = x.reshape(n, -1)
        if flat.shape[-1] != d:
            raise ValueError(f"the exact model of a {d}-dimensional case got x of shape {shape}")
        r, t, sign = _convert(inputs, times(a, n, flat.dtype), times(b, n, flat.dtype))
        u_star = plain if labels is None else make_u_star(jnp.asarray(labels).reshape(-1))
        u = u_star(flat, r, t)
        eps = jnp.asarray(params["eps"]).astype(flat.dtype)
        u = u + jnp.einsum("j,...jd->...d", eps, directions(flat, r, t))
        return (sign * u).reshape(shape)

    names = ["wavy", "wavy2"] + [f"cell {i},{j}" for i, j in host.cells] + ["diagonal"]
    params = {"eps": jnp.zeros(len(names))}  # float64 where jax_enable_x64 is set, float32 otherwise
    apply.direction_names, apply.n_smooth, apply.cells, apply.grid = names, len(waves), host.cells, grid
    return apply, params, calls


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
