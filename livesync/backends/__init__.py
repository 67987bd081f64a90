"""Backends: find them by entry point, check their options, create them.

Backends are registered in the ``livesync.backends`` entry point group, the built-in
ones (``null``, ``debug``, ``jsonl``) included, so a third-party package adds one by
declaring it in its own ``pyproject.toml``::

    [project.entry-points."livesync.backends"]
    search = "mypackage.livesync:SearchBackend"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import metadata

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from livesync.backends.base import Backend
from livesync.errors import ConfigurationError, UnknownBackend
from livesync.urls import MASK, mask_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "available_backends",
    "create_backend",
    "load_backend",
    "parse_options",
    "prepare_options",
    "redact_options",
]

ENTRY_POINT_GROUP = "livesync.backends"
SECRET_NAME = re.compile(r"secret|passw|token|key|credential", re.IGNORECASE)


def available_backends() -> list[str]:
    """Return the names of every registered backend, sorted."""
    return sorted({entry_point.name for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def load_backend(name: str) -> type[Backend]:
    """Return the backend class registered under ``name``, or at the import path ``module:Class``.

    Raises :class:`~livesync.errors.UnknownBackend` (listing the available ones) when
    nothing is registered under ``name``, and
    :class:`~livesync.errors.ConfigurationError` when the entry point or import path
    cannot be loaded or does not name a :class:`Backend` subclass.
    """
    if ":" in name:
        target = metadata.EntryPoint(name=name, value=name, group=ENTRY_POINT_GROUP)
    else:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        matches = [entry_point for entry_point in entry_points if entry_point.name == name]
        if not matches:
            available = ", ".join(sorted({entry_point.name for entry_point in entry_points})) or "none"
            raise UnknownBackend(f"unknown backend {name!r} (available: {available}, or module:Class)")
        target = matches[0]
    try:
        backend_cls = target.load()
    except Exception as exc:
        raise ConfigurationError(f"backend {name!r} ({target.value}) cannot be loaded: {exc}") from exc
    if not (isinstance(backend_cls, type) and issubclass(backend_cls, Backend)):
        raise ConfigurationError(f"backend {name!r} ({target.value}) is not a livesync Backend subclass")
    return backend_cls


def parse_options(backend_cls: type[Backend], raw: Mapping[str, object]) -> Backend.Options:
    """Validate ``raw`` options (usually ``KEY=VALUE`` strings) into the backend's model.

    Raises :class:`~livesync.errors.ConfigurationError` with a one-line message that
    names each bad option, e.g. ``option 'path': field required``.
    """
    try:
        return backend_cls.Options.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(_describe_error(backend_cls, error) for error in exc.errors())
        # not chained: pydantic's text repeats the input values, secrets included
        raise ConfigurationError(problems) from None


def prepare_options(backend_cls: type[Backend], raw: Mapping[str, object]) -> dict[str, object]:
    """Validate ``raw`` options for a new agent and return the options to store.

    :func:`parse_options`, then the backend's :meth:`Backend.prepare_options` (which
    e.g. makes a jsonl path absolute and checks it is writable). Raises
    :class:`~livesync.errors.ConfigurationError` naming the bad option.
    """
    return backend_cls.prepare_options(parse_options(backend_cls, raw), raw)


def redact_options(name: str, options: Mapping[str, object]) -> dict[str, object]:
    """The options safe to print: secret fields as ``***``, passwords in URLs masked.

    A field is secret when the backend declares it ``SecretStr`` or its name says so
    (secret, password, token, key).
    """
    try:
        fields = load_backend(name).Options.model_fields
    except ConfigurationError:
        fields = {}
    redacted: dict[str, object] = {}
    for key, value in options.items():
        field = fields.get(key)
        declared_secret = field is not None and "Secret" in str(field.annotation)
        if declared_secret or SECRET_NAME.search(key):
            redacted[key] = MASK
        elif isinstance(value, str) and "://" in value:
            redacted[key] = mask_url(value)
        else:
            redacted[key] = value
    return redacted


def create_backend(name: str, agent_id: str, raw_options: Mapping[str, object]) -> Backend:
    """Load the backend ``name``, validate its options and return an instance for ``agent_id``."""
    backend_cls = load_backend(name)
    return backend_cls(agent_id, parse_options(backend_cls, raw_options))


def _describe_error(backend_cls: type[Backend], error: ErrorDetails) -> str:
    key = ".".join(str(part) for part in error["loc"])
    subject = f"option {key!r}" if key else "options"
    if error["type"] == "extra_forbidden":
        fields = list(backend_cls.Options.model_fields)
        known = f"known: {', '.join(fields)}" if fields else "it takes no options"
        return f"{subject}: unknown option for backend {backend_cls.name} ({known})"
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    return f"{subject}: {message[:1].lower()}{message[1:]}"
