"""The default network ``u_theta(x, r, t)`` (MATH.md §1: argument order ``(x, r, t)``)."""

from __future__ import annotations

import math

import torch
from torch import nn

TIME_INPUTS = ("t,t-r", "t,r")
TIME_FEATURES = ("sinusoidal", "fourier")


class TimeFeatures(nn.Module):
    """Features of a scalar time ``s`` (n,) -> (n, 2 * n_freqs + 1).

    ``sinusoidal``: ``[s, sin(pi f_k s), cos(pi f_k s)]`` with ``f_k`` log-spaced in
    [1, max_freq]; ``fourier``: fixed random Gaussian frequencies of scale ``max_freq / 4``.
    """

    def __init__(self, kind: str = "sinusoidal", n_freqs: int = 8, max_freq: float = 64.0, seed: int = 0):
        super().__init__()
        if kind not in TIME_FEATURES:
            raise ValueError(f"time_features must be one of {TIME_FEATURES}, got {kind!r}")
        if kind == "sinusoidal":
            freqs = torch.logspace(0, math.log10(max_freq), n_freqs, dtype=torch.float64)
        else:
            g = torch.Generator().manual_seed(seed)
            freqs = torch.randn(n_freqs, generator=g, dtype=torch.float64).abs() * max_freq / 4
        self.register_buffer("freqs", (math.pi * freqs).to(torch.get_default_dtype()))
        self.dim = 2 * n_freqs + 1

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        arg = s[:, None] * self.freqs.to(s.dtype)
        return torch.cat([s[:, None], torch.sin(arg), torch.cos(arg)], dim=1)


class MeanFlowMLP(nn.Module):
    """``u_theta(x, r, t)``: an MLP on ``x`` and features of two times.

    ``time_inputs="t,t-r"`` (default) feeds ``t`` and the interval ``t - r``;
    ``"t,r"`` feeds ``t`` and ``r``. ``depth`` hidden layers of ``width`` with SiLU.
    """

    def __init__(
        self,
        d: int,
        width: int = 128,
        depth: int = 3,
        time_inputs: str = "t,t-r",
        time_features: str = "sinusoidal",
        n_freqs: int = 8,
    ):
        super().__init__()
        for name, value in (("d", d), ("width", width), ("depth", depth), ("n_freqs", n_freqs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if time_inputs not in TIME_INPUTS:
            raise ValueError(f"time_inputs must be one of {TIME_INPUTS}, got {time_inputs!r}")
        self.d, self.time_inputs = d, time_inputs
        self.time_a = TimeFeatures(time_features, n_freqs, seed=0)
        self.time_b = TimeFeatures(time_features, n_freqs, seed=1)
        layers: list[nn.Module] = []
        fan_in = d + self.time_a.dim + self.time_b.dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.SiLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, d))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        second = t - r if self.time_inputs == "t,t-r" else r
        return self.net(torch.cat([x, self.time_a(t), self.time_b(second)], dim=1))
