"""The claims decided by exact computation: the exact fields generate (C1) and regress (C2),
the stationary point (C7), the reduction to flow matching (C8) and its stability (C12)."""

from __future__ import annotations

import torch

from mfverify import objectives, truth
from mfverify.cases import get_case
from mfverify.check import battery as check
from mfverify.study.claims.context import SEED, Context, _points, _rows
from mfverify.theory import identities


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


def c12_stability(ctx: Context) -> list:
    from mfverify.theory import stability

    statement = ("The stationary point u* of the stop-gradient objectives is stable (Su 2025: 'stability is unclear'): "
                 "min Re lambda of the linearised pseudo-gradient operator G^-1 H (MATH.md §7) on Fourier directions "
                 "and on a trained network's tangent features; and MATH.md §7's formula for the symmetric part of mf's "
                 "H is right")
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
            "(frac_r_eq_t = 0), and where the formula's sufficient condition fails. The verdict is the weakest of "
            "its two classes of directions: Fourier features, and the tangent features of the study's trained mf_sg "
            "network (seed 0, EMA) on the study's law, trusted only where mf (the control) comes out stable there "
            "too; an untrusted class gives partly")
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
    items.append((case, "Fourier directions: points, directions, bootstrap draws", f"{N}, {P}, {boot}"))
    net_items, net_states, net_control = _network_rows(ctx, case, frac, N, boot, state_of)
    items += net_items
    if not control:
        verdict = "partly"
    elif "unstable" in states.values() or "unstable" in net_states.values() or not all(formula_ok):
        verdict = "fails"
    elif all(st == "stable" for st in states.values()) and formula_ok and net_control is not False \
            and all(st == "stable" for st in net_states.values()):
        verdict = "holds"
    else:
        verdict = "partly"
    return _rows("C12", statement, SEED, rule, [], items, verdict=verdict)


def _network_rows(ctx, case, frac, N, boot, state_of):
    """C12 on the tangent features of the study's trained ``mf_sg`` network (seed 0, EMA), on the study's
    law: ``(items, {objective: state}, control trusted)``; no rows (control None) without that run."""
    from mfverify.study.store import run_dir
    from mfverify.theory import stability
    from mfverify.train import load_checkpoint

    path = run_dir(ctx.res.folder, case, "mf_sg", 0) / "checkpoint.pt"
    if "mf_sg" not in ctx.study.study.objectives or not path.is_file():
        return [(case, "trained-network directions", "not run (no mf_sg seed-0 checkpoint in the study)")], {}, None
    P = int(ctx.opt["network_features"])
    _, _, ema = load_checkpoint(path)
    directions = stability.NetworkDirections(ema, P, seed=1)
    train = ctx.study.train
    law = next((name for name, (kind, mean, std) in stability.LAWS.items() if kind == train.time_sampler
                and (kind == "uniform" or (mean, std) == (train.time_mean, train.time_std))), None)
    if law is None:
        return [(case, "trained-network directions", f"not run (the study's time law {train.time_sampler} is not one "
                 f"of {', '.join(stability.LAWS)})")], {}, None
    items, states = [], {}
    control_objective = "mf"  # stable in every class by MATH.md §7: where it is not, the estimate is not trusted
    for obj, role in ((control_objective, " (control)"), ("mf_sg", "")):
        ctx.say(f"C12: {obj} on mf_sg's trained-network directions")
        s = stability.stability(obj, case, law, N, P, frac, n_boot=boot, directions=directions)
        states[obj] = state_of(s)
        lo, hi = s.interval_normalised
        label = f"trained-network directions, {obj}{role}, {law}"
        items += [(case, f"{label}: min Re lambda(G^-1 H)", s.min_real_normalised),
                  (case, f"{label}: 95 % interval", f"[{lo:.3g}, {hi:.3g}]"), (case, f"{label}: verdict", states[obj])]
    control = states.pop(control_objective) == "stable"
    items += [(case, "trained-network directions: points, directions, bootstrap draws", f"{N}, {P}, {boot}"),
              (case, "trained-network directions: estimate trusted (control stable)", "yes" if control else "no")]
    return items, (states if control else {}), control
