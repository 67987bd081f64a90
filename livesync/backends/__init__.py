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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from livesync import plugins, secrets
from livesync.backends.base import Backend
from livesync.errors import ConfigurationError, UnknownBackend, describe_validation
from livesync.urls import MASK, redact_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "available_backends",
    "check_options",
    "create_backend",
    "load_backend",
    "option_warnings",
    "parse_options",
    "prepare_options",
    "redact_options",
    "reference_options",
]

ENTRY_POINT_GROUP = "livesync.backends"
SECRET_NAME = re.compile(r"secret|passw|token|key|credential", re.IGNORECASE)
#: Options named so hold a URL, which carries a target's credentials as often as not
#: (``https://user:pw@host``, ``?code=``, a path token): a secret too, so a reference may name it.
URL_NAME = re.compile(r"(?:^|_)(?:url|uri|dsn)$", re.IGNORECASE)


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

    Values are taken as they are: secret references are resolved by
    :func:`create_backend`. Raises :class:`~livesync.errors.ConfigurationError` with a
    one-line message that names each bad option, e.g. ``option 'path': field required``.
    """
    options = _validate(backend_cls, raw)
    assert options is not None  # nothing ignored, so any error raised
    return options


def prepare_options(backend_cls: type[Backend], raw: Mapping[str, object]) -> dict[str, object]:
    """Validate ``raw`` options for a new agent and return the options to store.

    :func:`parse_options`, then the backend's :meth:`Backend.prepare_options` (which
    e.g. makes a jsonl path absolute and checks it is writable). Raises
    :class:`~livesync.errors.ConfigurationError` naming the bad option.
    """
    if any(isinstance(value, str) and secrets.is_reference(value) for value in raw.values()):
        # references are resolved where the agent runs: the stored options keep them as written,
        # so a backend hook that normalises a value cannot see it here
        return dict(raw)
    return backend_cls.prepare_options(parse_options(backend_cls, raw), raw)


def check_options(
    backend_cls: type[Backend], raw: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Check options when an agent is added; return why some references could not be checked here.

    A reference on an option that holds no secret (:func:`reference_options`) is refused.
    References are resolved where this process can (a variable it has, a file it reads)
    and validated like any value; one it cannot resolve is for the workers to resolve,
    so only its form is checked and the returned notes say what the workers need.
    Raises :class:`~livesync.errors.ConfigurationError` naming each bad option.
    """
    resolved: dict[str, object] = {}
    notes: list[str] = []
    secret_keys = _reference_keys(backend_cls, raw)
    for key, value in raw.items():
        if isinstance(value, str) and secrets.is_reference(value):
            if key not in secret_keys:
                raise secrets.not_a_secret(key, secret_keys)
            found, problem = secrets.lookup(key, value, environ)
            if found is None:
                notes.append(f"{problem}: it must be resolvable where the agent runs")
                continue
            value = found
        resolved[key] = value
    unchecked = frozenset(raw) - frozenset(resolved)
    _validate(backend_cls, resolved, ignore=unchecked)
    return notes


def option_warnings(
    name: str,
    options: Mapping[str, object],
    allowed_imports: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """One-line warnings about an agent's options: secrets given in clear, references not resolvable here.

    A secret is given in clear when an option the backend declares secret, or named like
    one, holds a value, or when a URL holds credentials (:func:`~livesync.urls.redact_url`
    would hide part of it). The warning suggests a reference where the option takes one.
    """
    warnings: list[str] = []
    secret_fields = _secret_fields(name, allowed_imports)
    for key, value in options.items():
        if isinstance(value, str) and secrets.is_reference(value):
            found, problem = secrets.lookup(key, value, environ)
            if found is None:
                warnings.append(f"{problem}: set it where the agent runs (workers)")
        elif key in secret_fields or SECRET_NAME.search(key):
            warnings.append(
                f"option {key!r} is a secret given in clear: it is stored in Redis and was on the command line; "
                f"prefer --option {key}=@env:NAME or {key}=@file:PATH"
            )
        elif isinstance(value, str) and "://" in value and redact_url(value) != value:
            held = "it is stored in Redis in clear and was on the command line"
            if _takes_reference(key, secret_fields):
                held += f"; prefer --option {key}=@env:NAME or {key}=@file:PATH (the whole URL)"
            warnings.append(f"option {key!r} is a URL holding credentials (user info, query or path token): {held}")
    return warnings


def redact_options(name: str, options: Mapping[str, object], allowed_imports: Iterable[str] = ()) -> dict[str, object]:
    """The options safe to print: secret fields as ``***``, credentials and tokens in URLs hidden.

    A field is secret when the backend declares it ``SecretStr`` or its name says so
    (secret, password, token, key). URLs go through :func:`livesync.urls.redact_url`, the
    redactor the webhook backend uses. References (``@env:NAME``, ``@file:PATH``) are
    shown as written: they name where the secret is, not what it is.
    """
    secret_fields = _secret_fields(name, allowed_imports)
    redacted: dict[str, object] = {}
    for key, value in options.items():
        if secrets.is_reference(value):
            redacted[key] = value
        elif key in secret_fields or SECRET_NAME.search(key):
            redacted[key] = MASK
        elif isinstance(value, str) and "://" in value:
            redacted[key] = redact_url(value)
        else:
            redacted[key] = value
    return redacted


def create_backend(
    name: str,
    agent_id: str,
    raw_options: Mapping[str, object],
    allowed_imports: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Backend:
    """Load the backend ``name``, resolve and validate its options, return an instance for ``agent_id``.

    ``allowed_imports`` as for :func:`load_backend`: workers pass their settings', so an
    agent hash naming ``os:system`` is refused where it would run. Secret references are
    resolved here, in the process that runs the backend (:mod:`livesync.secrets`), and
    only for options that hold a secret (:func:`reference_options`): a stranger-written
    ``path=@env:NAME`` is refused, never looked up.
    """
    backend_cls = load_backend(name, allowed_imports)
    resolved = secrets.resolve_options(raw_options, _reference_keys(backend_cls, raw_options), environ)
    return backend_cls(agent_id, parse_options(backend_cls, resolved))


def reference_options(backend_cls: type[Backend]) -> frozenset[str]:
    """The options of ``backend_cls`` that may be a reference (``@env:NAME``, ``@file:PATH``).

    Those holding a secret: declared ``SecretStr``, named like a secret (the rule the
    redactor uses, :data:`SECRET_NAME`), or named like a URL (:data:`URL_NAME`: a target
    URL carries credentials as often as not, and is shown redacted). Any other option is
    plain configuration (a path, a timeout), which a reference must not fill in: an agent
    hash is stranger-writable data, and a worker would read whatever it names.
    """
    declared = _declared_secrets(backend_cls)
    return frozenset(key for key in backend_cls.Options.model_fields if _takes_reference(key, declared))


def _reference_keys(backend_cls: type[Backend], raw: Mapping[str, object]) -> frozenset[str]:
    """:func:`reference_options`, and the options of ``raw`` the backend does not declare but named like secrets."""
    declared = _declared_secrets(backend_cls)
    return reference_options(backend_cls) | {key for key in raw if _takes_reference(key, declared)}


def _takes_reference(key: str, secret_fields: Iterable[str]) -> bool:
    return key in secret_fields or bool(SECRET_NAME.search(key) or URL_NAME.search(key))


def _declared_secrets(backend_cls: type[Backend]) -> set[str]:
    fields = backend_cls.Options.model_fields
    return {key for key, field in fields.items() if "Secret" in str(field.annotation)}


def _secret_fields(name: str, allowed_imports: Iterable[str]) -> set[str]:
    """The option names the backend declares ``SecretStr`` (none when it cannot be loaded here)."""
    try:
        return _declared_secrets(load_backend(name, allowed_imports))
    except ConfigurationError:
        return set()


def _validate(
    backend_cls: type[Backend], raw: Mapping[str, object], ignore: frozenset[str] = frozenset()
) -> Backend.Options | None:
    """The validated options; errors of the ``ignore`` options are dropped (then ``None`` when any)."""
    try:
        return backend_cls.Options.model_validate(dict(raw))
    except ValidationError as exc:
        errors = [error for error in exc.errors() if not (error["loc"] and str(error["loc"][0]) in ignore)]
        if not errors:
            return None
        problems = describe_validation(errors, _option, lower=True, special=_unknown_option(backend_cls))
        # not chained: pydantic's text repeats the input values, secrets included
        raise ConfigurationError(problems) from None


def _option(location: list[str]) -> str:
    key = ".".join(location)
    return f"option {key!r}" if key else "options"


def _unknown_option(backend_cls: type[Backend]) -> Callable[[Mapping[str, Any]], str | None]:
    """The message of an option the backend does not declare: which options it knows."""

    def special(error: Mapping[str, Any]) -> str | None:
        if error["type"] != "extra_forbidden":
            return None
        fields = list(backend_cls.Options.model_fields)
        known = f"known: {', '.join(fields)}" if fields else "it takes no options"
        return f"unknown option for backend {backend_cls.name} ({known})"

    return special
