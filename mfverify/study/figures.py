"""Figures of a study, drawn from its figure tables (CSV) alone.

    python -m mfverify.study.figures DIR [--style STYLE] [--format pdf,png]

redraws every figure of the finished study in ``DIR`` from the CSVs that
``mfverify.study.tables`` wrote there, without training or truth; the study itself
draws them the same way. One function per figure, table in,
``matplotlib.figure.Figure`` out:

- ``error_vs_nfe``: the flow-map error against NFE in two panels (trained
  objectives; baselines and ``fm`` used as a velocity field) and the one-step
  errors as a labelled bar chart;
- ``samples_grid``: one row per method, one column per NFE, each panel the
  generated samples over the true density, with thin segments from a few hundred
  samples to their exact images ``Phi(x1, 1 -> 0)`` (the same noise in every panel);
- ``field_error_maps``: per trained objective, the relative field error
  ``E|u_theta - u|^2 / E|u|^2`` on a grid of ``(r, t)``, ``r <= t``, each panel on its
  own colour scale.

Every figure fits a double column at print size (7 in wide, at most 9 in tall, no
text below 6 pt); a grid with more methods than a page holds is drawn in parts
(``samples_<case>_part2.png``, ...; ``samples_parts``, ``field_error_parts``).

Colours are the Okabe-Ito colour-blind-safe set (objectives) and greys (exact
baselines); a model baseline takes its objective's colour; every method also has
its own marker. To restyle for a paper, pass a matplotlib style (``--style``) or
call these functions on the tables (``mfverify.study.store.read_csv``).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from mfverify.io import write_bytes  # noqa: E402
from mfverify.study.image_figures import image_parts  # noqa: E402
from mfverify.study.store import slug  # noqa: E402

# Okabe & Ito (2008), black left out (the exact baselines use it); yellow darkened to read on white
OBJECTIVE_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#B8A100"]
OBJECTIVE_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h", "<", ">"]
EXACT_COLORS = ["#000000", "#555555", "#999999"]
EXACT_MARKERS = ["*", "d", "p"]
MODEL_BASELINE_LINES = [("--", ">"), (":", "<"), ("-.", "1")]
SEGMENTS = 300  # samples joined to their exact image in each samples panel
FORMATS = ("pdf", "png")
# print sizes (inches at 150 dpi): a double column is 7 in wide, a page leaves 9 in of height; no text
# below 6 pt. A grid with more rows than fit is split into parts (``samples_<case>_part2``, ...).
WIDTH, MAX_HEIGHT, MIN_FONT = 7.0, 9.0, 6.0
SAMPLE_ROWS_PER_PART, FIELD_ROWS_PER_PART, FIELD_COLS = 5, 3, 3
DODGE = 0.05  # markers of the methods in a panel dodged sideways by this much in log2 NFE


# ------------------------------------------------------------------ styles


def styles(table) -> dict:
    """``{method: {color, marker, linestyle}}`` for the methods of a table (its
    ``group``, ``source`` and ``index`` columns decide; the same in every figure)."""
    objectives = {r["method"]: int(r["index"]) for r in table if r.get("group", "objective") == "objective"}
    out, exact, model = {}, 0, 0
    for r in table:
        m = r["method"]
        if m in out:
            continue
        i = int(r["index"])
        if r.get("group", "objective") == "objective":
            out[m] = {"color": OBJECTIVE_COLORS[i % len(OBJECTIVE_COLORS)],
                      "marker": OBJECTIVE_MARKERS[i % len(OBJECTIVE_MARKERS)], "linestyle": "-"}
        elif r.get("source"):
            j = objectives.get(r["source"])
            line, marker = MODEL_BASELINE_LINES[model % len(MODEL_BASELINE_LINES)]
            model += 1
            color = OBJECTIVE_COLORS[j % len(OBJECTIVE_COLORS)] if j is not None else "#777777"
            out[m] = {"color": color, "marker": marker, "linestyle": line}
        else:
            out[m] = {"color": EXACT_COLORS[exact % len(EXACT_COLORS)],
                      "marker": EXACT_MARKERS[exact % len(EXACT_MARKERS)], "linestyle": "--"}
            exact += 1
    return out


def _methods(table) -> list[str]:
    seen = []
    for r in table:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


# ------------------------------------------------------------ error vs NFE


def error_vs_nfe(table) -> Figure:
    """Two panels of mean error against NFE (band: min-max over seeds), a shared
    log axis, and the NFE-1 errors as bars (error bars: min-max)."""
    if not table:
        raise ValueError("error_vs_nfe: the table is empty")
    style = styles(table)
    methods = _methods(table)
    group = {r["method"]: r.get("group", "objective") for r in table}
    source = {r["method"]: r.get("source", "") for r in table}
    values = [float(r["mean"]) for r in table if r["method"] != "exact_u" and _positive(r["mean"])]
    values = values or [float(r["mean"]) for r in table if _positive(r["mean"])]
    # the log axis starts here; a smaller value (zero and negative ones too) is drawn on it, and said so
    y_floor = 0.3 * min(values) if values else 1e-16
    at_floor = 0
    fig = plt.figure(figsize=(WIDTH, 7.6), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.55, 1.0])
    ax_obj = fig.add_subplot(grid[0, 0])
    ax_base = fig.add_subplot(grid[0, 1], sharey=ax_obj)
    ax_bar = fig.add_subplot(grid[1, :])
    panel = {m: [n for n in methods if (group[n] == "objective") == (group[m] == "objective")] for m in methods}
    for m in methods:
        ax = ax_obj if group[m] == "objective" else ax_base
        rows = sorted((r for r in table if r["method"] == m), key=lambda r: int(r["nfe"]))
        # curves that coincide stay apart: each method's markers shifted sideways by its own amount
        k, count = panel[m].index(m), len(panel[m])
        nfe = [int(r["nfe"]) * 2 ** (DODGE * (k - (count - 1) / 2)) for r in rows]
        mean, lo, hi = ([float(r[k]) for r in rows] for k in ("mean", "min", "max"))
        s = style[m]
        label = m if not source[m] else f"{m} ({source[m]} as a velocity field)"
        if m == "exact_u" and max(hi) < y_floor:  # round-off (~1e-13): drawn, it would flatten the rest
            ax.plot([], [], label=f"exact_u (max {max(hi):.1e}, below the axis)", markersize=4, **s)
            continue
        under = sum(1 for v in mean if not v >= y_floor)
        if under:
            at_floor += under
            label += f" ({under} of {len(mean)} at or below the floor)"
            mean, lo, hi = ([max(v, y_floor) if not math.isnan(v) else v for v in vs] for vs in (mean, lo, hi))
        ax.plot(nfe, mean, label=label, markersize=4, linewidth=1.4, **s)
        if max(h - l_ for h, l_ in zip(hi, lo)) > 0:
            ax.fill_between(nfe, lo, hi, color=s["color"], alpha=0.15, linewidth=0)
    all_nfe = sorted({int(r["nfe"]) for r in table})
    for ax in (ax_obj, ax_base):
        if not any(len(line.get_xdata()) for line in ax.get_lines()):  # nothing drawn: the axes still span the NFEs
            ax.set_xlim(all_nfe[0] / 1.5, all_nfe[-1] * 1.5)
            ax.text(0.5, 0.5, "no value above the axis", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color="#777777")
    metric = table[0].get("metric", "flow_map_mean")
    for ax, title in ((ax_obj, "trained objectives (average velocity)"), (ax_base, "baselines")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE (markers dodged sideways)", fontsize=8)
        ax.set_xticks(all_nfe, [str(n) for n in all_nfe])
        ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    ax_obj.set_ylim(bottom=y_floor)
    ax_obj.set_ylabel((r"mean $|x_{gen} - \Phi(x_1, 1\to 0)|$" if metric == "flow_map_mean" else metric)
                      + (f"\n(floor {y_floor:.1e}: smaller values, 0 and below included, drawn on it)"
                         if at_floor else ""))
    _one_step_bars(ax_bar, table, methods, style, y_floor)
    study, case = table[0].get("study", ""), table[0]["case"]
    fig.suptitle(f"{study}: {case}" if study else case, fontsize=10)
    return fig


def _one_step_bars(ax, table, methods, style, y_floor):
    ones = {r["method"]: r for r in table if int(r["nfe"]) == 1}
    shown = [m for m in methods if m in ones]
    for i, m in enumerate(shown):
        r = ones[m]
        mean, lo, hi = float(r["mean"]), float(r["min"]), float(r["max"])
        baseline = r.get("group", "objective") != "objective"
        if _positive(mean) and mean >= y_floor:
            ax.bar(i, mean, color=style[m]["color"], alpha=0.85, hatch="//" if baseline else None,
                   edgecolor="white" if baseline else style[m]["color"], linewidth=0.5)
            if hi > lo:
                ax.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=2, linewidth=0.8)
            ax.text(i, hi * 1.3, f"{mean:.3g}", ha="center", va="bottom", fontsize=MIN_FONT, rotation=90)
        else:  # zero (exact_u), below the axis, or not finite: the value as text
            text = "0" if mean == 0 else (f"{mean:.1e}" if math.isfinite(mean) else str(mean))
            ax.text(i, y_floor * 1.1, text, ha="center", va="bottom", fontsize=MIN_FONT, rotation=90)
    ax.set_yscale("log")
    ax.set_ylim(bottom=y_floor, top=max([float(ones[m]["max"]) for m in shown if _finite(ones[m]["max"])] + [y_floor]) * 6)
    ax.set_xticks(range(len(shown)), shown, rotation=60, ha="right", fontsize=6.5)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("one step (NFE 1); hatched: baselines", fontsize=9)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _positive(value) -> bool:
    v = float(value)
    return math.isfinite(v) and v > 0


def _finite(value) -> bool:
    return math.isfinite(float(value))


# ------------------------------------------------------------ samples grid


def samples_parts(samples, density, segments: int = SEGMENTS) -> list[Figure]:
    """``samples_grid`` in parts of at most ``SAMPLE_ROWS_PER_PART`` methods (each part fits a page)."""
    if not samples:
        raise ValueError("samples_grid: the samples table is empty")
    methods = _methods(samples)
    chunks = [methods[i:i + SAMPLE_ROWS_PER_PART] for i in range(0, len(methods), SAMPLE_ROWS_PER_PART)]
    return [samples_grid(samples, density, segments, methods=chunk, part=(k + 1, len(chunks)))
            for k, chunk in enumerate(chunks)]


def samples_grid(samples, density, segments: int = SEGMENTS, methods=None, part=None) -> Figure:
    """One row per method (``methods``: those of the table by default), one column per NFE: the
    samples over the true density's contours, the first ``segments`` of them joined to their exact
    images. ``part``: ``(k, of)`` for the title of one part of a split grid."""
    if not samples:
        raise ValueError("samples_grid: the samples table is empty")
    style = styles(samples)
    methods = _methods(samples) if methods is None else list(methods)
    nfes = sorted({int(r["nfe"]) for r in samples})
    by_panel = {}
    for r in samples:
        by_panel.setdefault((r["method"], int(r["nfe"])), []).append(r)
    grid = [r for r in density if r["kind"] == "grid"]
    atoms = [r for r in density if r["kind"] == "atom"]
    xs = sorted({float(r["x"]) for r in grid})
    ys = sorted({float(r["y"]) for r in grid})
    Z = [[0.0] * len(xs) for _ in ys]
    for k, r in enumerate(grid):  # row-major in y
        Z[k // len(xs)][k % len(xs)] = float(r["value"])
    zmax = max((max(row) for row in Z), default=0.0)
    projection = density[0]["projection"] if density else "identity"
    xlabel, ylabel = {"identity": ("$x_1$", "$x_2$"), "pca": ("PC 1", "PC 2"),
                      "coordinates": ("coordinate a", "coordinate b")}.get(projection, ("", ""))
    size = min(1.5, (WIDTH - 1.1) / len(nfes))  # inches per panel
    fig, axes = plt.subplots(len(methods), len(nfes), figsize=(size * len(nfes) + 1.1, size * len(methods) + 1.0),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    for i, m in enumerate(methods):
        for j, n in enumerate(nfes):
            ax = axes[i][j]
            if zmax > 0:
                levels = [zmax * f for f in (0.01, 0.05, 0.2, 0.5, 1.0001)]
                ax.contourf(xs, ys, Z, levels=levels, cmap="Greys", alpha=0.55)
            for a in atoms:
                ax.plot(float(a["x"]), float(a["y"]), marker="+", color="black", markersize=5, linewidth=0)
            ax.set_xlim(xs[0], xs[-1])
            ax.set_ylim(ys[0], ys[-1])
            ax.set_aspect("equal")
            ax.tick_params(labelsize=MIN_FONT)
            if i == 0:
                ax.set_title(f"NFE {n}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{m}\n{ylabel}", fontsize=7)
            if i == len(methods) - 1:
                ax.set_xlabel(xlabel, fontsize=7)
            rows = by_panel.get((m, n))
            if not rows:
                ax.text(0.5, 0.5, f"not run\nat NFE {n}", transform=ax.transAxes, ha="center", va="center",
                        fontsize=7, color="#777777")
                continue
            color = style[m]["color"]
            seg = [[(float(r["x"]), float(r["y"])), (float(r["phi_x"]), float(r["phi_y"]))] for r in rows[:segments]]
            ax.add_collection(LineCollection(seg, colors=color, linewidths=0.35, alpha=0.45, rasterized=True))
            ax.scatter([float(r["x"]) for r in rows], [float(r["y"]) for r in rows], s=0.8, color=color,
                       linewidths=0, rasterized=True)
            outside = sum(not (xs[0] <= float(r["x"]) <= xs[-1] and ys[0] <= float(r["y"]) <= ys[-1]) for r in rows)
            err = [float(r["error"]) for r in rows]
            note = f"err {sum(err) / len(err):.3g}" + (f"\n{outside} outside" if outside else "")
            ax.text(0.03, 0.97, note, transform=ax.transAxes, ha="left", va="top", fontsize=MIN_FONT,
                    bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1})
    case = samples[0]["case"]
    of = f" (part {part[0]} of {part[1]})" if part and part[1] > 1 else ""
    fig.suptitle(f"{case}{of}: samples (seed 0) over the data density,\n"
                 r"segments to their exact images $\Phi(x_1, 1\to 0)$" "\n"
                 r"err: mean $|x_{gen} - \Phi|$ (all dimensions)", fontsize=8)
    return fig


# ------------------------------------------------------------ field error


def field_error_parts(table) -> list[Figure]:
    """``field_error_maps`` in parts of at most ``FIELD_COLS x FIELD_ROWS_PER_PART`` objectives."""
    if not table:
        raise ValueError("field_error_maps: the table is empty")
    methods = _methods(table)
    per = FIELD_COLS * FIELD_ROWS_PER_PART
    chunks = [methods[i:i + per] for i in range(0, len(methods), per)]
    return [field_error_maps(table, methods=chunk, part=(k + 1, len(chunks))) for k, chunk in enumerate(chunks)]


def field_error_maps(table, methods=None, part=None) -> Figure:
    """Per objective, the relative field error at each node (r, t) of the grid, each panel on its own
    log colour scale (one objective's large errors would wash out the rest on a shared one)."""
    if not table:
        raise ValueError("field_error_maps: the table is empty")
    methods = _methods(table) if methods is None else list(methods)
    ts = sorted({float(r["t"]) for r in table})
    n = len(ts)
    cols = min(FIELD_COLS, len(methods))
    rows_n = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(WIDTH * cols / FIELD_COLS, 2.2 * rows_n + 0.6), squeeze=False,
                             layout="constrained")
    t_edges = [(j + 0.5) / n for j in range(n + 1)]
    r_edges = [(i - 0.5) / n for i in range(n + 2)]
    for k, m in enumerate(methods):
        ax = axes[k // cols][k % cols]
        V = [[math.nan] * n for _ in range(n + 1)]
        for r in (r for r in table if r["method"] == m):
            i, j = round(float(r["r"]) * n), round(float(r["t"]) * n) - 1
            V[i][j] = float(r["relative"])
        values = [v for row in V for v in row if math.isfinite(v) and v > 0]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        # a log scale where the values span a decade or more, a linear one over a narrower range
        norm = None if not hi > lo else LogNorm(vmin=lo, vmax=hi) if hi >= 10 * lo else Normalize(vmin=lo, vmax=hi)
        ax.set_facecolor("#e6e6e6")
        mesh = ax.pcolormesh(t_edges, r_edges, V, norm=norm, cmap="viridis", shading="flat")
        if n <= 8:
            for i in range(n + 1):
                for j in range(n):
                    if math.isfinite(V[i][j]):
                        light = norm is not None and norm(V[i][j]) < 0.5
                        ax.text((j + 1) / n, i / n, _short(V[i][j]), ha="center", va="center", fontsize=MIN_FONT,
                                color="white" if light else "black")
        ax.plot([0, 1 + 0.5 / n], [0, 1 + 0.5 / n], color="white", linewidth=0.8, linestyle="--")
        one = [float(r["relative"]) for r in table if r["method"] == m and float(r["r"]) == 0 and float(r["t"]) == 1]
        ax.set_title(f"{m}" + (f": one step {one[0]:.2g}" if one else ""), fontsize=7.5)
        ax.set_xlim(t_edges[0], t_edges[-1])
        ax.set_ylim(r_edges[0], r_edges[-1])
        ax.set_xlabel("t", fontsize=7)
        ax.set_ylabel("r", fontsize=7)
        ax.tick_params(labelsize=MIN_FONT)
        if norm is not None:
            bar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
            bar.ax.tick_params(which="both", labelsize=MIN_FONT)
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
    for k in range(len(methods), rows_n * cols):
        axes[k // cols][k % cols].set_visible(False)
    of = f" (part {part[0]} of {part[1]})" if part and part[1] > 1 else ""
    fig.suptitle(f"{table[0]['case']}{of}: relative field error\n" r"$E|u_\theta - u|^2 / E|u|^2$ over (r, t), "
                 "r <= t (grey: not trained there, or r > t);\neach panel on its own colour scale, log where it "
                 "spans a decade", fontsize=7.5)
    return fig


def _short(v: float) -> str:
    """A cell's value in at most four characters: ``.99``, ``1.1``, ``12``, ``3e2``, ``5e-3``."""
    if v >= 100:
        mantissa, exponent = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if v >= 10:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.1f}"
    if v >= 0.01:
        return f"{v:.2f}".lstrip("0")
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ------------------------------------------------------------ files


def save_figure(fig: Figure, stem, formats=FORMATS) -> None:
    """``stem.pdf`` and ``stem.png`` (the formats asked for), each written atomically."""
    stem = Path(stem)
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, metadata={"CreationDate": None} if fmt == "pdf" else None)
        write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue())
    plt.close(fig)


KINDS = ("error_vs_nfe", "samples", "field_error", "images")

# the columns a figure reads, and which of them are numbers (int or float)
COLUMNS = {
    "error_vs_nfe": {"case": str, "method": str, "index": int, "nfe": int, "mean": float, "min": float, "max": float},
    "samples": {"case": str, "method": str, "index": int, "nfe": int, "x": float, "y": float, "phi_x": float,
                "phi_y": float, "error": float},
    "field_error": {"case": str, "method": str, "r": float, "t": float, "relative": float},
    "images": {"case": str, "method": str, "index": int, "nfe": int, "i": int, "shape": str, "error": float,
               "sample": str, "exact": str},
    "density": {"kind": str, "x": float, "y": float, "value": float},
}


def figure_tables(out) -> list[tuple[str, Path]]:
    """``(kind, csv)`` of every figure table in a study folder: ``KIND_<case>.csv`` for the cases of
    its ``config.toml`` (where it has one: a folder of tables alone has every such CSV)."""
    out = Path(out)
    cases = _study_cases(out)
    found = []
    for kind in KINDS:
        for p in sorted(out.glob(f"{kind}_*.csv")):
            if cases is None or p.stem[len(kind) + 1:] in cases:
                found.append((kind, p))
    return found


def _study_cases(out: Path):
    """The case slugs of the study in ``out`` (its ``config.toml``), or None without one."""
    config = out / "config.toml"
    if not config.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        cases = tomllib.loads(config.read_text())["study"]["cases"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {slug(str(c)) for c in cases}


def read_table(path: Path, kind: str) -> list[dict]:
    """A figure table, checked: its columns present, every row complete, every number a number; an
    error names the file, the line and the column."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            table = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it ({err})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a CSV table ({err})") from None
    missing = [c for c in COLUMNS[kind] if c not in header]
    if missing:
        raise ValueError(f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
                         f"(a {kind} table has {', '.join(COLUMNS[kind])})")
    for i, row in enumerate(table):
        line = i + 2  # the header is line 1
        if None in row or any(v is None for v in row.values()):
            raise ValueError(f"{path}: line {line} has {len([v for v in row.values() if v is not None])} fields "
                             f"where the header has {len(header)} (a truncated or extended row)")
        for column, cast in COLUMNS[kind].items():
            if cast is str:
                continue
            try:
                cast(row[column])
            except ValueError:
                raise ValueError(f"{path}: line {line}, column {column}: {row[column]!r} is not "
                                 f"{'an integer' if cast is int else 'a number'}") from None
    return table


def _own_case(path: Path, kind: str, table) -> bool:
    """A table's rows are all of the case its name says (a copy under another name is not the study's)."""
    return all(slug(r["case"]) == path.stem[len(kind) + 1:] for r in table)


def empty_figure(path: Path) -> Figure:
    """The figure of an empty table: it says so (an older figure of the same name is replaced)."""
    fig = plt.figure(figsize=(7.0, 1.6), layout="constrained")  # a double column
    fig.text(0.5, 0.5, f"{path.name}: the table is empty\n(no run produced these numbers)", ha="center",
             va="center", fontsize=10)
    return fig


def build(out, style=None, formats=FORMATS) -> list[Path]:
    """Draw every figure of the study folder ``out`` from its CSVs; returns the stems written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; expected a study's output folder")
    if not out.is_dir():
        raise ValueError(f"{out}: no such folder")
    tables = figure_tables(out)
    if not tables:
        raise ValueError(f"{out} holds no figure tables (error_vs_nfe_*.csv, samples_*.csv, field_error_*.csv): "
                         "is it a finished study?")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(bad)}")
    written = []
    with plt.style.context(style or "default"):
        for kind, path in tables:
            table = read_table(path, kind)
            if not _own_case(path, kind, table):
                print(f"note: {path.name} left alone: its rows are of case {table[0]['case']!r}, not the one its "
                      "name says (not a figure table of this study)", file=sys.stderr)
                continue
            if not table:
                print(f"note: {path.name} is empty: its figure says so", file=sys.stderr)
                fig = empty_figure(path)
            elif kind == "error_vs_nfe":
                fig = error_vs_nfe(table)
            elif kind == "samples" and path.with_name("images_" + path.name[len("samples_"):]).exists():
                continue  # an image case: its samples figure is drawn from images_<case>.csv
            elif kind == "images":
                fig = image_parts(table)
                path = path.with_name("samples_" + path.name[len("images_"):])  # drawn as samples_<case>
            elif kind == "samples":
                density_path = path.with_name("density_" + path.name[len("samples_"):])
                if not density_path.exists():
                    raise ValueError(f"{path} needs {density_path.name} beside it (the true density)")
                fig = samples_parts(table, read_table(density_path, "density"))
            else:
                fig = field_error_parts(table)
            stem = path.with_suffix("")
            for k, part in enumerate(fig if isinstance(fig, list) else [fig]):
                name = stem if k == 0 else stem.with_name(f"{stem.name}_part{k + 1}")
                save_figure(part, name, formats)
                written.append(name)
            _remove_stale_parts(stem, k + 1, formats)
    return written


def _remove_stale_parts(stem: Path, parts: int, formats) -> None:
    """Parts beyond ``parts`` left by an earlier drawing of the same table (fewer methods now)."""
    for fmt in formats:
        for old in stem.parent.glob(f"{stem.name}_part*.{fmt}"):
            suffix = old.stem[len(stem.name) + len("_part"):]
            if suffix.isdigit() and int(suffix) > parts:
                old.unlink()


def main(argv=None, prog: str = "mfverify figures") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Redraw every figure of a finished study from its CSVs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dir", help="the study's output folder")
    parser.add_argument("--style", default=argparse.SUPPRESS,
                        help="a matplotlib style name or .mplstyle file (default: mfverify's own)")
    parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated: pdf,png")
    args = parser.parse_args(argv)
    args.style = getattr(args, "style", None)  # SUPPRESS: the help shows one default, not "None"
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if args.style is not None and args.style not in plt.style.available and not Path(args.style).is_file():
        parser.error(f"--style: {args.style!r} is neither a matplotlib style ({', '.join(plt.style.available[:6])}, "
                     "...) nor a file")
    try:
        written = build(args.dir, style=args.style, formats=formats)
    except ValueError as err:
        parser.error(str(err))
    for stem in written:
        print(f"{stem}.{{{','.join(formats)}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
