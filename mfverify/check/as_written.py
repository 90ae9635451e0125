"""The as-written battery: a repository's own batch loss, with its own sampler and batch mean.

``mfverify check --as-written MODULE:FN`` (``run_as_written(fn, ...)``) takes
``fn(model, x0) -> loss`` (``fn(model, x0, labels)`` on labelled cases): a scalar, or a
tuple/list whose first item is, or a dict whose ``"loss"`` is. ``model`` is an
``ExactNetwork`` (the exact average velocity plus perturbations, in the convention
``inputs``), ``x0`` a batch of the case's data ((B, C, H, W) on an image case such as ``digits``, (B, d)
otherwise); the loss draws everything else
itself (times, noise, the share of ``r = t``, label dropout) from torch's global
generator, which the battery seeds per batch (``fronts``: torch and JAX). The checks,
registered objects (``mfverify.check.checks``) run on the ``Evidence`` gathered here:

- ``stationary_as_written``: the population derivative of the loss along each smooth
  direction at the exact model, averaged over batches of the loss's own randomness,
  with the batch-to-batch standard error. ``z = |mean| / sqrt(se^2 + (rtol size)^2)``
  where ``size`` is the derivative's rms with the model moved off ``u*`` along every
  direction at once (so a loss times 1e-8 gets the same z). Batches come in rounds
  (``min_batches``, times ``GROWTH`` up to ``max_batches``); the rule is 5 sigma,
  Bonferroni over directions x cases x rounds. A round stops early when the rule is
  broken, or when the standard error is at most ``resolution`` of the size (a bias
  of ``5 resolution`` of it would show); a case that reaches ``max_batches``
  without that is ``insufficient`` and fails.
- ``times_in_range``, ``trains_off_diagonal``, ``one_step_trained``: what the sampler
  trains (``sampler``: the cells of the ``(r, t)`` triangle the gradient reaches).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from mfverify.cases import get_case
from mfverify.check import checks as _checks
from mfverify.check import sampler as _sampler
from mfverify.check.exact_core import INPUTS, CallLog
from mfverify.check.fronts import FRONTS, arity
from mfverify.check.report import CheckResult, Report, check_cases, check_int, check_rtol
from mfverify.check.report import progress as progress_line
from mfverify.check.sampler import ONE_STEP, draw_sampler, sampler_table
from mfverify.check.statistics import HEAVY_TAIL, STATIONARY_RTOL, bonferroni_z, floored_z, heavy_tail

__all__ = ["run_as_written", "DEFAULT_CASES", "ONE_STEP", "sampler_table", "draw_sampler", "Evidence", "CaseEvidence"]

# a Gaussian, a 1-D bimodal mixture, ring8, and one whose velocities exceed 4 (clipped targets show)
DEFAULT_CASES = ("gauss2d_aniso", "bimodal1d", "ring8", "wide2d")
RESOLUTION = 0.01  # stop when the standard error is 1 % of the derivative's size off u*
REACH_BATCHES = 8  # batches with the model off u*, per case
GROWTH = 2  # each round of batches is this many times the last


@dataclass
class CaseEvidence:
    """One case's batches: ``G`` (batches, J) the derivatives at ``u*``, ``off`` (REACH_BATCHES, J)
    with the model off ``u*``; the statistic of the smooth directions (``z``, ``mean``, ``se``),
    the ``size`` and the ``resolution`` reached; ``model`` the exact model that answered."""

    label: str
    model: object
    G: torch.Tensor
    off: torch.Tensor
    z: torch.Tensor
    mean: torch.Tensor
    se: torch.Tensor
    size: float
    resolution: float


@dataclass
class Evidence:
    """What the as-written checks are run on: each case's ``CaseEvidence``, the rule's bar ``z_bar``
    over ``tests`` tests, the settings, and what the sampler trains (``sampler``)."""

    cases: list
    z_bar: float
    tests: int
    resolution: float
    max_batches: int
    batch_size: int
    rtol: float
    sampler: dict
    notes: list = field(default_factory=list)


def run_as_written(fn, cases=None, seed: int = 0, batch_size: int = 1024, min_batches: int = 8,
                   max_batches: int = 512, resolution: float = RESOLUTION, inputs: str = "x,r,t",
                   dtype: torch.dtype = torch.float64, rtol: float | None = None, progress: bool = False,
                   name: str | None = None, framework: str = "torch", jit: bool = True) -> Report:
    """Run the as-written battery on ``fn`` (see the module's docstring); ``Report.sampler`` holds
    what its sampler trains. ``dtype``: of ``x0`` (the model computes in float64 and answers
    in the input's dtype); ``rtol``: the floor of the statistic (default ``STATIONARY_RTOL``;
    float32 losses need about 1e-6); ``framework="jax"``: ``fn(apply, params, x0, key) -> scalar``
    (``fn(apply, params, x0, labels, key)`` on labelled cases), ``apply(params, x, r, t)`` the
    exact model of ``mfverify.jax``, ``key`` a ``jax.random`` key per batch; the derivatives are
    ``jax.grad(fn)(params)["eps"]``, compiled once per case with ``jax.jit`` (``jit=False``, or a
    loss that cannot be traced: op by op), and everything else is this battery. A float64 JAX
    run needs ``jax_enable_x64`` (the CLI sets it)."""
    start = time.perf_counter()
    if framework not in FRONTS:
        raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")
    if framework == "jax":
        _require_x64(dtype)
    cases = check_cases(cases, DEFAULT_CASES)
    _validate(fn, cases, seed, batch_size, min_batches, max_batches, resolution, inputs, dtype, rtol)
    rtol = STATIONARY_RTOL if rtol is None else rtol
    mixtures = [get_case(c) if isinstance(c, str) else c for c in cases]
    front = FRONTS[framework](jit=jit) if framework == "jax" else FRONTS[framework]()
    takes_labels = arity(fn, mixtures, front)
    rounds = 1 + max(0, math.ceil(math.log(max_batches / min_batches, GROWTH) - 1e-9))
    first = front.model(mixtures[0], inputs, seed)
    m = len(cases) * first.n_smooth * rounds
    z_bar = bonferroni_z(m)
    log, gathered = CallLog(), []
    reached = torch.zeros(len(first.direction_names), dtype=torch.bool)
    reach_sum = torch.zeros(len(first.direction_names), dtype=torch.float64)
    for ci, (case, mixture) in enumerate(zip(cases, mixtures)):
        label = case if isinstance(case, str) else repr(mixture)
        model = front.model(mixture, inputs, seed + 17 * ci)
        call = lambda b: front.batch(fn, model, mixture, batch_size, dtype, seed + 7919 * ci + b,  # noqa: E731
                                     takes_labels)
        progress_line(progress, f"as written: {label}, the model off u* ({REACH_BATCHES} batches)")
        model.offset.fill_(1.0)
        off = torch.stack([call(100_000 + b) for b in range(REACH_BATCHES)])
        model.offset.zero_()
        size = float(off.square().mean(0).sqrt().max())
        grads, target = [], min_batches
        while True:
            progress_line(progress, f"as written: {label}, batches {len(grads) + 1}..{target} at u*")
            grads += [call(b) for b in range(len(grads), target)]
            G = torch.stack(grads)
            mean, se = G.mean(0), G.std(0) / math.sqrt(len(grads))
            S = model.n_smooth
            z = floored_z(mean[:S], se[:S], size, rtol)
            res = float(se[:S].max()) / max(size, 1e-300)
            if float(z.max()) > z_bar or res <= resolution or target >= max_batches:
                break
            target = min(GROWTH * target, max_batches)
        gathered.append(CaseEvidence(label, model, G, off, z, mean[:S], se[:S], size, res))
        reached |= (off != 0).any(0) | (G != 0).any(0)
        cells = off.abs().mean(0)
        cells[: model.n_smooth] = 0.0  # the share is among the cells and the diagonal
        reach_sum += cells / max(float(cells.sum()), 1e-300)
        log.extend(model.calls)
    evidence = Evidence(gathered, z_bar, m, resolution, max_batches, batch_size, rtol,
                        _sampler.summary(first, log, reached, reach_sum / len(cases)))
    results = {}
    for check in _checks.for_battery("as_written"):
        result = check(evidence)
        if result is not None:
            result.counts = result.counts and check.counts
            results[check.name] = result
    notes = evidence.notes + [c.details["sentence"] for c in results.values()
                              if not c.passed and "sentence" in c.details]
    report = Report(name or getattr(fn, "__qualname__", repr(fn)), results, notes,
                    seconds=time.perf_counter() - start)
    report.sampler = evidence.sampler
    return report


@_checks.register("stationary_as_written", batteries=("as_written",))
def stationary_as_written(evidence: Evidence) -> CheckResult:
    """The exact u* is a stationary point of the loss as written, its own sampler included."""
    per_case, insufficient, tails, batches = {}, [], {}, {}
    z_bar = evidence.z_bar
    for case in evidence.cases:
        names = case.model.direction_names
        batches[case.label] = case.G.shape[0]
        if float(case.z.max()) <= z_bar and case.resolution > evidence.resolution:
            insufficient.append(case.label)
            tails[case.label] = heavy_tail(case.G[:, : case.model.n_smooth])
        per_case[case.label] = {**{f"z_{n}": float(v) for n, v in zip(names, case.z)},
                                **{f"mean_{n}": float(v) for n, v in zip(names, case.mean)},
                                **{f"se_{n}": float(v) for n, v in zip(names, case.se)},
                                "batches": case.G.shape[0], "resolution": case.resolution, "size": case.size}
    value = max(float(c.z.max()) for c in evidence.cases)
    failed = value > z_bar
    rule = (f"max |z| <= {z_bar:.2f} (5 sigma, Bonferroni over {evidence.tests} tests: directions x cases x rounds "
            f"of batches); each case resolved to se <= {evidence.resolution:g} of the derivative's size off u* (at "
            f"most {evidence.max_batches} batches of {evidence.batch_size}); stderr floored at {evidence.rtol:g} of "
            "that size")
    details = {"batches": batches, "per_case": per_case}
    if insufficient:
        details["insufficient"] = insufficient
        details["tail"] = tails
    if failed:
        worst = max(per_case, key=lambda k: max(v for n, v in per_case[k].items() if n.startswith("z_")))
        evidence.notes.insert(0, f"the exact average velocity is not a stationary point of this loss: its population "
                                 f"derivative is {value:.3g} standard errors from 0 (worst on {worst}); the loss "
                                 "trains something else")
    elif insufficient:
        heavy = {k: v for k, v in tails.items() if v > HEAVY_TAIL}
        why = "" if not heavy else (
            "; the batches' derivatives are heavy-tailed on " + ", ".join(f"{k} (the farthest batch {v:.0f} robust "
                                                                         "standard deviations from the median)"
                                                                         for k, v in heavy.items())
            + ": a few rows dominate the mean (where the exact flow map stretches, near the boundaries between "
            "the mixture's modes), so the standard error falls slowly")
        evidence.notes.insert(0, f"insufficient evidence on {', '.join(insufficient)}: after {evidence.max_batches} "
                                 f"batches the standard error is above {evidence.resolution:g} of the derivative's "
                                 f"size{why}; raise max_batches (--max-batches) or the batch size")
    return CheckResult("stationary_as_written", not failed and not insufficient, value, rule, details=details)


# the sampler's checks, after stationarity (the table's order)
for _name in ("times_in_range", "trains_off_diagonal", "one_step_trained"):
    _checks.register(_name, getattr(_sampler, _name), batteries=("as_written",))


def _require_x64(dtype):
    from mfverify.check.jax_model import require_jax

    jax, _ = require_jax()
    if dtype == torch.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 with framework 'jax' needs float64 arrays in JAX: set "
                         "jax.config.update(\"jax_enable_x64\", True) first, or pass dtype=torch.float32")


def _validate(fn, cases, seed, batch_size, min_batches, max_batches, resolution, inputs, dtype, rtol):
    if not callable(fn):
        raise TypeError(f"the loss must be callable, fn(model, x0) -> loss; got {type(fn).__name__}")
    check_int("seed", seed)
    check_int("batch_size", batch_size, 1)
    check_int("min_batches", min_batches, 2)
    check_int("max_batches", max_batches, 1)
    if max_batches < min_batches:
        raise ValueError(f"max_batches ({max_batches}) must be at least min_batches ({min_batches})")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not 0 < resolution < 1:
        raise ValueError(f"resolution must be a number in (0, 1), got {resolution!r}")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    check_rtol(rtol)
    for case in cases:
        if isinstance(case, str):
            get_case(case)
