"""Secret references in backend options: ``@env:NAME`` and ``@file:PATH``.

A secret given on the command line shows in ``ps`` and in shell history, and one given
as an option value is stored in the agent's Redis hash in clear. An option value
``@env:NAME`` or ``@file:PATH`` is a *reference* instead: the agent's hash stores it as
written, ``agent show`` shows it as written, and it is resolved only when a backend is
created, in the process that runs it (a worker): from that process's environment, or
from a file it can read (an absolute path; one trailing newline dropped, as written by
``echo`` or a secrets mount). A missing variable or unreadable file fails that run with
an error naming the option, never a value.

Only string values starting exactly with ``@env:`` or ``@file:`` are references, and
only options that hold a secret may be one (which those are, the backend decides: see
:func:`livesync.backends.reference_options`). An agent hash is data anyone who can write
to Redis can change: were every option resolved, ``path=@env:MY_TOKEN`` would make a
worker read any variable or file and could carry its value into an error message stored
in Redis. A reference on any other option is refused, when the agent is added and when
the backend is created.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path

from livesync.errors import ConfigurationError

__all__ = ["is_reference", "lookup", "not_a_secret", "resolve_options"]

ENV = "@env:"
FILE = "@file:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_reference(value: object) -> bool:
    """Whether ``value`` is a secret reference (``@env:...`` or ``@file:...``)."""
    return isinstance(value, str) and value.startswith((ENV, FILE))


def check(key: str, value: str) -> None:
    """Raise :class:`ConfigurationError` naming option ``key`` when the reference ``value`` is malformed."""
    if value.startswith(ENV):
        if not _NAME.fullmatch(value.removeprefix(ENV)):
            raise ConfigurationError(f"option {key!r}: {value!r} needs an environment variable name after @env:")
    elif not Path(value.removeprefix(FILE)).is_absolute():
        raise ConfigurationError(f"option {key!r}: {value!r} needs an absolute path after @file:")


def lookup(key: str, value: str, environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """``(resolved value, "")``, or ``(None, why)`` when this process cannot resolve the reference.

    ``environ`` defaults to this process's environment: reading it is what a reference
    is for, and the one place livesync reads variables outside its settings. Malformed
    references raise :class:`ConfigurationError`.
    """
    check(key, value)
    if value.startswith(ENV):
        name = value.removeprefix(ENV)
        found = (os.environ if environ is None else environ).get(name)
        if found is None:
            return None, f"option {key!r}: environment variable {name} is not set (from {value})"
        return found, ""
    path = Path(value.removeprefix(FILE))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return None, f"option {key!r}: cannot read {path} (from {value}): {reason}"
    return text.removesuffix("\n").removesuffix("\r"), ""


def not_a_secret(key: str, secret_keys: Collection[str]) -> ConfigurationError:
    """The error for a reference on option ``key``, which is none of the ``secret_keys``."""
    keys = ", ".join(sorted(secret_keys)) or "none"
    return ConfigurationError(
        f"option {key!r}: @env: and @file: references are taken only for options holding a secret "
        f"(here: {keys}); give its value itself"
    )


def resolve_options(
    options: Mapping[str, object], secret_keys: Collection[str], environ: Mapping[str, str] | None = None
) -> dict[str, object]:
    """``options`` with every reference replaced by its value; :class:`ConfigurationError` for one that cannot be.

    Only options in ``secret_keys`` may be references: a reference on another option is
    refused (:func:`not_a_secret`) and never looked up.
    """
    resolved: dict[str, object] = {}
    for key, value in options.items():
        if isinstance(value, str) and is_reference(value):
            if key not in secret_keys:
                raise not_a_secret(key, secret_keys)
            found, problem = lookup(key, value, environ)
            if found is None:
                raise ConfigurationError(problem)
            resolved[key] = found
        else:
            resolved[key] = value
    return resolved
