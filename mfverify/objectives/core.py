"""The ``Objective``: a per-sample loss and what the rest of the code needs to know of it.

An objective is called as ``loss = objective(model, x0, x1, r, t, **options)`` with
``x0, x1 (n, d)``, ``r, t (n,)`` and returns the per-sample loss (n,);
``model(x, r, t) -> u`` is any callable (an ``nn.Module`` or a function).

Notation (MATH.md §4): ``x_t = (1-t) x0 + t x1``, ``v_c = x1 - x0``,
``U = u_theta(x_t, r, t)``, ``D[a] = J_x u_theta . a + d_t u_theta`` at
``(x_t, r, t)`` (the tangent ``(a, 0, 1)`` of ``mfverify.jvp``), ``sg`` = detach,
``|.|^2`` summed over coordinates.

Each objective is an ``Objective``: the loss together with what the rest of the
code needs to know about it (trained at ``r = 0`` only, accepts adaptive
weighting, quadratic in ``v_c``, ...). Nothing outside this file asks for an
objective by its name; it asks the objective. The seven of MATH.md §4 are in
``builtin``; relatives, oracles and ablations in their own modules here.

Options of the built-ins (keywords, defaults in ``Objective.options``): ``jvp`` the
back-end (``mfverify.jvp.BACKENDS`` or ``"auto"``); ``p, c`` adaptive weighting
``loss / sg(loss + c)^p`` (``p = 0``: none); for ``scm`` also ``tangent_norm_c``
(tangent normalisation ``g / (|g| + c)``, default off), ``tangent_warmup`` (factor
on the ``t D`` term of ``df/dt``, default 1) and ``warmup_steps`` (a schedule:
``tangent_warmup`` rises linearly from 0 to 1 over that many training steps).

Outside objectives: ``@register("name", quadratic_in_v_c=True, ...)`` on a
per-sample loss ``loss(model, x0, x1, r, t, **options) -> (n,)``, a
``"package.module:attr"`` string, or an entry point in the group
``mfverify.objectives``. ``get(callable)`` wraps a bare function with the
conservative properties (not quadratic, no weighting, options from its
signature).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch

from mfverify import path
from mfverify.jvp import BACKENDS, DEFAULT_BACKEND
from mfverify.registry import Registry

__all__ = ["Objective", "register", "get", "names", "registry", "check_batch"]

_POSITIONAL = ("model", "x0", "x1", "r", "t")


@dataclass(frozen=True)
class Objective:
    """A per-sample loss and its properties.

    - ``loss(model, x0, x1, r, t, **options) -> (n,)``: the loss itself, before
      adaptive weighting (which this class applies when ``weighting`` is set).
    - ``trained_at_r0``: only ``u(x, 0, t)`` is trained (``scm``): the study
      samples it at NFE 1 and measures its field error at ``r = 0``; the
      ``r = t`` reduction to flow matching does not apply, the sCM relation does.
    - ``weighting``: accepts ``p, c`` and is then ``loss / sg(loss + c)^p``.
    - ``quadratic_in_v_c``: the derivative of the loss along ``u* + eps h`` is a
      polynomial of degree <= 2 in ``v_c`` (for given options: a bool or a
      predicate on the options), so sigma points give population averages
      exactly; verified at run time by ``mfverify.theory.identities``.
    - ``surrogate``: the value means nothing, only its gradient (``scm``).
    - ``heads``: outputs of the network the loss trains (2: ``(u, v)``).
    - ``needs_truth``: the loss takes the exact mixture as ``mixture=`` (oracles).
    - ``needs_labels``: the loss needs a class-conditional model with its labels bound
      (``models.Conditioned``): a bool or a predicate on the options (``mf`` with guidance).
    - ``guidance(options) -> (w, interval)``: the guided field a conditional model
      trained with these options learns, ``v_w`` with ``w`` acting on the times of
      ``interval`` (``truth.guided_average_velocity``); ``None``: the class's own field
      (``w = 1``), what any objective learns when trained conditionally.
    - ``options``: option names and defaults; ``None`` as a default means "off"
      and admits a float. ``check_options(options)`` may reject values.
    - ``schedule(step, steps, options) -> options``: options per training step.
    """

    name: str
    loss: Callable[..., torch.Tensor]
    trained_at_r0: bool = False
    weighting: bool = False
    quadratic_in_v_c: bool | Callable[[Mapping[str, Any]], bool] = False
    surrogate: bool = False
    heads: int = 1
    needs_truth: bool = False
    needs_labels: bool | Callable[[Mapping[str, Any]], bool] = False
    guidance: Callable[[Mapping[str, Any]], tuple] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    accepts_any_option: bool = False
    check_options: Callable[[Mapping[str, Any]], None] | None = None
    schedule: Callable[[int, int, Mapping[str, Any]], Mapping[str, Any]] | None = None
    doc: str = ""

    def __post_init__(self):
        defaults = dict(self.options)
        if self.weighting:
            defaults = {"p": 0.0, "c": 1e-3, **defaults}
        object.__setattr__(self, "options", MappingProxyType(defaults))
        if not self.doc:
            object.__setattr__(self, "doc", inspect.getdoc(self.loss) or "")
        object.__setattr__(self, "__doc__", self.doc)  # objective.__doc__ is its formula

    # ------------------------------------------------------------ options

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``options``; unknown keys and bad values are errors."""
        options = dict(options or {})
        truth = {"mixture": options.pop("mixture")} if self.needs_truth and "mixture" in options else {}
        unknown = sorted(set(options) - set(self.options))
        if unknown and not self.accepts_any_option:
            if {"p", "c"} & set(unknown) and not self.weighting:
                raise TypeError(f"objective {self.name!r} takes no adaptive weighting (options p, c): got {unknown}")
            known = ", ".join(self.options) or "none"
            raise TypeError(f"objective {self.name!r} got unexpected options {unknown}; its options: {known}")
        out = dict(self.options)
        for key, value in options.items():
            out[key] = _check_option_type(self.name, key, value, self.options.get(key, value))
        if self.weighting:
            p, c = out["p"], out["c"]
            if not (math.isfinite(p) and p >= 0) or not (math.isfinite(c) and c > 0):
                raise ValueError(f"objective {self.name!r}: weighting needs finite p >= 0 and c > 0, got p={p!r}, c={c!r}")
        if self.check_options is not None:
            self.check_options(out)
        return {**out, **truth}

    def is_quadratic(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether sigma points are exact for this loss with these options (as declared)."""
        options = self.resolve_options(options)
        if self.weighting and options["p"] != 0:
            return False
        q = self.quadratic_in_v_c
        return bool(q(options) if callable(q) else q)

    def labels_needed(self, options: Mapping[str, Any] | None = None) -> bool:
        """Whether the loss with these options needs a class-conditional model (as declared)."""
        q = self.needs_labels
        return bool(q(self.resolve_options(options)) if callable(q) else q)

    def guided_target(self, options: Mapping[str, Any] | None = None) -> tuple[float, tuple | None]:
        """``(w, interval)`` of the field a conditional model trained with these options learns."""
        return (1.0, None) if self.guidance is None else tuple(self.guidance(self.resolve_options(options)))

    def options_at(self, step: int, steps: int, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """The options of training step ``step`` (of ``steps``): the schedule's, if any."""
        return options if self.schedule is None else {**options, **self.schedule(step, steps, options)}

    # ------------------------------------------------------------ the loss

    def __call__(self, model, x0, x1, r, t, **options) -> torch.Tensor:
        """Per-sample loss (n,): inputs checked, the model's output shape checked, weighting applied."""
        return self._loss(model, x0, x1, r, t, options, check_values=True)

    def per_sample(self, model, x0, x1, r, t, **options) -> torch.Tensor:
        """``__call__`` for batches whose values are known good (``mfverify.train`` checks
        its batches on the CPU when it draws them): types and shapes are checked, the
        values are not, so a step reads nothing back from a GPU."""
        return self._loss(model, x0, x1, r, t, options, check_values=False)

    def _loss(self, model, x0, x1, r, t, options, check_values: bool) -> torch.Tensor:
        options = self.resolve_options(options)
        x0, x1, r, t = check_batch(x0, x1, r, t, values=check_values)
        p = options.pop("p", 0.0) if self.weighting else 0.0
        c = options.pop("c", None) if self.weighting else None
        loss = self.loss(_CheckedModel(model), x0, x1, r, t, **options)
        if not isinstance(loss, torch.Tensor) or loss.shape != (x0.shape[0],):
            got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"objective {self.name!r} must return the per-sample loss, a torch tensor of shape "
                f"({x0.shape[0]},), got {got}"
            )
        if p:
            loss = loss / (loss.detach() + c) ** p
        return loss


def _check_option_type(objective, key, value, default):
    where = f"objective {objective!r}: option {key!r}"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int) and not isinstance(default, bool):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float) or default is None:
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        value = float(value) if ok and value is not None else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = "a float (or none)" if default is None else type(default).__name__
        raise TypeError(f"{where} must be {kind} like its default {default!r}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return value


# ------------------------------------------------------------ the registry


def _as_objective(obj, name: str, **properties) -> Objective:
    """What ``register`` stores: an ``Objective`` (its name set) or a wrapped callable."""
    if isinstance(obj, Objective):
        return replace(obj, name=name, **properties) if (properties or obj.name != name) else obj
    if not callable(obj):
        raise TypeError(f"an objective must be callable as loss(model, x0, x1, r, t), got {type(obj).__name__}")
    params = _signature(obj)
    if params is not None:
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 5 and not any(p.kind == p.VAR_POSITIONAL for p in params):
            raise TypeError(
                f"a per-sample loss takes (model, x0, x1, r, t), {getattr(obj, '__name__', obj)!r} takes "
                f"({', '.join(p.name for p in positional)})"
            )
        options = {p.name: p.default for p in params[5:] if p.default is not p.empty}
        options.update({p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.default is not p.empty})
        any_option = any(p.kind == p.VAR_KEYWORD for p in params)
    else:
        options, any_option = {}, True
    return Objective(name=name, loss=obj, options={**options, **properties.pop("options", {})},
                     accepts_any_option=any_option, **properties)


def _signature(obj):
    try:
        return list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None


registry = Registry("objective", "mfverify.objectives", wrap=_as_objective)


def register(name: str, loss=None, **properties):
    """Register a per-sample loss (a decorator without ``loss``); ``properties`` as ``Objective``'s."""
    return registry.register(name, loss, **properties)


def names() -> list[str]:
    """The objectives' names: MATH.md §4's order, then registered ones."""
    return registry.names()


def get(objective) -> Objective:
    """The ``Objective`` for a name, a ``"module:attr"`` string, an ``Objective`` or a callable loss."""
    if isinstance(objective, Objective):
        return objective
    if callable(objective) and not isinstance(objective, str):
        return _as_objective(objective, getattr(objective, "__qualname__", None) or repr(objective))
    return registry.get(objective)


# ------------------------------------------------------------ input checks


def check_batch(x0, x1, r, t, values: bool = True):
    """``(x0, x1, r, t)`` checked: float tensors, ``x (n, d)``, ``r, t (n,)``, and (``values``)
    finite with ``0 <= r <= t <= 1`` (one host read when all is well)."""
    for name, a in (("x0", x0), ("x1", x1), ("r", r), ("t", t)):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(a).__name__}")
        if not a.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {a.dtype}")
    if x0.ndim != 2 or x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must both have shape (n, d), got {tuple(x0.shape)} and {tuple(x1.shape)}")
    n = x0.shape[0]
    if r.shape != (n,) or t.shape != (n,):
        raise ValueError(f"r and t must have shape ({n},), got {tuple(r.shape)} and {tuple(t.shape)}")
    if values:
        check_batch_values(x0, x1, r, t)
    return x0, x1, r, t


def check_batch_values(x0, x1, r, t) -> None:
    """Finite, ``0 <= r <= t <= 1``: one combined test read back, the details only on failure."""
    bad = torch.stack([~torch.isfinite(x0).all(), ~torch.isfinite(x1).all(), ~torch.isfinite(r).all(),
                       ~torch.isfinite(t).all(), ((t < 0) | (t > 1) | (r < 0) | (r > 1) | (r > t)).any()])
    if not bad.any():
        return
    for name, a in (("x0", x0), ("x1", x1), ("r", r), ("t", t)):
        if not torch.isfinite(a).all():
            raise ValueError(f"{name} must be finite")
    if ((t < 0) | (t > 1)).any() or ((r < 0) | (r > 1)).any():
        raise ValueError("r and t must lie in [0, 1]")
    if (r > t).any():
        i = int((r > t).nonzero()[0])
        raise ValueError(f"r must be <= t, found r={r[i].item()!r} > t={t[i].item()!r} at index {i}")


class _CheckedModel:
    """The model, with its output shape checked at every call (and its ``jvp``, if any)."""

    def __init__(self, model):
        if isinstance(model, _CheckedModel):
            model = model.model
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, r, t), got {type(model).__name__}")
        self.model = model
        if hasattr(model, "jvp"):
            self.jvp = self._jvp
        if hasattr(model, "velocity"):
            self.velocity = self._velocity
        if hasattr(model, "unconditional"):  # a conditioned model (models.Conditioned)
            self.labels = model.labels
            self.unconditional = lambda: _CheckedModel(model.unconditional())

    @staticmethod
    def _check(u, x):
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"model(x, r, t) must return a tensor of shape {tuple(x.shape)} like x, got {got}")
        return u

    def __call__(self, x, r, t):
        return self._check(self.model(x, r, t), x)

    def _velocity(self, x, t):
        v = self.model.velocity(x, t)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"model.velocity(x, t) must return a tensor of shape {tuple(x.shape)} like x, got {got}")
        return v

    def _jvp(self, x, r, t, dx, dr, dt, tangent_grad=True):
        u, du = self.model.jvp(x, r, t, dx, dr, dt, tangent_grad=tangent_grad)
        return self._check(u, x), self._check(du, x)


# ------------------------------------------------- building blocks of per-sample losses


def _sq(a: torch.Tensor) -> torch.Tensor:
    return a.square().sum(-1)


def _col(a: torch.Tensor) -> torch.Tensor:
    return a[:, None]


def _check_jvp(options):
    backend = options["jvp"]
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"jvp must be 'auto' or one of {BACKENDS}, got {backend!r}")


def _on_path(inner):
    """``loss(model, x0, x1, r, t, jvp, **options)`` from ``inner(model, x_t, v_c, r, t, backend, **options)``."""

    def loss(model, x0, x1, r, t, jvp=DEFAULT_BACKEND, **options):
        return inner(model, path.x_t(x0, x1, _col(t)), path.v_c(x0, x1), r, t, jvp, **options)

    loss.__name__, loss.__doc__ = inner.__name__, inner.__doc__
    return loss
