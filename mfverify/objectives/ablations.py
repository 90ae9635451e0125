"""Ablation objectives of the MeanFlow paper (its Table 1), for the claims report (claim C10).

- ``mf_tangent``: ``mf`` with another tangent for the total derivative,
  ``|U + (t - r) sg(D) - v_c|^2`` with ``(U, D) = (u, du)`` along ``(v_c, tangent_r,
  tangent_t)`` (order ``(x, r, t)``). Only the default ``(v_c, 0, 1)`` gives
  ``d/dt u(x_t, r, t)``, the derivative of the MeanFlow identity (docs/MATH.md §1), and
  with it the loss is ``mf``'s exactly; ``(v, 0, 0)``, ``(v, 1, 0)`` and ``(v, 1, 1)`` are the
  paper's wrong tangents, whose fixed point is not the average velocity.

The other ablations of that table are settings, not objectives: the share of ``r != t``
(``[train] frac_r_eq_t``), the time inputs (``[network_options.mlp] time_inputs``) and the
loss weighting (``[train] p``).
"""

from __future__ import annotations

import torch

from mfverify.jvp import DEFAULT_BACKEND, jvp
from mfverify.objectives.core import Objective, _check_jvp, _col, _on_path, _sq


def _mf_tangent(model, x_t, v_c, r, t, backend, tangent_r=0.0, tangent_t=1.0):
    """``|U + (t - r) sg(D) - v_c|^2``, ``D`` along ``(v_c, tangent_r, tangent_t)``."""
    dr = torch.full_like(r, tangent_r)
    dt = torch.full_like(t, tangent_t)
    U, D = jvp(model, x_t, r, t, v_c, dr, dt, backend, tangent_grad=False)
    return _sq(U + _col(t - r) * D.detach() - v_c)


def _check(options):
    _check_jvp(options)
    for key in ("tangent_r", "tangent_t"):
        if options[key] not in (0.0, 1.0):
            raise ValueError(f"objective 'mf_tangent': {key} must be 0 or 1 (the paper's ablation), "
                             f"got {options[key]!r}")


_mf_tangent.__name__ = "mf_tangent"
mf_tangent = Objective(name="mf_tangent", loss=_on_path(_mf_tangent),
                       options={"jvp": DEFAULT_BACKEND, "tangent_r": 0.0, "tangent_t": 1.0}, check_options=_check,
                       weighting=True, quadratic_in_v_c=True)
