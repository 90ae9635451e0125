"""The committed documents agree with the CSVs beside them (issue 26, part 5): every claim's verdict
and every row of its table in ``docs/claims/claims.md`` and ``docs/relatives_compare/headlines.md``
are those of the ``.csv`` written in the same run, formatted as the report formats them."""

import csv
import re
from pathlib import Path

import pytest

from mfverify.study.headlines import _fmt

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAIRS = [("claims/claims.md", "claims/claims.csv"), ("relatives_compare/headlines.md", "relatives_compare/headlines.csv")]


def _number(text: str):
    """A CSV value as the report had it: an int, a float (written with repr), or text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` is a bar inside a cell."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _sections(text: str) -> dict:
    """``{claim: (verdict, [(case, metric, value), ...])}`` of a claims document."""
    out, claim = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:].strip()
            claim = head.split(":")[0].strip()
            if not re.fullmatch(r"[A-Z]+\d+", claim):
                claim = None
                continue
            out[claim] = [head.split(":", 1)[1].strip() if ":" in head else None, []]
        elif claim and line.startswith("**") and out[claim][0] is None:
            out[claim][0] = line[2:].split(".**")[0]
        elif claim and line.startswith("| ") and not line.startswith("| case | metric") and not line.startswith("|---"):
            out[claim][1].append(tuple(_cells(line)))
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.mark.parametrize("md, table", PAIRS)
def test_a_committed_report_equals_the_csv_beside_it(md, table):
    with open(DOCS / table, newline="") as f:
        rows = list(csv.DictReader(f))
    sections = _sections((DOCS / md).read_text())
    claims = list(dict.fromkeys(r["claim"] for r in rows))
    assert list(sections) == claims
    for claim in claims:
        sub = [r for r in rows if r["claim"] == claim]
        verdict, lines = sections[claim]
        assert verdict == sub[0]["verdict"], claim
        assert lines == [(r["case"], r["metric"], _fmt(_number(r["value"]))) for r in sub], claim


def test_the_comparison_sees_a_changed_number(tmp_path):
    """The check can fail: one value changed in a copy of the claims report is found."""
    text = (DOCS / "claims/claims.md").read_text()
    sections = _sections(text)
    claim, (_, lines) = next((k, v) for k, v in sections.items() if v[1])
    case, metric, value = lines[0]
    changed = text.replace(f" | {value} |", f" | {value}1 |", 1)
    assert _sections(changed)[claim][1][0] != lines[0]
