"""The web application: a JSON API over categories and events (Flask), each request one transaction.

The sessions come from a ``sessionmaker`` the livesync integration is attached to, so
every commit writes its changes to the outbox in the same transaction: a request that
fails (a duplicate title, a bad category) rolls back its data and its changes together.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection
from typing import Any

from flask import Blueprint, Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.exceptions import HTTPException

from examples.events_app.models import Category, Event
from examples.events_app.registration import live_sync
from livesync.integrations.sqlalchemy import LiveSync

api = Blueprint("events_app", __name__)

#: Fields of an event a request may set, and how each is read from JSON.
EVENT_FIELDS: dict[str, Callable[[Any], Any]] = {
    "title": lambda value: _text(value, "title", 200),
    "description": lambda value: _text(value, "description", 2000, empty=True),
    "starts_at": lambda value: _time(value),
    "is_public": lambda value: _boolean(value, "is_public"),
    "category_id": lambda value: _integer(value, "category_id"),
}


def create_app(engine: Engine, namespace: str) -> Flask:
    """The application on ``engine``'s database, publishing through the outbox to livesync ``namespace``."""
    sessions = sessionmaker(engine)
    sync = live_sync(namespace)
    sync.attach(sessions)
    app = Flask(__name__)
    app.extensions["events_app"] = (sessions, sync)
    app.register_blueprint(api)
    return app


def _database() -> tuple[sessionmaker[Session], LiveSync]:
    found: tuple[sessionmaker[Session], LiveSync] = current_app.extensions["events_app"]
    return found


# -- categories ---------------------------------------------------------------------


@api.get("/categories")
def list_categories() -> ResponseReturnValue:
    sessions, _ = _database()
    with sessions() as session:
        return jsonify([_category(row) for row in session.scalars(select(Category).order_by(Category.id))])


@api.post("/categories")
def create_category() -> ResponseReturnValue:
    body = _body(required={"name"})
    sessions, _ = _database()
    with sessions.begin() as session:
        category = Category(name=_text(body["name"], "name", 100))
        session.add(category)
        session.flush()
        return _category(category), 201


@api.patch("/categories/<int:category_id>")
def rename_category(category_id: int) -> ResponseReturnValue:
    """Rename a category: the category changes, and so do its events' documents (the cascade marks them)."""
    body = _body(required={"name"})
    sessions, _ = _database()
    with sessions.begin() as session:
        category = _get(session, Category, category_id)
        category.name = _text(body["name"], "name", 100)
        session.flush()
        return _category(category)


@api.post("/categories/<int:category_id>/make-private")
def make_category_private(category_id: int) -> ResponseReturnValue:
    """Make every event of a category private in one ``UPDATE`` (a bulk statement the flush never sees).

    So the events are named first, with ``emit_for`` (its select runs before the update,
    while the rows still match), in the same transaction: ``unpublished``, as the flush
    would have said of each one.
    """
    sessions, sync = _database()
    with sessions.begin() as session:
        _get(session, Category, category_id)
        chosen = Event.category_id == category_id
        count = sync.emit_for(session, select(Event).where(chosen, Event.is_public), "unpublished")
        session.execute(update(Event).where(chosen).values(is_public=False))
        return {"made_private": count}


# -- events -------------------------------------------------------------------------


@api.get("/events")
def list_events() -> ResponseReturnValue:
    sessions, _ = _database()
    with sessions() as session:
        return jsonify([_event(row) for row in session.scalars(select(Event).order_by(Event.id))])


@api.get("/events/<int:event_id>")
def show_event(event_id: int) -> ResponseReturnValue:
    sessions, _ = _database()
    with sessions() as session:
        return _event(_get(session, Event, event_id))


@api.post("/events")
def create_event() -> ResponseReturnValue:
    body = _body(required={"title", "category_id"}, allowed=EVENT_FIELDS)
    sessions, _ = _database()
    with sessions.begin() as session:
        event = Event(**{name: EVENT_FIELDS[name](value) for name, value in body.items()})
        session.add(event)
        session.flush()  # a duplicate title or an unknown category fails here: nothing is committed
        return _event(event), 201


@api.patch("/events/<int:event_id>")
def update_event(event_id: int) -> ResponseReturnValue:
    body = _body(allowed=EVENT_FIELDS)
    sessions, _ = _database()
    with sessions.begin() as session:
        event = _get(session, Event, event_id)
        for name, value in body.items():
            setattr(event, name, EVENT_FIELDS[name](value))
        session.flush()
        return _event(event)


@api.delete("/events/<int:event_id>")
def delete_event(event_id: int) -> ResponseReturnValue:
    sessions, _ = _database()
    with sessions.begin() as session:
        session.delete(_get(session, Event, event_id))
    return "", 204


# -- errors and helpers -------------------------------------------------------------


@api.app_errorhandler(IntegrityError)
def conflict(exc: IntegrityError) -> ResponseReturnValue:
    """A constraint refused the write (a duplicate title in the category, an unknown category): rolled back."""
    return {"error": f"refused by the database: {exc.orig}"}, 409


@api.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> ResponseReturnValue:
    return {"error": exc.description}, exc.code or 500


def _body(*, required: Collection[str] = (), allowed: Collection[str] | None = None) -> dict[str, Any]:
    """The request's JSON object, with the ``required`` fields and no field outside ``allowed``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    required, allowed = set(required), set(required if allowed is None else allowed)
    unknown = sorted(set(body) - allowed)
    if unknown:
        abort(400, f"unknown field(s): {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(body))
    if missing:
        abort(400, f"missing field(s): {', '.join(missing)}")
    return body


def _get(session: Session, model: type[Any], id_: int) -> Any:
    row = session.get(model, id_)
    if row is None:
        abort(404, f"no {model.__name__.lower()} {id_}")
    return row


def _text(value: Any, name: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or not (empty or value.strip()):
        abort(400, f"{name} must be a{'' if empty else ' non-empty'} string of at most {limit} characters")
    return value


def _time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        abort(400, "starts_at must be an ISO 8601 time (2025-05-01T14:00:00) or null")


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        abort(400, f"{name} must be true or false")
    return value


def _integer(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        abort(400, f"{name} must be an integer")
    return value


def _category(category: Category) -> dict[str, Any]:
    return {"id": category.id, "name": category.name}


def _event(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "title": event.title,
        "description": event.description,
        "starts_at": event.starts_at.isoformat() if event.starts_at else None,
        "is_public": event.is_public,
        "category_id": event.category_id,
    }
