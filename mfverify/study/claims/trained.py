"""The claims decided by trained runs: cost (C3, C4), the stop-gradient (C5), sCM (C6, C11),
Shortcut (C9), the ablations (C10), the oracle attribution (C13) and the extra findings."""

from __future__ import annotations

import math
import statistics
import time

import torch

from mfverify import objectives
from mfverify.cases import get_case
from mfverify.check import battery as check
from mfverify.study import divergence
from mfverify.study.claims.context import SEED, SEED_NOTE, Context, _points, _rows, shortfall
from mfverify.theory import identities


def step_times(study, case: str, names, rounds: int, steps: int) -> dict:
    """Seconds per training step of each study objective, measured in one process, one thread,
    interleaved round by round (machine noise hits all alike): ``{name: [per round]}``."""
    from mfverify.train.loop import _batches, build_model, objective_options, optimizer

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
    """Median, lower and upper quartile of the per-round ratios ``slow / fast``."""
    ratios = sorted(a / b for a, b in zip(times[slow], times[fast]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]


def _above(low, high, threshold):
    """A timing comparison: True if the rounds' lower quartile is above ``threshold``, False if the
    upper one is below it, None (undetermined) if they straddle it."""
    return True if low > threshold else False if high < threshold else None


def c3_c4_cost(ctx: Context) -> list:
    case = ctx.cases[0]
    ctx.say("C3, C4: step times")
    names = [n for n in ("mf_full", "mf_sg", "mf") if n in ctx.study.study.objectives]
    times = step_times(ctx.study, case, names, int(ctx.opt["timing_rounds"]), int(ctx.opt["timing_steps"]))
    rows = []
    # C3
    rounds = int(ctx.opt["timing_rounds"])
    ratio, low, high = _ratio(times, "mf_full", "mf_sg")
    timing = _above(low, high, 1.5)
    statement = ("mf_sg trains about 2x faster per step than mf_full with no visible loss of quality, at equal "
                 "steps and at equal wall time (>= 5 seeds)")
    rule = ("holds if the per-round step-time ratios mf_full / mf_sg are above 1.5 (their lower quartile; "
            "undetermined if their quartiles straddle 1.5), and on every case mf_full is not below "
            "mf_sg at NFE 1 at equal steps, nor at equal wall time (mf_full at steps / ratio: interpolated in log "
            "steps between its runs at steps / 2 and steps; at steps / 2 where the ratio is >= 2, which gives "
            "mf_full at least mf_sg's time); partly if some of these hold")
    flags = [bool(timing)]
    items = [(case, "step time mf_full / mf_sg (median of rounds)", ratio),
             (case, "step time mf_full / mf_sg (lower quartile)", low),
             (case, "step time mf_full / mf_sg (upper quartile)", high), (case, "timing rounds", rounds),
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
    short = shortfall(ctx, ("mf_sg", "mf_full"), seeds=5, rounds=rounds)
    undetermined = "undetermined" if timing is None and not short else None
    rows += _rows("C3", statement, SEED, rule, flags, items, verdict=undetermined, short=short)
    # C4
    ratio4, low4, high4 = _ratio(times, "mf_sg", "mf")
    timing4 = _above(low4, high4, 1.0)
    statement = "mf is faster per step than mf_sg (one forward pass fewer: its tangent is v_c, not u_theta)"
    rule = ("holds if the lower quartile of the per-round step-time ratios mf_sg / mf is > 1, fails if the upper "
            "quartile is < 1, undetermined otherwise")
    items = [(case, "step time mf_sg / mf (median of rounds)", ratio4),
             (case, "step time mf_sg / mf (lower quartile)", low4),
             (case, "step time mf_sg / mf (upper quartile)", high4), (case, "timing rounds", rounds),
             (case, "ms per step mf", 1e3 * statistics.median(times["mf"]))]
    rows += _rows("C4", statement, SEED, rule, [bool(timing4)], items,
                  verdict="undetermined" if timing4 is None else None, short=shortfall(ctx, rounds=rounds))
    return rows


def c5_nosg(ctx: Context) -> list:
    statement = ("mf_nosg (mf without the stop-gradient): training converges and multi-step generation works, "
                 "one-step generation does not (the MeanFlow authors, as Su 2025 reports)")
    rule = ("holds on a case if no seed diverged, the error at the largest NFE is <= 1.5 x mf's there, and the NFE-1 "
            f"error is >= 1.5 x mf's (and mf below it); verdict over cases; {divergence.RULE}")
    items, flags = [], []
    for case in ctx.cases_with("mf_nosg", "mf"):
        top = ctx.top_nfe(case, "mf_nosg")
        div = ctx.res.diverged(case, "mf_nosg")
        one, base = ctx.res.error(case, "mf_nosg"), ctx.res.error(case, "mf")
        multi, base_multi = ctx.res.error(case, "mf_nosg", top), ctx.res.error(case, "mf", top)
        flags.append(div == 0 and multi <= 1.5 * base_multi and one >= 1.5 * base and ctx.res.lower(case, "mf", "mf_nosg"))
        items += [(case, "diverged seeds", div), (case, "NFE-1 mf_nosg", one), (case, "NFE-1 mf", base),
                  (case, f"NFE-{top} mf_nosg", multi), (case, f"NFE-{top} mf", base_multi)]
    return _rows("C5", statement, SEED, rule, flags, items, short=shortfall(ctx, ("mf_nosg", "mf")))


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
    return _rows("C9", statement, SEED, rule, flags, items, short=shortfall(ctx, ("shortcut", "mf_full")))


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
    compared = ["mf", "mf_share0", "mf_p0", "mf_p05"] + [n for n, _ in TANGENTS]
    return _rows("C10", statement, SEED_NOTE + ", Table 1", rule, flags, items, short=shortfall(ctx, compared))


def c11_scm(ctx: Context) -> list:
    statement = ("sCM's surrogate without its stabilisers diverges; with tangent normalisation it trains "
                 "(and how far from mf)")
    rule = ("holds on a case if scm diverges (a seed diverged, or its NFE-1 error >= exact_v_euler's, the collapse "
            "onto the mean) and scm_tn does not (no divergence, NFE-1 error < half of exact_v_euler's); verdict over "
            f"cases; {divergence.RULE}")
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
    return _rows("C11", statement, "Lu and Song 2024, sCM, arXiv 2410.11081 (as Su 2025 reports)", rule, flags, items,
                 short=shortfall(ctx, ("scm", "scm_tn")))


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
    return _rows("C13", statement, "mfverify's objectives_compare study and docs/mf_target_noise.md", rule, flags, items,
                 short=shortfall(ctx, ("mf", "mf_vtan", "mf_full")))


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
            if case in ctx.cases_with(quiet, noisy) and not shortfall(ctx, (quiet, noisy)) \
                    and res.lower(case, noisy, quiet):
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
            if top > 1 and not shortfall(ctx, (obj,)) and a - b > 2 * math.sqrt(sa**2 + sb**2):
                grows.append((case, f"{obj}: NFE-{top} / NFE-1 error", a / b))
    if grows:
        rows += _rows("X2", "Error grows with NFE for some objectives", "this report",
                      "error at the largest NFE above NFE 1's by > 2 standard errors", [], grows, verdict="observed")
    div = [(case, obj, res.diverged(case, obj)) for case in ctx.cases for obj in trained
           if obj not in ("scm",) and res.diverged(case, obj)]
    if div:
        rows += _rows("X3", "Runs that diverged (other than plain scm)", "this report", divergence.RULE,
                      [], [(c, f"diverged seeds {o}", n) for c, o, n in div], verdict="observed")
    return rows
