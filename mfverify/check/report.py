"""What both batteries share: the rows of a report, the report, the errors, the argument checks.

- ``CheckResult``: one row, a statistic (``value``), its ``rule`` and a ``status``: ``"pass"``,
  ``"fail"`` or ``"insufficient"`` (the evidence decided nothing: too few batches for the
  resolution asked). ``counts=False`` marks an informational row.
- ``Report``: the rows, notes, seconds, and for the as-written battery what the sampler
  trains. ``verdict``: ``"failed"`` when a counting row fails, else ``"undecided"`` when one
  is insufficient, else ``"passed"``; ``exit_status`` the command's (``EXIT``).
- ``LossError``: the loss under test failed or returned what a loss cannot be (a usage error).
- ``check_int``, ``check_rtol``, ``check_cases``: arguments checked before any work.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

import torch

__all__ = ["CheckResult", "Report", "LossError", "EXIT", "DEFAULT_CASES", "DEFAULT_LABELLED_CASES", "check_int", "check_rtol", "check_cases",
           "progress", "fmt", "cell"]

# a Gaussian, a 1-D bimodal mixture, ring8, and velocities beyond 4 (a clipped target shows)
DEFAULT_CASES = ("gauss2d_aniso", "bimodal1d", "ring8", "wide2d")
# a loss that takes labels: classes whose fields differ, where a guidance error or a label shuffle
# moves the fixed point along the class direction (docs/MATH.md §13)
DEFAULT_LABELLED_CASES = ("ring8_halves", "bimodal1d_labelled")

# the command's exit status: one meaning each
EXIT = {"passed": 0, "failed": 1, "usage": 2, "undecided": 3, "interrupted": 130}
STATUSES = ("pass", "fail", "insufficient")


@dataclass
class CheckResult:
    """One row of the report: ``value`` is the statistic the ``rule`` is applied to; ``status`` one
    of ``pass``, ``fail``, ``insufficient`` (given ``passed`` alone, pass or fail)."""

    name: str
    passed: bool
    value: float
    rule: str
    counts: bool = True  # informational checks do not decide the verdict
    details: dict = field(default_factory=dict)
    status: str = ""

    def __post_init__(self):
        if not self.status:
            self.status = "pass" if self.passed else "fail"
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        self.passed = self.status == "pass"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "status": self.status, "value": self.value, "rule": self.rule,
                **({"informational": True} if not self.counts else {}), **self.details}


@dataclass
class Report:
    loss: str
    checks: dict[str, CheckResult]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sampler: dict | None = None  # the as-written battery: what the loss's sampler trains
    unseeded: list | None = None  # the as-written battery: global generators the loss drew from, unseeded

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks.values() if c.counts)

    @property
    def verdict(self) -> str:
        """``failed`` (a counting check failed), ``undecided`` (one is insufficient, none failed) or
        ``passed``."""
        statuses = {c.status for c in self.checks.values() if c.counts}
        return "failed" if "fail" in statuses else "undecided" if "insufficient" in statuses else "passed"

    @property
    def exit_status(self) -> int:
        return EXIT[self.verdict]

    def to_dict(self) -> dict:
        out = {"loss": self.loss, "passed": self.passed, "verdict": self.verdict, "exit_status": self.exit_status,
               "checks": {k: c.to_dict() for k, c in self.checks.items()}, "notes": self.notes}
        if self.sampler is not None:
            out["sampler"] = dict(self.sampler)
        if self.unseeded is not None:
            out["reproducible"] = {"bit_for_bit": not self.unseeded, "unseeded_generators": list(self.unseeded)}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=_json_default)

    def table(self) -> str:
        """The report as a Markdown table, one row per check."""
        lines = [f"check of {self.loss}: {self.verdict.upper()} ({self.seconds:.0f} s)", "",
                 "| check | verdict | value | rule | details |", "|---|---|---|---|---|"]
        word = {"pass": "pass", "fail": "FAIL", "insufficient": "UNDECIDED"}
        for c in self.checks.values():
            verdict = word[c.status] + ("" if c.counts else " (informational)")
            extra = ", ".join(f"{k} = {fmt(v)}" for k, v in c.details.items() if k not in _LONG)
            cells = (c.name, verdict, fmt(c.value), c.rule, extra)
            lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
        for c in self.checks.values():
            for case, d in c.details.get("per_case", {}).items():
                lines.append(f"  {c.name} on {case}: " + ", ".join(f"{k} = {fmt(v)}" for k, v in d.items()))
        if self.sampler is not None:
            s = self.sampler
            lines.append(f"  sampler: {s['calls']} calls of the model; outside [0, 1]: "
                         f"{s['fraction_outside_unit_interval']:.3g}; r > t: {s['fraction_r_gt_t']:.3g}; "
                         f"on the diagonal: {s['fraction_diagonal']:.3g}; one-step interval trained: "
                         f"{'yes' if s['one_step_trained'] else 'no'}")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


_LONG = ("per_case", "sentence")  # details too long for a table cell: their own lines, or a note


def cell(text) -> str:
    """A Markdown table cell: a ``|`` in the text would end the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _json_default(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


class LossError(ValueError):
    """The loss under test failed or returned what a loss cannot be (exit 2, not a failed check)."""


def user_code(call, name: str | None = None, passthrough: tuple = ()):
    """Run the user's code (``call()``): any failure is a ``LossError`` naming it (``name``: the loss's),
    never a traceback; exceptions of the types in ``passthrough`` are raised as they are."""
    try:
        return call()
    except (LossError, *passthrough):
        raise
    except Exception as err:  # the user's code: a failure is reported, never a traceback
        who = f"loss {name!r}" if name else "the loss"
        raise LossError(f"{who} raised {type(err).__name__}: {err}") from err


def progress(enabled: bool, message: str) -> None:
    """A progress line on stderr (the batteries' ``progress=True``)."""
    if enabled:
        print(f"  ... {message}", file=sys.stderr, flush=True)


def check_int(name: str, value, minimum: int | None = None) -> None:
    """``value`` an int (not a bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {'a positive int' if minimum == 1 else f'at least {minimum}'}, got {value}")


def check_rtol(rtol) -> None:
    """``rtol``: None (the defaults) or a float in (0, 1)."""
    if rtol is None:
        return
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1 or rtol != rtol:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")


def check_cases(cases, default=DEFAULT_CASES) -> tuple:
    """``cases``: None (``default``) or a list of names and mixtures, at least one; a single string is
    refused with the list it should have been. Names are not resolved here."""
    if isinstance(cases, str):
        raise TypeError(f"cases must be a list of case names, got the string {cases!r} (write cases=[{cases!r}])")
    cases = tuple(default if cases is None else cases)
    if not cases:
        raise ValueError("cases must name at least one case")
    return cases
