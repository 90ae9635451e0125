"""Samplers from noise (t = 1) to data (t = 0) on a time grid (MATH.md §5).

- ``average_velocity_sampler(u, x1, grid)``: ``x_{i+1} = x_i - (t_i - t_{i+1}) u(x_i, t_{i+1}, t_i)``; NFE = n.
- ``euler(v, x1, grid)``: ``x_{i+1} = x_i - (t_i - t_{i+1}) v(x_i, t_i)``; NFE = n.
- ``heun(v, x1, grid)``: Euler predictor, trapezoidal corrector on every step,
  including the last (t = 0); NFE = 2n.
- ``rk4(v, x1, grid)``: classical Runge-Kutta; NFE = 4n.

``u(x, r, t)`` and ``v(x, t)`` are any callables on (n, d) points and (n,) times
(a trained model, ``model_as_velocity(model)``, or the exact fields). Every
sampler returns ``(x0, nfe)``. The grid is any strictly decreasing sequence
from 1 to 0 (``uniform_grid(n)`` by default).
"""

from __future__ import annotations

import torch


def uniform_grid(n: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """``1 = t_0 > t_1 > ... > t_n = 0``, equally spaced; n steps."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (the number of steps) must be a positive int, got {n!r}")
    return torch.linspace(1.0, 0.0, n + 1, device=device, dtype=dtype)


def check_grid(grid) -> torch.Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be a 1-D sequence of at least 2 times, got shape {tuple(grid.shape)}")
    if grid[0] != 1 or grid[-1] != 0:
        raise ValueError(f"grid must run from 1 to 0, got {grid[0].item()} to {grid[-1].item()}")
    if not (grid[1:] < grid[:-1]).all():
        raise ValueError("grid must be strictly decreasing")
    return grid


def _times(grid, i, x):
    full = lambda s: torch.full((x.shape[0],), float(s), device=x.device, dtype=x.dtype)  # noqa: E731
    return full(grid[i]), full(grid[i + 1])


@torch.no_grad()
def average_velocity_sampler(u, x1, grid=None):
    """One step per interval with the average velocity; exact at every NFE when u is exact."""
    grid = check_grid(uniform_grid(1) if grid is None else grid)
    x = x1
    for i in range(len(grid) - 1):
        t, r = _times(grid, i, x)
        x = x - (t - r)[:, None] * u(x, r, t)
    return x, len(grid) - 1


@torch.no_grad()
def euler(v, x1, grid):
    grid = check_grid(grid)
    x = x1
    for i in range(len(grid) - 1):
        t, r = _times(grid, i, x)
        x = x - (t - r)[:, None] * v(x, t)
    return x, len(grid) - 1


@torch.no_grad()
def heun(v, x1, grid):
    grid = check_grid(grid)
    x = x1
    for i in range(len(grid) - 1):
        t, r = _times(grid, i, x)
        h = (t - r)[:, None]
        k1 = v(x, t)
        k2 = v(x - h * k1, r)
        x = x - h * 0.5 * (k1 + k2)
    return x, 2 * (len(grid) - 1)


@torch.no_grad()
def rk4(v, x1, grid):
    grid = check_grid(grid)
    x = x1
    for i in range(len(grid) - 1):
        t, r = _times(grid, i, x)
        h = (t - r)[:, None]
        mid = 0.5 * (t + r)
        k1 = v(x, t)
        k2 = v(x - 0.5 * h * k1, mid)
        k3 = v(x - 0.5 * h * k2, mid)
        k4 = v(x - h * k3, r)
        x = x - h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
    return x, 4 * (len(grid) - 1)


def model_as_velocity(model):
    """A trained average-velocity model used as an instantaneous field, ``v(x, t) = u(x, t, t)``."""
    return lambda x, t: model(x, t, t)

