"""Public MeanFlow losses transcribed from their published formulas and conventions
(MATH.md §10), each in its own convention, converted with ``mfverify.check.conventions``;
and deliberately broken variants of ``mf`` (what the check battery must catch).

Written here from the formulas, not copied: the MeanFlow paper's Algorithm 1
(Geng et al. 2025, arXiv:2505.13447), whose reference code (py-meanflow) calls
``net(z, t, h = t - r)`` and takes the JVP of ``u(z, t, r)`` along ``(v, 1, 0)``,
summing over coordinates with the weight ``1 / sg(L + c)^p``; haidog-yaqub's
MeanFlow calls ``model(z, t, r)`` with the same tangent and averages over
coordinates; zhuyu-cs's weights ``L^2 / sg(L^2 + c)^p``.
"""

from __future__ import annotations

import torch

from mfverify.check import conventions
from mfverify.objectives import Objective


def _col(a):
    return a[:, None]


# ------------------------------------------------------------ faithful transcriptions


def py_meanflow_loss(net, x, e, t, r, norm_p: float = 1.0, norm_eps: float = 0.01):
    """py-meanflow: ``z = (1-t) x + t e``, ``v = e - x``, ``u(z, t, r) = net(z, t, t - r)``,
    ``(u, du/dt) = jvp(u, (z, t, r), (v, 1, 0))``, ``L = |u - sg(v - (t-r) du/dt)|^2`` summed
    over coordinates, weighted ``L / sg(L + norm_eps)^norm_p``. Times given as ``(t, r)``."""
    z = (1 - _col(t)) * x + _col(t) * e
    v = e - x
    u_fn = lambda z_, t_, r_: net(z_, t_, t_ - r_)  # noqa: E731
    u, dudt = torch.func.jvp(u_fn, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u_tgt = v - _col(t - r) * dudt
    loss = (u - u_tgt.detach()).square().sum(1)
    return loss / (loss.detach() + norm_eps) ** norm_p


def haidog_meanflow_loss(model, x, e, t, r):
    """haidog-yaqub: ``model(z, t, r)``, tangent ``(v, 1, 0)`` on ``(z, t, r)``, mean over coordinates."""
    z = (1 - _col(t)) * x + _col(t) * e
    v = e - x
    u, dudt = torch.func.jvp(model, (z, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u_tgt = v - _col(t - r) * dudt
    return (u - u_tgt.detach()).square().mean(1)


def zhuyu_meanflow_loss(model, x, e, r, t, p: float = 1.0, c: float = 1e-3):
    """zhuyu-cs: ``model(z, r, t)``, tangent ``(v, 0, 1)``, weighting ``L^2 / sg(L^2 + c)^p``
    with ``L`` the squared error: at ``p = 0`` the loss is ``|Delta|^4``, not the paper's."""
    z = (1 - _col(t)) * x + _col(t) * e
    v = e - x
    u, dudt = torch.func.jvp(model, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    u_tgt = v - _col(t - r) * dudt
    loss = (u - u_tgt.detach()).square().sum(1)
    return loss.square() / (loss.square().detach() + c) ** p


def reversed_meanflow_loss(net, x_data, x_noise, a, b):
    """MeanFlow in the reversed clock (noise at ``tau = 0``): ``z = (1-a) x_noise + a x_data``,
    ``v' = x_data - x_noise``, ``net(z, a, b)`` steps ``z_b = z_a + (b - a) net``; its identity
    reads ``w = v' + (b - a) dw/da`` with the tangent ``(v', 1, 0)`` on ``(z, a, b)``."""
    z = (1 - _col(a)) * x_noise + _col(a) * x_data
    v = x_data - x_noise
    w, dwda = torch.func.jvp(net, (z, a, b), (v, torch.ones_like(a), torch.zeros_like(b)))
    target = v + _col(b - a) * dwda
    return (w - target.detach()).square().sum(1)


# in mfverify's conventions (each an exact identity of mfverify.check.conventions)
py_meanflow = Objective(
    "py_meanflow",
    conventions.model_inputs_t_h(conventions.loss_times_t_r(py_meanflow_loss)),
    options={"norm_p": 1.0, "norm_eps": 0.01},
    quadratic_in_v_c=lambda o: o["norm_p"] == 0,
)
haidog_meanflow = Objective(
    "haidog_meanflow",
    conventions.coordinate_mean(conventions.model_args_t_r(conventions.loss_times_t_r(haidog_meanflow_loss))),
    quadratic_in_v_c=True,
)
haidog_meanflow_undeclared = Objective(  # the same, not declared: the Monte Carlo route
    "haidog_meanflow_undeclared",
    conventions.coordinate_mean(conventions.model_args_t_r(conventions.loss_times_t_r(haidog_meanflow_loss))),
)
zhuyu_meanflow = Objective("zhuyu_meanflow", zhuyu_meanflow_loss, options={"p": 1.0, "c": 1e-3})
reversed_meanflow = Objective("reversed_meanflow", conventions.time_reversed(reversed_meanflow_loss),
                              quadratic_in_v_c=True)


# ------------------------------------------------------------ broken variants of mf


def _mf_like(model, x0, x1, r, t, tangent_times=(0.0, 1.0), sign=-1.0, interval=True, stop_gradient=True):
    x_t = (1 - _col(t)) * x0 + _col(t) * x1
    v_c = x1 - x0
    dr, dt = (torch.full_like(t, s) for s in tangent_times)
    u, dudt = torch.func.jvp(model, (x_t, r, t), (v_c, dr, dt))
    h = _col(t - r) if interval else 1.0
    target = v_c + sign * h * dudt
    return (u - (target.detach() if stop_gradient else target)).square().sum(1)


def mf_by_hand(model, x0, x1, r, t):
    """``mf`` written out (mfverify's conventions): the control."""
    return _mf_like(model, x0, x1, r, t)


def wrong_time_tangent(model, x0, x1, r, t):
    """The tangent ``(v, 1, 0)`` on ``(x, r, t)``: d/dr where d/dt belongs."""
    return _mf_like(model, x0, x1, r, t, tangent_times=(1.0, 0.0))


def missing_stop_gradient(model, x0, x1, r, t):
    """``mf`` without the stop-gradient (= ``mf_nosg``)."""
    return _mf_like(model, x0, x1, r, t, stop_gradient=False)


def sign_error(model, x0, x1, r, t):
    """``v + (t - r) du/dt`` as the target."""
    return _mf_like(model, x0, x1, r, t, sign=1.0)


def missing_interval(model, x0, x1, r, t):
    """``v - du/dt`` as the target: the factor ``(t - r)`` dropped."""
    return _mf_like(model, x0, x1, r, t, interval=False)


BROKEN = {
    "wrong_time_tangent": ("stationary_at_exact_u",),
    "missing_stop_gradient": ("stationary_at_exact_u",),
    "sign_error": ("stationary_at_exact_u",),
    "missing_interval": ("reduces_to_fm", "stationary_at_exact_u"),
}


def declared(fn):
    """A hand-written mf-like loss declared quadratic in v_c (true for all of the above)."""
    return Objective(fn.__name__, fn, quadratic_in_v_c=True)
