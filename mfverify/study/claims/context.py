"""What every claim reads: the study, its results and the report's sizes (``Context``), and
the row format of ``claims.csv``."""

from __future__ import annotations

import sys

from mfverify.check import battery as check
from mfverify.study.headlines import Results, _verdict

COLUMNS = ["claim", "statement", "source", "case", "metric", "value", "rule", "verdict"]
SEED_NOTE = "Geng, Deng, Bai, Kolter, He: Mean Flows for One-step Generative Modeling, arXiv 2505.13447"
SU_2025 = ('Su Jianlin, "Generative diffusion model notes (30): from instantaneous velocity to average '
           'velocity", kexue.fm/archives/10958, 2025-05-26')
SEED = SU_2025 + "; derivations in docs/MATH.md"  # the source of the claims the seed states

# the evidence a comparative verdict needs; with less it is "insufficient", never a verdict
EVIDENCE_SEEDS = 3  # seeds of each compared method (C3: the 5 its statement names)
EVIDENCE_STEPS = 1000  # training steps of the runs compared
EVIDENCE_ROUNDS = 10  # interleaved rounds of a timing comparison
EVIDENCE_RULE = (f"a comparative verdict needs >= {EVIDENCE_SEEDS} seeds of each method it compares (C3: the 5 its "
                 f"statement names) trained >= {EVIDENCE_STEPS} steps, and a timing verdict >= {EVIDENCE_ROUNDS} "
                 "interleaved rounds; with less it is insufficient. A timing verdict whose rounds straddle its "
                 "threshold (lower quartile below, upper above) is undetermined. The exact claims (C1, C2, C6-C8, "
                 "C12) have their verdicts at any budget")

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
    "network_features": 16,  # C12's trained-network directions (the tangent features of mf_sg's seed-0 EMA network)
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


def shortfall(ctx, methods=(), seeds: int | None = None, rounds: int | None = None) -> str | None:
    """Why the runs of ``methods`` (and ``rounds`` of timing) are too little evidence for a
    comparative verdict, or ``None`` when they are enough (``EVIDENCE_RULE``)."""
    seeds = EVIDENCE_SEEDS if seeds is None else seeds
    reasons = []
    if methods and ctx.steps < EVIDENCE_STEPS:
        reasons.append(f"{ctx.steps} training steps (a verdict needs >= {EVIDENCE_STEPS})")
    for method in methods:
        counts = [_seeds(ctx, case, method) for case in ctx.cases_with(method)]
        if counts and min(counts) < seeds:
            n = min(counts)
            reasons.append(f"{n} seed{'' if n == 1 else 's'} of {method} (needs >= {seeds})")
    if rounds is not None and rounds < EVIDENCE_ROUNDS:
        reasons.append(f"{rounds} timing rounds (needs >= {EVIDENCE_ROUNDS})")
    return "; ".join(reasons) or None


def _seeds(ctx, case, method) -> int:
    try:
        return ctx.res.stats(case, method)[2]
    except KeyError:  # no metrics: every seed diverged
        return 0


def _rows(claim, statement, source, rule, flags, items, verdict=None, short=None):
    """The claim's rows; ``short`` (a ``shortfall``): the verdict is ``insufficient`` and a row says why."""
    if short:
        verdict, items = "insufficient", list(items) + [("-", "insufficient evidence", short)]
    verdict = verdict or _verdict(flags)
    return [{"claim": claim, "statement": statement, "source": source, "case": case, "metric": metric,
             "value": value, "rule": rule, "verdict": verdict} for case, metric, value in items]


def _points(mixture, n, seed):
    return check._points(mixture, seed, n, r0=False)
