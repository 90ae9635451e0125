"""The check battery, run on any per-sample loss: ``mfverify check LOSS`` (``python -m mfverify.check``).

``LOSS`` is a registered objective name or ``"package.module:attr"`` naming a
per-sample loss ``loss(model, x0, x1, r, t, **options) -> (n,)`` in mfverify's
conventions (MATH.md §1: data at t = 0, noise at t = 1, ``model(x, r, t)``;
wrap other conventions with ``mfverify.check.conventions``). Each check is a row with
its numbers, its rule and a verdict:

- ``reduces_to_fm``: at ``r = t`` the per-sample values and the parameter gradient
  equal ``fm``'s up to one positive constant factor (fitted and reported), on
  random networks, data and times. Not for losses trained at ``r = 0`` only.
- ``equivalent_to_reference`` (with ``reference``): the same against the reference
  at random ``r <= t`` (gradient only where either value is a surrogate).
- ``stationary_at_exact_u``: the population derivative ``d/d eps E[loss(u* + eps h) | x_t]``
  at the exact average velocity is zero in random smooth directions ``h``, on each
  case. Exact route (sigma points) where the loss is declared quadratic in ``v_c``,
  verified by a second sigma-point set; else Monte Carlo with a
  Bonferroni-corrected 5-sigma rule. Options ``p`` (weighting) are set to 0.
- ``weighting_moves_fixed_point`` (informational, when the loss takes ``p``): the same
  by Monte Carlo with ``p = 1``; MATH.md §4 expects it to move on a mixture, not on
  a single Gaussian.
- ``scm_relation`` (losses trained at ``r = 0`` only): per-sample gradient equal to
  ``(t/2)`` times ``mf``'s at ``r = 0`` up to one positive factor.

Python: ``report = mfverify.check.run(loss, reference=None, cases=None, options=None, seed=0)``;
``report.passed``, ``report.checks[NAME].passed / .value / .rule``, ``report.to_json()``.
Exit status of the command: 0 every check passed, 1 one failed, 2 a usage error.

Each check is a registered object (``mfverify.check.checks``), run in registration order
on a ``PerSample`` context; a check registered from outside for this battery runs too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from mfverify import objectives, path
from mfverify.cases import get_case
from mfverify.check import checks as _checks
from mfverify.check import sampler as _sampler
from mfverify.check.exact_core import smooth_directions
from mfverify.check.report import (DEFAULT_CASES, CheckResult, LossError, Report, check_cases, check_int, check_rtol,
                                   fmt, progress, user_code)
from mfverify.check.statistics import (EQUAL_RTOL, FIVE_SIGMA_P, POWER, STATIONARY_RTOL, bonferroni_z,
                                       combine, floored_z)
from mfverify.nets import build_network
from mfverify.theory import identities

__all__ = ["run", "Report", "CheckResult", "DEFAULT_CASES", "check_rtol", "PerSample", "bonferroni_z",
           "FIVE_SIGMA_P", "LossError", "EQUAL_RTOL", "STATIONARY_RTOL"]


# the Monte Carlo route decides when a move of half a direction would show (with probability POWER) at
# every point: 20,000 draws per point reach 0.06-0.35 on the default cases (its random directions are
# weak at some points); the exact route has no such limit
MC_RESOLUTION = 0.5


# ------------------------------------------------------------------ inputs


class _Loss:
    """The loss under test: an ``Objective`` with its options, outputs checked strictly."""

    def __init__(self, loss, options):
        self.objective = objectives.get(loss)
        self.name = self.objective.name
        self.options = self.objective.resolve_options(options)

    def exact_options(self) -> dict:
        """The options of the exact checks: weighting off (MATH.md §4: exact checks use p = 0)."""
        return {**self.options, **({"p": 0.0} if "p" in self.options else {})}

    def shown_options(self) -> dict:
        """The options that differ from the objective's defaults (what a report names)."""
        defaults = self.objective.resolve_options(None)
        return {k: v for k, v in self.options.items() if defaults.get(k) != v or k in ("p", "c")}

    mixture = None  # an oracle objective's truth on the random batches (run sets the first case's)

    def __call__(self, model, x0, x1, r, t, **options) -> torch.Tensor:
        if self.objective.needs_truth and "mixture" not in options:
            options = {**options, "mixture": self.mixture}
        inputs = {"x0": x0, "x1": x1, "r": r, "t": t}
        saved = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        loss = user_code(lambda: self.objective(model, x0, x1, r, t, **{**self.options, **options}), self.name)
        changed = [k for k, v in saved.items() if not torch.equal(v, inputs[k])]
        if changed:
            raise LossError(f"loss {self.name!r} changed its input {', '.join(changed)} in place; a loss must leave "
                            "x0, x1, r and t as it received them (the battery reuses them)")
        if not loss.dtype.is_floating_point:
            raise LossError(f"loss {self.name!r} returned a {loss.dtype} tensor; expected a floating-point per-sample "
                            "loss")
        if loss.dtype != x0.dtype:
            raise LossError(f"loss {self.name!r} returned {loss.dtype} on {x0.dtype} inputs: the battery's checks "
                            "compare to about 1e-9, below float32's resolution (1e-7); compute in the inputs' dtype")
        if torch.is_grad_enabled() and not loss.requires_grad and _has_trainable(model):
            raise LossError(f"loss {self.name!r} returned a tensor without a gradient (detached, or computed outside "
                            "autograd): the checks differentiate it with respect to the model's parameters")
        if not torch.isfinite(loss.detach()).all():
            raise LossError(f"loss {self.name!r} returned non-finite values on finite inputs (a random network, "
                            "random data and times)")
        return loss


def _has_trainable(model) -> bool:
    params = getattr(model, "parameters", None)
    return callable(params) and any(p.requires_grad for p in params())


def _networks(seed: int, network: str, dims=(1, 2, 3), heads: int = 1):
    """Random float64 networks, one per dimension, with the data of a batch for each."""
    out = []
    for i, d in enumerate(dims):
        torch.manual_seed(seed + 101 * i)
        options = {"width": 16, "depth": 2} if network == "mlp" else {}
        if heads != 1:
            options["heads"] = heads
        model = build_network(network, d, options, dtype=torch.float64).double()
        g = torch.Generator().manual_seed(seed + 7 + i)
        n = 12
        x0 = 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
        x1 = torch.randn(n, d, generator=g, dtype=torch.float64)
        t = 0.02 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)
        r = t * torch.rand(n, generator=g, dtype=torch.float64)
        r[: n // 4] = t[: n // 4]  # some on the diagonal
        w = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)  # weights: gradients see every sample
        out.append((model, x0, x1, r, t, w))
    return out


def _value_and_grad(loss_fn, model, x0, x1, r, t, w, seed):
    torch.manual_seed(seed)  # a loss that draws (lambda ~ U(0, 1), say) draws the same each call
    loss = loss_fn(model, x0, x1, r, t)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), _flat_grad((w * loss).sum(), params)


def _flat_grad(value, params) -> torch.Tensor:
    """The gradient of ``value`` as one vector (zeros for parameters it does not reach)."""
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def _fit_factor(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """``(k, residual)``: the least-squares factor ``a ~ k b`` and ``|a - k b| / max(|a|, |k b|)``."""
    bb = float(b @ b)
    k = float(a @ b) / bb if bb > 0 else 0.0
    denom = max(float(a.norm()), abs(k) * math.sqrt(bb), 1e-300)
    return k, float((a - k * b).norm()) / denom


def _compare(loss_fn, ref_fn, batches, use_values: bool, seed: int):
    """``(factors per dimension {d: k}, value residual, gradient residual)``: one factor fitted per
    batch (each batch is one dimension ``d``), the residuals the worst over batches."""
    factors, res_vs, res_gs = {}, [], []
    for i, (model, x0, x1, r, t, w) in enumerate(batches):
        v, g = _value_and_grad(loss_fn, model, x0, x1, r, t, w, seed + i)
        rv, rg = _value_and_grad(ref_fn, model, x0, x1, r, t, w, seed + i)
        if use_values:
            k, res_v = _fit_factor(v, rv)
            res_g = float((g - k * rg).norm()) / max(float(g.norm()), abs(k) * float(rg.norm()), 1e-300)
        else:
            k, res_g = _fit_factor(g, rg)
            res_v = float("nan")
        factors[x0.shape[1]] = k
        res_vs.append(res_v), res_gs.append(res_g)
    return factors, max(res_vs), max(res_gs)


def _factor_details(factors: dict[int, float]) -> dict:
    """How the factor depends on the dimension: ``"constant"`` (one ``k``), ``"coordinate mean"``
    (``k / d``: a loss averaged over coordinates, ``F.mse_loss``), or ``"per dimension"``."""
    ks = list(factors.values())
    same = lambda a: max(a) - min(a) <= 1e-9 * max(abs(v) for v in a)  # noqa: E731
    if len(ks) == 1 or same(ks):
        return {"factor": ks[0], "factor_kind": "constant"}
    if same([k * d for d, k in factors.items()]):
        first = next(iter(factors))
        return {"factor": factors[first] * first, "factor_kind": "coordinate mean (factor / d)",
                "factors_per_d": factors}
    return {"factor": ks[0], "factor_kind": "per dimension", "factors_per_d": factors}


# ------------------------------------------------------------------ the checks


REFERENCE = "fm"  # the objective that reduces_to_fm compares every loss with at r = t


def _fm_both_heads(model, x0, x1, r, t, **options):
    """``fm`` on each head of a two-head model: ``|u(x_t, t, t) - v_c|^2 + |v(x_t, t) - v_c|^2``."""
    second = (model.velocity(path.x_t(x0, x1, t), t) - path.v_c(x0, x1)).square().sum(1)
    return objectives.get(REFERENCE)(model, x0, x1, r, t, **options) + second


def check_reduces_to_fm(loss: _Loss, batches, seed, rtol=EQUAL_RTOL) -> CheckResult:
    diag = [(m, x0, x1, t.clone(), t, w) for m, x0, x1, r, t, w in batches]
    two = loss.objective.heads == 2
    fm = (objectives.Objective("fm on both heads", _fm_both_heads, heads=2) if two
          else objectives.get(REFERENCE))
    use_values = not loss.objective.surrogate
    factors, res_v, res_g = _compare(lambda *a: loss(*a, **loss.exact_options()), fm, diag, use_values, seed)
    residual = max(res_g, res_v if use_values else 0.0)
    passed = residual <= rtol and min(factors.values()) > 0
    what = "fm on both heads (u at (x_t, t, t) and v)" if two else "fm"
    rule = (f"at r = t, p = 0: |L - k L_fm| and |grad L - k grad L_fm| <= {rtol:g} of their size, L_fm {what}, "
            "one k > 0 per dimension")
    return CheckResult("reduces_to_fm", passed, residual, rule,
                       details={**_factor_details(factors), "value_residual": res_v, "gradient_residual": res_g})


def check_equivalent(loss: _Loss, reference: _Loss, batches, seed, rtol=EQUAL_RTOL) -> CheckResult:
    use_values = not (loss.objective.surrogate or reference.objective.surrogate)
    factors, res_v, res_g = _compare(loss, reference, batches, use_values, seed)
    residual = max(res_g, res_v if use_values else 0.0)
    passed = residual <= rtol and min(factors.values()) > 0
    what = "value and gradient" if use_values else "gradient (a surrogate's value means nothing)"
    rule = f"{what} = k x {reference.name}'s to {rtol:g} of their size, one k > 0 per dimension, random r <= t"
    return CheckResult("equivalent_to_reference", passed, residual, rule,
                       details={"reference": reference.name, "reference_options": reference.shown_options(),
                                **_factor_details(factors), "value_residual": res_v, "gradient_residual": res_g})


def _points(mixture, seed: int, n: int, r0: bool):
    """``n`` points ``x_t ~ p_t`` with ``t ~ U(0.3, 1)`` and ``r = 0`` for the first half (long
    intervals, where the terms of a MeanFlow loss are largest), ``r ~ U(0, t)`` for the rest but
    the last, which is on the diagonal ``r = t`` (from 3 points on)."""
    g = torch.Generator().manual_seed(seed)
    t = 0.3 + 0.7 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    r[: (n + 1) // 2] = 0.0
    if n >= 3:
        r[-1] = t[-1]  # one on the diagonal, where every loss of the family is flow matching
    if r0:
        r = torch.zeros_like(t)
    return path.sample(mixture, t, g), r, t


def check_stationary(loss: _Loss, cases, seed, n_points: int, n_samples: int, progress_=False,
                     points=None, directions=None, rtol: float = STATIONARY_RTOL) -> CheckResult:
    """``cases``: names or mixtures; ``points``: ``(x, r, t)`` for every case (default: drawn per
    case); ``directions``: ``{name: h}`` (default: a random network and a wavy field)."""
    options = loss.exact_options()
    exact = loss.objective.is_quadratic(options)
    r0 = loss.objective.trained_at_r0
    per_case, stats, all_moves = {}, [], []
    n = n_points if points is None else len(points[2])
    # per point, and (Monte Carlo) the move the points share, per case and direction
    m = len(cases) * (n + (0 if exact else 1)) * (2 if directions is None else len(directions))
    z_bar = bonferroni_z(m)
    for ci, case in enumerate(cases):
        mixture = get_case(case) if isinstance(case, str) else case
        label = case if isinstance(case, str) else repr(mixture)
        x, r, t = _points(mixture, seed + 31 * ci, n_points, r0) if points is None else points
        model = identities.ExactModel(mixture)
        worst, moves = {}, {}
        for name, h in (directions or smooth_directions(mixture.d, seed + 17 * ci)).items():
            progress(progress_, f"stationary_at_exact_u: {label}, direction {name}")
            if exact:
                g, scale = identities.population_gradient_with_scale(
                    loss.objective, mixture, h, x, r, t, exact_model=model, **options)
                worst[name] = (g.abs() / scale).max().item()
            else:
                gen = torch.Generator().manual_seed(seed + 1000 * ci + len(worst))
                mean, se = identities.population_gradient_mc(
                    loss.objective, mixture, h, x, r, t, n_samples=n_samples, generator=gen, **options)
                H = identities.curvature(loss.objective, mixture, h, x, r, t, exact_model=model, **options).abs()
                worst[name] = floored_z(mean, se, H, rtol).max().item()
                # the move shared by the points the loss trains (inverse-variance, as the as-written cases'):
                # tested too, and the one detectable with probability POWER is the check's resolution
                trained = H > 0
                if trained.any():
                    shared = combine(name, mean[trained] / H[trained], se[trained] / H[trained], rtol, z_bar)
                    worst[name], moves[name] = max(worst[name], shared.z), shared.move
                else:
                    moves[name] = float("inf")
        per_case[label] = {f"max_{k}": v for k, v in worst.items()}
        if moves:
            per_case[label].update({f"move_{k}": v for k, v in moves.items()})
        stats += list(worst.values())
        all_moves += list(moves.values())
    value = max(stats)
    details = {"route": "exact" if exact else "monte_carlo", "per_case": per_case}
    status = None
    if exact:
        rule = (f"exact (sigma points; declared quadratic in v_c, verified by a second set): "
                f"max |E dl/d eps| / scale <= {rtol:g}")
        passed = value <= rtol
    else:
        move = max(all_moves)
        rule = (f"Monte Carlo ({n_samples} exact draws of v_c per point): max |z| <= {z_bar:.2f} "
                f"(5 sigma, Bonferroni over {m} tests: each point, and the move the points share; stderr floored at "
                f"{rtol:g} of the curvature); decided when the shared move detectable with probability {POWER:g} is at "
                f"most {MC_RESOLUTION:g} of the direction on each case")
        passed = value <= z_bar
        details["detectable_move"] = move
        if passed and move > MC_RESOLUTION:
            status = "insufficient"
    return CheckResult("stationary_at_exact_u", passed, value, rule, details=details,
                       status=status or ("pass" if passed else "fail"))


def check_weighting(loss: _Loss, seed, n_samples: int, progress_, rtol: float = STATIONARY_RTOL) -> CheckResult:
    options = {**loss.options, "p": 1.0, **({"c": 1e-2} if "c" in loss.options else {})}
    r0 = loss.objective.trained_at_r0
    cases = {"gauss2d_aniso": "single Gaussian", "ring8": "mixture"}
    m = len(cases) * 2
    z = bonferroni_z(m)
    moved, per_case = {}, {}
    for ci, case in enumerate(cases):
        progress(progress_, f"weighting_moves_fixed_point: {case}")
        mixture = get_case(case)
        t = torch.tensor([0.8, 0.4], dtype=torch.float64)
        r = torch.zeros(2, dtype=torch.float64) if r0 else torch.tensor([0.0, 0.1], dtype=torch.float64)
        g = torch.Generator().manual_seed(seed + 3 + ci)
        x = path.sample(mixture, t, g)
        h = smooth_directions(mixture.d, seed + 50 + ci)["wavy"]
        mean, se = identities.population_gradient_mc(
            loss.objective, mixture, h, x, r, t, n_samples=n_samples,
            generator=torch.Generator().manual_seed(seed + 77 + ci), **options)
        H = identities.curvature(loss.objective, mixture, h, x, r, t, **options).abs()
        stat = floored_z(mean, se, H, rtol).max().item()
        moved[cases[case]] = stat > z
        per_case[case] = {"max_z": stat, "moved": stat > z}
    passed = moved["mixture"] and not moved["single Gaussian"]
    rule = f"p = 1: moves (max |z| > {z:.2f}) on ring8, not on gauss2d_aniso (MATH.md §4)"
    value = per_case["ring8"]["max_z"]
    return CheckResult("weighting_moves_fixed_point", passed, value, rule, counts=False,
                       details={"options": {k: v for k, v in options.items() if k in ("p", "c")},
                                "per_case": per_case})


def _off_diagonal(x, r, t):
    """A direction that vanishes on the diagonal ``r = t`` and nowhere else: ``(t - r) x``."""
    return (t - r)[:, None] * x


def check_trains_off_diagonal(loss: _Loss, batches, seed) -> CheckResult:
    """The loss's derivative along ``(t - r) x`` (zero on the diagonal) at the random networks, on rows with
    ``r < t``: a loss that never evaluates the model off the diagonal (flow matching written with the
    average-velocity network, ``|u(x_t, t, t) - v_c|^2``) gives exactly 0 on every row."""
    rows, reached = 0, 0.0
    for i, (model, x0, x1, r, t, _w) in enumerate(batches):
        off = r < t
        if loss.objective.trained_at_r0:
            off = t > 0
        torch.manual_seed(seed + i)
        x_t, v_c = path.x_t(x0[off], x1[off], t[off]), path.v_c(x0[off], x1[off])
        g = identities.eps_derivative(loss.objective, model, _off_diagonal, x_t, r[off], t[off], v_c,
                                      **loss.exact_options(), **({"mixture": loss.mixture}
                                                                 if loss.objective.needs_truth else {}))
        rows += int(off.sum())
        reached = max(reached, float(g.abs().max()) if g.numel() else 0.0)
    passed = reached > 0
    sentence = ("" if passed else "the loss's gradient never leaves the diagonal r = t: it trains the instantaneous "
                "velocity (flow matching) only, never the average velocity over an interval")
    return CheckResult("trains_off_diagonal", passed, reached, "the derivative along (t - r) x (zero on r = t) is "
                       "non-zero at some row with r < t (random networks)",
                       details={"rows": rows, **({"sentence": sentence} if sentence else {})})


def check_scm_relation(loss: _Loss, batches, seed, rtol: float = EQUAL_RTOL) -> CheckResult:
    mf = objectives.get("mf")
    res = []
    for i, (model, x0, x1, _, t, _w) in enumerate(batches):
        r = torch.zeros_like(t)
        params = list(model.parameters())
        for j in range(t.shape[0]):
            sl = slice(j, j + 1)
            torch.manual_seed(seed + i)
            g = _flat_grad(loss(model, x0[sl], x1[sl], r[sl], t[sl]).sum(), params)
            gm = _flat_grad(mf(model, x0[sl], x1[sl], r[sl], t[sl]).sum(), params)
            res.append((g, 0.5 * float(t[j]) * gm))
    a = torch.cat([p for p, _ in res])
    b = torch.cat([q for _, q in res])
    k, residual = _fit_factor(a, b)
    passed = residual <= rtol and k > 0
    rule = f"per sample at r = 0: grad L = k (t/2) grad L_mf to {rtol:g} of its size, one k > 0"
    return CheckResult("scm_relation", passed, residual, rule, details={"factor": k})


# ------------------------------------------------------------------ the battery


WEIGHTING_RULE = ("weighting: reduces_to_fm and stationary_at_exact_u run at p = 0 (MATH.md §4: weighting moves the "
                  "fixed point); equivalent_to_reference runs the loss with its options and gives the reference the "
                  "loss's p and c unless reference options set them; weighting_moves_fixed_point sets p = 1")


MAX_D = 256  # the largest case the per-sample battery takes (its exact route is O(d^2) memory per point)


# ------------------------------------------------------------------ the battery


WEIGHTING_RULE = ("weighting: reduces_to_fm and stationary_at_exact_u run at p = 0 (MATH.md §4: weighting moves the "
                  "fixed point); equivalent_to_reference runs the loss with its options and gives the reference the "
                  "loss's p and c unless reference options set them; weighting_moves_fixed_point sets p = 1")


MAX_D = 256  # the largest case the per-sample battery takes (its exact route is O(d^2) memory per point)


@dataclass
class PerSample:
    """What a per-sample check is run on: the loss (``subject``, a ``_Loss``), the reference (or
    None), random networks with batches (``batches``), the stationarity cases, and the settings."""

    subject: _Loss
    reference: _Loss | None
    batches: list
    cases: tuple
    seed: int
    n_points: int
    n_samples: int
    weighting_samples: int
    weighting: bool
    progress: bool
    equal_rtol: float
    stationary_rtol: float
    notes: list = field(default_factory=list)


@_checks.register("reduces_to_fm", batteries=("per_sample",), order=10)
def _reduces_to_fm(ctx: PerSample):
    """At r = t the loss's values and gradient are fm's up to one positive factor."""
    if ctx.subject.objective.trained_at_r0:
        ctx.notes.append("reduces_to_fm not run: the loss is trained at r = 0 only (its r = t rows are not flow "
                         "matching); scm_relation checks it instead")
        return None
    return check_reduces_to_fm(ctx.subject, ctx.batches, ctx.seed, ctx.equal_rtol)


@_checks.register("equivalent_to_reference", batteries=("per_sample",), order=20)
def _equivalent_to_reference(ctx: PerSample):
    """With a reference: values and gradient equal the reference's up to one positive factor."""
    if ctx.reference is None:
        return None
    return check_equivalent(ctx.subject, ctx.reference, ctx.batches, ctx.seed, ctx.equal_rtol)


@_checks.register("stationary_at_exact_u", batteries=("per_sample",), order=30)
def _stationary_at_exact_u(ctx: PerSample):
    """The population derivative at the exact u* is zero along smooth directions."""
    return check_stationary(ctx.subject, ctx.cases, ctx.seed, ctx.n_points, ctx.n_samples, ctx.progress,
                            rtol=ctx.stationary_rtol)


@_checks.register("trains_off_diagonal", batteries=("per_sample", "as_written"), order=40)
def _trains_off_diagonal(ctx):
    """The loss trains the average velocity off the diagonal r = t (not flow matching alone)."""
    if isinstance(ctx, PerSample):
        return check_trains_off_diagonal(ctx.subject, ctx.batches, ctx.seed)
    return _sampler.trains_off_diagonal(ctx)  # the as-written battery: where its gradient reaches


@_checks.register("weighting_moves_fixed_point", batteries=("per_sample",), order=50, counts=False)
def _weighting_moves_fixed_point(ctx: PerSample):
    """Informational: adaptive weighting (p = 1) moves the fixed point on a mixture, not on a Gaussian."""
    if "p" not in ctx.subject.options:
        return None
    if not ctx.weighting:
        ctx.notes.append("weighting_moves_fixed_point not run (weighting=False)")
        return None
    return check_weighting(ctx.subject, ctx.seed, ctx.weighting_samples, ctx.progress, ctx.stationary_rtol)


@_checks.register("scm_relation", batteries=("per_sample",), order=60)
def _scm_relation(ctx: PerSample):
    """Losses trained at r = 0 only: the gradient is (t/2) times mf's."""
    if not ctx.subject.objective.trained_at_r0:
        return None
    return check_scm_relation(ctx.subject, ctx.batches, ctx.seed, ctx.equal_rtol)


def run(loss, reference=None, cases=None, options=None, seed: int = 0, network: str = "mlp",
        n_points: int = 4, n_samples: int = 20_000, weighting_samples: int = 100_000, weighting: bool = True,
        progress: bool = False, reference_options=None, rtol: float | None = None) -> Report:
    """Run the battery on ``loss`` (a name, ``"module:attr"``, ``Objective`` or per-sample loss).

    ``reference``: another loss it should equal up to a factor, with
    ``reference_options``; ``cases``: names for the stationarity check (default
    ``DEFAULT_CASES``); ``options``: the loss's options; ``network``: the random
    networks' kind (a registered name); ``weighting=False`` leaves the informational
    weighting check out (said in the notes); ``rtol``: the relative tolerance of the
    exact comparisons and of the exact stationarity route (default ``EQUAL_RTOL`` and
    ``STATIONARY_RTOL``; also the floor of the Monte Carlo statistic). Weighting
    follows one rule, ``WEIGHTING_RULE``.
    """
    start = time.perf_counter()
    cases = check_cases(cases)
    check_int("seed", seed)
    for name, value in (("n_points", n_points), ("n_samples", n_samples), ("weighting_samples", weighting_samples)):
        check_int(name, value, 1)
    check_rtol(rtol)
    if reference_options and reference is None:
        raise ValueError("reference_options given without a reference")
    for case in cases:
        d = get_case(case).d  # an unknown case fails before any work
        if d > MAX_D:
            raise ValueError(f"case {case!r} has d = {d}: the per-sample battery forms d x d covariances and "
                             f"d + 2 derivatives per point (at most d = {MAX_D}); check this case with "
                             "--as-written, or the per-sample battery on a smaller case (digits: d = 64)")
    subject = _Loss(loss, options)
    ref = None
    if reference is not None:
        ref_objective = objectives.get(reference)
        shared = {k: subject.options[k] for k in ("p", "c") if k in subject.options and ref_objective.weighting}
        ref = _Loss(ref_objective, {**shared, **(reference_options or {})})
    for each in (subject, ref):
        if each is not None:
            each.mixture = get_case(cases[0])
    heads = max(subject.objective.heads, ref.objective.heads if ref is not None else 1)
    # an oracle's truth lives in its case's dimension: its random batches use that one
    dims = (get_case(cases[0]).d,) if subject.objective.needs_truth else (1, 2, 3)
    eq_rtol, st_rtol = (EQUAL_RTOL, STATIONARY_RTOL) if rtol is None else (rtol, rtol)
    ctx = PerSample(subject, ref, _networks(seed, network, dims=dims, heads=heads), cases, seed, n_points, n_samples,
                    weighting_samples, weighting, progress, eq_rtol, st_rtol)
    results = {}
    for check in _checks.for_battery("per_sample"):
        result = check(ctx)
        if result is not None:
            result.counts = result.counts and check.counts
            results[check.name] = result
    notes = ctx.notes + [c.details["sentence"] for c in results.values() if not c.passed and "sentence" in c.details]
    if "p" in subject.options or (ref is not None and "p" in ref.options):
        notes.append(WEIGHTING_RULE)
    for c in results.values():
        if c.details.get("factor_kind", "constant") != "constant":
            notes.append(f"{c.name}: the factor depends on the dimension ({c.details['factor_kind']}): "
                         + ", ".join(f"d = {d}: {k:.6g}" for d, k in c.details["factors_per_d"].items()))
    return Report(subject.name, results, notes, seconds=time.perf_counter() - start)
