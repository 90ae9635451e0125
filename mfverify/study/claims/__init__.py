"""The claims report: every claim of the seed and the MeanFlow paper that a mixture can test,
a measured verdict each (docs/MATH.md; the report's default output is docs/claims/).

    python -m mfverify.study claims [--preset quick|default|paper] [--jobs 2]

trains the runs of ``mfverify/studies/claims.toml`` (one study; a run that two names of it
share, such as ``mf_share25`` and ``mf``, is trained once) and then, as that study's
``report``, computes the exact checks and writes ``claims.csv`` and ``claims.md`` into the
study folder. ``python -m mfverify.study.claims DIR`` recomputes them from a finished folder.

``claims.csv`` has the columns ``claim, statement, source, case, metric, value, rule,
verdict``: one or more rows per claim (``C1`` ... ``C13``; extra findings ``X1``, ...), the
claim's verdict on each of its rows. Verdicts: ``holds`` (the rule holds on every part),
``fails`` (on none), ``partly``; ``insufficient`` where the runs are too little evidence for
the comparison (``context.EVIDENCE_RULE``: seeds, steps, timing rounds; a row gives the
reason), ``undetermined`` where a timing comparison's rounds straddle its threshold; extra
findings are ``observed``. Each rule is written next to its claim, in the code and in the
report, and applied to the numbers by the code.

Trained numbers are ``flow_map_mean`` at an NFE, mean (and standard error) over seeds;
"a below b" means below by more than twice the standard error of the difference of the seed
means (``headlines.Results.lower``), so a tie within the seeds' scatter is not a win.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from mfverify.io import write_text
from mfverify.study.environment import stamp
from mfverify.study.claims.context import COLUMNS, DEFAULTS, EVIDENCE_RULE, Context
from mfverify.study.claims.exact import (c1_exact_generation, c2_honest_regression, c7_stationary, c8_reduces_to_fm,
                                         c12_stability)
from mfverify.study.claims.trained import (c3_c4_cost, c5_nosg, c6_scm, c9_shortcut, c10_ablations, c11_scm,
                                           c13_attribution, extra_findings)
from mfverify.study.headlines import Results, _fmt

CLAIMS = (c1_exact_generation, c2_honest_regression, c3_c4_cost, c5_nosg, c6_scm, c7_stationary, c8_reduces_to_fm,
          c9_shortcut, c10_ablations, c11_scm, c12_stability, c13_attribution)


def compute(study, out, progress: bool = False) -> list:
    options = {**DEFAULTS, **dict(study.study.report_options)}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"report_options: unknown keys {sorted(unknown)}; known: {', '.join(DEFAULTS)}")
    ctx = Context(study, Results.read(out), options, progress)
    rows = []
    for claim in CLAIMS:
        rows += claim(ctx)
    return rows + extra_findings(ctx)


def _value_text(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _cell(text) -> str:
    """Text for a Markdown table cell (a bar would end the cell)."""
    return str(text).replace("|", "\\|")


def markdown(study, rows, out: Path) -> str:
    lines = ["# Claims, measured", "", stamp(out, study.study.name), "",
             f"`mfverify study {study.study.name}` (study `{study.study.name}`, {study.train.steps} training steps, "
             f"{study.study.seeds} seeds unless said). Each claim with its source, the rule its verdict comes from, "
             "and the measured numbers; one-step errors are flow_map_mean = mean |x_gen - Phi(x1, 1 -> 0)| at NFE 1, "
             "mean over seeds. \"a below b\": by more than 2 standard errors of the seed means. The study's own "
             "tables and figures are in [summary.md](summary.md).", "", f"Evidence: {EVIDENCE_RULE}.", ""]
    short = [r["claim"] for r in rows if r["verdict"] == "insufficient" and r["metric"] == "insufficient evidence"]
    if short:
        lines += [f"**A smoke test.** {', '.join(short)} {'is' if len(short) == 1 else 'are'} insufficient: this run "
                  f"trained {study.train.steps} steps with {study.study.seeds} seed{'' if study.study.seeds == 1 else 's'}"
                  " (see each claim's reason). Its numbers show that the pipeline runs, not what the claims say; the "
                  "default preset decides them.", ""]
    lines += ["| claim | verdict | statement |", "|---|---|---|"]
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    for claim in claims:
        first = next(r for r in rows if r["claim"] == claim)
        lines.append(f"| [{claim}](#{claim.lower()}) | {first['verdict']} | {_cell(first['statement'])} |")
    lines.append("")
    for claim in claims:
        sub = [r for r in rows if r["claim"] == claim]
        first = sub[0]
        lines += [f"## {claim}", "", f"**{first['verdict']}.** {first['statement']} ({first['source']}).", "",
                  f"Rule: {first['rule']}.", "", "| case | metric | value |", "|---|---|---|"]
        lines += [f"| {_cell(r['case'])} | {_cell(r['metric'])} | {_cell(_fmt(r['value']))} |" for r in sub]
        lines.append("")
    figures = sorted(p.name for p in Path(out).glob("error_vs_nfe_*.png"))
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def write(study, out, rows) -> None:
    out = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "value": _value_text(r["value"])} for r in rows)
    write_text(out / "claims.csv", buf.getvalue())
    write_text(out / "claims.md", markdown(study, rows, out))


def report(study, out) -> None:
    """The study's report hook (``[study] report``): claims.csv and claims.md into ``out``."""
    start = time.perf_counter()
    rows = compute(study, out, progress=True)
    write(study, out, rows)
    print(f"claims report: {len(rows)} rows in {time.perf_counter() - start:.0f} s: {Path(out) / 'claims.md'}",
          file=sys.stderr)


# the trained claims a study of other cases asks again (images_compare: on digits), when it has their runs
REASKED = (c5_nosg, c13_attribution)


def reasked(study, out) -> None:
    """A study's report hook (``[study] report = "mfverify.study.claims:reasked"``): the trained claims
    of ``REASKED`` on the study's own cases and runs, into claims.csv and claims.md, with their
    verdicts appended to summary.md."""
    options = {**DEFAULTS, **dict(study.study.report_options)}
    ctx = Context(study, Results.read(out), options)
    rows = [row for claim in REASKED for row in claim(ctx)]
    write(study, out, rows)
    lines = ["", "## Claims asked again on these cases", "",
             f"The trained claims of the claims report, with this study's runs ([claims.md](claims.md): the numbers, "
             f"the rules). Evidence: {EVIDENCE_RULE}.", "", "| claim | verdict | statement |", "|---|---|---|"]
    for claim in dict.fromkeys(r["claim"] for r in rows):
        first = next(r for r in rows if r["claim"] == claim)
        lines.append(f"| {claim} | {first['verdict']} | {_cell(first['statement'])} |")
    if not rows:
        lines.append("| - | - | the study has none of their runs |")
    summary = Path(out) / "summary.md"
    write_text(summary, summary.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")
    print(f"claims asked again: {len(rows)} rows: {Path(out) / 'claims.md'}", file=sys.stderr)


def main(argv=None, prog: str = "mfverify claims") -> int:
    from mfverify.study.config import load_study

    parser = argparse.ArgumentParser(prog=prog, description="recompute claims.csv and claims.md of a finished claims "
                                     "study folder (mfverify study claims writes them at the end of a run)")
    parser.add_argument("folder", help="the finished study's output folder (it holds config.toml and results.csv); "
                        "claims.csv and claims.md are written there")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    try:
        if not (folder / "config.toml").is_file():
            raise ValueError(f"{folder} holds no study (config.toml missing)")
        study = load_study(folder / "config.toml")
        report(study, folder)
    except (ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
