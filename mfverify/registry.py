"""Registries: objectives, networks, cases and studies found by name.

Each kind of thing has one ``Registry``. Outside code adds to it in three ways:

- ``@registry.register("name")`` on a definition (or ``registry.register("name", obj)``);
- a ``"package.module:attr"`` string wherever a name is accepted: the module is
  imported and ``attr`` looked up (and, for objectives, wrapped);
- an installed package's entry point in the registry's group
  (``[project.entry-points."mfverify.objectives"] my_loss = "my_pkg.losses:my_loss"``),
  loaded the first time a name is not found.

``get(name)`` of an unknown name raises ``ValueError`` listing the known names.
A worker process started with spawn knows only what it imports: ``modules()``
names the modules whose import registered something at run time, so that a
study can import them in its workers (``import_modules``) and resolve the same
names there.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Any, Callable, Iterable

__all__ = ["Registry", "resolve_string", "import_modules"]


def resolve_string(spec: str, what: str = "object") -> Any:
    """The attribute named by ``"package.module:attr"`` (``attr`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or an error raised by the module itself
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r}: {type(err).__name__}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def import_modules(names: Iterable[str]) -> None:
    """Import each module (a spawned worker's initialiser: it re-registers what they define)."""
    for name in names:
        if name not in sys.modules:
            importlib.import_module(name)


class Registry:
    """Name -> entry, in registration order.

    ``kind`` names the things in error messages ("objective"); ``group`` is the
    entry-point group; ``wrap(obj, name)`` turns what is registered (or what a
    ``module:attr`` string names) into the entry stored, and may reject it with
    ``TypeError``/``ValueError``.
    """

    def __init__(self, kind: str, group: str | None = None, wrap: Callable[[Any, str], Any] | None = None):
        self.kind, self.group = kind, group
        self._wrap = wrap or (lambda obj, name: obj)
        self._entries: dict[str, Any] = {}
        self._modules: dict[str, str] = {}  # name -> module whose import registered it
        self._entry_points_loaded = False

    # ------------------------------------------------------------ adding

    def register(self, name: str, obj: Any = None, *, replace: bool = False, **properties):
        """Register ``obj`` under ``name``; without ``obj``, a decorator.

        ``properties`` go to the registry's ``wrap`` (an objective's flags, say).
        A name registered twice is an error unless ``replace=True``.
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"{self.kind} name must be a non-empty str without ':', got {name!r}")

        def add(target):
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is registered already; pass replace=True to replace it")
            entry = self._wrap(target, name, **properties)
            self._entries[name] = entry
            module = getattr(target, "__module__", None)
            if module and module != "__main__" and not module.startswith("mfverify."):
                self._modules[name] = module
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests; a plugin being reloaded)."""
        self._entries.pop(name, None)
        self._modules.pop(name, None)

    # ------------------------------------------------------------ looking up

    def names(self) -> list[str]:
        """The registered names (built-ins first, then in registration order)."""
        self._load_entry_points()
        return list(self._entries)

    def __contains__(self, name) -> bool:
        try:
            self.get(name)
        except (ValueError, TypeError):
            return False
        return True

    def get(self, name) -> Any:
        """The entry for a registered name or a ``"package.module:attr"`` string."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} must be given by name (a str), got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            obj = resolve_string(name, self.kind)
            try:
                return self._wrap(obj, name)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{self.kind} {name!r}: {err}") from err
        self._load_entry_points()
        if name in self._entries:
            return self._entries[name]
        raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self._entries) or 'none'}")

    def modules(self) -> list[str]:
        """Modules outside mfverify whose import registered names (for spawned workers)."""
        return sorted(set(self._modules.values()))

    # ------------------------------------------------------------ entry points

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.group is None:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as err:
                raise ValueError(
                    f"{self.kind} {ep.name!r} from entry point {ep.value!r} (group {self.group}) "
                    f"cannot be loaded: {type(err).__name__}: {err}"
                ) from err
            # an entry point may name a module whose import registers the name itself
            if ep.name not in self._entries:
                self._entries[ep.name] = self._wrap(obj, ep.name)

    def reload_entry_points(self) -> None:
        """Look at the installed entry points again (after installing a plugin in-process)."""
        self._entry_points_loaded = False
        self._load_entry_points()
