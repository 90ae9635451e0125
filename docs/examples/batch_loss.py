# MeanFlow's loss as a repository writes it, in mfverify's conventions: data x0 at t = 0, noise at t = 1,
# model(x, r, t) -> the average velocity over [r, t]. Check it: mfverify check --as-written batch_loss:loss
import torch


def loss(model, x0):
    t = torch.rand(len(x0), dtype=x0.dtype)
    r = torch.where(torch.rand_like(t) < 0.75, t, t * torch.rand_like(t))  # a quarter of the rows at r < t
    e = torch.randn_like(x0)
    z, v = (1 - t[:, None]) * x0 + t[:, None] * e, e - x0
    u, dudt = torch.func.jvp(model, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return (u - (v - (t - r)[:, None] * dudt).detach()).square().sum(1).mean()
