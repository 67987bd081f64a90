"""The Lua scripts of this package (``livesync/lua/*.lua``), registered once per Redis connection.

Every script that frees memory, or that a run needs on its way there (take, renew
and release the lock, ack, prune, record the run, note the job a tick enqueued), starts with ``#!lua
flags=allow-oom`` (Redis 7.0+): a Redis at ``maxmemory`` with ``noeviction`` still
runs it, while a publish (no flags line, its first write refused) stays refused.
Redis keeps the flags with the cached script, so ``EVALSHA`` honours them too.

A script may include another one's text: a line ``--@include <name>.lua`` is replaced,
when the source is read, by that file's text (its header comments included; a file
with a flags line cannot be included). ``relay.lua`` includes ``publish.lua`` as the
body of a local function, so the outbox relay publishes with the very logic of
``publish.lua`` and adds its marks in the same atomic call. Lua scripts cannot call one
another (nor Redis functions, which a Cluster would need loaded on every node), so this
is how two scripts share code.
"""

from __future__ import annotations

import re
import weakref
from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script

SCRIPT_NAMES = (
    "publish",
    "ack",
    "acquire",
    "renew",
    "release",
    "prune",
    "record_run",
    "create_meta",
    "note_job",
    "relay",
)
_INCLUDE = re.compile(r"^--@include ([a-z_]+)\.lua$", re.MULTILINE)
_registered: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


@cache
def source(name: str, *, flags_line: bool = True) -> str:
    """Return the source of ``livesync/lua/<name>.lua``.

    With ``flags_line=False`` a leading ``#!lua`` flags line becomes a Lua comment, for
    servers that run the source as plain Lua.
    """
    text = files("livesync").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    text = _INCLUDE.sub(lambda match: _included(match.group(1), name), text)
    if not flags_line and text.startswith("#!"):
        first, _, rest = text.partition("\n")
        # a comment, not nothing: error messages keep the line numbers of the file
        text = f"-- {first[2:]} (flags line not understood here)\n{rest}"
    return text


def _included(name: str, into: str) -> str:
    """The text of ``name``.lua for an ``--@include`` line of ``into``.lua."""
    text = source(name)
    if text.startswith("#!"):
        raise ValueError(f"{into}.lua includes {name}.lua, which has a flags line: only the including script may")
    return text.rstrip("\n")


def understands_flags(redis: Any) -> bool:
    """Whether ``redis`` takes scripts with a ``#!lua`` flags line.

    fakeredis (the embedded fallback, and the second server of the track tests) hands
    the source to Lua as it is, where ``#!`` is a syntax error; it knows no maxmemory
    either, so it loses nothing without the flags.
    """
    return not type(redis).__module__.startswith("fakeredis")


class Scripts:
    """The registered scripts of one connection, one attribute per ``.lua`` file."""

    publish: Script
    ack: Script
    acquire: Script
    renew: Script
    release: Script
    prune: Script
    record_run: Script
    create_meta: Script
    note_job: Script
    relay: Script

    def __init__(self, redis: Any) -> None:
        flags_line = understands_flags(redis)
        for name in SCRIPT_NAMES:
            setattr(self, name, redis.register_script(source(name, flags_line=flags_line)))


def scripts_for(redis: Any) -> Scripts:
    """Return the scripts registered on ``redis``, registering them on first use."""
    scripts = _registered.get(redis)
    if scripts is None:
        scripts = _registered[redis] = Scripts(redis)
    return scripts
