"""The samples figure of an image case, drawn from ``images_<case>.csv`` (``tables.images_table``).

``samples_<case>.png``: the top row the exact images ``Phi(x1, 1 -> 0)`` of the first noise
samples, then one row per method: its one-step samples from the same noise, column by column
under their exact images, the row's mean ``|x_gen - Phi|`` in its label. One grey scale (C = 1)
or one colour mapping (C = 3) for the whole figure, set by the exact images' 1st and 99th
percentiles, so that a sample's contrast is comparable with its exact image's. A grid with
more rows than a page holds is split into parts, as the other figures are.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

WIDTH, MAX_HEIGHT = 7.0, 9.0  # inches: a double column, a page
ROWS_PER_PART = 11  # image rows (methods, with the exact row) per part
LABEL_WIDTH = 1.3  # inches for the row labels
FONT = 7.0


def _images(text: str, shape) -> np.ndarray:
    return np.array([float(v) for v in text.split()]).reshape(shape)


def _methods(table) -> list[str]:
    """Methods in the table's order: objectives first, then baselines (by their index)."""
    order = {}
    for r in table:
        order.setdefault(r["method"], (0 if r.get("group", "objective") == "objective" else 1, int(r["index"])))
    return sorted(order, key=order.get)


def image_parts(table) -> list[Figure]:
    """``samples_<case>`` of an image case, in parts of at most ``ROWS_PER_PART`` rows."""
    if not table:
        raise ValueError("image samples: the table is empty")
    methods = _methods(table)
    per = ROWS_PER_PART - 1  # the exact row heads every part
    chunks = [methods[i:i + per] for i in range(0, len(methods), per)]
    return [image_grid(table, chunk, (k + 1, len(chunks))) for k, chunk in enumerate(chunks)]


def image_grid(table, methods, part=(1, 1)) -> Figure:
    shape = tuple(int(a) for a in table[0]["shape"].split("x"))
    C = shape[0]
    first = [r for r in table if r["method"] == methods[0]]
    cols = max(int(r["i"]) for r in table) + 1
    exact = {int(r["i"]): _images(r["exact"], shape) for r in first}
    every = np.concatenate([e.reshape(-1) for e in exact.values()])
    lo, hi = np.percentile(every, 1), np.percentile(every, 99)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    rows = [("exact Φ(x1, 1→0)", exact, None)]
    for m in methods:
        mine = [r for r in table if r["method"] == m]
        err = sum(float(r["error"]) for r in mine) / len(mine)
        rows.append((m, {int(r["i"]): _images(r["sample"], shape) for r in mine}, err))
    cell = min((WIDTH - LABEL_WIDTH) / cols, (MAX_HEIGHT - 0.5) / len(rows))
    fig = Figure(figsize=(LABEL_WIDTH + cell * cols, 0.5 + cell * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for k, (label, images, err) in enumerate(rows):
        for i in range(cols):
            ax = axes[k, i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i not in images:
                ax.set_axis_off()
                continue
            img = np.clip((images[i] - lo) / (hi - lo), 0.0, 1.0)
            if C == 1:
                ax.imshow(img[0], cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(np.moveaxis(img[:3], 0, -1), interpolation="nearest")
        text = label if err is None else f"{label}\n|x−Φ| {err:.3g}"
        axes[k, 0].set_ylabel(text, fontsize=FONT, rotation=0, ha="right", va="center")
    case = table[0]["case"]
    of = f" (part {part[0]} of {part[1]})" if part[1] > 1 else ""
    nfe = table[0]["nfe"]
    fig.suptitle(f"{case}{of}: NFE-{nfe} samples (seed 0) under their exact images, same noise per column",
                 fontsize=FONT + 1)
    return fig
