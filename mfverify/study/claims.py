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
``fails`` (on none), ``partly``; extra findings are ``observed``. Each rule is written next
to its claim, in the code and in the report, and applied to the numbers by the code.

Trained numbers are ``flow_map_mean`` at an NFE, mean (and standard error) over seeds;
"a below b" means below by more than twice the standard error of the difference of the seed
means (``headlines.Results.lower``), so a tie within the seeds' scatter is not a win.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from mfverify import check, identities, objectives, truth
from mfverify.cases import get_case
from mfverify.io import write_text
from mfverify.study.headlines import Results, _fmt, _verdict

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


# ------------------------------------------------------------------ C1, C2: the exact fields


def rk4_flow(mixture, x1, steps: int) -> torch.Tensor:
    """``Phi(x1, 1 -> 0)`` by classical RK4 on the closed-form velocity, ``steps`` equal steps
    in t (independent of the adaptive DOP853 routes of ``truth``)."""
    x = x1.clone()
    h = 1.0 / steps
    tt = lambda s: torch.full((x.shape[0],), s, dtype=torch.float64)  # noqa: E731
    for i in range(steps):
        t, mid, end = (steps - i) / steps, (steps - i - 0.5) / steps, (steps - i - 1) / steps
        k1 = truth.velocity(mixture, x, tt(t))
        k2 = truth.velocity(mixture, x - 0.5 * h * k1, tt(mid))
        k3 = truth.velocity(mixture, x - 0.5 * h * k2, tt(mid))
        k4 = truth.velocity(mixture, x - h * k3, tt(end))
        x = x - h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def c1_exact_generation(ctx: Context) -> list:
    statement = ("The exact average velocity generates exactly in one step (x1 - u(x1, 0, 1) = Phi(x1, 1 -> 0)); "
                 "the exact instantaneous velocity with one Euler step lands on the data mean")
    rule = ("holds on a case if max |x1 - u(x1, 0, 1) - Phi_RK4| <= max(1e-8, 10 x the RK4 reference's own error "
            "(N against 2N steps)) and max |x1 - v(x1, 1) - E x0| <= 1e-12 (1 + |E x0|); verdict over cases")
    items, flags = [], []
    n, steps = int(ctx.opt["points"]), int(ctx.opt["rk4_steps"])
    for case in ctx.cases:
        ctx.say(f"C1 on {case}")
        m = get_case(case)
        g = torch.Generator().manual_seed(1)
        x1 = torch.randn(n, m.d, generator=g, dtype=torch.float64)
        one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        one_step = x1 - truth.average_velocity(m, x1, zero, one)
        ref, ref2 = rk4_flow(m, x1, steps), rk4_flow(m, x1, 2 * steps)
        ref_err = (ref - ref2).abs().max().item()
        gen_err = (one_step - ref2).abs().max().item()
        mean = (m.weights[:, None] * m.means).sum(0)
        euler = x1 - truth.velocity(m, x1, one)
        mean_err = (euler - mean).abs().max().item()
        tol = max(1e-8, 10 * ref_err)
        flags.append(gen_err <= tol and mean_err <= 1e-12 * (1 + mean.norm().item()))
        items += [(case, "max |one-step exact u - Phi_RK4|", gen_err), (case, "RK4 reference error (N vs 2N)", ref_err),
                  (case, "max |Euler step of exact v - E x0|", mean_err)]
        if ctx.has("exact_v_euler"):
            items.append((case, "study: exact_v_euler NFE-1 flow_map_mean", ctx.res.error(case, "exact_v_euler")))
    return _rows("C1", statement, SEED, rule, flags, items)


def c2_honest_regression(ctx: Context) -> list:
    statement = ("mf_full is an honest regression: its optimum is the exact u, and its minimum value is the "
                 "flow-matching irreducible variance E tr Cov(v_c | x_t)")
    rule = ("holds on a case if at u* the conditional expected loss equals tr Cov(v_c | x_t) to 1e-9 (relative, every "
            "point; any predictor's loss is >= tr Cov, so u* attains the minimum) and u* is stationary "
            f"(battery, exact route, <= {check.STATIONARY_RTOL:g}); verdict over cases")
    items, flags = [], []
    loss = check._Loss("mf_full", None)
    for ci, case in enumerate(ctx.cases):
        ctx.say(f"C2 on {case}")
        m = get_case(case)
        x, r, t = _points(m, int(ctx.opt["points"]), 20 + ci)
        value = identities.expected_loss("mf_full", m, x, r, t, p=0.0)
        _, cov = truth.conditional_moments(m, x, t)
        variance = cov.diagonal(dim1=1, dim2=2).sum(-1)
        rel = ((value - variance).abs() / variance.abs().clamp_min(1e-300)).max().item()
        stat = check.check_stationary(loss, [case], 2, int(ctx.opt["stationary_points"]), 0)
        flags.append(rel <= 1e-9 and stat.passed)
        items += [(case, "max rel |E loss(u*) - tr Cov|", rel), (case, "stationarity statistic", stat.value)]
    return _rows("C2", statement, SEED, rule, flags, items)


# ------------------------------------------------------------------ C3, C4: cost and quality


def step_times(study, case: str, names, rounds: int, steps: int) -> dict:
    """Seconds per training step of each study objective, measured in one process, one thread,
    interleaved round by round (machine noise hits all alike): ``{name: [per round]}``."""
    from mfverify.train import _batches, build_model, objective_options, optimizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setups = {}
        for name in names:
            cfg = study.run_config(case, name, 0)
            mixture = get_case(case)
            torch.manual_seed(0)
            model = build_model(cfg, mixture.d)
            opt, _ = optimizer(cfg, model.parameters())
            obj = objectives.get(cfg.objective)
            options = objective_options(cfg)
            if obj.needs_truth:
                options["mixture"] = mixture
            batch = next(iter(_batches(cfg, mixture, torch.Generator().manual_seed(0), torch.device("cpu"),
                                       torch.float32)))
            setups[name] = (model, opt, obj, options, batch)

        def step(model, opt, obj, options, batch):
            loss = obj.per_sample(model, *batch, **options).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = {name: [] for name in names}
        for name in names:  # warm-up
            for _ in range(3):
                step(*setups[name])
        for _ in range(rounds):
            for name in names:
                start = time.perf_counter()
                for _ in range(steps):
                    step(*setups[name])
                times[name].append((time.perf_counter() - start) / steps)
        return times
    finally:
        torch.set_num_threads(threads)


def _ratio(times, slow, fast):
    """Median and lower quartile of the per-round ratios ``slow / fast``."""
    ratios = sorted(a / b for a, b in zip(times[slow], times[fast]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0]


def c3_c4_cost(ctx: Context) -> list:
    case = ctx.cases[0]
    ctx.say("C3, C4: step times")
    names = [n for n in ("mf_full", "mf_sg", "mf") if n in ctx.study.study.objectives]
    times = step_times(ctx.study, case, names, int(ctx.opt["timing_rounds"]), int(ctx.opt["timing_steps"]))
    rows = []
    # C3
    ratio, low = _ratio(times, "mf_full", "mf_sg")
    statement = ("mf_sg trains about 2x faster per step than mf_full with no visible loss of quality, at equal "
                 "steps and at equal wall time (>= 5 seeds)")
    rule = ("holds if the median step-time ratio mf_full / mf_sg is >= 1.5, and on every case mf_full is not below "
            "mf_sg at NFE 1 at equal steps, nor at equal wall time (mf_full at steps / ratio: interpolated in log "
            "steps between its runs at steps / 2 and steps; at steps / 2 where the ratio is >= 2, which gives "
            "mf_full at least mf_sg's time); partly if some of these hold")
    flags = [ratio >= 1.5]
    items = [(case, "step time mf_full / mf_sg (median of rounds)", ratio),
             (case, "step time mf_full / mf_sg (lower quartile)", low),
             (case, "ms per step mf_full", 1e3 * statistics.median(times["mf_full"])),
             (case, "ms per step mf_sg", 1e3 * statistics.median(times["mf_sg"]))]
    for c in ctx.cases_with("mf_sg", "mf_full"):
        sg, sg_se, n_sg = ctx.res.stats(c, "mf_sg")
        full, full_se, n_full = ctx.res.stats(c, "mf_full")
        flags.append(not ctx.res.lower(c, "mf_full", "mf_sg"))
        items += [(c, "seeds mf_sg / mf_full", f"{n_sg} / {n_full}"), (c, "NFE-1 mf_sg", sg),
                  (c, "NFE-1 mf_full (equal steps)", full)]
        if ctx.has("mf_full_half") and c in ctx.cases_with("mf_full_half"):
            half, half_se, _ = ctx.res.stats(c, "mf_full_half")
            w = min(max(math.log2(max(ratio, 1.0)), 0.0), 1.0)  # 0: full steps, 1: half
            eq, eq_se = (1 - w) * full + w * half, (1 - w) * full_se + w * half_se
            flags.append(not (sg - eq > 2 * math.sqrt(sg_se**2 + eq_se**2)))
            items += [(c, "NFE-1 mf_full at steps / 2", half), (c, "NFE-1 mf_full at equal wall time", eq)]
    rows += _rows("C3", statement, SEED, rule, flags, items)
    # C4
    ratio4, low4 = _ratio(times, "mf_sg", "mf")
    statement = "mf is faster per step than mf_sg (one forward pass fewer: its tangent is v_c, not u_theta)"
    rule = "holds if the lower quartile of the per-round step-time ratios mf_sg / mf is > 1"
    items = [(case, "step time mf_sg / mf (median of rounds)", ratio4),
             (case, "step time mf_sg / mf (lower quartile)", low4),
             (case, "ms per step mf", 1e3 * statistics.median(times["mf"]))]
    rows += _rows("C4", statement, SEED, rule, [low4 > 1], items)
    return rows


# ------------------------------------------------------------------ C5 - C9


def c5_nosg(ctx: Context) -> list:
    statement = ("mf_nosg (mf without the stop-gradient): training converges and multi-step generation works, "
                 "one-step generation does not (the MeanFlow authors, as the seed reports)")
    rule = ("holds on a case if no seed diverged, the error at the largest NFE is <= 1.5 x mf's there, and the NFE-1 "
            "error is >= 1.5 x mf's (and mf below it); verdict over cases")
    items, flags = [], []
    for case in ctx.cases_with("mf_nosg", "mf"):
        top = ctx.top_nfe(case, "mf_nosg")
        div = ctx.res.diverged(case, "mf_nosg")
        one, base = ctx.res.error(case, "mf_nosg"), ctx.res.error(case, "mf")
        multi, base_multi = ctx.res.error(case, "mf_nosg", top), ctx.res.error(case, "mf", top)
        flags.append(div == 0 and multi <= 1.5 * base_multi and one >= 1.5 * base and ctx.res.lower(case, "mf", "mf_nosg"))
        items += [(case, "diverged seeds", div), (case, "NFE-1 mf_nosg", one), (case, "NFE-1 mf", base),
                  (case, f"NFE-{top} mf_nosg", multi), (case, f"NFE-{top} mf", base_multi)]
    return _rows("C5", statement, SEED, rule, flags, items)


def c6_scm(ctx: Context) -> list:
    statement = "grad L_scm = (t/2) grad L_mf at r = 0, sample by sample"
    rule = f"holds if the relative residual of the fit grad L_scm = k (t/2) grad L_mf is <= {check.EQUAL_RTOL:g} and k = 1"
    ctx.say("C6")
    batches = check._networks(0, "mlp")
    res = check.check_scm_relation(check._Loss("scm", None), batches, 0)
    n = sum(b[1].shape[0] for b in batches)
    k = res.details["factor"]
    items = [("random networks, d = 1, 2, 3", "samples", n), ("random networks, d = 1, 2, 3", "relative residual", res.value),
             ("random networks, d = 1, 2, 3", "factor k", k)]
    return _rows("C6", statement, SEED, rule, [res.passed and abs(k - 1) <= check.EQUAL_RTOL], items)


def c7_stationary(ctx: Context) -> list:
    statement = "The exact u is a stationary point of mf's expected loss; of mf_nosg's it is not"
    rule = (f"holds on a case if the battery's stationarity statistic (exact route) is <= {check.STATIONARY_RTOL:g} "
            "for mf and above it for mf_nosg; verdict over cases")
    items, flags = [], []
    for case in ctx.cases:
        ctx.say(f"C7 on {case}")
        a = check.check_stationary(check._Loss("mf", None), [case], 3, int(ctx.opt["stationary_points"]), 0)
        b = check.check_stationary(check._Loss("mf_nosg", None), [case], 3, int(ctx.opt["stationary_points"]), 0)
        flags.append(a.passed and not b.passed)
        items += [(case, "stationarity statistic mf", a.value), (case, "stationarity statistic mf_nosg", b.value)]
    return _rows("C7", statement, SEED, rule, flags, items)


def meanflow_objectives() -> list:
    """Every registered objective that trains u on r <= t with v_c as its only data (not trained at
    r = 0 only, not an oracle, no labels needed), other than the battery's reference itself:
    those the r = t claim is about."""
    out = []
    for name in objectives.names():
        obj = objectives.get(name)
        if name == check.REFERENCE or obj.trained_at_r0 or obj.needs_truth or obj.labels_needed():
            continue
        out.append(name)
    return out


def c8_reduces_to_fm(ctx: Context) -> list:
    statement = "At r = t every MeanFlow objective reduces to fm (value and gradient, up to a constant factor)"
    rule = (f"holds if for every registered objective trained on r <= t (not at r = 0 only, no oracle) the battery's "
            f"reduces_to_fm residual is <= {check.EQUAL_RTOL:g} with a factor > 0; partly if for some")
    ctx.say("C8")
    batches = check._networks(0, "mlp")
    items, flags = [], []
    for name in meanflow_objectives():
        res = check.check_reduces_to_fm(check._Loss(name, None), batches, 0)
        flags.append(res.passed)
        items += [(name, "residual", res.value), (name, "factor", res.details["factor"])]
    return _rows("C8", statement, SEED, rule, flags, items)


def c9_shortcut(ctx: Context) -> list:
    statement = ("The exact u satisfies the Shortcut self-consistency (t-r) u(x,r,t) = (t-s) u(x,s,t) + (s-r) u(x_s,r,s); "
                 "shortcut training reaches one-step generation")
    rule = ("holds on a case if the relative residual of the self-consistency at s = (r+t)/2 is <= 1e-9 (solver "
            "tolerance 1e-12, three solves) and shortcut's NFE-1 error is <= 1.5 x mf_full's; verdict over cases")
    items, flags = [], []
    for ci, case in enumerate(ctx.cases):
        ctx.say(f"C9 on {case}")
        m = get_case(case)
        x, r, t = _points(m, int(ctx.opt["points"]), 40 + ci)
        keep = t - r > 1e-3
        x, r, t = x[keep], r[keep], t[keep]
        residual, scale = identities.splitting(m, x, r, 0.5 * (r + t), t)
        rel = (residual.norm(dim=1) / scale.clamp_min(1e-300)).max().item()
        flag = rel <= 1e-9
        items.append((case, "max relative residual", rel))
        if case in ctx.cases_with("shortcut", "mf_full"):
            sc, full = ctx.res.error(case, "shortcut"), ctx.res.error(case, "mf_full")
            flag = flag and sc <= 1.5 * full
            items += [(case, "NFE-1 shortcut", sc), (case, "NFE-1 mf_full", full)]
        flags.append(flag)
    return _rows("C9", statement, SEED, rule, flags, items)


# ------------------------------------------------------------------ C10, C11: trained settings

SHARES = (("mf_share0", 0), ("mf_share25", 25), ("mf_share50", 50), ("mf_share75", 75), ("mf_share100", 100))
TANGENTS = (("mf_tan_v00", "(v, 0, 0)"), ("mf_tan_v10", "(v, 1, 0)"), ("mf_tan_v11", "(v, 1, 1)"))


def c10_ablations(ctx: Context) -> list:
    statement = ("The MeanFlow paper's ablations hold on mixtures: with 0 % of r != t one-step generation fails; "
                 "the tangent (v, 0, 1) is the right one (against (v, 0, 0), (v, 1, 0), (v, 1, 1)); the weighting "
                 "p = 1 is best of {0, 0.5, 1} (shares 25-100 % and time inputs (t, r) are reported)")
    rule = ("holds on a case if mf_share0's NFE-1 error is >= half of exact_v_euler's (the collapse onto the mean), "
            "mf (tangent (v, 0, 1)) is below each wrong tangent, and no p is below p = 1 (mf) while mf's mean is the "
            "lowest; partly if some of these hold")
    items, flags = [], []
    for case in ctx.cases_with("mf_share0", "mf_tan_v00", "mf_p0"):
        for name, share in SHARES:
            if name in ctx.res.methods():
                items.append((case, f"NFE-1 r != t share {share} %", ctx.res.error(case, name)))
        collapse = ctx.res.error(case, "exact_v_euler") if ctx.has("exact_v_euler") else float("nan")
        items.append((case, "NFE-1 exact_v_euler (mean collapse)", collapse))
        flags.append(ctx.res.error(case, "mf_share0") >= 0.5 * collapse)
        items.append((case, "NFE-1 tangent (v, 0, 1) (mf)", ctx.res.error(case, "mf")))
        for name, label in TANGENTS:
            items.append((case, f"NFE-1 tangent {label}", ctx.res.error(case, name)))
            flags.append(ctx.res.lower(case, "mf", name))
        if "mf_time_tr" in ctx.res.methods():
            items += [(case, "NFE-1 time inputs (t, t - r) (mf)", ctx.res.error(case, "mf")),
                      (case, "NFE-1 time inputs (t, r)", ctx.res.error(case, "mf_time_tr"))]
        ps = [("mf_p0", 0.0), ("mf_p05", 0.5), ("mf", 1.0)]
        for name, p in ps:
            items.append((case, f"NFE-1 p = {p:g}", ctx.res.error(case, name)))
        best = min(ps, key=lambda e: ctx.res.error(case, e[0]))[0]
        flags.append(best == "mf" and not any(ctx.res.lower(case, n, "mf") for n, _ in ps[:2]))
    return _rows("C10", statement, SEED_NOTE + ", Table 1", rule, flags, items)


def c11_scm(ctx: Context) -> list:
    statement = ("sCM's surrogate without its stabilisers diverges; with tangent normalisation it trains "
                 "(and how far from mf)")
    rule = ("holds on a case if scm diverges (a seed's loss not finite, or its NFE-1 error >= exact_v_euler's, the "
            "collapse onto the mean) and scm_tn does not (no divergence, NFE-1 error < half of exact_v_euler's); "
            "verdict over cases")
    items, flags = [], []
    for case in ctx.cases_with("scm", "scm_tn"):
        collapse = ctx.res.error(case, "exact_v_euler")
        plain, tn = ctx.res.error(case, "scm"), ctx.res.error(case, "scm_tn")
        d_plain, d_tn = ctx.res.diverged(case, "scm"), ctx.res.diverged(case, "scm_tn")
        flags.append((d_plain > 0 or plain >= collapse) and d_tn == 0 and tn < 0.5 * collapse)
        items += [(case, "diverged seeds scm", d_plain), (case, "NFE-1 scm", plain), (case, "diverged seeds scm_tn", d_tn),
                  (case, "NFE-1 scm_tn", tn), (case, "NFE-1 exact_v_euler", collapse)]
        if "mf" in ctx.res.methods():
            items.append((case, "NFE-1 scm_tn / mf", tn / ctx.res.error(case, "mf")))
    return _rows("C11", statement, "Lu and Song 2024, sCM, arXiv 2410.11081 (as the seed reports)", rule, flags, items)


# ------------------------------------------------------------------ C12, C13: the open questions


def c12_stability(ctx: Context) -> list:
    from mfverify import stability

    statement = ("The stationary point u* of the stop-gradient objectives is stable (the seed: 'stability is unclear'): "
                 "min Re lambda of the linearised pseudo-gradient operator G^-1 H (MATH.md §7) on Fourier directions; "
                 "and MATH.md §7's formula for the symmetric part of mf's H is right")
    rule = ("per (objective, law) on the study's law: stable if the lower end of the 95 % bootstrap interval of "
            "min Re lambda(G^-1 H) is > 0, unstable if its upper end is < 0, else undetermined; the formula is right "
            "if it agrees with the symmetric part of H to 1e-3 (relative, Frobenius; both by quadrature, whose own "
            "error at these nodes is <= 2e-5, measured against more nodes); holds if every row of mf, mf_sg and "
            "shortcut is stable and the formula is right, fails if a row is unstable or the formula wrong, "
            "partly otherwise. The estimate is trusted "
            "only where its control comes out stable: mf on the uniform law, stable in every class by MATH.md §7 "
            "(a sample H can miss that when the directions vary fast; an untrusted setting gives partly). "
            "Reported with it, not in "
            "the verdict: the same with half the directions (convergence in P), off the diagonal only "
            "(frac_r_eq_t = 0), and where the formula's sufficient condition fails")
    items, formula_ok, states, off_states = [], [], {}, {}
    case = ctx.cases[0]
    mixture = get_case(case)
    frac = ctx.study.train.frac_r_eq_t
    P, N, boot = int(ctx.opt["stability_features"]), int(ctx.opt["stability_points"]), int(ctx.opt["stability_boot"])

    def state_of(s):
        lo, hi = s.interval_normalised
        return "stable" if lo > 0 else "unstable" if hi < 0 else "undetermined"

    for obj in ("mf", "mf_sg", "shortcut"):
        for law in stability.LAWS:
            ctx.say(f"C12: {obj}, {law}")
            s = stability.stability(obj, case, law, N, P, frac, n_boot=boot)
            half = stability.stability(obj, case, law, N, max(1, P // 2), frac, n_boot=boot)
            off = stability.stability(obj, case, law, N, P, 0.0, n_boot=boot)
            states[obj, law], off_states[obj, law] = state_of(s), state_of(off)
            label = f"{obj}, {law}"
            lo, hi = s.interval_normalised
            items += [(case, f"{label}: min Re lambda(G^-1 H)", s.min_real_normalised),
                      (case, f"{label}: 95 % interval", f"[{lo:.3g}, {hi:.3g}]"),
                      (case, f"{label}: verdict", states[obj, law]),
                      (case, f"{label}: min Re lambda(G^-1 H), {max(1, P // 2)} directions", half.min_real_normalised),
                      (case, f"{label}, off the diagonal only: min Re lambda(G^-1 H)", off.min_real_normalised),
                      (case, f"{label}, off the diagonal only: 95 % interval",
                       f"[{off.interval_normalised[0]:.3g}, {off.interval_normalised[1]:.3g}]"),
                      (case, f"{label}, off the diagonal only: verdict", off_states[obj, law])]
    control = states["mf", "uniform"] == "stable"
    items += [(case, "control (mf, uniform; stable by MATH.md §7) on the study's law: estimate trusted",
               "yes" if control else "no"),
              (case, "control off the diagonal only: estimate trusted",
               "yes" if off_states["mf", "uniform"] == "stable" else "no")]
    if mixture.d <= 3:
        dirs = stability.FourierDirections(mixture.d, int(ctx.opt["formula_features"]), seed=1)
        for law, (kind, mean, std) in stability.LAWS.items():
            ctx.say(f"C12: MATH.md §7's formula, {law}")
            n_t, n_gh = (16, 12) if kind == "uniform" else (48, 8)  # quadrature error 9e-7 and 2e-5 (8 directions)
            c = stability.symmetric_part_check(mixture, dirs, kind, mean, std, frac, n_t=n_t, n_gh=n_gh)
            formula_ok.append(c.relative_difference < 1e-3)
            items += [(case, f"formula, {law}: |sym(H) - formula| / |formula| ({dirs.P} directions)",
                       c.relative_difference),
                      (case, f"formula, {law}: min eigenvalue of the symmetric part (G^-1 units)",
                       c.min_eig_normalised),
                      (case, f"formula, {law}: min over r < t of (rho - (t-r) d_t rho) / rho", c.weight_min),
                      (case, f"formula, {law}: share of the off-diagonal law where the sufficient condition fails",
                       c.mass_condition_fails)]
    else:
        items.append((case, "formula check", "not run (a tensor quadrature, for d <= 3)"))
    if not control:
        verdict = "partly"
    elif "unstable" in states.values() or not all(formula_ok):
        verdict = "fails"
    elif all(st == "stable" for st in states.values()) and formula_ok:
        verdict = "holds"
    else:
        verdict = "partly"
    return _rows("C12", statement, SEED, rule, [], items, verdict=verdict)


def c13_attribution(ctx: Context) -> list:
    statement = ("mf's one-step gap to mf_full comes from target noise (docs/mf_target_noise.md): removing the "
                 "tangent's noise (mf_vtan) closes at least half of it")
    rule = ("holds on a case if mf_full is below mf at NFE 1 (there is a gap) and NFE-1 (mf - mf_vtan) >= "
            "0.5 x (mf - mf_full); verdict over cases. Reported with it, "
            "the chain mf -> mf_vtan (tangent noise) -> mf_oracle (label noise) -> u_regress (stop-gradient dynamics) "
            "-> u_regress_wide (capacity), fm -> fm_oracle, and the weighting (p = 0)")
    items, flags = [], []
    chain = [("mf", "mf_vtan", "tangent noise"), ("mf_vtan", "mf_oracle", "label noise"),
             ("mf_oracle", "u_regress", "stop-gradient dynamics"), ("u_regress", "u_regress_wide", "capacity (width x2)"),
             ("fm", "fm_oracle", "fm's label noise"), ("mf", "mf_p0", "weighting p = 1 -> 0"),
             ("mf_full", "mf_full_p0", "mf_full's weighting p = 1 -> 0")]
    for case in ctx.cases_with("mf", "mf_vtan", "mf_full"):
        mf, vtan, full = (ctx.res.error(case, m) for m in ("mf", "mf_vtan", "mf_full"))
        gap = mf - full
        flags.append(ctx.res.lower(case, "mf_full", "mf") and mf - vtan >= 0.5 * gap)
        items += [(case, "NFE-1 mf - mf_full (the gap)", gap)]
        for name in ("mf", "mf_sg", "mf_full", "mf_vtan", "mf_oracle", "u_regress", "u_regress_wide", "fm", "fm_oracle",
                     "mf_p0", "mf_full_p0"):
            if case in ctx.cases_with(name):
                mean, se, n = ctx.res.stats(case, name)
                items.append((case, f"NFE-1 {name} (mean, se, seeds)", f"{mean:.4g} ± {se:.2g} ({n})"))
        for a, b, what in chain:
            if case in ctx.cases_with(a, b):
                items.append((case, f"{what}: NFE-1 {a} - {b}", ctx.res.error(case, a) - ctx.res.error(case, b)))
    return _rows("C13", statement, "the seed's default study and docs/mf_target_noise.md", rule, flags, items)


# ------------------------------------------------------------------ extra findings


def extra_findings(ctx: Context) -> list:
    """Found by rules applied to every trained objective: a noise-free target that generates worse
    than its noisy counterpart; error growing with NFE; diverged runs."""
    rows = []
    res = ctx.res
    trained = [o for o in ctx.study.study.objectives if o in res.methods()]
    pairs = [("mf_oracle", "mf"), ("fm_oracle", "fm"), ("mf_vtan", "mf")]
    found = []
    for case in ctx.cases:
        for quiet, noisy in pairs:
            if case in ctx.cases_with(quiet, noisy) and res.lower(case, noisy, quiet):
                found.append((case, f"NFE-1 {quiet} (less target noise) / {noisy}",
                              res.error(case, quiet) / res.error(case, noisy)))
    if found:
        rows += _rows("X1", "Less target noise can make one-step generation worse", "this report",
                      "a noise-free variant's NFE-1 error above its noisy one's (by > 2 standard errors)", [], found,
                      verdict="observed")
    grows = []
    for case in ctx.cases:
        for obj in trained:
            if case not in ctx.cases_with(obj) or objectives.get(ctx.study.study.objective_of(obj)).trained_at_r0:
                continue
            try:
                top = ctx.top_nfe(case, obj)
                a, sa, _ = res.stats(case, obj, top)
                b, sb, _ = res.stats(case, obj, 1)
            except (KeyError, ValueError):
                continue
            if top > 1 and a - b > 2 * math.sqrt(sa**2 + sb**2):
                grows.append((case, f"{obj}: NFE-{top} / NFE-1 error", a / b))
    if grows:
        rows += _rows("X2", "Error grows with NFE for some objectives", "this report",
                      "error at the largest NFE above NFE 1's by > 2 standard errors", [], grows, verdict="observed")
    div = [(case, obj, res.diverged(case, obj)) for case in ctx.cases for obj in trained
           if obj not in ("scm",) and res.diverged(case, obj)]
    if div:
        rows += _rows("X3", "Runs that diverged (other than plain scm)", "this report", "a seed's loss not finite",
                      [], [(c, f"diverged seeds {o}", n) for c, o, n in div], verdict="observed")
    return rows


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
    lines = ["# Claims, measured", "",
             f"`python -m mfverify.study claims` (study `{study.study.name}`, {study.train.steps} training steps, "
             f"{study.study.seeds} seeds unless said). Each claim with its source, the rule its verdict comes from, "
             "and the measured numbers; one-step errors are flow_map_mean = mean |x_gen - Phi(x1, 1 -> 0)| at NFE 1, "
             "mean over seeds. \"a below b\": by more than 2 standard errors of the seed means. The study's own "
             "tables and figures are in [summary.md](summary.md).", "",
             "| claim | verdict | statement |", "|---|---|---|"]
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


def main(argv=None) -> int:
    from mfverify.study.config import load_study

    parser = argparse.ArgumentParser(prog="python -m mfverify.study.claims",
                                     description="recompute claims.csv and claims.md of a finished claims study folder")
    parser.add_argument("folder")
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


if __name__ == "__main__":
    raise SystemExit(main())
