"""The scripted session of ``--smoke``: requests to the running application, each round checked on both targets.

Round one creates two categories and five events, one of them private. Once the
targets hold them, round two edits one, makes the private one public, deletes one,
renames a category (its events' documents change with it), makes a category's events
private with one bulk ``UPDATE``, edits a private event, and sends one request the
database refuses (a duplicate title: the transaction, its outbox rows with it, rolls
back). Two rounds, so that the second one's changes reach targets that hold the objects
already (updates and deletes, not only creations). After each, it waits up to a bound
until every target holds exactly what the application database shows through the
agents' loader.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine

from examples.events_app.loaders import loader
from examples.events_app.targets import Contents, Mirror, SearchIndex, expected

#: Seconds between two looks at the targets while they catch up.
POLL = 0.25

Call = Callable[..., Any]


class SessionFailed(Exception):
    """A request of the session got an answer it did not expect."""


def first_round(call: Call) -> dict[str, int]:
    """Create two categories and five events (one private); return their ids by name."""
    ids = {
        "talks": call("POST", "/categories", {"name": "Talks"}, 201)["id"],
        "workshops": call("POST", "/categories", {"name": "Workshops"}, 201)["id"],
    }
    for name, body in {
        "keynote": {"title": "Keynote", "category_id": ids["talks"], "starts_at": "2025-05-01T09:00:00"},
        "panel": {"title": "Panel", "category_id": ids["talks"], "is_public": False},
        "closing": {"title": "Closing words", "category_id": ids["talks"]},
        "rust": {"title": "Rust for beginners", "category_id": ids["workshops"]},
        "sql": {"title": "SQL tuning", "category_id": ids["workshops"]},
    }.items():
        ids[name] = call("POST", "/events", body, 201)["id"]
    return ids


def second_round(call: Call, ids: dict[str, int]) -> None:
    """Change, publish, delete, rename, hide in bulk, and one refused request."""
    call("PATCH", f"/events/{ids['keynote']}", {"title": "Opening keynote", "description": "Welcome!"})
    call("PATCH", f"/events/{ids['panel']}", {"is_public": True})
    call("DELETE", f"/events/{ids['sql']}", expect=204)
    call("PATCH", f"/categories/{ids['talks']}", {"name": "Lectures"})  # "Closing words" changes by this alone
    call("POST", f"/categories/{ids['workshops']}/make-private")
    call("PATCH", f"/events/{ids['rust']}", {"description": "Bring a laptop"})
    # refused by the unique (category, title) constraint: rolled back, so nothing of it reaches a target
    call("POST", "/events", {"title": "Panel", "category_id": ids["talks"]}, 409)


class Client:
    """The application's HTTP API, each request printed with its status."""

    def __init__(self, base_url: str, say: Callable[[str], None] = print) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.say = say

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        answer = self.http.request(method, path, json=body)
        self.say(f"  {method:<6} {path:<28} {json.dumps(body) if body else ''} -> {answer.status_code}")
        if answer.status_code != expect:
            raise SessionFailed(f"{method} {path}: {answer.status_code} {answer.text.strip()} (expected {expect})")
        return answer.json() if answer.content else None

    def close(self) -> None:
        self.http.close()


@dataclass
class Target:
    """A target the session checks, and how to read what it holds."""

    name: str
    read: Callable[[], Contents]


def targets(mirror: Mirror, index: SearchIndex | None) -> list[Target]:
    """The ``sql`` mirror, and the search index when there is one."""
    found = [Target(f"sql mirror ({mirror.url}, table {mirror.table})", lambda: mirror.read()[0])]
    if index is not None:
        found.append(Target(f"search index ({index.url}, alias {index.alias})", index.read))
    return found


def wait_until_synced(
    engine: Engine, checked: list[Target], timeout: float, dead: Callable[[], str | None]
) -> list[str]:
    """Wait until every target holds what the database shows; the differences left after ``timeout`` s, if any.

    ``dead()`` names a service that exited (no point waiting for it then), or is ``None``.
    """
    deadline = time.monotonic() + timeout
    documents = loader(engine)
    while True:
        wanted = expected(engine, documents)
        problems = [problem for target in checked for problem in differences(target.name, target.read(), wanted)]
        if not problems:
            return []
        stopped = dead()
        if stopped is not None:
            return [stopped, *problems]
        if time.monotonic() >= deadline:
            return [f"after {timeout:g}s:", *problems]
        time.sleep(POLL)


def differences(name: str, held: Contents, wanted: Contents) -> list[str]:
    """What ``held`` (a target's objects) lacks, has too many, or has otherwise than ``wanted``."""
    problems = []
    for key in sorted(wanted.keys() | held.keys()):
        if key not in held:
            problems.append(f"{name}: {key[0]} {key[1]} missing")
        elif key not in wanted:
            problems.append(f"{name}: {key[0]} {key[1]} should not be there")
        elif held[key] != wanted[key]:
            problems.append(f"{name}: {key[0]} {key[1]} holds {held[key]}, the database {wanted[key]}")
    return problems


def show(target: Target, say: Callable[[str], None] = print) -> None:
    """Print what ``target`` holds, one object per line."""
    contents = target.read()
    say(f"{target.name}: {len(contents)} object(s), as the application database shows them")
    for (type_, id_), document in sorted(contents.items(), key=lambda item: (item[0][0], int(item[0][1]))):
        say(f"  {type_:<8} {id_:>3}  {json.dumps(document, sort_keys=True)}")
