"""A researcher's own MeanFlow loss, in mfverify's conventions (data at t = 0, noise
at t = 1, ``model(x, r, t)``), registered so that every mfverify tool finds it by name."""

import torch

from mfverify import objectives


@objectives.register("my_meanflow", quadratic_in_v_c=True, weighting=True)
def my_meanflow(model, x0, x1, r, t):
    """``|u - sg(v_c - (t - r) du/dt)|^2``, ``du/dt`` the JVP along ``(v_c, 0, 1)``."""
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v_c = x1 - x0
    u, dudt = torch.func.jvp(model, (x_t, r, t), (v_c, torch.zeros_like(r), torch.ones_like(t)))
    target = v_c - (t - r)[:, None] * dudt
    return (u - target.detach()).square().sum(1)
