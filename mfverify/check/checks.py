"""Checks as objects, found by name: what both batteries loop over.

A check is a name, the batteries it belongs to (``"per_sample"``, ``"as_written"``),
whether its verdict counts, one line on what it asks, and ``run(context) ->
CheckResult | None`` (``None``: it does not apply to this loss; ``context.notes`` may say
why). The per-sample battery's context is ``battery.PerSample`` (the loss, its random
batches, the cases...), the as-written battery's ``as_written.Evidence`` (each case's
batch derivatives at ``u*`` and off it, the calls, the sampler's summary). Each battery
runs its checks by ``order`` (the built-ins have theirs; an outside check's default, 100, puts it
after them), then in registration order. A check that belongs to both batteries tells their
contexts apart (``trains_off_diagonal`` does).

Outside code adds one as it adds an objective::

    from mfverify.check import checks

    @checks.register("my_check", batteries=("as_written",))
    def my_check(evidence):
        ...
        return CheckResult("my_check", passed, value, "the rule")

or with an entry point in the group ``mfverify.checks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mfverify.registry import Registry

__all__ = ["Check", "registry", "register", "unregister", "get", "names", "for_battery", "BATTERIES"]

BATTERIES = ("per_sample", "as_written")


@dataclass(frozen=True)
class Check:
    """``run(context) -> CheckResult | None`` with what the batteries need to know of it."""

    name: str
    run: Callable
    batteries: tuple = BATTERIES
    counts: bool = True
    asks: str = ""
    order: float = 100.0  # the built-in checks' place in a report; an outside check comes after them

    def __call__(self, context):
        return self.run(context)


def _as_check(obj, name: str, batteries=BATTERIES, counts: bool = True, asks: str | None = None,
              order: float = 100.0) -> Check:
    if isinstance(obj, Check):
        return obj
    if not callable(obj):
        raise TypeError(f"a check is a function run(context) -> CheckResult | None, got {type(obj).__name__}")
    batteries = (batteries,) if isinstance(batteries, str) else tuple(batteries)
    unknown = [b for b in batteries if b not in BATTERIES]
    if unknown or not batteries:
        raise ValueError(f"batteries must name some of {', '.join(BATTERIES)}, got {batteries!r}")
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    return Check(name, obj, batteries, counts, asks if asks is not None else (doc[0] if doc else ""), float(order))


registry = Registry("check", "mfverify.checks", wrap=_as_check)
register, unregister, get, names = registry.register, registry.unregister, registry.get, registry.names


def for_battery(battery: str) -> list[Check]:
    """The registered checks of ``battery``, by ``order`` (the built-ins' places), then in registration order."""
    if battery not in BATTERIES:
        raise ValueError(f"battery must be one of {', '.join(BATTERIES)}, got {battery!r}")
    found = [c for c in (registry.get(n) for n in registry.names()) if battery in c.batteries]
    return sorted(found, key=lambda c: c.order)  # sorted() is stable: registration order within an order
