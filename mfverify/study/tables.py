"""The figure tables of a study: the numbers behind every figure, one CSV each.

Each table is built by a function of the data it shows (``report.write_tables`` reads
them from the per-run files of a finished study, ``runs/`` and ``truth/``);
``mfverify.study.figures.build(out)`` draws every figure from these CSVs alone, so a
figure can be restyled without training or truth.

``error_vs_nfe_<case>.csv``
    study, case, method, group, source, index, nfe, metric, mean, min, max, seeds:
    the flow-map error of each method at each NFE over the seeds.
``samples_<case>.csv``
    case, method, group, source, index, nfe, i, x, y, phi_x, phi_y, error: the first
    ``sample_points`` generated samples of seed 0 and their exact images
    ``Phi(x1, 1 -> 0)`` in two plotting coordinates, with the full-dimensional
    ``|x_gen - Phi|`` of each sample (2-D cases and above).
``density_<case>.csv``
    case, projection, kind, x, y, value: the true data density in those coordinates
    (``kind = grid``: a 160 x 160 grid, row-major in y; ``kind = atom``: a component
    too narrow for the grid, with its weight). ``projection`` is ``identity`` for
    d = 2, ``pca`` for d > 2 (the two leading principal directions of the data),
    ``coordinates`` for a product mixture (its two coordinates of largest variance).
``images_<case>.csv`` (image cases: a case with a ``shape``)
    case, method, group, source, index, nfe, i, shape, error, sample, exact: the first
    ``IMAGES_PER_METHOD`` one-step samples of each method and their exact images, each a row of
    space-separated pixels in ``C x H x W`` order; ``samples_<case>.png`` draws them as pictures.
``field_error_<case>.csv``
    case, method, index, r, t, relative, field_error, u_sq, seeds: the field error
    ``E|u_theta - u|^2`` and its ratio to ``E|u|^2`` at each node (r, t) of the grid,
    mean over seeds.

Columns shared by the tables: ``group`` is ``objective`` (a trained objective used as
an average-velocity model) or ``baseline``; ``source`` is the objective a model
baseline is made from (``fm`` for ``fm_euler``); ``index`` is the method's position
in the study's objective or baseline list (the figures colour by it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mfverify.cases import ProductMixture, get_case
from mfverify.io import write_text
from mfverify.study.config import MODEL_BASELINES
from mfverify.study.store import csv_text

DENSITY_GRID = 160


def _methods(study):
    """``(method, group, source, index)`` for every objective and baseline of the study, in order."""
    out = [(m, "objective", "", i) for i, m in enumerate(study.study.objectives)]
    out += [(b, "baseline", MODEL_BASELINES.get(b, ("",))[0], i) for i, b in enumerate(study.study.baselines)]
    return out


def error_vs_nfe_table(rows, case: str, study, metric: str = "flow_map_mean") -> list[dict]:
    sub = [r for r in rows if r["case"] == case and r["metric"] == metric]
    table = []
    for method, group, source, index in _methods(study):
        mine = [r for r in sub if r["method"] == method]
        for n in sorted({int(r["nfe"]) for r in mine}):
            vals = [float(r["value"]) for r in mine if int(r["nfe"]) == n]
            table.append({"study": study.study.name, "case": case, "method": method, "group": group, "source": source,
                          "index": index, "nfe": n, "metric": metric, "mean": sum(vals) / len(vals),
                          "min": min(vals), "max": max(vals), "seeds": len(vals)})
    return table


def plotting_frame(mixture):
    """``(origin, P, projection)``: plotting coordinates ``(x - origin) @ P`` (P is d x 2)."""
    d = mixture.d
    if d == 2:
        return torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64), "identity"
    if isinstance(mixture, ProductMixture):
        var = torch.tensor([f.mean_and_covariance()[1][0, 0].item() for f in mixture.factors], dtype=torch.float64)
        order = sorted(range(d), key=lambda j: (-var[j].item(), j))[:2]
        P = torch.zeros(d, 2, dtype=torch.float64)
        P[order[0], 0] = P[order[1], 1] = 1.0
        return torch.zeros(d, dtype=torch.float64), P, "coordinates"
    mean, cov = mixture.mean_and_covariance()
    lam, Q = torch.linalg.eigh(cov)
    P = Q[:, [-1, -2]].clone()
    for k in range(2):  # a deterministic sign: the largest entry positive
        if P[P[:, k].abs().argmax(), k] < 0:
            P[:, k] = -P[:, k]
    return mean, P, "pca"


def _projected_components(mixture, origin, P):
    """Weights, means (K, 2) and covariances (K, 2, 2) of the data law in plotting coordinates."""
    if isinstance(mixture, ProductMixture):
        cols = [int(P[:, k].argmax()) for k in range(2)]
        fa, fb = mixture.factors[cols[0]], mixture.factors[cols[1]]
        w = (fa.weights[:, None] * fb.weights[None, :]).reshape(-1)
        mu = torch.stack([fa.means[:, 0].repeat_interleave(fb.K), fb.means[:, 0].repeat(fa.K)], dim=1)
        var = torch.stack([fa.covs[:, 0, 0].repeat_interleave(fb.K), fb.covs[:, 0, 0].repeat(fa.K)], dim=1)
        return w, mu, torch.diag_embed(var)
    return mixture.weights, (mixture.means - origin) @ P, mixture.projected_covariances(P)


def density_table(mixture, case, origin, P, projection, lo, hi) -> list[dict]:
    w, mu, S = _projected_components(mixture, origin, P)
    n = DENSITY_GRID
    xs = torch.linspace(lo[0], hi[0], n, dtype=torch.float64)
    ys = torch.linspace(lo[1], hi[1], n, dtype=torch.float64)
    cell = min((hi[0] - lo[0]) / n, (hi[1] - lo[1]) / n)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], dim=1)
    dens = torch.zeros(len(pts), dtype=torch.float64)
    atoms = []
    for k in range(len(w)):
        if torch.linalg.eigvalsh(S[k]).min() < (0.5 * cell) ** 2:  # narrower than the grid: a marker
            atoms.append({"case": case, "projection": projection, "kind": "atom", "x": mu[k, 0].item(),
                          "y": mu[k, 1].item(), "value": w[k].item()})
            continue
        dist = torch.distributions.MultivariateNormal(mu[k], covariance_matrix=S[k])
        dens += w[k] * dist.log_prob(pts).exp()
    grid = [{"case": case, "projection": projection, "kind": "grid", "x": p[0].item(), "y": p[1].item(),
             "value": v.item()} for p, v in zip(pts, dens)]
    return grid + atoms


def samples_tables(study, case: str, phi, baseline_samples=None, run_samples=None):
    """``(samples, density)`` tables of a case, or ``(None, None)`` for 1-D data.

    ``phi``: the case's exact images ``Phi(x1, 1 -> 0)`` of the shared noise;
    ``baseline_samples``: the baselines' ``samples.pt`` blob (or None);
    ``run_samples``: ``{objective: blob}`` of the seed-0 runs' ``samples.pt``."""
    mixture = get_case(case)
    if mixture.d < 2:
        return None, None
    origin, P, projection = plotting_frame(mixture)
    k = study.eval.sample_points
    phi = phi[:k]
    sources = _sources(baseline_samples, run_samples)
    phi2 = (phi - origin) @ P
    table = []
    for method, group, source, index in _methods(study):
        for n in study.eval.figure_nfe():
            entry = sources[group].get((method, n))
            if entry is None:
                continue
            x, own_phi = entry  # own_phi: a conditional run's guided images
            ref = phi[: len(x)] if own_phi is None else own_phi
            ref2 = phi2 if own_phi is None else (own_phi - origin) @ P
            x2 = (x - origin) @ P
            err = (x - ref).norm(dim=1)
            for i in range(len(x)):
                table.append({"case": case, "method": method, "group": group, "source": source, "index": index,
                              "nfe": n, "i": i, "x": x2[i, 0].item(), "y": x2[i, 1].item(),
                              "phi_x": ref2[i, 0].item(), "phi_y": ref2[i, 1].item(), "error": err[i].item()})
    # the frame: where the exact images lie, padded (samples far outside are counted, not shown)
    lo, hi = phi2.min(0).values, phi2.max(0).values
    pad = 0.15 * (hi - lo).max()
    lo, hi = (lo - pad).tolist(), (hi + pad).tolist()
    return table, density_table(mixture, case, origin, P, projection, lo, hi)


IMAGES_PER_METHOD = 8  # one-step samples drawn as images per method


def images_table(study, case: str, phi, baseline_samples=None, run_samples=None) -> list[dict] | None:
    """The ``images_<case>.csv`` table of an image case (one with a ``shape``), else None: the first
    ``IMAGES_PER_METHOD`` samples of each method at the samples figure's smallest NFE and their exact
    images, each a row of pixels (space-separated, in the case's ``C x H x W`` order)."""
    mixture = get_case(case)
    shape = getattr(mixture, "shape", None)
    if shape is None:
        return None
    nfe = min(study.eval.figure_nfe())
    sources = _sources(baseline_samples, run_samples)
    pixels = lambda v: " ".join(f"{a:.5g}" for a in v.tolist())  # noqa: E731
    table = []
    for method, group, source, index in _methods(study):
        entry = sources[group].get((method, nfe))
        if entry is None:
            continue
        x, own_phi = entry
        ref = phi if own_phi is None else own_phi
        for i in range(min(IMAGES_PER_METHOD, len(x))):
            table.append({"case": case, "method": method, "group": group, "source": source, "index": index,
                          "nfe": nfe, "i": i, "shape": "x".join(map(str, shape)),
                          "error": (x[i] - ref[i]).norm().item(), "sample": pixels(x[i]), "exact": pixels(ref[i])})
    return table


def _sources(baseline_samples, run_samples) -> dict:
    """``{group: {(method, nfe): (x, phi or None)}}`` from the baselines' and the runs' samples."""
    sources = {"objective": {}, "baseline": {}}
    if baseline_samples is not None:
        sources["baseline"] = _by_method(baseline_samples)
    for obj, blob in (run_samples or {}).items():
        for (m, n), x in _by_method(blob).items():
            sources["objective" if m == obj else "baseline"][(m, n)] = x
    return sources


def _by_method(blob) -> dict:
    """``{(method, nfe): (x, phi or None)}``; ``phi`` where the blob holds its own exact images."""
    phis = blob.get("phi") or [None] * len(blob.get("x", []))
    return {(m, int(n)): (x, p) for m, n, x, p in zip(blob.get("method", []), blob.get("nfe", []), blob.get("x", []), phis)}


def field_error_table(study, case: str, grids) -> list[dict]:
    """``grids``: ``{objective: [rows of a seed's field_grid.csv, ...]}`` (seeds without one left out)."""
    table = []
    for index, obj in enumerate(study.study.objectives):
        cells = {}
        for seed_rows in grids.get(obj, ()):
            for row in seed_rows:
                cells.setdefault((float(row["r"]), float(row["t"])), []).append(row)
        for (r, t), group in cells.items():
            mean = lambda key: sum(float(g[key]) for g in group) / len(group)  # noqa: E731
            table.append({"case": case, "method": obj, "index": index, "r": r, "t": t, "relative": mean("relative"),
                          "field_error": mean("field_error"), "u_sq": mean("u_sq"), "seeds": len(group)})
    return table


def write_csv(path: Path, table: list[dict], columns=None) -> None:
    """``csv_text`` written atomically."""
    write_text(path, csv_text(table, columns))
