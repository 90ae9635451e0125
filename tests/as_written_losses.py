"""Batch losses written the way public repositories write them, for ``mfverify check --as-written``.

Each is ``loss(model, x0) -> scalar``: it draws its own times (logit-normal, a share
of ``r != t``), its own noise, calls the network on the whole batch and returns a
mean. The faithful ones follow the MeanFlow paper's Algorithm 1 (Geng et al. 2025)
and the Shortcut models' training step (Frans et al. 2024), in mfverify's clock
(data at 0, noise at 1, ``model(x, r, t)``); the broken ones change one thing each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_normal_times(n, dtype, mean=-0.4, std=1.0, share=0.25):
    """``(r, t)``: two logit-normal draws sorted, ``r = t`` for all but a ``share`` of the batch."""
    a, b = (torch.sigmoid(mean + std * torch.randn(n, dtype=dtype)) for _ in range(2))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    keep = torch.rand(n, dtype=dtype) < share
    return torch.where(keep, r, t), t


def _target(v, interval, dudt, factor, clip, clip_share, stop_gradient, grad_share):
    """MeanFlow's target ``v - factor (t - r) du/dt``, moved ``clip_share`` of the way to its clip, under a
    stop-gradient that keeps a share ``grad_share`` of its gradient (the value unchanged)."""
    target = v - factor * interval * dudt
    if clip is not None:
        target = target + clip_share * (target.clamp(-clip, clip) - target)
    if stop_gradient:
        target = target.detach() + grad_share * (target - target.detach())
    return target


def _meanflow(model, x0, tangent_t=1.0, stop_gradient=True, clip=None, backend="func", reduction=None, factor=1.0,
              grad_share=0.0, clip_share=1.0):
    n = x0.shape[0]
    r, t = logit_normal_times(n, x0.dtype)
    e = torch.randn_like(x0)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    v = e - x0
    tangents = (v, torch.zeros_like(r), torch.full_like(t, tangent_t))
    if backend == "func":
        u, dudt = torch.func.jvp(model, (z, r, t), tangents)
    else:
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            out = model(*(fwAD.make_dual(a, b) for a, b in zip((z, r, t), tangents)))
            u, dudt = fwAD.unpack_dual(out)
    target = _target(v, (t - r)[:, None], dudt, factor, clip, clip_share, stop_gradient, grad_share)
    if reduction is not None:
        return reduction(u, target)
    return (u - target).square().sum(1).mean()


def meanflow(model, x0):
    """Algorithm 1 as the official code writes it (torch.func.jvp, tangent (v, 0, 1), stop-gradient, p = 0)."""
    return _meanflow(model, x0)


def meanflow_forward_ad(model, x0):
    """The same with torch.autograd.forward_ad."""
    return _meanflow(model, x0, backend="forward_ad")


def meanflow_mse(model, x0):
    """The same with ``F.mse_loss`` (a mean over coordinates and rows), returned with its parts."""
    loss = _meanflow(model, x0, reduction=F.mse_loss)
    return loss, {"mse": loss.detach()}


def meanflow_noise_at_zero_t_h(net, x0):
    """MeanFlow written with noise at ``tau = 0`` and ``net(z, tau, h)`` stepping ``z_{tau+h} = z + h net``
    (``--inputs reversed,t,h``): ``z = tau x0 + (1 - tau) e``, velocity ``x0 - e``, and the
    identity ``net = v + h d/dtau net`` along ``(v, 1, -1)`` (the end ``tau + h`` held fixed)."""
    n = x0.shape[0]
    a, b = logit_normal_times(n, x0.dtype)  # r <= t in mfverify's clock: tau = 1 - t, h = t - r
    tau, h = 1 - b, b - a
    e = torch.randn_like(x0)
    z = tau[:, None] * x0 + (1 - tau[:, None]) * e
    v = x0 - e
    u, du = torch.func.jvp(net, (z, tau, h), (v, torch.ones_like(tau), -torch.ones_like(h)))
    return (u - (v + h[:, None] * du).detach()).square().sum(1).mean()


def _adaptive(u, target):
    per = (u - target).square().sum(1)
    return (per / (per.detach() + 1e-3)).mean()


def meanflow_adaptive(model, x0):
    """The official default: adaptive weighting ``L / sg(L + 1e-3)^p`` with ``p = 1``."""
    return _meanflow(model, x0, reduction=_adaptive)


def wrong_tangent(model, x0):
    """The tangent ``(v, 0, 0)``: the time derivative left out."""
    return _meanflow(model, x0, tangent_t=0.0)


def no_stop_gradient(model, x0):
    """The target not detached."""
    return _meanflow(model, x0, stop_gradient=False)


def tangent_factor(model, x0):
    """The target ``v - 0.95 (t - r) du/dt``: the tangent term scaled by 0.95 (5 % off)."""
    return _meanflow(model, x0, factor=0.95)


def quartic(model, x0):
    """zhuyu-cs/MeanFlow's weighting at ``p = 0``: ``L^2 / sg(L^2 + c)^0`` with ``L = |u - target|^2``, a loss
    in ``|Delta|^4`` whose minimiser is not the conditional mean."""
    return _meanflow(model, x0, reduction=lambda u, target: (u - target).square().sum(1).square().mean())


DEFECTS = ("no_stop_gradient", "wrong_tangent", "tangent_factor", "clipped_target")


def defect_options(defect: str, alpha: float) -> dict:
    """The options of ``_meanflow`` (and ``tests/jax_losses.py:meanflow_jax``) for ``alpha`` times ``defect``."""
    options = {"no_stop_gradient": {"grad_share": alpha}, "wrong_tangent": {"tangent_t": 1.0 - alpha},
               "tangent_factor": {"factor": 1.0 - alpha}, "clipped_target": {"clip": 4.0, "clip_share": alpha}}
    if defect not in options:
        raise ValueError(f"defect must be one of {', '.join(DEFECTS)}, got {defect!r}")
    return options[defect]


def defective(defect: str, alpha: float):
    """MeanFlow with ``alpha`` times one defect (``benchmarks/check_power.py``): ``no_stop_gradient``, a share
    ``alpha`` of the target's gradient kept; ``wrong_tangent``, the tangent ``(v, 0, 1 - alpha)``;
    ``tangent_factor``, the target ``v - (1 - alpha)(t - r) du/dt``; ``clipped_target``, the target moved
    ``alpha`` of the way to its clip at +-4. ``alpha = 0`` is ``meanflow``, ``alpha = 1`` the named loss
    (``tangent_factor``: ``alpha = 0.05``)."""
    options = defect_options(defect, alpha)

    def loss(model, x0):  # (B, d) rows as Algorithm 1, (B, C, H, W) images as image code
        return (_meanflow_images if x0.ndim == 4 else _meanflow)(model, x0, **options)

    loss.__name__ = f"{defect}_{alpha:g}"
    return loss


def meanflow_tiny(model, x0):
    return 1e-8 * meanflow(model, x0)


def meanflow_huge(model, x0):
    return 1e8 * meanflow(model, x0)


def no_stop_gradient_tiny(model, x0):
    return 1e-8 * no_stop_gradient(model, x0)


def clipped_target(model, x0):
    """The target clipped to +-4, as kvfrans/shortcut-models clips its bootstrap targets."""
    return _meanflow(model, x0, clip=4.0)


def diagonal_only(model, x0):
    """Flow matching written with the average-velocity network: ``|u(x_t, t, t) - v_c|^2``."""
    t = torch.rand(x0.shape[0], dtype=x0.dtype)
    e = torch.randn_like(x0)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    return (model(z, t, t) - (e - x0)).square().sum(1).mean()


def _shortcut(model, x0, largest_log2=0, clip=None, on_grid=True, base=128):
    """A Shortcut step: a quarter of the batch regresses flow at ``r = t``; the rest the
    self-consistency ``u(x, t - 2d, t) = (u(x, t - d, t) + u(x', t - 2d, t - d)) / 2``,
    ``x' = x - d u(x, t - d, t)``, for ``2d = 2^-k``, ``k = largest_log2 .. log2(base)``.
    ``on_grid``: ``t`` a multiple of ``2d`` (so ``t - 2d >= 0``); else ``t ~ U(0, 1)``."""
    n = x0.shape[0]
    dtype = x0.dtype
    e = torch.randn_like(x0)
    ks = torch.randint(largest_log2, int(torch.log2(torch.tensor(base))) + 1, (n,))
    two_d = torch.pow(2.0, -ks.to(dtype))
    if on_grid:
        steps = torch.floor(torch.rand(n, dtype=dtype) / two_d) + 1
        t = (steps * two_d).clamp(max=1.0)
    else:
        t = torch.rand(n, dtype=dtype)
    flow = torch.arange(n) < n // 4
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    d = two_d / 2
    with torch.no_grad():
        u1 = model(z[~flow], (t - d)[~flow], t[~flow])
        z_mid = z[~flow] - d[~flow, None] * u1
        u2 = model(z_mid, (t - 2 * d)[~flow], (t - d)[~flow])
        target = (u1 + u2) / 2
        if clip is not None:
            target = target.clamp(-clip, clip)
    t_flow = torch.rand(n, dtype=dtype)
    z_flow = (1 - t_flow[:, None]) * x0 + t_flow[:, None] * e
    u_flow = model(z_flow[flow], t_flow[flow], t_flow[flow])
    u_boot = model(z[~flow], (t - two_d)[~flow], t[~flow])
    return torch.cat([(u_flow - (e - x0)[flow]).square().sum(1),
                      (u_boot - target).square().sum(1)]).mean()


def shortcut(model, x0):
    """Steps 2d from 1 down to 1/128, t on the step's grid: the one-step map (2d = 1 at t = 1) is trained."""
    return _shortcut(model, x0)


def shortcut_small_steps(model, x0):
    """Steps 2d of at most 1/8: the one-step interval is never trained."""
    return _shortcut(model, x0, largest_log2=3)


def shortcut_past_the_end(model, x0):
    """t ~ U(0, 1) whatever the step: r = t - 2d falls below 0."""
    return _shortcut(model, x0, on_grid=False)


def shortcut_clipped(model, x0):
    """Bootstrap targets clipped to +-4, as kvfrans/shortcut-models does."""
    return _shortcut(model, x0, clip=4.0)


def returns_vector(model, x0):
    t = torch.rand(x0.shape[0], dtype=x0.dtype)
    return (model(x0, t, t) - x0).square().sum(1)


def returns_nan(model, x0):
    t = torch.rand(x0.shape[0], dtype=x0.dtype)
    return (model(x0, t, t) * float("nan")).sum()


def returns_detached(model, x0):
    t = torch.rand(x0.shape[0], dtype=x0.dtype)
    return model(x0, t, t).detach().square().mean()


def returns_integer(model, x0):
    return torch.tensor(3)


def raises(model, x0):
    raise RuntimeError("boom")


def other_arguments(model, x0, x1, t):
    return model(x0, t, t).sum()


def meanflow_labelled(model, x0, labels):
    """Class-conditional MeanFlow with label dropout: a tenth of the labels replaced by the null label."""
    null = int(labels.max()) + 1
    y = torch.where(torch.rand(labels.shape[0]) < 0.1, torch.full_like(labels, null), labels)
    return _meanflow(lambda a, b, c: model(a, b, c, labels=y), x0)


def meanflow_guided(model, x0, labels, omega=1.0, kappa=0.5, stop_guidance_gradient=True):
    """MeanFlow's training-time guidance as the official code writes it: a tenth of the labels dropped,
    and on the labelled rows the target velocity ``v~ = omega v_c + kappa u(z, t, t | c) + (1 - omega - kappa)
    u(z, t, t | null)`` (under stop-gradient), the JVP taken along ``(v~, 0, 1)``. Its fixed point is the
    guided field of scale ``omega / (1 - kappa)`` (docs/MATH.md §14): 2 for the defaults."""
    n = x0.shape[0]
    null = int(labels.max()) + 1
    dropped = torch.rand(n) < 0.1
    y = torch.where(dropped, torch.full_like(labels, null), labels)
    r, t = logit_normal_times(n, x0.dtype)
    e = torch.randn_like(x0)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    v = e - x0
    u_c = model(z, t, t, labels=y)
    u_null = model(z, t, t, labels=torch.full_like(labels, null))
    guided = omega * v + kappa * u_c + (1 - omega - kappa) * u_null
    if stop_guidance_gradient:
        guided = guided.detach()
    v_tilde = torch.where(dropped[:, None], v, guided)
    u, dudt = torch.func.jvp(lambda a, b, c: model(a, b, c, labels=y), (z, r, t),
                             (v_tilde.detach(), torch.zeros_like(r), torch.ones_like(t)))
    target = v_tilde - (t - r)[:, None] * dudt.detach()
    return (u - target).square().sum(1).mean()


def meanflow_guided_kappa_without_stop_gradient(model, x0, labels):
    """The same with the guidance terms outside the stop-gradient."""
    return meanflow_guided(model, x0, labels, stop_guidance_gradient=False)


def meanflow_labels_shuffled(model, x0, labels):
    """The labels handed to the network in another row order than the data (a dataloader bug)."""
    return meanflow_labelled(model, x0, labels[torch.randperm(labels.shape[0])])


def meanflow_labels_ignored(model, x0, labels):
    """The same, but the network is never told the label: it learns the unconditional field."""
    return meanflow(model, x0)


def _meanflow_images(model, x0, stop_gradient=True, tangent_t=1.0, factor=1.0, grad_share=0.0, clip=None,
                     clip_share=1.0):
    if x0.ndim != 4:
        raise ValueError(f"an image loss takes (B, C, H, W) batches, got {tuple(x0.shape)}")
    n = x0.shape[0]
    r, t = (a.view(n, 1, 1, 1) for a in logit_normal_times(n, x0.dtype))
    e = torch.randn_like(x0)
    z = (1 - t) * x0 + t * e
    v = e - x0
    u, dudt = torch.func.jvp(model, (z, r, t), (v, torch.zeros_like(r), torch.full_like(t, tangent_t)))
    target = _target(v, t - r, dudt, factor, clip, clip_share, stop_gradient, grad_share)
    return F.mse_loss(u, target)


def meanflow_images(model, x0):
    """Algorithm 1 as image code writes it: (B, C, H, W) batches, times (B, 1, 1, 1), F.mse_loss."""
    return _meanflow_images(model, x0)


def meanflow_images_no_stop_gradient(model, x0):
    """The same without the stop-gradient on the target."""
    return _meanflow_images(model, x0, stop_gradient=False)


def meanflow_images_wrong_tangent(model, x0):
    """The same with the tangent (v, 0, 0): d_t u left out of the total derivative."""
    return _meanflow_images(model, x0, tangent_t=0.0)


def never_calls_the_model(model, x0):
    """A loss that forgets its network: a number of the data alone."""
    return x0.square().mean().requires_grad_()


def calls_under_no_grad(model, x0):
    """The network called under ``torch.no_grad()``: the loss cannot train it."""
    t = torch.rand(x0.shape[0], dtype=x0.dtype)
    with torch.no_grad():
        u = model(x0, t, t)
    return (u - x0).square().mean().requires_grad_()


def interrupted(model, x0):
    """Ctrl-C pressed while the loss runs."""
    raise KeyboardInterrupt


def draws_from_numpy(model, x0):
    """MeanFlow whose times come from numpy's global generator, which mfverify does not seed."""
    import numpy as np

    t = torch.as_tensor(np.random.uniform(0.05, 1.0, size=x0.shape[0]), dtype=x0.dtype)
    e = torch.randn_like(x0)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    return (model(z, t, t) - (e - x0)).square().sum(1).mean()
