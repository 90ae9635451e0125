"""What a loss's sampler trains, read off the exact model's calls and its cell directions.

The cells of the ``(r, t)`` triangle (``exact_core.triangle_cells``) and the diagonal are
directions of the exact model: a cell is *reached* when the loss's gradient along it is
non-zero in some batch (at ``u*`` or with the model off it; a loss whose targets carry no
noise has a zero gradient at ``u*`` where it trains). ``summary`` gathers that with the
calls' times (``CallLog.summary``); three checks of the as-written battery read it (registered
by ``as_written``, after its stationarity check):

- ``times_in_range``: no call at times outside ``[0, 1]`` or with ``r > t`` (answered by the
  stand-in; the sentence names the fraction);
- ``trains_off_diagonal``: the gradient reaches a cell off ``r = t`` (else: flow matching only);
- ``one_step_trained``: the gradient reaches the one-step corner ``r < 1/4, t > 3/4``.

``sampler_table`` writes the cells as CSV rows, ``draw_sampler`` as a heatmap.
"""

from __future__ import annotations

from mfverify.check.exact_core import CallLog
from mfverify.check.report import CheckResult

__all__ = ["ONE_STEP", "summary", "times_in_range", "trains_off_diagonal", "one_step_trained", "sampler_table",
           "draw_sampler"]

ONE_STEP = (0.25, 0.75)  # the one-step corner: r < 1/4, t > 3/4


def summary(model, log: CallLog, reached, reach) -> dict:
    """The sampler block of the report: the calls' summary, per cell its bounds, calls, whether the
    gradient reached it and its share, and whether the diagonal, the off-diagonal and the one-step
    corner were reached. ``model``: an exact model (its ``grid``, ``cells``, ``n_smooth``)."""
    calls = log.summary(model.grid)
    S, grid = model.n_smooth, model.grid
    lo, hi = ONE_STEP
    cells = []
    for k, (i, j) in enumerate(model.cells):
        cells.append({"r_lo": i / grid, "r_hi": (i + 1) / grid, "t_lo": j / grid, "t_hi": (j + 1) / grid,
                      "calls": calls["cells"].get((i, j), 0), "reached": bool(reached[S + k]),
                      "gradient_share": float(reach[S + k])})
    one_step = [c for c in cells if c["r_hi"] <= lo and c["t_lo"] >= hi]
    rows = {k: v for k, v in calls.items() if k != "cells"}
    return {**rows, "diagonal_reached": bool(reached[-1]),
            "off_diagonal_reached": any(c["reached"] for c in cells),
            "one_step_trained": any(c["reached"] for c in one_step),
            "one_step_corner": {"r_below": lo, "t_above": hi}, "grid": grid, "cells": cells}


def times_in_range(evidence):
    """Every call of the model at 0 <= r <= t <= 1."""
    s = evidence.sampler
    bad = s["fraction_outside_unit_interval"] + s["fraction_r_gt_t"]
    sentence = (f"{100 * s['fraction_outside_unit_interval']:.3g} % of the model's calls are at times outside "
                f"[0, 1] (from {s['min_time']:.3g} to {s['max_time']:.3g}) and {100 * s['fraction_r_gt_t']:.3g} % "
                "have r > t: the loss steps past the ends of time; the exact model answered them with a stand-in "
                "(times clamped into [0, 1], r lowered to t)") if bad else ""
    return CheckResult(
        "times_in_range", bad == 0, bad, "every call at 0 <= r <= t <= 1",
        details={"fraction_outside_unit_interval": s["fraction_outside_unit_interval"],
                 "fraction_r_gt_t": s["fraction_r_gt_t"], **({"sentence": sentence} if bad else {})})


def trains_off_diagonal(evidence):
    """The loss's gradient reaches some cell with r < t."""
    s = evidence.sampler
    share = sum(c["gradient_share"] for c in s["cells"])
    off = s["off_diagonal_reached"]
    return CheckResult(
        "trains_off_diagonal", off, share, "the loss's gradient reaches some cell with r < t",
        details={"fraction_diagonal_calls": s["fraction_diagonal"],
                 **({} if off else {"sentence": "the loss's gradient never leaves the diagonal r = t: it trains "
                                                "the instantaneous velocity (flow matching) only, never the average "
                                                "velocity over an interval"})})


def one_step_trained(evidence):
    """The loss's gradient reaches the one-step corner r < 1/4, t > 3/4."""
    one = evidence.sampler["one_step_trained"]
    lo, hi = ONE_STEP
    return CheckResult(
        "one_step_trained", one, float(one), f"the loss's gradient reaches r < {lo:g}, t > {hi:g}",
        details={} if one else {"sentence": f"the loss's gradient never reaches the one-step interval (r < {lo:g}, "
                                            f"t > {hi:g}): the map that one-step sampling u(x, 0, 1) uses is never "
                                            "trained"})


def sampler_table(sampler: dict) -> str:
    """The cells as CSV rows: ``r_lo, r_hi, t_lo, t_hi, calls, reached, gradient_share``; ``calls`` counts
    every call with ``(r, t)`` in the cell (those on the diagonal ``r = t`` too, which the ``diagonal``
    direction answers), ``gradient_share`` the cell's share of ``|gradient|`` off ``u*`` among the cells
    and the diagonal (averaged over the cases)."""
    cols = ("r_lo", "r_hi", "t_lo", "t_hi", "calls", "reached", "gradient_share")
    rows = [",".join(cols)] + [",".join(f"{c[k]:.6g}" if isinstance(c[k], float) else str(c[k]).lower()
                                        for k in cols) for c in sampler["cells"]]
    return "\n".join(rows) + "\n"


def draw_sampler(sampler: dict, path, title: str = "") -> None:
    """A heatmap of the triangle ``r <= t``: each cell's share of the gradient's reach (a cell
    the gradient never reaches is hatched), its calls written in it; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import io

    from mfverify.io import write_bytes

    grid = sampler["grid"]
    share = np.full((grid, grid), np.nan)
    fig, ax = plt.subplots(figsize=(3.4, 3.0), dpi=200)  # one column of a two-column paper
    for c in sampler["cells"]:
        i, j = round(c["r_lo"] * grid), round(c["t_lo"] * grid)
        if c["reached"]:
            share[j, i] = c["gradient_share"]
        else:
            ax.add_patch(plt.Rectangle((c["r_lo"], c["t_lo"]), 1 / grid, 1 / grid, fill=False, hatch="///",
                                       edgecolor="0.6", linewidth=0))
        ax.text(c["r_lo"] + 0.5 / grid, c["t_lo"] + 0.5 / grid, _short(c["calls"]), ha="center", va="center",
                fontsize=6)
    im = ax.imshow(share, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0)
    lo, hi = ONE_STEP
    ax.add_patch(plt.Rectangle((0, hi), lo, 1 - hi, fill=False, edgecolor="red", linewidth=1))
    ax.plot([0, 1], [0, 1], color="k", linewidth=0.5)
    ax.set_xlabel("r", fontsize=7), ax.set_ylabel("t", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(f"{title}: where the gradient reaches" if title else "where the loss's gradient reaches the model",
                 fontsize=7)
    cb = fig.colorbar(im, ax=ax, fraction=0.046)
    cb.ax.tick_params(labelsize=6)
    cb.set_label("share of |gradient| off u* (hatched: never reached)", fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _short(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else str(n)


