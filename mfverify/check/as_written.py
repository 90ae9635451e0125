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
import os
import time
from dataclasses import dataclass, field

import torch

from mfverify.cases import get_case
from mfverify.check import battery as _battery  # noqa: F401  (registers trains_off_diagonal, shared)
from mfverify.check import checks as _checks
from mfverify.check import sampler as _sampler
from mfverify.check.exact_core import INPUTS, LAYOUTS, CallLog
from mfverify.check.fronts import FRONTS, arity, labels_only
from mfverify.check.report import (DEFAULT_CASES, DEFAULT_LABELLED_CASES, CheckResult, Report, check_cases,
                                   check_int, check_rtol)
from mfverify.check.report import progress as progress_line
from mfverify.check.sampler import ONE_STEP, draw_sampler, sampler_table
from mfverify.check.statistics import (HEAVY_TAIL, POWER, STATIONARY_RTOL, Summary, bonferroni_z, combine,
                                       curvature, heavy_tail, summarize)

__all__ = ["run_as_written", "DEFAULT_CASES", "ONE_STEP", "sampler_table", "draw_sampler", "Evidence", "CaseEvidence"]

RESOLUTION = 0.03  # a case is resolved when each deciding direction's se is 3 % of its curvature
REACH_BATCHES = 4  # batches with the model off u*, per case (where the gradient reaches)
CURVATURE_BATCHES = 4  # batches whose derivatives are also taken at eps_j = +-DELTA (the curvature)
DELTA = 1e-3  # the step of the curvature's central difference, in units of a direction
GROWTH = (1.5, 4.0)  # a round adds batches up to the predicted need, at least 1.5 and at most 4 times the last
BATCH_SIZE = 2048  # rows per batch on the 2-D and 1-D cases (the truth's cost per row falls with the batch)
MIN_RESOLVED = 32  # batches at least before a case counts as resolved: the standard error is itself estimated
IMAGE_BATCH_SIZE = 256  # on an image case (a case with a shape): d = 64 or more per row (1.4x the rows/s of 128)
TRUTH_TOLERANCE = 1e-7  # the exact model's rtol and atol: its bias (~1e-7 of u*) stays below the floor
FLOOR = 1e-6  # the default floor of the statistic, relative to the curvature: ten times the truth's tolerance


@dataclass
class CaseEvidence:
    """One case's batches: ``G`` (batches, J) the derivatives at ``u*``, ``off`` (REACH_BATCHES, J)
    with the model off ``u*``; ``stat`` the statistic of the directions that test stationarity
    (``names``), ``H_se`` their curvature's standard error, ``deciding`` the indices of the
    directions whose resolution decides the case, ``resolved``; ``model`` the exact model."""

    label: str
    model: object
    G: torch.Tensor
    off: torch.Tensor
    stat: Summary
    names: list
    H_se: torch.Tensor
    deciding: list
    resolved: bool
    batch_size: int
    z_bar: float  # the bar at this case's batches (Student's t, Bonferroni)

    @property
    def z_max(self) -> float:
        return float(self.stat.z.max())

    @property
    def failed(self) -> bool:
        return self.z_max > self.z_bar

    @property
    def resolution(self) -> float:
        return max((float(self.stat.resolution[j]) for j in self.deciding), default=float("inf"))

    @property
    def move(self) -> float:
        return max((float(self.stat.move[j]) for j in self.deciding), default=float("inf"))


@dataclass
class Evidence:
    """What the as-written checks are run on: each case's ``CaseEvidence``, the systematic moves
    combined over cases (``combined``, each with its bar ``combined_bar``), the number of ``tests`` the
    bars are Bonferroni-corrected for, the settings, and what the sampler trains (``sampler``)."""

    cases: list
    combined: list
    combined_bar: float
    tests: int
    resolution: float
    max_batches: int
    rtol: float
    sampler: dict
    notes: list = field(default_factory=list)


def run_as_written(fn, cases=None, seed: int = 0, batch_size: int | None = None, min_batches: int = 8,
                   max_batches: int = 512, resolution: float = RESOLUTION, inputs: str = "x,r,t",
                   dtype: torch.dtype = torch.float64, rtol: float | None = None, progress: bool = False,
                   name: str | None = None, framework: str = "torch", jit: bool = True,
                   layout: str | None = None) -> Report:
    """Run the as-written battery on ``fn`` (see the module's docstring); ``Report.sampler`` holds
    what its sampler trains. ``batch_size``: rows per call of the loss (default ``BATCH_SIZE``,
    ``IMAGE_BATCH_SIZE`` on image cases); ``dtype``: of ``x0`` (the model computes in float64 and
    answers in the input's dtype); ``rtol``: the floor of the statistic (default
    ``FLOOR``, 1e-6: ten times the exact model's tolerance here, ``TRUTH_TOLERANCE``); ``framework="jax"``: ``fn(apply, params,
    x0, key) -> scalar`` (``fn(apply, params, x0, labels, key)`` on labelled cases), ``apply(params,
    x, r, t)`` the exact model of ``mfverify.jax``, ``key`` a ``jax.random`` key per batch; the
    derivatives are ``jax.grad(fn)(params)["eps"]``, compiled once per case with ``jax.jit``
    (``jit=False``, or a loss that cannot be traced: op by op), and everything else is this
    battery. A float64 JAX run needs ``jax_enable_x64`` (the CLI sets it). ``layout``: how an image
    case's batches are shaped, ``"NCHW"`` (torch's default), ``"NHWC"`` (JAX's default) or ``"flat"``;
    the exact model reads the loss's arrays in the same layout and refuses others."""
    start = time.perf_counter()
    if framework not in FRONTS:
        raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")
    if framework == "jax":
        _require_x64(dtype)
    front = FRONTS[framework](jit=jit) if framework == "jax" else FRONTS[framework]()
    layout = layout or ("NHWC" if framework == "jax" else "NCHW")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    labelled_only = callable(fn) and labels_only(fn, front)
    cases = check_cases(cases, DEFAULT_LABELLED_CASES if labelled_only else DEFAULT_CASES)
    _validate(fn, cases, seed, batch_size, min_batches, max_batches, resolution, inputs, dtype, rtol)
    rtol = FLOOR if rtol is None else rtol
    mixtures = [get_case(c) if isinstance(c, str) else c for c in cases]
    takes_labels = arity(fn, mixtures, front)
    runs = [_CaseRun(front, fn, mixture, case if isinstance(case, str) else repr(mixture), inputs, dtype,
                     (seed, ci), seed + 17 * ci, takes_labels,
                     batch_size or (IMAGE_BATCH_SIZE if getattr(mixture, "shape", None) else BATCH_SIZE), resolution,
                     layout)
            for ci, (case, mixture) in enumerate(zip(cases, mixtures))]
    rounds = 1 + max(0, math.ceil(math.log(max_batches / min_batches) / math.log(GROWTH[0]) - 1e-9))
    shared = _shared_directions(runs)
    m = (sum(run.model.n_smooth for run in runs) + len(shared)) * rounds
    for run in runs:
        progress_line(progress, f"as written: {run.label}, the model off u* ({REACH_BATCHES} batches)")
        run.reach()
    targets = {run.label: min_batches for run in runs}
    for _ in range(rounds):
        for run in runs:
            if run.batches < targets[run.label]:
                progress_line(progress, f"as written: {run.label}, batches {run.batches + 1}..{targets[run.label]} "
                                        "at u*")
                run.extend(targets[run.label], rtol, m)
        # the shared moves: Student's t at the fewest batches among the cases combined (conservative)
        combined_bar = bonferroni_z(m, min(run.batches for run in runs))
        combined = _combined(runs, shared, rtol, combined_bar)
        failed = any(run.evidence.failed for run in runs) or any(c.z > combined_bar for c in combined)
        pending = [run for run in runs if not run.evidence.resolved and run.batches < max_batches]
        if failed or not pending:
            break
        for run in pending:
            targets[run.label] = run.next_target(resolution, max_batches)
    reached = torch.zeros(len(runs[0].model.direction_names), dtype=torch.bool)
    reach_sum = torch.zeros(len(runs[0].model.direction_names), dtype=torch.float64)
    log = CallLog()
    for run in runs:
        off, G, model = run.evidence.off, run.evidence.G, run.model
        reached |= (off != 0).any(0) | (G != 0).any(0)
        cells = off.abs().mean(0)
        cells[: model.n_smooth] = 0.0  # the share is among the cells and the diagonal
        reach_sum += cells / max(float(cells.sum()), 1e-300)
        log.extend(model.calls)
    evidence = Evidence([run.evidence for run in runs], combined, combined_bar, m, resolution, max_batches, rtol,
                        _sampler.summary(runs[0].model, log, reached, reach_sum / len(runs)))
    results = {}
    for check in _checks.for_battery("as_written"):
        result = check(evidence)
        if result is not None:
            result.counts = result.counts and check.counts
            results[check.name] = result
    notes = evidence.notes + [c.details["sentence"] for c in results.values()
                              if not c.passed and "sentence" in c.details]
    unseeded = sorted(front.unseeded.found)
    if unseeded:
        notes.append(f"the loss drew from {' and '.join(unseeded)}, which mfverify does not seed: this run cannot be "
                     "repeated bit for bit (draw from torch's generator, or jax.random with the key given)")
    report = Report(name or getattr(fn, "__qualname__", repr(fn)), results, notes,
                    seconds=time.perf_counter() - start)
    report.sampler = evidence.sampler
    report.unseeded = unseeded
    return report


def batch_seed(run: tuple, b: int) -> int:
    """The seed of batch ``b`` of ``run = (seed, case index)`` (``b < 0``: the batches off ``u*``): a hash of
    all three (numpy's ``SeedSequence``), so the batches of two seeds, two cases or two streams share no
    draws (with ``seed + b``, seeds 0 and 1 would share all but one batch)."""
    import numpy as np

    words = [int(v) & (2**64 - 1) for v in (*run, b)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0]) >> 2  # 2 seed + 1 < 2^31: any RNG


class _CaseRun:
    """One case's batches, grown round by round: off ``u*`` (where the gradient reaches), at ``u*``,
    and the curvature from the first ``CURVATURE_BATCHES`` batches, each also at ``eps_j = +-DELTA``
    (the same draws: common random numbers)."""

    def __init__(self, front, fn, mixture, label, inputs, dtype, seed, model_seed, takes_labels, batch_size,
                 resolution, layout):
        self.front, self.fn, self.mixture, self.label = front, fn, mixture, label
        self.dtype, self.seed, self.takes_labels, self.batch_size = dtype, seed, takes_labels, batch_size
        self.resolution = resolution
        self.model = front.model(mixture, inputs, model_seed, layout=layout, rtol=TRUTH_TOLERANCE,
                                 atol=TRUTH_TOLERANCE)
        self.grads, self.plus, self.minus, self.off = [], [], [], None
        self.evidence = None

    @property
    def batches(self) -> int:
        return len(self.grads)

    def _call(self, b, offset=None):
        model = self.model
        if offset is not None:
            model.offset.copy_(offset)
        try:
            return self.front.batch(self.fn, model, self.mixture, self.batch_size, self.dtype,
                                    batch_seed(self.seed, b), self.takes_labels)
        finally:
            model.offset.zero_()

    def reach(self):
        J = len(self.model.direction_names)
        self.off = torch.stack([self._call(-1 - b, torch.ones(J, dtype=torch.float64))
                                for b in range(REACH_BATCHES)])

    def extend(self, target: int, rtol: float, tests: int):
        model = self.model
        S, J = model.n_smooth, len(model.direction_names)
        for b in range(len(self.grads), target):
            self.grads.append(self._call(b))
            if b < CURVATURE_BATCHES:  # the same draws with the model moved along each direction
                step = torch.zeros(S, J, dtype=torch.float64)
                step[range(S), range(S)] = DELTA
                self.plus.append(torch.stack([self._call(b, step[j])[j] for j in range(S)]))
                self.minus.append(torch.stack([self._call(b, -step[j])[j] for j in range(S)]))
        H, H_se, applies = curvature(torch.stack(self.plus), torch.stack(self.minus), DELTA)
        G = torch.stack(self.grads)
        z_bar = bonferroni_z(tests, G.shape[0])
        stat = summarize(G[:, :S], H, rtol, z_bar)
        names = model.direction_names[:S]
        deciding = [names.index(n) for n in model.decisive if bool(applies[names.index(n)])]
        if not deciding:  # no deciding direction reaches the loss: the smooth ones that do decide
            deciding = [j for j in range(S) if bool(applies[j])]
        resolved = G.shape[0] >= MIN_RESOLVED and bool(deciding) and all(
            float(stat.resolution[j]) <= self.resolution and float(H_se[j]) <= 0.5 * float(H[j].abs())
            for j in deciding)
        self.evidence = CaseEvidence(self.label, model, G, self.off, stat, names, H_se, deciding, resolved,
                                     self.batch_size, z_bar)

    def next_target(self, resolution: float, max_batches: int) -> int:
        """The batches predicted to reach ``resolution`` (the standard error falls as 1 / sqrt(batches)),
        with a margin of 10 %, at least ``GROWTH[0]`` and at most ``GROWTH[1]`` times the present, and at
        least ``MIN_RESOLVED``."""
        n, now = self.batches, self.evidence.resolution
        need = n * (now / resolution) ** 2 * 1.1 if math.isfinite(now) else n * GROWTH[1]
        need = max(need, MIN_RESOLVED)
        return int(min(max_batches, max(math.ceil(n * GROWTH[0]), min(math.ceil(need), math.ceil(n * GROWTH[1])))))


def _shared_directions(runs) -> list:
    """The deciding directions that more than one case tests (combined over cases)."""
    names = [n for run in runs for n in run.model.decisive]
    return [n for n in dict.fromkeys(names) if names.count(n) > 1]


def _combined(runs, shared, rtol, z_bar) -> list:
    out = []
    for name in shared:
        moves, resolutions = [], []
        for run in runs:
            ev = run.evidence
            if name in ev.names and ev.names.index(name) in ev.deciding:
                j = ev.names.index(name)
                moves.append(float(ev.stat.mean[j] / ev.stat.H[j]))
                resolutions.append(float(ev.stat.resolution[j]))
        if len(moves) > 1:
            out.append(combine(name, moves, resolutions, rtol, z_bar))
    return out


@_checks.register("stationary_as_written", batteries=("as_written",), order=30)
def stationary_as_written(evidence: Evidence) -> CheckResult:
    """The exact u* is a stationary point of the loss as written, its own sampler included."""
    per_case, insufficient, tails, batches = {}, [], {}, {}
    for case in evidence.cases:
        st = case.stat
        batches[case.label] = st.batches
        if not case.failed and not case.resolved:
            insufficient.append(case.label)
            tails[case.label] = heavy_tail(case.G[:, : len(case.names)])
        per_case[case.label] = {
            **{f"z_{n}": float(v) for n, v in zip(case.names, st.z)},
            **{f"mean_{n}": float(v) for n, v in zip(case.names, st.mean)},
            **{f"se_{n}": float(v) for n, v in zip(case.names, st.se)},
            **{f"curvature_{n}": float(v) for n, v in zip(case.names, st.H)},
            **{f"move_{n}": float(v) for n, v in zip(case.names, st.move)},
            "batches": st.batches, "batch_size": case.batch_size, "bar": case.z_bar,
            "deciding": [case.names[j] for j in case.deciding], "resolution": case.resolution,
            "detectable_move": case.move}
    combined = {c.name: {"z": c.z, "move": c.mean, "se": c.se, "detectable_move": c.move, "cases": c.cases,
                         "bar": evidence.combined_bar} for c in evidence.combined}
    value = max([c.z_max for c in evidence.cases] + [c.z for c in evidence.combined])
    failed = any(c.failed for c in evidence.cases) or any(c.z > evidence.combined_bar for c in evidence.combined)
    move = max(c.move for c in evidence.cases)
    rule = (f"every |z| <= its bar (5 sigma for the family, Bonferroni over {evidence.tests} tests: directions x cases "
            f"and each shared direction over the cases, x rounds; Student's t at the batches used, "
            f"{min(c.z_bar for c in evidence.cases):.2f} at the most); a case is decided after {MIN_RESOLVED} batches "
            f"or more when each tamed direction's se is at most {evidence.resolution:g} of its curvature (at most "
            f"{evidence.max_batches} batches); stderr floored at {evidence.rtol:g} of the curvature")
    details = {"batches": batches, "detectable_move": move, "power": POWER, "per_case": per_case,
               "combined": combined}
    if insufficient and not failed:  # a failed run stops at the first failure: the rest is not "undecided"
        details["insufficient"] = insufficient
        details["tail"] = tails
    if failed:
        worst = max(evidence.cases, key=lambda c: c.z_max / c.z_bar)
        shared = max(evidence.combined, key=lambda c: c.z, default=None)
        if shared is not None and shared.z / evidence.combined_bar > worst.z_max / worst.z_bar:
            where = f"{shared.z:.3g} standard errors from 0 in the move shared by the cases along {shared.name}"
        else:
            where = f"{worst.z_max:.3g} standard errors from 0 on {worst.label} (bar {worst.z_bar:.3g})"
        evidence.notes.insert(0, f"the exact average velocity is not a stationary point of this loss: its population "
                                 f"derivative is {where}; the loss trains something else")
    elif insufficient:
        evidence.notes.insert(0, _undecided_note(evidence, insufficient, tails))
    else:
        shared = max((c.move for c in evidence.combined), default=None)
        also = "" if shared is None else f", and a move of {100 * shared:.2g} % shared by every case"
        evidence.notes.insert(0, f"passed: a loss whose minimiser lies {100 * move:.2g} % of a tamed direction away "
                                 f"from u* on any one case{also}, would have failed with probability {POWER:g}")
    status = "fail" if failed else "insufficient" if insufficient else "pass"
    return CheckResult("stationary_as_written", status == "pass", value, rule, details=details, status=status)


def _undecided_note(evidence: Evidence, insufficient: list, tails: dict) -> str:
    """Which cases are undecided, why, and the budget that would decide them (the standard error
    falls as 1 / sqrt(batches))."""
    parts = []
    for case in evidence.cases:
        if case.label not in insufficient:
            continue
        need = max(MIN_RESOLVED, math.ceil(case.stat.batches * (case.resolution / evidence.resolution) ** 2)) \
            if math.isfinite(case.resolution) else None
        heavy = tails[case.label]
        tail = "" if heavy <= HEAVY_TAIL else f"; heavy-tailed batches (the farthest {heavy:.0f} robust sd out)"
        budget = ("no direction of the loss's is resolved" if need is None else
                  f"about {need} batches of {case.batch_size} would decide it")
        parts.append(f"{case.label} (se {100 * case.resolution:.2g} % of the curvature after {case.stat.batches} "
                     f"batches; {budget}{tail})")
    return ("undecided: the evidence on " + ", ".join(parts) + f" is short of the resolution asked "
            f"({evidence.resolution:g}); raise --max-batches or the batch size")


# the sampler's checks, after stationarity (trains_off_diagonal, shared with the per-sample battery, is battery's)
_checks.register("times_in_range", _sampler.times_in_range, batteries=("as_written",), order=35)
_checks.register("one_step_trained", _sampler.one_step_trained, batteries=("as_written",), order=45)


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
    if batch_size is not None:
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
    names = [c for c in cases if isinstance(c, str)]
    if len(set(names)) != len(names):
        raise ValueError(f"cases names {', '.join(sorted({c for c in names if names.count(c) > 1}))} more than once")
    for case in cases:
        mixture = get_case(case) if isinstance(case, str) else case
        _fits_in_memory(batch_size or (IMAGE_BATCH_SIZE if getattr(mixture, "shape", None) else BATCH_SIZE), mixture)


def _fits_in_memory(batch_size: int, mixture) -> None:
    """Refuse, before any work, a batch whose exact fields alone would not fit in the memory available:
    per row the stacked fields and their d first derivatives in float64, about four copies at a time."""
    d = mixture.d
    need = batch_size * 8 * (3 * d + 2) * (d + 3) * 4
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(f"batch_size {batch_size} on a case of d = {d} needs about {need / 2**30:.3g} GiB for the "
                         f"exact model's fields alone; {available / 2**30:.3g} GiB are available: lower --batch-size")


def _available_memory() -> int | None:
    """Bytes of memory available to this process (Linux: MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
