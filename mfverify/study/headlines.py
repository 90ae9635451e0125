"""Each relative's headline claim from its paper, measured on mixtures, with a verdict
computed by a rule written next to the claim (never by hand).

    python -m mfverify.study.headlines RELATIVES_DIR [--guided GUIDED_DIR] [--points N]

reads a finished ``relatives_compare`` study folder (and optionally a ``relatives_guided``
one), computes the exact quantities some claims need (``relatives.optimal_cv_beta``,
``relatives.cv_target_error`` at ``N`` points of the training law), and writes
``headlines.csv`` and ``headlines.md`` into ``RELATIVES_DIR`` (atomically).

``headlines.csv`` has the columns ``claim, statement, source, case, metric, value, rule,
verdict``: one or more rows per claim, each claim's verdict on every one of its rows.
A verdict is ``holds``, ``fails`` or ``partly``. One-step errors are ``flow_map_mean``
at NFE 1, mean over seeds; "a below b" means below by more than twice the standard error
of the difference of the seed means (``Results.lower``), so a tie within the seeds'
scatter is not a win.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mfverify.path import sample as sample_x_t
from mfverify.io import write_text

COLUMNS = ["claim", "statement", "source", "case", "metric", "value", "rule", "verdict"]


@dataclass
class Results:
    """A study folder's results: ``error(case, method, nfe)`` (mean over seeds), run records."""

    folder: Path
    rows: list
    runs: list

    @classmethod
    def read(cls, folder) -> "Results":
        folder = Path(folder)
        for name in ("results.csv", "runs.csv"):
            if not (folder / name).is_file():
                raise ValueError(f"{folder} is not a finished study folder (no {name})")
        with open(folder / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        with open(folder / "runs.csv", newline="") as f:
            runs = list(csv.DictReader(f))
        return cls(folder, rows, runs)

    @property
    def cases(self) -> list:
        return list(dict.fromkeys(r["case"] for r in self.runs))

    def methods(self) -> set:
        return {r["objective"] for r in self.runs}

    def error(self, case, method, nfe=1, metric="flow_map_mean") -> float:
        return self.stats(case, method, nfe, metric)[0]

    def stats(self, case, method, nfe=1, metric="flow_map_mean") -> tuple[float, float, int]:
        """``(mean, standard error, seeds)`` over seeds."""
        vals = [float(r["value"]) for r in self.rows if r["case"] == case and r["method"] == method
                and int(r["nfe"]) == nfe and r["metric"] == metric]
        if not vals:
            raise KeyError(f"{self.folder}: no {metric} of {method!r} on {case!r} at NFE {nfe}")
        n = len(vals)
        mean = sum(vals) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
        return mean, sd / math.sqrt(n), n

    def lower(self, case, a, b, nfe=1) -> bool:
        """Whether ``a``'s error is below ``b``'s by more than twice the standard error of the
        difference of the seed means (one seed: any difference counts)."""
        ma, sa, _ = self.stats(case, a, nfe)
        mb, sb, _ = self.stats(case, b, nfe)
        return mb - ma > 2 * math.sqrt(sa**2 + sb**2)

    def seconds_per_step(self, case, method) -> float:
        recs = [r for r in self.runs if r["case"] == case and r["objective"] == method]
        return sum(float(r["wall_seconds"]) / int(r["steps"]) for r in recs) / len(recs)

    def diverged(self, case, method) -> int:
        """Seeds of ``method`` on ``case`` that diverged (``mfverify.study.divergence``: a non-finite loss,
        or a one-step error beyond 3 x the data's scale)."""
        from mfverify.study.divergence import reasons

        return sum(1 for (c, m, _) in reasons(self.runs, self.rows) if c == case and m == method)


def _verdict(flags) -> str:
    """``holds`` if every case's test holds, ``fails`` if none does, ``partly`` otherwise."""
    flags = list(flags)
    return "holds" if all(flags) else "fails" if not any(flags) else "partly"


def _rows(claim, statement, source, rule, verdict, items):
    return [{"claim": claim, "statement": statement, "source": source, "case": case, "metric": metric,
             "value": value, "rule": rule, "verdict": verdict} for case, metric, value in items]


# ------------------------------------------------------------------ the claims


def alpha_curriculum(res: Results) -> list:
    statement = ("alpha-Flow's curriculum (alpha from 1 to 0.01) beats training at the fixed small alpha (0.01) "
                 "in one-step error")
    rule = "holds on a case if curriculum's NFE-1 error is below fixed's (by > 2 standard errors); verdict over cases"
    items, flags = [], []
    for case in res.cases:
        cur, fix = res.error(case, "alpha_curriculum"), res.error(case, "alpha_small")
        items += [(case, "one_step alpha_curriculum", cur), (case, "one_step alpha_small", fix)]
        flags.append(res.lower(case, "alpha_curriculum", "alpha_small"))
    return _rows("R1", statement, "alpha-Flow, Zhang et al. 2025, arXiv 2510.20771", rule, _verdict(flags), items)


def _training_points(case: str, n: int, seed: int = 0):
    """``n`` points of the studies' time law (logit-normal(-0.4, 1), r < t) with ``x_t ~ p_t``."""
    from mfverify.cases import get_case
    from mfverify.times import sample_times

    mixture = get_case(case)
    g = torch.Generator().manual_seed(seed)
    r, t = sample_times(n, "logit_normal", -0.4, 1.0, 0.0, g, dtype=torch.float64)
    return mixture, sample_x_t(mixture, t, g), r, t


def _trained_diagonal(res: Results, case: str, method: str, x, t):
    """``u_theta(x, t, t)`` of ``method``'s seed-0 EMA model (float64 CPU), or None if absent."""
    from mfverify.study.store import run_dir
    from mfverify.train import load_checkpoint

    path = run_dir(res.folder, case, method, 0) / "checkpoint.pt"
    if not path.exists():
        return None
    _, _, ema = load_checkpoint(path)
    with torch.no_grad():
        return ema.double()(x, t, t)


def cv_coefficient(res: Results, points: dict) -> list:
    """R2 (exact at u*, and with a trained model's own diagonal) and the trained one-step errors."""
    from mfverify.objectives.relatives import optimal_cv_beta
    from mfverify.truth import average_velocity_jacobian

    statement = ("the control-variate coefficient of the tangent beta v_c + (1 - beta) u_theta(x_t, t, t) has an "
                 "optimum that lowers the target's mean-square error below mf's (beta = 1); trained at the optimum "
                 "the one-step error is below mf's")
    rule = ("exact part: E|T_beta* - T*|^2 < E|T_1 - T*|^2 on every case (relatives.optimal_cv_beta at u*); "
            "trained part: the optimum at u* is beta ~ 0, which is mf_sg: holds on a case if mf_sg's NFE-1 error is "
            "below mf's (by > 2 standard errors); "
            "holds if both parts hold on every case, partly if one does")
    items, exact_ok, trained_ok = [], [], []
    for case in res.cases:
        mixture, x, r, t = _training_points(case, points[case])
        J = average_velocity_jacobian(mixture, x, r, t)
        best = optimal_cv_beta(mixture, x, r, t, jacobian=J)
        items += [(case, f"beta* at u* ({len(t)} points)", best["beta"]),
                  (case, "target MSE at beta = 0", best["error_beta0"]),
                  (case, "target MSE at beta*", best["error_beta_opt"]),
                  (case, "target MSE at beta = 1 (mf)", best["error_beta1"])]
        exact_ok.append(best["error_beta_opt"] < best["error_beta1"])
        v_hat = _trained_diagonal(res, case, "mf", x, t)
        if v_hat is not None:  # with mf's trained diagonal in place of v: the bias enters
            biased = optimal_cv_beta(mixture, x, r, t, v_hat=v_hat, jacobian=J)
            items.append((case, "beta* with mf's trained u_theta(x, t, t) (seed 0)", biased["beta"]))
        one = {m: res.error(case, m) for m in ("mf", "mf_sg", "mf_cv")}
        items += [(case, f"one_step {m}", v) for m, v in one.items()]
        trained_ok.append(res.lower(case, "mf_sg", "mf"))
    both = [a and b for a, b in zip(exact_ok, trained_ok)]
    verdict = "holds" if all(both) else "partly" if all(exact_ok) or all(trained_ok) else "fails"
    return _rows("R2", statement, "On Variance Reduction in Learning Mean Flows, Lu & Wang 2026, arXiv 2605.09235",
                 rule, verdict, items)


def imf_tangent(res: Results, points: dict) -> list:
    from mfverify.objectives.relatives import cv_target_error

    statement = ("improved MeanFlow's tangent (the network's own v head) removes mf's target-noise amplification "
                 "and improves one-step generation")
    rule = ("holds on a case if E tr Cov[imf's target] < E tr Cov[mf's target] at u* and imf's NFE-1 error is "
            "below mf's (by > 2 standard errors); verdict over cases")
    items, flags = [], []
    for case in res.cases:
        mixture, x, r, t = _training_points(case, points[case], seed=1)
        err = cv_target_error(mixture, x, r, t, [0.0, 1.0])  # beta = 0: imf's (and mf_sg's), 1: mf's
        ratio = err[:, 1] / err[:, 0].clamp_min(1e-300)
        amp = float(err[:, 1].mean() / err[:, 0].mean())
        imf, mf = res.error(case, "imf"), res.error(case, "mf")
        items += [(case, "E target noise mf / imf at u* (ratio of means)", amp),
                  (case, "per-point ratio, median", float(ratio.median())),
                  (case, "per-point ratio, max", float(ratio.max())),
                  (case, "one_step imf", imf), (case, "one_step mf", mf)]
        flags.append(amp > 1 and res.lower(case, "imf", "mf"))
    return _rows("R3", statement, "Improved Mean Flows, Geng et al. 2025, arXiv 2512.02012", rule, _verdict(flags), items)


def split_mf_cost(res: Results) -> list:
    statement = "SplitMeanFlow needs no JVP: cheaper per step than mf, with comparable one-step quality"
    rule = "holds on a case if split_mf's seconds per step < mf's and its NFE-1 error <= 1.1 x mf's; verdict over cases"
    items, flags = [], []
    for case in res.cases:
        time_ratio = res.seconds_per_step(case, "split_mf") / res.seconds_per_step(case, "mf")
        err_ratio = res.error(case, "split_mf") / res.error(case, "mf")
        items += [(case, "seconds per step split_mf / mf", time_ratio), (case, "one_step split_mf / mf", err_ratio)]
        flags.append(time_ratio < 1 and err_ratio <= 1.1)
    return _rows("R4", statement, "SplitMeanFlow, Guo et al. 2025, arXiv 2507.16884", rule, _verdict(flags), items)


def lagrangian_best(res: Results) -> list:
    statement = "Lagrangian self-distillation (lsd) outperforms the Eulerian (esd) and progressive (psd) schemes"
    nfes = sorted({int(r["nfe"]) for r in res.rows if r["metric"] == "flow_map_mean" and int(r["nfe"]) > 0})
    rule = (f"holds on a case if lsd's error is below esd's and psd's (by > 2 standard errors) at every NFE in "
            f"{nfes}; verdict over cases")
    items, flags = [], []
    for case in res.cases:
        ok = True
        for n in nfes:
            errs = {m: res.error(case, m, n) for m in ("lsd", "esd", "psd")}
            items += [(case, f"NFE {n} {m}", v) for m, v in errs.items()]
            ok &= res.lower(case, "lsd", "esd", n) and res.lower(case, "lsd", "psd", n)
        flags.append(ok)
    return _rows("R5", statement, "How to build a consistency model, Boffi et al. 2025, arXiv 2505.18825 (v2)", rule,
                 _verdict(flags), items)


def modular_stable(res: Results) -> list:
    statement = ("Modular MeanFlow's gradient modulation (lam = 0.5: half the gradient through the tangent) trains "
                 "stably with competitive one-step quality")
    rule = "holds on a case if no seed of modular_mf diverged and its NFE-1 error <= 1.1 x mf's; verdict over cases"
    items, flags = [], []
    for case in res.cases:
        diverged = res.diverged(case, "modular_mf")
        ratio = res.error(case, "modular_mf") / res.error(case, "mf")
        items += [(case, "diverged seeds", diverged), (case, "one_step modular_mf / mf", ratio)]
        flags.append(diverged == 0 and ratio <= 1.1)
    return _rows("R6", statement, "Modular MeanFlow, You et al. 2025, arXiv 2508.17426", rule, _verdict(flags), items)


def guidance(res: Results) -> list:
    statement = ("MeanFlow's training-time guidance learns the guided field's average velocity: with (w, k) it "
                 "reaches the exact guided map of w' = w / (1 - k) in one step about as well as unguided mf reaches "
                 "the class's own map, and (w = 1, k = 0.5) matches (w = 2, k = 0)")
    rule = ("holds on a case if mf_w2's and mf_w1_k05's NFE-1 errors (against the w' = 2 map) are <= 1.5 x mf's "
            "(against the class map) and within 20 % of each other; verdict over cases")
    items, flags = [], []
    for case in res.cases:
        base, w2, k05 = (res.error(case, m) for m in ("mf", "mf_w2", "mf_w1_k05"))
        items += [(case, "one_step mf (class map)", base), (case, "one_step mf_w2 (w' = 2)", w2),
                  (case, "one_step mf_w1_k05 (w' = 2)", k05)]
        if "mf_w3" in res.methods():
            items.append((case, "one_step mf_w3 (w' = 3)", res.error(case, "mf_w3")))
        top = max(int(r["nfe"]) for r in res.rows if r["metric"] == "flow_map_mean")
        items += [(case, f"NFE {top} {m}", res.error(case, m, top)) for m in ("mf", "mf_w2", "mf_w1_k05")]
        flags.append(max(w2, k05) <= 1.5 * base and abs(w2 - k05) <= 0.2 * max(w2, k05))
    return _rows("R7", statement, "Mean Flows, Geng et al. 2025, arXiv 2505.13447 (training-time CFG)", rule,
                 _verdict(flags), items)


def compute(relatives, guided=None, points: dict | None = None) -> list:
    res = Results.read(relatives)
    points = points or {}
    pts = {case: points.get(case, 20000 if case == "ring8" else 3000) for case in res.cases}
    rows = alpha_curriculum(res) + cv_coefficient(res, pts) + imf_tangent(res, pts) + split_mf_cost(res)
    rows += lagrangian_best(res) + modular_stable(res)
    if guided is not None:
        rows += guidance(Results.read(guided))
    return rows


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def markdown(rows) -> str:
    lines = ["# Headline claims of the relatives, measured", "",
             "Each claim with its source, the measured numbers and the verdict of the rule stated with it "
             "(`python -m mfverify.study.headlines`).", ""]
    for claim in dict.fromkeys(r["claim"] for r in rows):
        sub = [r for r in rows if r["claim"] == claim]
        first = sub[0]
        lines += [f"## {claim}: {first['verdict']}", "", f"{first['statement']} ({first['source']}).", "",
                  f"Rule: {first['rule']}.", "", "| case | metric | value |", "|---|---|---|"]
        lines += [f"| {r['case']} | {r['metric']} | {_fmt(r['value'])} |" for r in sub]
        lines.append("")
    return "\n".join(lines)


def main(argv=None, prog: str = "mfverify headlines") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("relatives", help="a finished relatives_compare study folder (the outputs go there)")
    parser.add_argument("--guided", help="a finished relatives_guided study folder")
    parser.add_argument("--points", type=int, help="points of the training law for the exact quantities "
                        "(default 20000 on ring8, 3000 on other cases)")
    args = parser.parse_args(argv)
    try:
        res = Results.read(args.relatives)
        if args.guided:
            Results.read(args.guided)
        if args.points is not None and args.points < 2:
            raise ValueError(f"--points must be >= 2, got {args.points}")
        points = {case: args.points for case in res.cases} if args.points else None
        rows = compute(args.relatives, args.guided, points)
    except (ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "value": repr(r["value"]) if isinstance(r["value"], float) else r["value"]} for r in rows)
    out = Path(args.relatives)
    write_text(out / "headlines.csv", buf.getvalue())
    write_text(out / "headlines.md", markdown(rows))
    print(f"wrote {out / 'headlines.md'} and headlines.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
