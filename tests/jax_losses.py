"""The official JAX losses of MeanFlow, improved MeanFlow and Shortcut models, written in their
repositories' style, for ``mfverify check --as-written --framework jax`` (issue 24).

Each is written from reading the repository (snapshots: Gsunshine/meanflow ``d70cb55``,
Lyy-iiis/imeanflow, kvfrans/shortcut-models) and follows its training step line by line:
a ``flax.linen`` module whose network is a submodule ``net``, its own time sampler,
label dropout and guidance, images ``(B, H, W, C)`` with times ``(B, 1, 1, 1)``,
float32, a batch mean. The network is replaced by the exact model through
``mfverify.jax.flax_module`` (the adapter), so the variables are
``{"params": {"net": params}}``; nothing else changes. A case's points of dimension ``d``
are handed over as ``(B, 1, 1, d)`` images.

The battery's entry points are ``fn(apply, params, x0, labels, key)`` (labelled cases):

- ``meanflow_official`` (the repository's defaults: ``norm_p = 1``, ``omega = 1``,
  ``kappa = 0.5``, 10 % label dropout), ``meanflow_official_p0_unguided`` (``norm_p = 0``,
  ``kappa = 0``), ``meanflow_official_p0_guided`` (``norm_p = 0``, ``kappa = 0.5``);
  ``--inputs x,t,h`` (its ``net(x, t, h, y)``);
- ``imf_official`` (``norm_p = 1``, guidance scale drawn in ``[1, 8]``), ``imf_official_w1_p0``
  (scale 1, ``norm_p = 0``); two heads ``(u, v)``; ``--inputs x,t,h``;
- ``shortcut_official`` (128 denoising steps, a bootstrap row in 8, the EMA's targets, the
  ±4 clips), ``shortcut_official_8_steps``, and ``shortcut_official_unlabelled(apply, params,
  x0, key)`` for unlabelled cases; ``--inputs reversed,t,h`` with the step exponent ``k``
  read as ``h = 2^-k``.

And MeanFlow's Algorithm 1 as a plain JAX function, ``fn(apply, params, x0, key)``:
``meanflow_jax`` (and jitted, ``meanflow_jax_jit``), ``wrong_tangent_jax`` (tangent
``(v, 0, 0)``), ``no_stop_gradient_jax``; the torch ones of ``tests/as_written_losses.py``
written in JAX.
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mfverify.jax import flax_module


# ------------------------------------------------------------------ MeanFlow's Algorithm 1 in plain JAX


def meanflow_jax(apply, params, x0, key, tangent_t=1.0, stop_gradient=True, factor=1.0, grad_share=0.0, clip=None,
                 clip_share=1.0):
    """MeanFlow's Algorithm 1 as a function (mfverify's ``(x, r, t)``): logit-normal times sorted, a
    quarter of the batch at ``r != t``, ``jax.jvp`` along ``(v, 0, 1)``, ``stop_gradient``, a batch
    mean; ``tests/as_written_losses.py:meanflow`` in JAX."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = x0.shape[0]
    a, b = (jax.nn.sigmoid(-0.4 + jax.random.normal(k, (n,), x0.dtype)) for k in (k1, k2))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    r = jnp.where(jax.random.uniform(k3, (n,)) < 0.25, r, t)
    e = jax.random.normal(k4, x0.shape, x0.dtype)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    v = e - x0
    u, dudt = jax.jvp(lambda z_, r_, t_: apply(params, z_, r_, t_), (z, r, t),
                      (v, jnp.zeros_like(r), jnp.full_like(t, tangent_t)))
    target = v - factor * (t - r)[:, None] * dudt
    if clip is not None:
        target = target + clip_share * (jnp.clip(target, -clip, clip) - target)
    if stop_gradient:
        target = jax.lax.stop_gradient(target) + grad_share * (target - jax.lax.stop_gradient(target))
    return jnp.mean(jnp.sum((u - target) ** 2, axis=1))


def defective_jax(defect: str, alpha: float):
    """``tests/as_written_losses.py:defective`` in JAX, jitted: MeanFlow with ``alpha`` times one defect."""
    from tests.as_written_losses import defect_options

    options = defect_options(defect, alpha)
    jitted = {}

    def loss(apply, params, x0, key):
        if apply not in jitted:
            jitted[apply] = jax.jit(lambda p, x, k: meanflow_jax(apply, p, x, k, **options))
        return jitted[apply](params, x0, key)

    loss.__name__ = f"{defect}_{alpha:g}_jax"
    return loss


_JITTED = {}


def meanflow_jax_jit(apply, params, x0, key):
    """The same under ``jax.jit`` (compiled once per exact model)."""
    if apply not in _JITTED:
        _JITTED[apply] = jax.jit(lambda p, x, k: meanflow_jax(apply, p, x, k))
    return _JITTED[apply](params, x0, key)


def wrong_tangent_jax(apply, params, x0, key):
    return meanflow_jax(apply, params, x0, key, tangent_t=0.0)


def no_stop_gradient_jax(apply, params, x0, key):
    return meanflow_jax(apply, params, x0, key, stop_gradient=False)


def _images(x0):
    return x0.reshape(x0.shape[0], 1, 1, -1)


# ------------------------------------------------------------------ MeanFlow (Gsunshine/meanflow, meanflow.py)


class _Sampling(nn.Module):
    """What the MeanFlow and iMF modules write alike: their common settings, logit-normal times
    (``[bz, 1, 1, 1]``), the first ``int(bz * data_proportion)`` rows at ``r = t``, and label dropout
    as a leading block of rows."""

    net: nn.Module
    num_classes: int
    dtype = jnp.float32
    P_mean: float = -0.4
    P_std: float = 1.0
    class_dropout_prob: float = 0.1
    norm_p: float = 1.0
    norm_eps: float = 0.01

    def logit_normal(self, bz):
        rnd = jax.random.normal(self.make_rng("gen"), [bz, 1, 1, 1], dtype=self.dtype)
        return nn.sigmoid(rnd * self.P_std + self.P_mean)

    def sample_tr(self, bz):
        t, r = self.logit_normal(bz), self.logit_normal(bz)
        t, r = jnp.maximum(t, r), jnp.minimum(t, r)
        mask = (jnp.arange(bz) < int(bz * self.data_proportion)).reshape(bz, 1, 1, 1)
        return t, jnp.where(mask, t, r), mask

    def cond_drop(self, v_t, v_g, labels):
        bz = v_t.shape[0]
        rand_mask = jax.random.uniform(self.make_rng("gen"), shape=(bz,)) < self.class_dropout_prob
        num_drop = jnp.sum(rand_mask).astype(jnp.int32)
        drop_mask = jnp.arange(bz)[:, None, None, None] < num_drop
        return jnp.where(drop_mask.reshape(bz), self.num_classes, labels), jnp.where(drop_mask, v_t, v_g)


class MeanFlowStyle(_Sampling):
    """The official ``MeanFlow`` module's loss: ``forward(imgs, labels)``."""

    data_proportion: float = 0.75
    guidance_eq: str = "cfg"
    omega: float = 1.0
    kappa: float = 0.5
    t_start: float = 0.0
    t_end: float = 1.0

    def u_fn(self, x, t, h, y):
        bz = x.shape[0]
        return self.net(x, t.reshape(bz), h.reshape(bz), y)

    def v_fn(self, x, t, y):
        return self.u_fn(x, t, jnp.zeros_like(t), y)

    def guidance_fn(self, v_t, z_t, t, y):
        if self.guidance_eq != "cfg":
            return v_t
        inside = (t >= self.t_start) & (t <= self.t_end)
        y_null = jnp.array([self.num_classes] * z_t.shape[0])
        v_uncond = self.v_fn(z_t, t, y_null)
        omega = jnp.where(inside, self.omega, 1.0)
        if self.kappa == 0:
            return v_uncond + omega * (v_t - v_uncond)
        v_cond = self.v_fn(z_t, t, y)
        kappa = jnp.where(inside, self.kappa, 0.0)
        return omega * v_t + (1 - omega - kappa) * v_uncond + kappa * v_cond

    def forward(self, imgs, labels):
        x = imgs.astype(self.dtype)
        t, r, _ = self.sample_tr(x.shape[0])
        e = jax.random.normal(self.make_rng("gen"), x.shape, dtype=self.dtype)
        z_t = (1 - t) * x + t * e
        v = e - x
        v_g = self.guidance_fn(v, z_t, t, labels)
        y_inp, v_g = self.cond_drop(v, v_g, labels)

        def u_fn(z_t, t, r):
            return self.u_fn(z_t, t, t - r, y_inp)

        u, du_dt = jax.jvp(u_fn, (z_t, t, r), (v_g, jnp.ones_like(t), jnp.zeros_like(t)))
        u_tgt = jax.lax.stop_gradient(v_g - jnp.clip(t - r, 0.0, 1.0) * du_dt)
        loss = jnp.sum((u - u_tgt) ** 2, axis=(1, 2, 3))
        loss = loss / jax.lax.stop_gradient((loss + self.norm_eps) ** self.norm_p)
        return loss.mean(), {"loss": loss.mean()}


def _official(module, adapter: dict, apply, params, x0, labels, key, **config):
    """``module``'s ``forward`` (the official training loss) with the exact model as its network, handed
    over by ``flax_module(apply, **adapter)``; ``config``: the module's settings."""
    model = module(net=flax_module(apply, **adapter), num_classes=apply.n_classes, **config)
    loss, _ = model.apply({"params": {"net": params}}, _images(x0), labels, rngs={"gen": key}, method=module.forward)
    return loss


def _meanflow(apply, params, x0, labels, key, **config):
    return _official(MeanFlowStyle, {"labels": 3}, apply, params, x0, labels, key, **config)


def meanflow_official(apply, params, x0, labels, key):
    """The repository's defaults (configs/default.py): adaptive weighting p = 1, omega 1, kappa 0.5."""
    return _meanflow(apply, params, x0, labels, key)


def meanflow_official_p0_unguided(apply, params, x0, labels, key):
    return _meanflow(apply, params, x0, labels, key, norm_p=0.0, kappa=0.0)


def meanflow_official_p0_guided(apply, params, x0, labels, key):
    return _meanflow(apply, params, x0, labels, key, norm_p=0.0)


# ------------------------------------------------------------------ improved MeanFlow (Lyy-iiis/imeanflow, imf.py)


class IMFStyle(_Sampling):
    """The official ``iMF`` module's loss: a two-head network ``(u, v)`` conditioned on the
    guidance scale and interval, the predicted velocity as the JVP's tangent, a v-loss."""

    data_proportion: float = 0.5
    cfg_beta: float = 1.0
    s_max: float = 7.0

    def sample_cfg_scale(self, bz):
        u = jax.random.uniform(self.make_rng("gen"), (bz, 1, 1, 1), dtype=jnp.float32)
        return jnp.exp(u * jnp.log1p(jnp.asarray(self.s_max, jnp.float32)))  # cfg_beta = 1

    def sample_cfg_interval(self, bz, fm_mask):
        k1, k2 = jax.random.split(self.make_rng("gen"))
        t_min = jax.random.uniform(k1, (bz, 1, 1, 1), minval=0.0, maxval=0.5, dtype=self.dtype)
        t_max = jax.random.uniform(k2, (bz, 1, 1, 1), minval=0.5, maxval=1.0, dtype=self.dtype)
        return jnp.where(fm_mask, 0.0, t_min), jnp.where(fm_mask, 1.0, t_max)

    def u_fn(self, x, t, h, omega, t_min, t_max, y):
        bz = x.shape[0]
        return self.net(x, t.reshape(bz), h.reshape(bz), omega.reshape(bz), t_min.reshape(bz),
                        t_max.reshape(bz), y)

    def v_cond_fn(self, x, t, omega, y):
        return self.u_fn(x, t, jnp.zeros_like(t), omega, jnp.zeros_like(t), jnp.ones_like(t), y)[1]

    def v_fn(self, x, t, omega, y):
        bz = x.shape[0]
        y = jnp.concatenate([y, jnp.array([self.num_classes] * bz)], axis=0)
        w = jnp.concatenate([omega, jnp.ones_like(omega)], axis=0)
        out = self.v_cond_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), w, y)
        return jnp.split(out, 2, axis=0)

    def guidance_fn(self, v_t, z_t, t, y, fm_mask, w, t_min, t_max):
        v_c, v_u = self.v_fn(z_t, t, w, y)
        v_g_fm = v_t + (1 - 1 / w) * (v_c - v_u)
        w = jnp.where((t >= t_min) & (t <= t_max), w, 1.0)
        v_c = self.v_cond_fn(z_t, t, w, y)
        v_g = v_t + (1 - 1 / w) * (v_c - v_u)
        return jnp.where(fm_mask, v_g_fm, v_g), v_c

    def forward(self, images, labels):
        x = images.astype(self.dtype)
        bz = x.shape[0]
        t, r, fm_mask = self.sample_tr(bz)
        e = jax.random.normal(self.make_rng("gen"), x.shape, dtype=self.dtype)
        z_t = (1 - t) * x + t * e
        v_t = e - x
        t_min, t_max = self.sample_cfg_interval(bz, fm_mask)
        omega = self.sample_cfg_scale(bz)
        v_g, v_c = self.guidance_fn(v_t, z_t, t, labels, fm_mask, omega, t_min, t_max)
        labels, v_g = self.cond_drop(v_t, v_g, labels)

        def u_fn(z_t, t, r):
            return self.u_fn(z_t, t, t - r, omega, t_min, t_max, labels)

        u, du_dt, v = jax.jvp(u_fn, (z_t, t, r), (v_c, jnp.ones_like(t), jnp.zeros_like(t)), has_aux=True)
        V = u + (t - r) * jax.lax.stop_gradient(du_dt)
        v_g = jax.lax.stop_gradient(v_g)

        def adp_wt_fn(loss):
            return loss / jax.lax.stop_gradient((loss + self.norm_eps) ** self.norm_p)

        loss_u = adp_wt_fn(jnp.sum((V - v_g) ** 2, axis=(1, 2, 3)))
        loss_v = adp_wt_fn(jnp.sum((v - v_g) ** 2, axis=(1, 2, 3)))
        loss = (loss_u + loss_v).mean()
        return loss, {"loss": loss}


def _imf(apply, params, x0, labels, key, **config):
    return _official(IMFStyle, {"labels": 6, "heads": 2}, apply, params, x0, labels, key, **config)


def imf_official(apply, params, x0, labels, key):
    """The repository's defaults: adaptive weighting p = 1, the guidance scale drawn in [1, 8]."""
    return _imf(apply, params, x0, labels, key)


def imf_official_w1_p0(apply, params, x0, labels, key):
    """Guidance scale 1 (no guidance: the exact model is unguided) and p = 0."""
    return _imf(apply, params, x0, labels, key, s_max=0.0, norm_p=0.0)


def imf_official_unlabelled(apply, params, x0, key):
    """The iMF module on an unlabelled case (scale 1, p = 0): labels of zeros that the adapter does not
    hand the network (``labels=None``), as an adapter for an unconditional run writes it. Under ``jit`` its
    host callbacks (the u head, the v head and the JVP) may run concurrently (issue 39)."""
    labels = jnp.zeros(x0.shape[0], jnp.int32)
    return _official(IMFStyle, {"labels": None, "heads": 2}, apply, params, x0, labels, key, s_max=0.0, norm_p=0.0)


# ------------------------------------------------------------------ Shortcut models (kvfrans/shortcut-models)

SHORTCUT_MODEL = {"denoise_timesteps": 128, "bootstrap_every": 8, "bootstrap_dt_bias": 0, "bootstrap_cfg": 0,
                  "bootstrap_ema": 1, "class_dropout_prob": 0.1, "cfg_scale": 4.0}


class _TrainState:
    """The repository's ``TrainState.call_model`` / ``call_model_ema`` over a flax module."""

    def __init__(self, model, params, params_ema):
        self.model, self.params, self.params_ema = model, params, params_ema

    def call_model(self, x, t, dt, labels, train=False, params=None):
        return self.model.apply({"params": self.params if params is None else params}, x, t, dt, labels)

    def call_model_ema(self, x, t, dt, labels, train=False):
        return self.call_model(x, t, dt, labels, params=self.params_ema)


def get_targets(FLAGS, key, train_state, images, labels):
    """``targets_shortcut.get_targets`` (no forced t or dt): bootstrap rows first, flow rows after."""
    label_key, time_key, noise_key = jax.random.split(key, 3)
    M = FLAGS.model
    bootstrap_batchsize = FLAGS.batch_size // M["bootstrap_every"]
    log2_sections = np.log2(M["denoise_timesteps"]).astype(np.int32)
    dt_base = jnp.repeat(log2_sections - 1 - jnp.arange(log2_sections), bootstrap_batchsize // log2_sections)
    dt_base = jnp.concatenate([dt_base, jnp.zeros(bootstrap_batchsize - dt_base.shape[0],)])
    dt = 1 / (2 ** dt_base)
    dt_base_bootstrap = dt_base + 1
    dt_bootstrap = dt / 2
    dt_sections = jnp.power(2, dt_base)
    t = jax.random.randint(time_key, (bootstrap_batchsize,), minval=0, maxval=dt_sections).astype(jnp.float32)
    t = t / dt_sections
    t_full = t[:, None, None, None]
    x_1 = images[:bootstrap_batchsize]
    x_0 = jax.random.normal(noise_key, x_1.shape)
    x_t = (1 - (1 - 1e-5) * t_full) * x_0 + t_full * x_1
    bst_labels = labels[:bootstrap_batchsize]
    call_model_fn = train_state.call_model if M["bootstrap_ema"] == 0 else train_state.call_model_ema
    v_b1 = call_model_fn(x_t, t, dt_base_bootstrap, bst_labels, train=False)
    t2 = t + dt_bootstrap
    x_t2 = jnp.clip(x_t + dt_bootstrap[:, None, None, None] * v_b1, -4, 4)
    v_b2 = call_model_fn(x_t2, t2, dt_base_bootstrap, bst_labels, train=False)
    v_target = jnp.clip((v_b1 + v_b2) / 2, -4, 4)

    labels_dropout = jax.random.bernoulli(label_key, M["class_dropout_prob"], (labels.shape[0],))
    labels_dropped = jnp.where(labels_dropout, M["num_classes"], labels)
    t_flow = jax.random.randint(time_key, (images.shape[0],), minval=0, maxval=M["denoise_timesteps"])
    t_flow = t_flow.astype(jnp.float32) / M["denoise_timesteps"]
    t_full = t_flow[:, None, None, None]
    x_0 = jax.random.normal(noise_key, images.shape)
    x_t_flow = (1 - (1 - 1e-5) * t_full) * x_0 + t_full * images
    v_t = images - (1 - 1e-5) * x_0
    dt_flow = np.log2(M["denoise_timesteps"]).astype(jnp.int32)
    dt_base_flow = jnp.ones(images.shape[0], dtype=jnp.int32) * dt_flow

    bst_size_data = FLAGS.batch_size - bootstrap_batchsize
    x_t = jnp.concatenate([x_t, x_t_flow[:bst_size_data]], axis=0)
    t = jnp.concatenate([t, t_flow[:bst_size_data]], axis=0)
    dt_base = jnp.concatenate([dt_base, dt_base_flow[:bst_size_data]], axis=0)
    v_t = jnp.concatenate([v_target, v_t[:bst_size_data]], axis=0)
    labels_dropped = jnp.concatenate([bst_labels, labels_dropped[:bst_size_data]], axis=0)
    return x_t, v_t, t, dt_base, labels_dropped


def _shortcut(apply, params, x0, labels, key, **model):
    """``train.py``'s ``loss_fn`` on ``get_targets``'s batch; the targets come from the state's
    (EMA) parameters, the gradient from ``grad_params`` only, as there. ``labels=None``: an
    unlabelled case (every label 0, which the network ignores; dropout's null label 1)."""
    net = flax_module(apply, labels=None if labels is None else 3, times=lambda t, k: (t, 2.0 ** -k))
    images = _images(x0).astype(jnp.float32)
    if labels is None:
        labels, n_classes = jnp.zeros(images.shape[0], jnp.int32), 1
    else:
        n_classes = apply.n_classes
    FLAGS = types.SimpleNamespace(batch_size=images.shape[0],
                                  model={**SHORTCUT_MODEL, "num_classes": n_classes, **model})
    fixed = jax.lax.stop_gradient(params)
    train_state = _TrainState(net, fixed, fixed)
    x_t, v_t, t, dt_base, labels = get_targets(FLAGS, key, train_state, images, labels)

    def loss_fn(grad_params):
        v_prime = train_state.call_model(x_t, t, dt_base, labels, train=True, params=grad_params)
        return jnp.mean(jnp.mean((v_prime - v_t) ** 2, axis=(1, 2, 3)))

    return loss_fn(params)


def shortcut_official(apply, params, x0, labels, key):
    """The repository's defaults: 128 denoising steps (flow rows at d = 1/128), a bootstrap row in 8."""
    return _shortcut(apply, params, x0, labels, key)


def shortcut_official_unlabelled(apply, params, x0, key):
    """The same on an unlabelled case (the default cases; ``wide2d``'s velocities pass the ±4 clips)."""
    return _shortcut(apply, params, x0, None, key)


def shortcut_official_8_steps(apply, params, x0, labels, key):
    """``denoise_timesteps = 8``: the flow rows train ``s(x, t, 1/8)`` toward the instantaneous velocity."""
    return _shortcut(apply, params, x0, labels, key, denoise_timesteps=8)
