"""The study's report, from the per-run files of a finished study: ``results.csv``,
``runs.csv``, the figure tables (``tables``), the figures (``figures``, drawn from those
tables alone) and ``summary.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mfverify import objectives
from mfverify.io import write_text
from mfverify.study import divergence, tables
from mfverify.study.config import Study
from mfverify.study.environment import stamp
from mfverify.study.figures import build
from mfverify.study.store import COLUMNS, RUN_COLUMNS, csv_text, read_csv, run_dir, slug, truth_path


def assemble(study: Study, out: Path) -> None:
    """results.csv, runs.csv, summary.md and the figures from the per-run files."""
    rows = []
    for case in study.study.cases:
        rows += read_csv(out / "runs" / case / "baselines" / "rows.csv")
    records = []
    for case, obj, seed in study.study.runs():
        folder = run_dir(out, case, obj, seed)
        rows += read_csv(folder / "rows.csv")
        records.append({k: v for k, v in json.loads((folder / "run.json").read_text()).items() if k in RUN_COLUMNS})
    order = {m: i for i, m in enumerate(list(study.study.objectives) + list(study.study.baselines))}
    rows.sort(key=lambda r: (r["case"], order.get(r["method"], 99), str(r["seed"]), int(r["nfe"]), r["metric"]))
    write_text(out / "results.csv", csv_text(rows, COLUMNS))
    write_text(out / "runs.csv", csv_text(records, RUN_COLUMNS))

    write_tables(study, out, rows)
    build(out)  # the figures from the tables just written: as `python -m mfverify.study.figures` draws them
    write_text(out / "summary.md", summary(study, rows, records, out))


def write_tables(study: Study, out: Path, rows) -> None:
    """Every figure table of a finished study (``rows``: its results), from its per-run files."""
    for case in study.study.cases:
        name = slug(case)
        tables.write_csv(out / f"error_vs_nfe_{name}.csv", tables.error_vs_nfe_table(rows, case, study))
        phi = torch.load(truth_path(out, case), weights_only=True)["phi"]
        base = out / "runs" / case / "baselines" / "samples.pt"
        runs = {obj: run_dir(out, case, obj, 0) / "samples.pt" for obj in study.study.objectives}
        samples, density = tables.samples_tables(
            study, case, phi, torch.load(base, weights_only=True) if base.exists() else None,
            {obj: torch.load(path, weights_only=True) for obj, path in runs.items() if path.exists()})
        if samples is not None:
            tables.write_csv(out / f"samples_{name}.csv", samples)
            tables.write_csv(out / f"density_{name}.csv", density)
        images = tables.images_table(
            study, case, phi, torch.load(base, weights_only=True) if base.exists() else None,
            {obj: torch.load(path, weights_only=True) for obj, path in runs.items() if path.exists()})
        if images is not None:
            tables.write_csv(out / f"images_{name}.csv", images)
        grids = {obj: [read_csv(path) for seed in range(study.study.seeds_for(obj))
                       if (path := run_dir(out, case, obj, seed) / "field_grid.csv").exists()]
                 for obj in study.study.objectives}
        field = tables.field_error_table(study, case, grids)
        if field:
            tables.write_csv(out / f"field_error_{name}.csv", field)


FIGURE_CAPTIONS = {
    "error_vs_nfe": "flow-map error against NFE: trained objectives, baselines, one-step errors",
    "samples": "seed-0 samples at a few NFEs over the data density, joined to their exact images (an image case: "
               "one-step samples drawn as images under their exact images)",
    "field_error": "relative field error E|u_theta - u|^2 / E|u|^2 over (r, t)",
}


def _figure_links(out, case) -> list[str]:
    """Markdown image links to the case's figures that exist in ``out``."""
    if out is None:
        return []
    lines = []
    for kind, caption in FIGURE_CAPTIONS.items():
        stem = f"{kind}_{slug(case)}"
        parts = sorted(Path(out).glob(f"{stem}_part*.png"), key=lambda p: int(p.stem.rsplit("_part", 1)[1]))
        for k, name in enumerate([f"{stem}.png"] + [p.name for p in parts]):
            if (Path(out) / name).exists():
                of = f" (part {k + 1} of {len(parts) + 1})" if parts else ""
                lines += [f"![{case}: {caption}{of}]({name})", ""]
    return lines


def _mean_std(values):
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def _what_runs_are(study: Study) -> list[str]:
    """For a study with variants or conditional runs: what each such run trains and what it is
    compared with (nothing for a study without them)."""
    lines = []
    for obj in study.study.objectives:
        cfg = study.run_config(study.study.cases[0], obj, 0)
        if obj == cfg.objective and not cfg.conditional:
            continue
        what = f"`{cfg.objective}`" + (f" with {dict(cfg.objective_options)}" if cfg.objective_options else "")
        if cfg.conditional:
            w, interval = objectives.get(cfg.objective).guided_target(dict(cfg.objective_options))
            span = "" if interval is None or tuple(interval) == (0.0, 1.0) else f" for t in [{interval[0]:g}, {interval[1]:g}]"
            what += (f", class-conditional (label dropout {cfg.label_dropout:g}); compared with the exact guided map "
                     f"Phi_w(x1, 1 -> 0 | c), w = {w:g}{span}, each noise sample with a class drawn from the class weights")
        lines.append(f"- `{obj}`: {what}")
    return (["Runs:", ""] + lines + [""]) if lines else []


def summary(study: Study, rows, records, out: Path | None = None) -> str:
    r0 = [o for o in study.study.objectives if objectives.get(study.study.objective_of(o)).trained_at_r0]
    at_r0 = (f"; {', '.join(r0)} {'is' if len(r0) == 1 else 'are'} trained at r = 0 only, so "
             f"{'it is' if len(r0) == 1 else 'they are'} reported at NFE 1") if r0 else ""
    stamped = [stamp(out, study.study.name), ""] if out is not None else []
    lines = [f"# {study.study.name}", "", *stamped, f"Seeds: {study.study.seeds}. Mean ± std over seeds "
             "(the exact_* baselines are deterministic). Metric: flow_map_mean = mean |x_gen - Phi(x1, 1 -> 0)|; "
             f"Heun's NFE is 2 per step{at_r0}.", ""]
    lines += _what_runs_are(study)
    for case in study.study.cases:
        sub = [r for r in rows if r["case"] == case and r["metric"] == "flow_map_mean"]
        nfes = sorted({int(r["nfe"]) for r in sub})
        methods = [m for m in list(study.study.objectives) + list(study.study.baselines) if any(r["method"] == m for r in sub)]
        lines += [f"## {case}", "", "| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|" + "---|" * len(nfes)]
        for m in methods:
            cells = []
            for n in nfes:
                vals = [float(r["value"]) for r in sub if r["method"] == m and int(r["nfe"]) == n]
                if not vals:
                    cells.append("")
                    continue
                mean, std = _mean_std(vals)
                cells.append(f"{mean:.3g}" if m in study.study.baselines and m.startswith("exact") else f"{mean:.3g} ± {std:.2g}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += _figure_links(out, case)
    diverged = divergence.reasons(records, rows)
    lines += ["## Training runs", "", f"Diverged: {divergence.RULE}.", "",
              "| case | objective | seed | steps | wall s | final loss | diverged |", "|---|---|---|---|---|---|---|"]
    for rec in records:
        why = diverged.get((rec["case"], rec["objective"], str(rec["seed"])), "")
        lines.append(f"| {rec['case']} | {rec['objective']} | {rec['seed']} | {rec['steps']} | "
                     f"{rec['wall_seconds']} | {float(rec['final_loss']):.4g} | {why} |")
    return "\n".join(lines) + "\n"
