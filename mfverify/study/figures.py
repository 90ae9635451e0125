"""Figures: one function per figure, data in, ``matplotlib.figure.Figure`` out.

The study saves each figure as PDF (for papers) and PNG (for a quick look), with
the numbers behind it in a CSV of the same name.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mfverify.io import write_bytes, write_text  # noqa: E402

BASELINE_STYLE = {"linestyle": "--", "marker": "s", "markersize": 3}
MODEL_STYLE = {"linestyle": "-", "marker": "o", "markersize": 3}


def error_vs_nfe(rows, case: str, study, metric: str = "flow_map_mean") -> tuple[Figure, list[dict]]:
    """Log-log ``metric`` against NFE, one line per method (mean over seeds, band min-max)."""
    sub = [r for r in rows if r["case"] == case and r["metric"] == metric]
    methods = [m for m in list(study.study.objectives) + list(study.study.baselines) if any(r["method"] == m for r in sub)]
    fig, ax = plt.subplots(figsize=(6.5, 4.0), constrained_layout=True)
    table = []
    # exact_u sits at round-off (~1e-13): drawn, it would flatten every other curve;
    # it is named in the legend with its largest error instead
    finite = [float(r["value"]) for r in sub if r["method"] != "exact_u" and float(r["value"]) > 0]
    y_floor = 0.3 * min(finite) if finite else 1e-16
    palette = plt.get_cmap("tab10")
    baseline_colors = iter(["black", "dimgray", "darkgray", "goldenrod", "teal", "navy", "maroon"])  # not in tab10
    model_index = 0
    colors = {}
    for m in methods:
        if m in study.study.baselines:
            colors[m] = next(baseline_colors, "gray")
        else:
            colors[m] = palette(model_index % 10)
            model_index += 1
    for m in methods:
        nfes = sorted({int(r["nfe"]) for r in sub if r["method"] == m})
        mean, lo, hi = [], [], []
        for n in nfes:
            vals = [float(r["value"]) for r in sub if r["method"] == m and int(r["nfe"]) == n]
            mean.append(sum(vals) / len(vals))
            lo.append(min(vals))
            hi.append(max(vals))
            table.append({"case": case, "method": m, "nfe": n, "metric": metric, "mean": mean[-1],
                          "min": lo[-1], "max": hi[-1], "seeds": len(vals)})
        baseline = m in study.study.baselines
        style = BASELINE_STYLE if baseline else MODEL_STYLE
        if m == "exact_u" and max(hi) < y_floor:
            ax.plot([], [], label=f"exact_u (max {max(hi):.1e}, below the axis)", color=colors[m], **style)
            continue
        ax.plot(nfes, mean, label=m, color=colors[m], **style)
        if len(nfes) and max(h - l_ for h, l_ in zip(hi, lo)) > 0:
            ax.fill_between(nfes, lo, hi, color=colors[m], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network or field evaluations per sample)")
    ax.set_ylabel(r"mean flow-map error $|x_{gen} - \Phi(x_1, 1\to 0)|$ (data units)")
    ax.set_title(f"{study.study.name}: {case}")
    ax.set_ylim(bottom=y_floor)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, table


def save_figure(fig: Figure, table: list[dict], stem) -> None:
    """``stem.pdf``, ``stem.png`` and ``stem.csv``, each written atomically."""
    stem = Path(stem)
    for fmt in ("pdf", "png"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue())
    plt.close(fig)
    buf = io.StringIO()
    if table:
        writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    write_text(stem.with_suffix(".csv"), buf.getvalue())
