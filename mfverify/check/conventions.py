"""Converters from other conventions to mfverify's (MATH.md §1, §10).

mfverify's convention: data at ``t = 0``, noise at ``t = 1``, ``x_t = (1-t) x0 + t x1``,
``v_c = x1 - x0``, a network ``model(x, r, t)`` with ``r <= t`` (one step goes
``x_r = x_t - (t - r) u``), and a per-sample loss ``loss(model, x0, x1, r, t) -> (n,)``
summed over coordinates. Public code differs (MATH.md §10). Each converter takes a
loss written in another convention and returns one in mfverify's; each is an exact
identity (``tests/test_conventions.py`` checks values and gradients), so the check
battery then applies unchanged. They compose: ``loss_times_t_r(model_args_t_r(f))``.

Network side (what the converted loss hands its ``net``):

- ``model_args_t_r``: the loss calls ``net(z, t, r)``: gets ``model(z, r, t)``;
- ``model_inputs_t_h``: the loss calls ``net(z, t, h)`` with ``h = t - r``: gets
  ``model(z, t - h, t)``;
- ``time_reversed``: noise at ``tau = 0``, data at ``tau = 1`` (``tau = 1 - t``); the
  loss is ``loss(net, x_data, x_noise, a, b)`` with ``a = 1 - t <= b = 1 - r`` (the
  sample at ``a``, the step towards data ending at ``b``), and its ``net(z, a, b)``
  is the average velocity of its own clock, ``z_b = z_a + (b - a) net(z_a, a, b)``:
  it gets ``-model(z, 1 - b, 1 - a)``.

Loss side:

- ``loss_times_t_r``: the loss takes ``(net, x0, x1, t, r)``;
- ``coordinate_mean``: the loss averages over coordinates: times ``d``;
- ``batch_mean``: the loss returns the batch mean: evaluated one sample at a time
  (exact when samples do not interact, as in every loss of MATH.md; ``n`` calls);
- ``as_model(net, inputs)``: a user's network in another argument order as ``model(x, r, t)``.
"""

from __future__ import annotations

import functools

import torch

from mfverify.check.exact_core import convention

__all__ = [
    "model_args_t_r",
    "model_inputs_t_h",
    "time_reversed",
    "loss_times_t_r",
    "coordinate_mean",
    "batch_mean",
    "as_model",
]


def _named(loss, converted, what):
    functools.update_wrapper(converted, loss, assigned=("__module__", "__name__", "__qualname__"), updated=())
    converted.__doc__ = f"{getattr(loss, '__name__', 'loss')} ({what}) in mfverify's conventions."
    return converted


def model_args_t_r(loss):
    """A loss that calls ``net(z, t, r)``, as ``loss(model, x0, x1, r, t)``."""

    def converted(model, x0, x1, r, t, **options):
        return loss(lambda z, t_, r_: model(z, r_, t_), x0, x1, r, t, **options)

    return _named(loss, converted, "network called as net(z, t, r)")


def model_inputs_t_h(loss):
    """A loss that calls ``net(z, t, h)`` with ``h = t - r``, as ``loss(model, x0, x1, r, t)``."""

    def converted(model, x0, x1, r, t, **options):
        return loss(lambda z, t_, h: model(z, t_ - h, t_), x0, x1, r, t, **options)

    return _named(loss, converted, "network called as net(z, t, t - r)")


def time_reversed(loss):
    """A loss with noise at ``tau = 0`` (``tau = 1 - t``), ``loss(net, x_data, x_noise, a, b)``,
    ``a = 1 - t <= b = 1 - r``, whose ``net(z, a, b)`` steps ``z_b = z_a + (b - a) net``.

    In mfverify's clock that step is ``x_r = x_t - (t - r) u(x_t, r, t)`` with
    ``b - a = t - r``, so ``net(z, a, b) = -u(z, 1 - b, 1 - a)``; the pair and the
    path are the same (``(1 - a) x_noise + a x_data = x_t``).
    """

    def converted(model, x0, x1, r, t, **options):
        net = lambda z, a, b: -model(z, 1 - b, 1 - a)  # noqa: E731
        return loss(net, x0, x1, 1 - t, 1 - r, **options)

    return _named(loss, converted, "time reversed: noise at 0")


def loss_times_t_r(loss):
    """A loss with the signature ``loss(net, x0, x1, t, r)``, as ``loss(model, x0, x1, r, t)``."""

    def converted(model, x0, x1, r, t, **options):
        return loss(model, x0, x1, t, r, **options)

    return _named(loss, converted, "times given as (t, r)")


def coordinate_mean(loss):
    """A loss averaged over the ``d`` coordinates, as one summed over them (times ``d``)."""

    def converted(model, x0, x1, r, t, **options):
        return x0.shape[1] * loss(model, x0, x1, r, t, **options)

    return _named(loss, converted, "mean over coordinates")


def batch_mean(loss):
    """A loss that returns the batch mean (a scalar), as the per-sample loss (n,).

    The loss is evaluated on each sample alone; exact when samples do not interact
    (no batch statistics, no sorting or pairing across the batch).
    """

    def converted(model, x0, x1, r, t, **options):
        parts = []
        for i in range(x0.shape[0]):
            value = loss(model, x0[i : i + 1], x1[i : i + 1], r[i : i + 1], t[i : i + 1], **options)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"batch_mean: the loss must return a scalar (the batch mean), got {got}")
            parts.append(value.reshape(()))
        return torch.stack(parts)

    return _named(loss, converted, "batch mean")


def as_model(net, inputs: str = "x,r,t"):
    """A network called in another convention as ``model(x, r, t)``.

    ``inputs``: one of ``exact_core.INPUTS``: ``"x,r,t"`` (mfverify's), ``"x,t,r"``, ``"x,t,h"``
    (``h = t - r``), ``"reversed"`` (``net(z, a, b)`` in the reversed clock of ``time_reversed``) or
    ``"reversed,t,h"`` (noise at 0, ``net(z, tau, h)``); the same table the exact model reads.
    """
    conv = convention(inputs)
    if conv.reversed:  # noise at 0: the network's velocity is -u
        return lambda x, r, t: -net(x, *conv.arguments(r, t))
    return lambda x, r, t: net(x, *conv.arguments(r, t))
