"""What a diverged run is, defined once: every study, claim and summary uses ``reasons``.

A run diverged if

- its loss went non-finite (its training stopped there: ``runs.csv`` ``diverged_step``), or
- its one-step (NFE 1) flow-map error is above ``FACTOR`` times the data's scale
  ``sqrt(E|x0 - E x0|^2)``: sending every sample to the data mean costs about 1 times it
  (``exact_v_euler``), so 3 times is a model whose samples land outside the data altogether,
  whatever its loss says (sCM's surrogate can be large or negative at a good model, so the
  loss's value is not a test).
"""

from __future__ import annotations

import math

FACTOR = 3.0
RULE = (f"a run diverged if its loss went non-finite (training stopped there) or its one-step error is above "
        f"{FACTOR:g} x the data's scale sqrt(E|x0 - E x0|^2) (collapsing onto the data mean costs about 1 x)")


def data_scale(case) -> float:
    """``sqrt(E|x0 - E x0|^2)`` of a case (a name or a mixture), in closed form."""
    from mfverify.cases import get_case

    m = get_case(case) if isinstance(case, str) else case
    w = m.weights
    mean = (w[:, None] * m.means).sum(0)
    second = (w * (m.cov_traces() + m.means.square().sum(-1))).sum()
    return math.sqrt(max(float(second - mean.square().sum()), 0.0))


def reasons(runs, rows) -> dict:
    """``{(case, objective, seed): why}`` of the diverged runs among ``runs`` (``runs.csv`` records),
    their one-step errors read from ``rows`` (``results.csv``: ``flow_map_mean`` at NFE 1)."""
    one_step = {(r["case"], r["method"], str(r["seed"])): float(r["value"]) for r in rows
                if r["metric"] == "flow_map_mean" and int(r["nfe"]) == 1}
    scales, out = {}, {}
    for rec in runs:
        key = (rec["case"], rec["objective"], str(rec["seed"]))
        if str(rec.get("diverged_step", "")) != "":
            out[key] = f"loss not finite at step {rec['diverged_step']}"
            continue
        error = one_step.get(key)
        if error is None:
            continue
        if rec["case"] not in scales:
            scales[rec["case"]] = data_scale(rec["case"])
        if not error <= FACTOR * scales[rec["case"]]:
            out[key] = f"one-step error {error:.3g} > {FACTOR:g} x the data's scale {scales[rec['case']]:.3g}"
    return out
