"""The default network ``u_theta(x, r, t)`` (MATH.md §1: argument order ``(x, r, t)``)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from mfverify.nets.conditioned import label_inputs

TIME_INPUTS = ("t,t-r", "t,r")
TIME_FEATURES = ("sinusoidal", "fourier")


class _SiluTangent(torch.autograd.Function):
    """``dh * silu'(h)`` as one graph node (its backward written out), for gradients
    through a tangent (``mf_full``, ``mf_nosg``).

    ``silu'(h) = s (1 + h (1 - s))``, ``silu''(h) = s (1 - s) (2 + h (1 - 2 s))``, ``s = sigmoid(h)``.
    """

    generate_vmap_rule = True  # vmap-safe: an ensemble (mfverify.train.ensemble) maps it over members

    @staticmethod
    def forward(dh, h):
        return torch.ops.aten.silu_backward(dh, h)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        dh, h = ctx.saved_tensors
        s = torch.sigmoid(h)
        grad_dh = torch.ops.aten.silu_backward(grad, h)
        grad_h = grad * dh * (s * (1 - s) * (2 + h * (1 - 2 * s)))
        return grad_dh, grad_h


class TimeFeatures(nn.Module):
    """Features of a scalar time ``s`` (n,) -> (n, 2 * n_freqs + 1).

    ``sinusoidal``: ``[s, sin(pi f_k s), cos(pi f_k s)]`` with ``f_k`` log-spaced in
    [1, max_freq]; ``fourier``: fixed random Gaussian frequencies of scale ``max_freq / 4``.
    """

    def __init__(
        self, kind: str = "sinusoidal", n_freqs: int = 8, max_freq: float = 64.0, seed: int = 0, dtype=None
    ):
        super().__init__()
        if kind not in TIME_FEATURES:
            raise ValueError(f"time_features must be one of {TIME_FEATURES}, got {kind!r}")
        if kind == "sinusoidal":
            freqs = torch.logspace(0, math.log10(max_freq), n_freqs, dtype=torch.float64)
        else:
            g = torch.Generator().manual_seed(seed)
            freqs = torch.randn(n_freqs, generator=g, dtype=torch.float64).abs() * max_freq / 4
        self.register_buffer("freqs", (math.pi * freqs).to(dtype or torch.get_default_dtype()))
        self.dim = 2 * n_freqs + 1

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        arg = s[:, None] * self.freqs.to(s.dtype)
        return torch.cat([s[:, None], torch.sin(arg), torch.cos(arg)], dim=1)

    def forward_with_tangent(self, s, ds):
        f = self.freqs.to(s.dtype)
        arg = s[:, None] * f
        sin, cos = torch.sin(arg), torch.cos(arg)
        dsc = ds[:, None]
        return (
            torch.cat([s[:, None], sin, cos], dim=1),
            torch.cat([dsc, cos * f * dsc, -sin * f * dsc], dim=1),
        )


def check_options(sizes: dict, time_inputs: str, heads: int, n_classes: int, max_freq: float) -> None:
    """The options a network shares with ``MeanFlowMLP`` (``sizes``: positive ints by name), checked."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if time_inputs not in TIME_INPUTS:
        raise ValueError(f"time_inputs must be one of {TIME_INPUTS}, got {time_inputs!r}")
    if heads > 2:
        raise ValueError(f"heads must be 1 (u) or 2 (u, v), got {heads!r}")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 0:
        raise ValueError(f"n_classes must be an int >= 0 (0: unconditional), got {n_classes!r}")
    if not max_freq > 0:
        raise ValueError(f"max_freq must be positive, got {max_freq!r}")


class MeanFlowMLP(nn.Module):
    """``u_theta(x, r, t)``: an MLP on ``x`` and features of two times.

    ``time_inputs="t,t-r"`` (default) feeds ``t`` and the interval ``t - r``;
    ``"t,r"`` feeds ``t`` and ``r``. ``depth`` hidden layers of ``width`` with SiLU.

    Two heads (``heads=2``, for objectives that train ``(u_theta, v_theta)`` such as
    ``imf``): the last layer has ``2 d`` outputs, ``u_theta(x, r, t)`` the first ``d``
    and ``velocity(x, t) = v_theta(x, t)`` the last ``d`` at ``(x, t, t)``. With one
    head ``velocity(x, t)`` is ``u_theta(x, t, t)`` itself (the tied instantaneous
    velocity). ``forward`` and ``jvp`` are ``u_theta``'s either way, so sampling and
    every evaluation use the ``u`` head.

    Class-conditional (``n_classes > 0``, for labelled mixtures): every call takes
    ``labels`` (n,) int64 in ``0 .. n_classes - 1`` or ``NO_LABEL`` (-1, the "none"
    label of classifier-free guidance), fed as a one-hot of ``n_classes + 1`` inputs;
    ``labels=None`` is "none" for every row. ``Conditioned(model, labels)`` binds them,
    so that every objective trains a conditional model unchanged.
    """

    def __init__(
        self,
        d: int,
        width: int = 128,
        depth: int = 3,
        time_inputs: str = "t,t-r",
        time_features: str = "sinusoidal",
        n_freqs: int = 8,
        max_freq: float = 64.0,
        heads: int = 1,
        n_classes: int = 0,
        dtype: torch.dtype | None = None,
    ):
        """``dtype``: of the parameters as initialised (default: torch's default dtype).
        The initial draws depend on it, so fix it where results must not depend on the
        caller's default dtype (``train.build_model`` uses float32)."""
        super().__init__()
        check_options({"d": d, "width": width, "depth": depth, "n_freqs": n_freqs, "heads": heads}, time_inputs,
                      heads, n_classes, max_freq)
        self.d, self.time_inputs, self.heads, self.n_classes = d, time_inputs, heads, n_classes
        self.time_a = TimeFeatures(time_features, n_freqs, max_freq, seed=0, dtype=dtype)
        self.time_b = TimeFeatures(time_features, n_freqs, max_freq, seed=1, dtype=dtype)
        layers: list[nn.Module] = []
        fan_in = d + self.time_a.dim + self.time_b.dim + (n_classes + 1 if n_classes else 0)
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, dtype=dtype), nn.SiLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, heads * d, dtype=dtype))
        self.net = nn.Sequential(*layers)

    def _label_inputs(self, labels, x):
        """The one-hot of ``labels`` (-1: the last, "none", slot), or nothing if unconditional."""
        return label_inputs(self.n_classes, labels, x)

    def _outputs(self, x, r, t, labels=None):
        second = t - r if self.time_inputs == "t,t-r" else r
        return self.net(torch.cat([x, self.time_a(t), self.time_b(second), *self._label_inputs(labels, x)], dim=1))

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        out = self._outputs(x, r, t, labels)
        return out if self.heads == 1 else out[:, : self.d]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        """``v_theta(x, t)``: the second head at ``(x, t, t)``, or ``u_theta(x, t, t)`` with one head."""
        out = self._outputs(x, t, t, labels)
        return out if self.heads == 1 else out[:, self.d :]

    def jvp(self, x, r, t, dx, dr, dt, tangent_grad: bool = True, labels=None):
        """``(u, J_x u . dx + d_r u dr + d_t u dt)``: forward mode written out layer by layer.

        One pass carries the primal and the tangent (``Linear``: ``dh -> W dh``;
        SiLU: ``dh -> (s + h s (1 - s)) dh``, ``s = sigmoid(h)``). With
        ``tangent_grad=False`` the tangent is computed without recording a graph:
        the backward pass then costs what ``fm``'s does (the ``sg`` objectives).
        """
        tangent_mode = contextlib.nullcontext() if tangent_grad else torch.no_grad()
        second, dsecond = (t - r, dt - dr) if self.time_inputs == "t,t-r" else (r, dr)
        fa, dfa = self.time_a.forward_with_tangent(t, dt)
        fb, dfb = self.time_b.forward_with_tangent(second, dsecond)
        onehot = self._label_inputs(labels, x)
        h = torch.cat([x, fa, fb, *onehot], dim=1)
        with tangent_mode:
            dh = torch.cat([dx, dfa, dfb, *(torch.zeros_like(a) for a in onehot)], dim=1)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                h = layer(h)
                with tangent_mode:
                    dh = nn.functional.linear(dh, layer.weight)
            else:  # SiLU: dh * silu'(h)
                if tangent_grad:
                    dh = _SiluTangent.apply(dh, h)
                else:
                    with torch.no_grad():
                        dh = torch.ops.aten.silu_backward(dh, h)
                h = nn.functional.silu(h)
        return (h, dh) if self.heads == 1 else (h[:, : self.d], dh[:, : self.d])

