"""What every claim reads: the study, its results and the report's sizes (``Context``), and
the row format of ``claims.csv``."""

from __future__ import annotations

import sys

from mfverify.check import battery as check
from mfverify.study.headlines import Results, _verdict

COLUMNS = ["claim", "statement", "source", "case", "metric", "value", "rule", "verdict"]
SEED_NOTE = "Geng, Deng, Bai, Kolter, He: Mean Flows for One-step Generative Modeling, arXiv 2505.13447"
SEED = "the seed's blog post and MATH.md"

# sizes of the report's own computations ([study] report_options overrides them)
DEFAULTS = {
    "points": 64,  # points (x_t, r, t) of the exact checks per case
    "stationary_points": 4,  # points per case of the stationarity checks (as the battery)
    "rk4_steps": 2000,  # the independent fixed-step reference of C1 (and twice as many)
    "timing_rounds": 15,  # interleaved rounds of the step-time measurement
    "timing_steps": 10,  # training steps per objective and round
    "stability_points": 400,
    "stability_features": 32,
    "stability_boot": 100,
    "formula_features": 8,  # directions of C12's check of MATH.md §7's formula (two quadratures)
}


class Context:
    """What the claims read: the study, its results, the report's sizes."""

    def __init__(self, study, res: Results, options: dict, progress: bool = False):
        self.study, self.res, self.opt, self.progress = study, res, options, progress
        self.cases = list(study.study.cases)
        self.steps = study.train.steps

    def has(self, *methods) -> bool:
        """Whether the results hold every one of ``methods`` (objectives or baselines)."""
        present = {r["method"] for r in self.res.rows}
        return all(m in present for m in methods)

    def cases_with(self, *methods) -> list:
        return [c for c in self.cases if all(any(r["case"] == c and r["objective"] == m for r in self.res.runs)
                                             for m in methods)]

    def top_nfe(self, case, method) -> int:
        return max(int(r["nfe"]) for r in self.res.rows if r["case"] == case and r["method"] == method
                   and r["metric"] == "flow_map_mean")

    def say(self, message):
        if self.progress:
            print(f"  claims: {message}", file=sys.stderr, flush=True)


def _rows(claim, statement, source, rule, flags, items, verdict=None):
    verdict = verdict or _verdict(flags)
    return [{"claim": claim, "statement": statement, "source": source, "case": case, "metric": metric,
             "value": value, "rule": rule, "verdict": verdict} for case, metric, value in items]


def _points(mixture, n, seed):
    return check._points(mixture, seed, n, r0=False)
