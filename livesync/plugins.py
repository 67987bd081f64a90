"""One loader for plugins: backends, expanders, loaders, export sources.

A plugin is named either by an entry point of its group (``livesync.backends``, ``livesync.loaders``,
``livesync.expanders``, ``livesync.sources``), which an installed package declares, or by
an import path ``module:attribute``. Names come from agent hashes in Redis, which anyone
who can write to that Redis can change, and workers act on them; importing a module runs
its code. So an import path is allowed only when its module lies inside one of the
prefixes of ``LIVESYNC_ALLOWED_IMPORTS`` (``Settings.allowed_imports``; default empty:
entry points only). Prefixes match on dotted module boundaries: ``myapp`` allows
``myapp`` and ``myapp.sync``, not ``myapp_evil``.

The attribute path after the colon must not lead out of the allowed modules again
(``livesync.worker:os.system`` would reach ``os`` through an allowed module):

- no step of it may be a module (name that module before the colon instead);
- a class or function at its end must be defined inside an allowed prefix (its
  ``__module__``), so ``myapp:system`` after ``from os import system`` is refused;
- any other object (an instance, a builtin method: its ``__module__`` is its class's or
  none, which says nothing about where it was made) only as a single attribute found in
  the allowed module's own namespace (``myapp:expander = Expander()``): a name the
  allowed module binds is what the operator allowed, an object reached through further
  attributes is not.

Entry points are scanned once per process and group (``importlib.metadata`` reads every
installed distribution's metadata for each scan).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from livesync.errors import ConfigurationError, ImportNotAllowed

__all__ = ["available", "entry_points", "forget_entry_points", "import_allowed", "load_plugin"]

#: The setting that lists the allowed prefixes, as operators write it.
SETTING = "LIVESYNC_ALLOWED_IMPORTS"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@functools.cache
def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of ``group`` by name, scanned once per process (the first of a name wins)."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=group):
        found.setdefault(entry_point.name, entry_point)
    return found


def forget_entry_points() -> None:
    """Scan entry points again on next use (after installing a package in a running process, in tests)."""
    entry_points.cache_clear()


def available(group: str) -> list[str]:
    """The names registered in ``group``, sorted."""
    return sorted(entry_points(group))


def import_allowed(module: str, allowed_imports: Iterable[str]) -> bool:
    """Whether ``module`` is one of the ``allowed_imports`` prefixes or inside one (dotted boundaries)."""
    for prefix in allowed_imports:
        prefix = prefix.strip().rstrip(".")
        if prefix and (module == prefix or module.startswith(prefix + ".")):
            return True
    return False


def load_plugin(
    group: str,
    spec: str,
    allowed_imports: Iterable[str] = (),
    *,
    kind: str = "plugin",
    shape: str = "module:attribute",
    unknown: type[ConfigurationError] = ConfigurationError,
) -> Any:
    """The object ``spec`` names: an entry point of ``group``, else an allowed ``module:attribute``.

    ``kind`` names the plugin in every message (``backend 'x': ...``), ``shape`` the form
    of an import path (``module:Class``), ``unknown`` the error for a name that is no
    entry point and no import path. Raises
    :class:`~livesync.errors.ImportNotAllowed` for an import path outside
    ``allowed_imports`` (nothing is imported), and
    :class:`~livesync.errors.ConfigurationError` for an unknown name, a malformed path,
    or one that cannot be imported or has no such attribute. What the object must be
    (a Backend subclass, a callable) is the caller's check.
    """
    allowed = [prefix.strip() for prefix in allowed_imports if prefix.strip()]
    entry_point = entry_points(group).get(spec)
    if entry_point is not None:
        try:
            return entry_point.load()
        except Exception as exc:
            raise ConfigurationError(f"{kind} {spec!r} ({entry_point.value}) cannot be loaded: {exc}") from exc
    module_name, sep, attribute = spec.partition(":")
    if not sep:
        names = ", ".join(available(group)) or "none"
        raise unknown(f"unknown {kind} {spec!r} (available: {names}, or {shape})")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attribute):
        raise ConfigurationError(f"{kind} {spec!r}: expected {shape} (dotted Python names)")
    if not import_allowed(module_name, allowed):
        shown = ", ".join(allowed) if allowed else "empty: entry points only"
        raise ImportNotAllowed(
            f"{kind} {spec!r}: importing {module_name!r} is not allowed by {SETTING} ({shown}); "
            f"register it as an entry point in {group!r} or add its package to {SETTING}"
        )
    try:
        module: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{kind} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    target = module
    steps = attribute.split(".")
    for index, part in enumerate(steps):
        if not hasattr(target, part):
            raise ConfigurationError(f"{kind} {spec!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
        if isinstance(target, types.ModuleType):
            path = ".".join(steps[: index + 1])
            raise ImportNotAllowed(
                f"{kind} {spec!r}: {path!r} is a module, reached through {module_name!r}; an import path names "
                f"its module before the colon, where {SETTING} checks it"
            )
    _check_origin(kind, spec, module, steps, target, allowed)
    return target


def _check_origin(kind: str, spec: str, module: Any, steps: list[str], target: Any, allowed: list[str]) -> None:
    """Raise :class:`ImportNotAllowed` unless ``target`` comes from an allowed module (see the module's docstring)."""
    owner = getattr(target, "__module__", None) if inspect.isclass(target) or inspect.isroutine(target) else None
    if isinstance(owner, str):
        if not import_allowed(owner, allowed):
            raise ImportNotAllowed(
                f"{kind} {spec!r}: {'.'.join(steps)!r} is defined in {owner!r}, which {SETTING} does not allow; "
                f"name it in its own module, or register it as an entry point"
            )
        return
    if len(steps) == 1 and steps[0] in vars(module):
        return  # bound by the allowed module itself
    raise ImportNotAllowed(
        f"{kind} {spec!r}: {'.'.join(steps)!r} is neither a class or function defined inside {SETTING} "
        f"nor an object the module {module.__name__!r} binds itself"
    )
