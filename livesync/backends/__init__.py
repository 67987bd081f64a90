"""Backends: find them by entry point, check their options, create them.

Backends are registered in the ``livesync.backends`` entry point group, the built-in
ones (``null``, ``debug``, ``jsonl``) included, so a third-party package adds one by
declaring it in its own ``pyproject.toml``::

    [project.entry-points."livesync.backends"]
    search = "mypackage.livesync:SearchBackend"

An import path ``module:Class`` works too, for modules inside ``LIVESYNC_ALLOWED_IMPORTS``
(see :mod:`livesync.plugins`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from livesync import plugins
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
    "redact_options",
]

ENTRY_POINT_GROUP = "livesync.backends"
SECRET_NAME = re.compile(r"secret|passw|token|key|credential", re.IGNORECASE)


def available_backends() -> list[str]:
    """Return the names of every registered backend, sorted."""
    return plugins.available(ENTRY_POINT_GROUP)


def load_backend(name: str, allowed_imports: Iterable[str] = ()) -> type[Backend]:
    """Return the backend class registered under ``name``, or at the import path ``module:Class``.

    An import path must lie inside ``allowed_imports`` (``Settings.allowed_imports``), else
    :class:`~livesync.errors.ImportNotAllowed` and nothing is imported. Raises
    :class:`~livesync.errors.UnknownBackend` (listing the available ones) when nothing is
    registered under ``name``, and :class:`~livesync.errors.ConfigurationError` when it
    cannot be loaded or does not name a :class:`Backend` subclass.
    """
    backend_cls = plugins.load_plugin(
        ENTRY_POINT_GROUP, name, allowed_imports, kind="backend", shape="module:Class", unknown=UnknownBackend
    )
    if not (isinstance(backend_cls, type) and issubclass(backend_cls, Backend)):
        raise ConfigurationError(f"backend {name!r} is not a livesync Backend subclass")
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


def create_backend(
    name: str, agent_id: str, raw_options: Mapping[str, object], allowed_imports: Iterable[str] = ()
) -> Backend:
    """Load the backend ``name``, validate its options and return an instance for ``agent_id``.

    ``allowed_imports`` as for :func:`load_backend`: workers pass their settings', so an
    agent hash naming ``os:system`` is refused where it would run.
    """
    backend_cls = load_backend(name, allowed_imports)
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
