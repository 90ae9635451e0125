"""The as-written battery: a repository's own batch loss, with its own sampler and batch mean.

``mfverify check --as-written MODULE:FN`` (``run_as_written(fn, ...)``) takes
``fn(model, x0) -> loss`` (``fn(model, x0, labels)`` on labelled cases): a scalar, or a
tuple/list whose first item is, or a dict whose ``"loss"`` is. ``model`` is an
``ExactNetwork`` (the exact average velocity plus perturbations, in the convention
``inputs``), ``x0`` a batch of the case's data ((B, C, H, W) on an image case such as ``digits``, (B, d)
otherwise); the loss draws everything else
itself (times, noise, the share of ``r = t``, label dropout) from torch's global
generator, which the battery seeds per batch. The checks:

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
- ``times_in_range``: no call of the model at times outside ``[0, 1]`` or with ``r > t``
  (they were answered by a stand-in; the sentence names the fraction).
- ``trains_off_diagonal``: the loss's gradient reaches a cell of the triangle off the
  diagonal ``r = t`` (else it trains flow matching only).
- ``one_step_trained``: its gradient reaches the one-step corner, ``r < 1/4`` and
  ``t > 3/4`` (where the map that one-step sampling uses lives).

Where the gradient reaches (``sampler``): the cell directions of ``ExactNetwork``, read
at the exact model and with the model off ``u*`` along every direction (a loss whose
targets carry no noise has a zero gradient at ``u*`` where it trains). A cell is
reached when any batch gives it a non-zero derivative: a cell no row lands in gets
exactly 0. ``sampler_table`` writes it as rows, ``draw_sampler`` as a heatmap.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time

import torch

from mfverify.cases import get_case
from mfverify.check.battery import STATIONARY_RTOL, CheckResult, LossError, Report, bonferroni_z
from mfverify.check.exact_network import CallLog, ExactNetwork

__all__ = ["run_as_written", "DEFAULT_CASES", "ONE_STEP", "sampler_table", "draw_sampler"]

# a Gaussian, a 1-D bimodal mixture, ring8, and one whose velocities exceed 4 (clipped targets show)
DEFAULT_CASES = ("gauss2d_aniso", "bimodal1d", "ring8", "wide2d")
ONE_STEP = (0.25, 0.75)  # the one-step corner: r < 1/4, t > 3/4
RESOLUTION = 0.01  # stop when the standard error is 1 % of the derivative's size off u*
REACH_BATCHES = 8  # batches with the model off u*, per case
GROWTH = 2  # each round of batches is this many times the last
HEAVY_TAIL = 10.0  # robust standard deviations: a batch this far out is a heavy tail, not Gaussian noise


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
    if framework not in ("torch", "jax"):
        raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")
    if framework == "jax":
        _require_x64(dtype)
    cases = tuple(DEFAULT_CASES if cases is None else ([cases] if isinstance(cases, str) else cases))
    _validate(fn, cases, seed, batch_size, min_batches, max_batches, resolution, inputs, dtype, rtol)
    rtol = STATIONARY_RTOL if rtol is None else rtol
    mixtures = [get_case(c) if isinstance(c, str) else c for c in cases]
    takes_labels = _arity(fn, mixtures, framework)
    rounds = 1 + max(0, math.ceil(math.log(max_batches / min_batches, GROWTH) - 1e-9))
    make = ExactNetwork if framework == "torch" else _JaxModel
    step = _batch if framework == "torch" else functools.partial(_batch_jax, jit=jit)
    first = make(mixtures[0], inputs=inputs, seed=seed)
    m = len(cases) * first.n_smooth * rounds
    z_bar = bonferroni_z(m)
    log, per_case, stats, insufficient, batches_used, tails = CallLog(), {}, [], [], {}, {}
    reached = torch.zeros(len(first.direction_names), dtype=torch.bool)
    reach_sum = torch.zeros(len(first.direction_names), dtype=torch.float64)
    for ci, (case, mixture) in enumerate(zip(cases, mixtures)):
        label = case if isinstance(case, str) else repr(mixture)
        model = make(mixture, inputs=inputs, seed=seed + 17 * ci)
        call = lambda b: step(fn, model, mixture, batch_size, dtype, seed + 7919 * ci + b, takes_labels)  # noqa: E731
        _progress(progress, f"as written: {label}, the model off u* ({REACH_BATCHES} batches)")
        model.offset.fill_(1.0)
        off = torch.stack([call(100_000 + b) for b in range(REACH_BATCHES)])
        model.offset.zero_()
        size = float(off.square().mean(0).sqrt().max())
        grads, target = [], min_batches
        while True:
            _progress(progress, f"as written: {label}, batches {len(grads) + 1}..{target} at u*")
            grads += [call(b) for b in range(len(grads), target)]
            G = torch.stack(grads)
            mean, se = G.mean(0), G.std(0) / math.sqrt(len(grads))
            S = model.n_smooth
            z = mean[:S].abs() / (se[:S].square() + (rtol * size) ** 2).sqrt().clamp_min(1e-300)
            res = float(se[:S].max()) / max(size, 1e-300)
            if float(z.max()) > z_bar or res <= resolution or target >= max_batches:
                break
            target = min(GROWTH * target, max_batches)
        batches_used[label] = len(grads)
        if float(z.max()) <= z_bar and res > resolution:
            insufficient.append(label)
            tails[label] = _tail(G[:, :S])
        per_case[label] = {**{f"z_{n}": float(v) for n, v in zip(model.direction_names, z)},
                           **{f"mean_{n}": float(v) for n, v in zip(model.direction_names, mean[:S])},
                           **{f"se_{n}": float(v) for n, v in zip(model.direction_names, se[:S])},
                           "batches": len(grads), "resolution": res, "size": size}
        stats.append(float(z.max()))
        reached |= (off != 0).any(0) | (G != 0).any(0)
        cells = off.abs().mean(0)
        cells[: model.n_smooth] = 0.0  # the share is among the cells and the diagonal
        reach_sum += cells / max(float(cells.sum()), 1e-300)
        log.extend(model.calls)
    value = max(stats)
    failed_z = value > z_bar
    rule = (f"max |z| <= {z_bar:.2f} (5 sigma, Bonferroni over {m} tests: directions x cases x rounds of batches); "
            f"each case resolved to se <= {resolution:g} of the derivative's size off u* (at most {max_batches} "
            f"batches of {batch_size}); stderr floored at {rtol:g} of that size")
    details = {"batches": batches_used, "per_case": per_case}
    if insufficient:
        details["insufficient"] = insufficient
        details["tail"] = tails
    checks = {"stationary_as_written": CheckResult("stationary_as_written", not failed_z and not insufficient,
                                                   value, rule, details=details)}
    sampler = _sampler(first, log, reached, reach_sum / len(cases))
    checks.update(_sampler_checks(sampler))
    notes = [c.details["sentence"] for c in checks.values() if not c.passed and "sentence" in c.details]
    if failed_z:
        worst = max(per_case, key=lambda k: max(v for n, v in per_case[k].items() if n.startswith("z_")))
        notes.insert(0, f"the exact average velocity is not a stationary point of this loss: its population "
                        f"derivative is {value:.3g} standard errors from 0 (worst on {worst}); the loss trains "
                        "something else")
    elif insufficient:
        heavy = {k: v for k, v in tails.items() if v > HEAVY_TAIL}
        why = "" if not heavy else (
            "; the batches' derivatives are heavy-tailed on " + ", ".join(f"{k} (the farthest batch {v:.0f} robust "
                                                                         "standard deviations from the median)"
                                                                         for k, v in heavy.items())
            + ": a few rows dominate the mean (where the exact flow map stretches, near the boundaries between "
            "the mixture's modes), so the standard error falls slowly")
        notes.insert(0, f"insufficient evidence on {', '.join(insufficient)}: after {max_batches} batches the "
                        f"standard error is above {resolution:g} of the derivative's size{why}; raise max_batches "
                        "(--max-batches) or the batch size")
    report = Report(name or getattr(fn, "__qualname__", repr(fn)), checks, notes,
                    seconds=time.perf_counter() - start)
    report.sampler = sampler
    return report


# ------------------------------------------------------------------ one batch


def _batch(fn, model, mixture, n, dtype, seed, takes_labels) -> torch.Tensor:
    """``d loss / d eps`` (J,) on one batch of the loss's own randomness (seeded). The data and
    the loss draw from generators of different seeds: two generators of one seed give the
    same stream, and a loss's times would then be a function of its data."""
    g = torch.Generator().manual_seed(2 * seed + 1)
    shape = (n,) + tuple(getattr(mixture, "shape", None) or (mixture.d,))  # an image case: (B, C, H, W)
    if takes_labels:
        x0, labels = mixture.sample_labelled(n, generator=g)
        args = (x0.to(dtype).reshape(shape), labels)
    else:
        args = (mixture.sample(n, generator=g).to(dtype).reshape(shape),)
    torch.manual_seed(2 * seed)
    model.eps.grad = None
    try:
        out = fn(model, *args)
    except LossError:
        raise
    except Exception as err:  # the user's code: a failure is reported, never a traceback
        raise LossError(f"the loss raised {type(err).__name__}: {err}") from err
    loss = _scalar(out)
    if not loss.requires_grad:
        raise LossError("the loss returned a tensor without a gradient: it is detached, computed outside autograd, "
                        "or never calls the model it is given")
    try:
        loss.backward()
    except Exception as err:
        raise LossError(f"backward through the loss failed: {type(err).__name__}: {err}") from err
    grad = model.eps.grad
    return torch.zeros_like(model.eps.detach()) if grad is None else grad.detach().clone()


class _JaxModel:
    """``mfverify.jax``'s exact model with the bookkeeping of an ``ExactNetwork`` (``offset``: the
    ``eps`` the batches are differentiated at) and the loss's gradient compiled once (``step``)."""

    def __init__(self, case, inputs, seed):
        from mfverify.check.jax_model import exact_model

        self.apply, self.params, self.calls = exact_model(case, inputs=inputs, seed=seed)
        self.n_smooth, self.direction_names = self.apply.n_smooth, self.apply.direction_names
        self.cells, self.grid = self.apply.cells, self.apply.grid
        self.offset = torch.zeros(len(self.direction_names), dtype=torch.float64)
        self.step = None  # jax.jit of the loss's value and gradient, or False once it cannot be traced


class _Untraceable(Exception):
    """The loss needs concrete values (``float(x)``, numpy on an array, ``if`` on a value): run eagerly."""


def _batch_jax(fn, model, mixture, n, dtype, seed, takes_labels, jit=True) -> torch.Tensor:
    """``jax.grad(fn)(params)["eps"]`` (J,) on one batch; the loss's randomness is ``key``. Compiled
    with ``jax.jit`` (once per exact model, as a training step is) unless ``jit`` is false or the
    loss cannot be traced; then it runs op by op."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    g = torch.Generator().manual_seed(2 * seed + 1)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    if takes_labels:
        x0, labels = mixture.sample_labelled(n, generator=g)
        data = (jnp.asarray(x0.numpy().astype(np_dtype)), jnp.asarray(labels.numpy()))
    else:
        data = (jnp.asarray(mixture.sample(n, generator=g).numpy().astype(np_dtype)),)
    key = jax.random.PRNGKey(2 * seed)
    params = {"eps": jnp.asarray(model.offset.numpy()).astype(model.params["eps"].dtype)}
    untraceable = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                   jax.errors.TracerIntegerConversionError)

    def scalar(p, data, key, traced):
        try:
            out = fn(model.apply, p, *data, key)
        except LossError:
            raise
        except untraceable as err:
            if traced:
                raise _Untraceable from err
            raise LossError(f"the loss raised {type(err).__name__}: {err}") from err
        except Exception as err:  # the user's code: a failure is reported, never a traceback
            raise LossError(f"the loss raised {type(err).__name__}: {err}") from err
        if isinstance(out, dict):
            out = out.get("loss", out)
        elif isinstance(out, (tuple, list)) and out:
            out = out[0]
        if not hasattr(out, "shape") or out.shape not in ((), (1,)):
            raise LossError(f"the loss returned {getattr(out, 'shape', type(out).__name__)}; expected a scalar "
                            "(the batch mean)")
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise LossError(f"the loss returned a {out.dtype} array; expected a floating-point scalar")
        return out.reshape(())

    if not jit:
        model.step = False
    if model.step is None:
        model.step = jax.jit(jax.value_and_grad(lambda p, data, key: scalar(p, data, key, True)))
    value = grad = None
    if model.step is not False:
        try:
            value, grad = model.step(params, data, key)
        except _Untraceable:
            model.step = False
    if model.step is False:
        value, grad = jax.value_and_grad(lambda p: scalar(p, data, key, False))(params)
    if not np.isfinite(float(value)):
        raise LossError("the loss returned a non-finite value at the exact model on the case's data")
    return torch.from_numpy(np.asarray(grad["eps"], dtype=np.float64).copy())


def _scalar(out) -> torch.Tensor:
    what = type(out).__name__
    if isinstance(out, dict):
        if "loss" not in out:
            raise LossError(f"the loss returned a dict without a 'loss' entry (keys {sorted(out)})")
        out = out["loss"]
    elif isinstance(out, (tuple, list)):
        if not out:
            raise LossError(f"the loss returned an empty {what}")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise LossError(f"the loss returned {type(out).__name__}; expected a scalar tensor (or a tuple/dict "
                        "holding one)")
    if out.numel() != 1:
        raise LossError(f"the loss returned a tensor of shape {tuple(out.shape)}; expected a scalar (the batch "
                        "mean; a per-sample loss goes through mfverify check LOSS)")
    if not out.dtype.is_floating_point:
        raise LossError(f"the loss returned a {out.dtype} tensor; expected a floating-point scalar")
    if not torch.isfinite(out.detach()).all():
        raise LossError("the loss returned a non-finite value at the exact model on the case's data")
    return out.reshape(())


# ------------------------------------------------------------------ what the sampler trains


def _sampler(model: ExactNetwork, log: CallLog, reached, reach) -> dict:
    calls = log.summary(model.grid)
    S, grid = model.n_smooth, model.grid
    lo, hi = ONE_STEP
    cells = []
    for k, (i, j) in enumerate(model.cells):
        cells.append({"r_lo": i / grid, "r_hi": (i + 1) / grid, "t_lo": j / grid, "t_hi": (j + 1) / grid,
                      "calls": calls["cells"].get((i, j), 0), "reached": bool(reached[S + k]),
                      "gradient_share": float(reach[S + k])})
    one_step = [c for c in cells if c["r_hi"] <= lo and c["t_lo"] >= hi]
    summary = {k: v for k, v in calls.items() if k != "cells"}
    return {**summary, "diagonal_reached": bool(reached[-1]),
            "off_diagonal_reached": any(c["reached"] for c in cells),
            "one_step_trained": any(c["reached"] for c in one_step),
            "one_step_corner": {"r_below": lo, "t_above": hi}, "grid": grid, "cells": cells}


def _sampler_checks(s: dict) -> dict:
    out = {}
    bad = s["fraction_outside_unit_interval"] + s["fraction_r_gt_t"]
    sentence = (f"{100 * s['fraction_outside_unit_interval']:.3g} % of the model's calls are at times outside "
                f"[0, 1] (from {s['min_time']:.3g} to {s['max_time']:.3g}) and {100 * s['fraction_r_gt_t']:.3g} % "
                "have r > t: the loss steps past the ends of time; the exact model answered them with a stand-in "
                "(times clamped into [0, 1], r lowered to t)") if bad else ""
    out["times_in_range"] = CheckResult(
        "times_in_range", bad == 0, bad, "every call at 0 <= r <= t <= 1",
        details={"fraction_outside_unit_interval": s["fraction_outside_unit_interval"],
                 "fraction_r_gt_t": s["fraction_r_gt_t"], **({"sentence": sentence} if bad else {})})
    share = sum(c["gradient_share"] for c in s["cells"])
    off = s["off_diagonal_reached"]
    out["trains_off_diagonal"] = CheckResult(
        "trains_off_diagonal", off, share, "the loss's gradient reaches some cell with r < t",
        details={"fraction_diagonal_calls": s["fraction_diagonal"],
                 **({} if off else {"sentence": "the loss's gradient never leaves the diagonal r = t: it trains "
                                                "the instantaneous velocity (flow matching) only, never the average "
                                                "velocity over an interval"})})
    one = s["one_step_trained"]
    lo, hi = ONE_STEP
    out["one_step_trained"] = CheckResult(
        "one_step_trained", one, float(one), f"the loss's gradient reaches r < {lo:g}, t > {hi:g}",
        details={} if one else {"sentence": f"the loss's gradient never reaches the one-step interval (r < {lo:g}, "
                                            f"t > {hi:g}): the map that one-step sampling u(x, 0, 1) uses is never "
                                            "trained"})
    return out


def sampler_table(sampler: dict) -> str:
    """The cells as CSV rows: ``r_lo, r_hi, t_lo, t_hi, calls, reached, gradient_share``; ``calls`` counts
    every call with ``(r, t)`` in the cell (those on the diagonal ``r = t`` too, which the ``diagonal``
    direction answers), ``gradient_share`` the cell's share of ``|gradient|`` off ``u*`` among the cells
    and the diagonal (averaged over the cases)."""
    cols = ("r_lo", "r_hi", "t_lo", "t_hi", "calls", "reached", "gradient_share")
    rows = [",".join(cols)] + [",".join(f"{c[k]:.6g}" if isinstance(c[k], float) else str(c[k]).lower()
                                        for k in cols) for c in sampler["cells"]]
    return "\n".join(rows) + "\n"


def draw_sampler(sampler: dict, path, title: str = "") -> None:
    """A heatmap of the triangle ``r <= t``: each cell's share of the gradient's reach (a cell
    the gradient never reaches is hatched), its calls written in it; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import io

    from mfverify.io import write_bytes

    grid = sampler["grid"]
    share = np.full((grid, grid), np.nan)
    fig, ax = plt.subplots(figsize=(3.4, 3.0), dpi=200)  # one column of a two-column paper
    for c in sampler["cells"]:
        i, j = round(c["r_lo"] * grid), round(c["t_lo"] * grid)
        if c["reached"]:
            share[j, i] = c["gradient_share"]
        else:
            ax.add_patch(plt.Rectangle((c["r_lo"], c["t_lo"]), 1 / grid, 1 / grid, fill=False, hatch="///",
                                       edgecolor="0.6", linewidth=0))
        ax.text(c["r_lo"] + 0.5 / grid, c["t_lo"] + 0.5 / grid, _short(c["calls"]), ha="center", va="center",
                fontsize=6)
    im = ax.imshow(share, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=0)
    lo, hi = ONE_STEP
    ax.add_patch(plt.Rectangle((0, hi), lo, 1 - hi, fill=False, edgecolor="red", linewidth=1))
    ax.plot([0, 1], [0, 1], color="k", linewidth=0.5)
    ax.set_xlabel("r", fontsize=7), ax.set_ylabel("t", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(f"{title}: where the gradient reaches" if title else "where the loss's gradient reaches the model",
                 fontsize=7)
    cb = fig.colorbar(im, ax=ax, fraction=0.046)
    cb.ax.tick_params(labelsize=6)
    cb.set_label("share of |gradient| off u* (hatched: never reached)", fontsize=6)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _short(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10_000 else str(n)


# ------------------------------------------------------------------ inputs


def _tail(G: torch.Tensor) -> float:
    """The farthest batch from the median in robust standard deviations (1.4826 MAD), the largest
    over directions: about 3 to 4 for Gaussian batch means at 512 batches."""
    med = G.median(0).values
    mad = 1.4826 * (G - med).abs().median(0).values
    return float(((G - med).abs().max(0).values / mad.clamp_min(1e-300)).max())


def _require_x64(dtype):
    from mfverify.check.jax_model import require_jax

    jax, _ = require_jax()
    if dtype == torch.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64 with framework 'jax' needs float64 arrays in JAX: set "
                         "jax.config.update(\"jax_enable_x64\", True) first, or pass dtype=torch.float32")


def _validate(fn, cases, seed, batch_size, min_batches, max_batches, resolution, inputs, dtype, rtol):
    from mfverify.check.battery import check_rtol
    from mfverify.check.exact_network import INPUTS

    if not callable(fn):
        raise TypeError(f"the loss must be callable, fn(model, x0) -> loss; got {type(fn).__name__}")
    for name, value in (("seed", seed), ("batch_size", batch_size), ("min_batches", min_batches),
                        ("max_batches", max_batches)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if name != "seed" and value < (2 if name == "min_batches" else 1):
            raise ValueError(f"{name} must be at least {2 if name == 'min_batches' else 1}, got {value}")
    if max_batches < min_batches:
        raise ValueError(f"max_batches ({max_batches}) must be at least min_batches ({min_batches})")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or not 0 < resolution < 1:
        raise ValueError(f"resolution must be a number in (0, 1), got {resolution!r}")
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    check_rtol(rtol)
    if not cases:
        raise ValueError("cases must name at least one case")
    for case in cases:
        if isinstance(case, str):
            get_case(case)


def _arity(fn, mixtures, framework: str = "torch") -> bool:
    """Whether ``fn`` takes the labels: ``fn(model, x0)`` or ``fn(model, x0, labels)`` (JAX:
    ``fn(apply, params, x0, key)`` or ``fn(apply, params, x0, labels, key)``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False

    def binds(*args):
        try:
            sig.bind(*args)
            return True
        except TypeError:
            return False

    if framework == "jax":
        plain, labelled_args = ("apply", "params", "x0", "key"), ("apply", "params", "x0", "labels", "key")
    else:
        plain, labelled_args = ("model", "x0"), ("model", "x0", "labels")
    two, three = binds(*plain), binds(*labelled_args)
    labelled = all(getattr(m, "labels", None) is not None for m in mixtures)
    if three and not two:
        if not labelled:
            raise ValueError(f"the loss takes ({', '.join(labelled_args)}), but not every case is labelled; give "
                             "labelled cases (e.g. ring8_labelled)")
        return True
    if two:
        return False
    raise TypeError(f"the loss must take ({', '.join(plain)}) or ({', '.join(labelled_args)}); its signature is "
                    f"{sig}")


def _progress(enabled, message):
    if enabled:
        print(f"  ... {message}", file=sys.stderr, flush=True)
