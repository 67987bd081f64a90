"""The Lua scripts of ``livesync/lua``, registered once per Redis connection."""

from __future__ import annotations

import weakref
from functools import cache
from importlib.resources import files
from typing import Any

from redis.commands.core import Script

SCRIPT_NAMES = ("publish", "ack", "renew", "release", "prune", "create_meta")
_registered: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


@cache
def source(name: str) -> str:
    """Return the source of ``livesync/lua/<name>.lua``."""
    return files("livesync").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The registered scripts of one connection, one attribute per ``.lua`` file."""

    publish: Script
    ack: Script
    renew: Script
    release: Script
    prune: Script
    create_meta: Script

    def __init__(self, redis: Any) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, redis.register_script(source(name)))


def scripts_for(redis: Any) -> Scripts:
    """Return the scripts registered on ``redis``, registering them on first use."""
    scripts = _registered.get(redis)
    if scripts is None:
        scripts = _registered[redis] = Scripts(redis)
    return scripts
