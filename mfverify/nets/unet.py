"""A small convolutional U-Net ``u_theta(x, r, t)`` for image-shaped cases (``network = "unet"``).

Points arrive flat, ``(n, d)``, as every objective and sampler hands them; the network views
them as images ``(n, C, H, W)`` (the case's ``shape``, passed by the training loop) and returns
``(n, d)`` again: the reshape happens here, at the boundary, and nowhere else.

Architecture (the DDPM U-Net's shape, small): a 3x3 convolution in, then per level a residual
block (GroupNorm, SiLU, 3x3 convolution, the time embedding added per channel, again) and a 2x
average pool; a residual block at the bottom; per level back up a nearest-neighbour 2x upsample,
the skip concatenated, a residual block; GroupNorm, SiLU and a 3x3 convolution out. Channels
``channels * 2^level``. The times enter as in ``MeanFlowMLP``: features of ``t`` and of ``t - r``
(or ``r``), with a one-hot label for class-conditional cases, through a two-layer MLP to the
embedding. Every operation has forward-mode and batching rules, so ``torch.func.jvp`` and
``vmap`` (an ensemble) go through it (tests/test_unet.py); it has no hand-written ``jvp``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mfverify.nets.conditioned import label_inputs
from mfverify.nets.mlp import TimeFeatures, check_options


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class _Block(nn.Module):
    """A residual block with the time embedding added between its two convolutions."""

    def __init__(self, c_in: int, c_out: int, emb: int, groups: int, dtype=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in, dtype=dtype)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, dtype=dtype)
        self.emb = nn.Linear(emb, c_out, dtype=dtype)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out, dtype=dtype)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, dtype=dtype)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, dtype=dtype)

    def forward(self, x, e):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """``u_theta(x, r, t)`` on images of ``shape = (C, H, W)``; ``H`` and ``W`` divisible by
    ``2^levels``. Options as ``MeanFlowMLP``'s where they mean the same (``time_inputs``,
    ``time_features``, ``n_freqs``, ``max_freq``, ``heads``, ``n_classes``); ``channels`` at
    the top level, ``emb`` the width of the time embedding, ``groups`` of GroupNorm."""

    def __init__(self, d: int, shape=None, channels: int = 32, levels: int = 2, emb: int = 128, groups: int = 8,
                 time_inputs: str = "t,t-r", time_features: str = "sinusoidal", n_freqs: int = 8,
                 max_freq: float = 64.0, heads: int = 1, n_classes: int = 0, dtype: torch.dtype | None = None):
        super().__init__()
        check_options({"d": d, "channels": channels, "levels": levels, "emb": emb, "groups": groups,
                       "n_freqs": n_freqs, "heads": heads}, time_inputs, heads, n_classes, max_freq)
        if shape is None:
            raise ValueError("network 'unet' needs the image shape (C, H, W): the case declares none (an image "
                             "case such as digits or images32 does), or set network_options shape = [C, H, W]")
        try:
            C, H, W = (int(a) for a in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be (C, H, W), three positive ints, got {shape!r}") from None
        if min(C, H, W) < 1 or C * H * W != d:
            raise ValueError(f"shape {tuple(shape)} holds {C * H * W} values, but the points have d = {d}")
        if H % 2**levels or W % 2**levels:
            raise ValueError(f"levels = {levels} halves the image {levels} times: H = {H} and W = {W} must be "
                             f"divisible by {2**levels}")
        self.d, self.shape, self.heads, self.n_classes, self.time_inputs = d, (C, H, W), heads, n_classes, time_inputs
        self.time_a = TimeFeatures(time_features, n_freqs, max_freq, seed=0, dtype=dtype)
        self.time_b = TimeFeatures(time_features, n_freqs, max_freq, seed=1, dtype=dtype)
        fan_in = self.time_a.dim + self.time_b.dim + (n_classes + 1 if n_classes else 0)
        self.embed = nn.Sequential(nn.Linear(fan_in, emb, dtype=dtype), nn.SiLU(), nn.Linear(emb, emb, dtype=dtype))
        widths = [channels * 2**k for k in range(levels + 1)]
        self.inp = nn.Conv2d(C, channels, 3, padding=1, dtype=dtype)
        self.down = nn.ModuleList(_Block(widths[k], widths[k + 1], emb, groups, dtype) for k in range(levels))
        self.mid = _Block(widths[-1], widths[-1], emb, groups, dtype)
        self.up = nn.ModuleList(_Block(widths[k + 1] * 2, widths[k], emb, groups, dtype)
                                for k in reversed(range(levels)))
        self.out_norm = nn.GroupNorm(_groups(channels, groups), channels, dtype=dtype)
        self.out = nn.Conv2d(channels, heads * C, 3, padding=1, dtype=dtype)

    def _outputs(self, x, r, t, labels=None):
        second = t - r if self.time_inputs == "t,t-r" else r
        e = self.embed(torch.cat([self.time_a(t), self.time_b(second), *label_inputs(self.n_classes, labels, x)], 1))
        h = self.inp(x.reshape(x.shape[0], *self.shape))
        skips = []
        for block in self.down:
            h = block(h, e)
            skips.append(h)
            h = nn.functional.avg_pool2d(h, 2)
        h = self.mid(h, e)
        for block in self.up:
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], 1), e)
        out = self.out(nn.functional.silu(self.out_norm(h)))
        return out.reshape(x.shape[0], self.heads, self.d)

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        return self._outputs(x, r, t, labels)[:, 0]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        """``v_theta(x, t)``: the second head at ``(x, t, t)``, or ``u_theta(x, t, t)`` with one head."""
        return self._outputs(x, t, t, labels)[:, -1]
