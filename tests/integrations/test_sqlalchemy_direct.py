"""The SQLAlchemy integration in direct mode, on SQLite and PostgreSQL with the real Redis.

A transaction's changes of registered models reach the track once, after its commit,
merged per object; nothing of a rolled-back transaction or savepoint does.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from support.outbox import track_changes
from support.servers import free_port

from livesync.client import Publisher
from livesync.errors import ConfigurationError, InvalidChange
from livesync.integrations.sqlalchemy import LiveSync

from .conftest import Models


@pytest.fixture
def session(direct_sync: LiveSync, sessions: sessionmaker) -> Any:  # type: ignore[type-arg]
    direct_sync.attach(sessions)
    with sessions() as made:
        yield made
    direct_sync.detach(sessions)


def published(real_redis: redis.Redis, namespace: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    return track_changes(real_redis, namespace)


def test_commit_publishes_once_merged_per_object(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an event created, flushed, then changed again in the same transaction
    event = models.Event(id=1, title="Opening")
    session.add(event)
    session.flush()
    event.title = "Grand opening"
    session.flush()
    assert published(real_redis, namespace) == []  # nothing before the commit
    # When the transaction commits
    session.commit()
    # Then the track holds one change of the event with both flags
    assert published(real_redis, namespace) == [("event", 1, ("created", "title_changed"))]


def test_rollback_publishes_nothing(session: Session, models: Models, real_redis: redis.Redis, namespace: str) -> None:
    # Given a flushed insert
    session.add(models.Event(id=1, title="Opening"))
    session.flush()
    # When the transaction rolls back
    session.rollback()
    # Then nothing is published, and a later commit does not bring it back
    session.add(models.Category(id=1, title="Talks"))
    session.commit()
    assert published(real_redis, namespace) == [("category", 1, ("created",))]


def test_rolled_back_savepoint_drops_only_its_part(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an insert in the transaction and one in a savepoint that rolls back
    session.add(models.Event(id=1, title="Kept"))
    savepoint = session.begin_nested()
    session.add(models.Event(id=2, title="Dropped"))
    session.flush()
    savepoint.rollback()
    # When the transaction commits
    session.commit()
    # Then only the transaction's own change is published
    assert published(real_redis, namespace) == [("event", 1, ("created",))]


def test_released_savepoint_publishes_with_its_transaction_merged(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an event created in the transaction and renamed in a released savepoint
    event = models.Event(id=1, title="Opening")
    session.add(event)
    with session.begin_nested():
        event.title = "Grand opening"
    assert published(real_redis, namespace) == []  # a release is no commit
    # When the transaction commits
    session.commit()
    # Then the event's changes are one change
    assert published(real_redis, namespace) == [("event", 1, ("created", "title_changed"))]


def test_each_commit_of_a_session_publishes_its_own_changes_once(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a session that commits twice
    event = models.Event(id=1, title="Opening")
    session.add(event)
    session.commit()
    event.title = "Grand opening"
    session.commit()
    # When a third commit has nothing to say
    session.commit()
    # Then each transaction's change is on the track once
    assert published(real_redis, namespace) == [("event", 1, ("created",)), ("event", 1, ("title_changed",))]


def test_attributes_map_to_their_flags(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a stored event
    event = models.Event(id=1, title="Opening")
    session.add(event)
    session.commit()
    # When its title, its description and its (ignored) view counter change in separate transactions
    event.title = "Grand opening"
    session.commit()
    event.description = "All welcome"
    session.commit()
    event.views = 10
    session.commit()
    # Then the title gives title_changed, the description the default, the counter nothing
    assert published(real_redis, namespace)[1:] == [
        ("event", 1, ("title_changed",)),
        ("event", 1, ("data_changed",)),
    ]


def test_setting_a_loaded_attribute_to_its_value_publishes_nothing(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a stored event whose title is loaded
    session.add(models.Event(id=1, title="Opening"))
    session.commit()
    event = session.get(models.Event, 1)
    assert event is not None and event.title == "Opening"
    # When the title is set to what it is
    event.title = "Opening"
    session.commit()
    # Then only the creation is on the track
    assert published(real_redis, namespace) == [("event", 1, ("created",))]


def test_soft_delete_and_undelete(session: Session, models: Models, real_redis: redis.Redis, namespace: str) -> None:
    # Given a stored event
    event = models.Event(id=1, title="Opening")
    session.add(event)
    session.commit()
    # When it is soft-deleted (with a rename), renamed while deleted, then undeleted
    event.is_deleted = True
    event.title = "Gone"
    session.commit()
    event.title = "Still gone"
    session.commit()
    event.is_deleted = False
    session.commit()
    # Then it disappears, changes nothing while hidden, and comes back
    assert published(real_redis, namespace) == [
        ("event", 1, ("created",)),
        ("event", 1, ("deleted",)),
        ("event", 1, ("undeleted",)),
    ]


def test_publish_flag_and_unpublished_inserts(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an event inserted unpublished
    event = models.Event(id=1, title="Draft", is_public=False)
    session.add(event)
    session.commit()
    # When it is published with a new title, then unpublished
    event.is_public = True
    event.title = "Opening"
    session.commit()
    event.is_public = False
    session.commit()
    # Then the insert gave nothing, the publish an appearance, the unpublish a disappearance
    assert published(real_redis, namespace) == [
        ("event", 1, ("published", "title_changed")),
        ("event", 1, ("unpublished",)),
    ]


def test_delete_publishes_deleted(session: Session, models: Models, real_redis: redis.Redis, namespace: str) -> None:
    # Given a stored event, expired by its commit
    event = models.Event(id=1, title="Opening")
    session.add(event)
    session.commit()
    # When it is deleted
    session.delete(event)
    session.commit()
    # Then its deletion is published
    assert published(real_redis, namespace) == [("event", 1, ("created",)), ("event", 1, ("deleted",))]


def test_string_primary_keys_keep_their_type(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    session.add(models.Event(id=1, title="Opening"))
    session.flush()
    session.add(models.Contribution(slug="keynote", title="Keynote", event_id=1))
    session.commit()
    assert published(real_redis, namespace) == [("event", 1, ("created",)), ("contribution", "keynote", ("created",))]


def test_cascade_marks_related_objects(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a category with an event that has a contribution
    category = models.Category(id=1, title="Talks")
    event = models.Event(id=1, title="Opening", category=category)
    session.add_all([category, event, models.Contribution(slug="keynote", title="Keynote", event=event)])
    session.commit()
    start = len(published(real_redis, namespace))
    # When the category is renamed
    category.title = "Lectures"
    session.commit()
    # Then its events get the same change, and their contributions through the events' cascade
    assert published(real_redis, namespace)[start:] == [
        ("category", 1, ("title_changed",)),
        ("event", 1, ("title_changed",)),
        ("contribution", "keynote", ("title_changed",)),
    ]


def test_moving_an_event_changes_its_category_key(
    session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an event in one category
    talks, posters = models.Category(id=1, title="Talks"), models.Category(id=2, title="Posters")
    event = models.Event(id=1, title="Opening", category=talks)
    session.add_all([talks, posters, event])
    session.commit()
    # When it moves to another category (through the relationship)
    event.category = posters
    session.commit()
    # Then the event changed (its foreign key), the categories did not
    assert published(real_redis, namespace)[3:] == [("event", 1, ("data_changed",))]


def test_emit_for_names_the_objects_of_a_bulk_update(
    direct_sync: LiveSync, session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given three events
    session.add_all([models.Event(id=i, title=f"Event {i}", views=i) for i in (1, 2, 3)])
    session.commit()
    # When an update() statement renames two of them, named by emit_for first
    condition = models.Event.views >= 2
    assert direct_sync.emit_for(session, select(models.Event).where(condition), "title_changed") == 2
    session.execute(update(models.Event).where(condition).values(title="Renamed"))
    assert published(real_redis, namespace)[3:] == []
    session.commit()
    # Then their changes are published with the commit
    assert sorted(published(real_redis, namespace)[3:]) == [
        ("event", 2, ("title_changed",)),
        ("event", 3, ("title_changed",)),
    ]


def test_emit_for_with_a_type_and_emit_many_roll_back_too(
    direct_sync: LiveSync, session: Session, models: Models, real_redis: redis.Redis, namespace: str
) -> None:
    # Given bulk changes named by ids and by items in a transaction that rolls back
    session.add(models.Event(id=1, title="Opening"))
    session.commit()
    assert direct_sync.emit_for(session, select(models.Event.id), "data_changed", type="event") == 1
    direct_sync.emit_many(session, [("event", 7, ["deleted"])])
    session.rollback()
    # When the next transaction names them again and commits
    direct_sync.emit_for(session, select(models.Event.id), "data_changed", type="event")
    direct_sync.emit_many(session, [("event", 7, ["deleted"])])
    session.commit()
    # Then only the committed transaction's are on the track
    assert published(real_redis, namespace)[1:] == [("event", 1, ("data_changed",)), ("event", 7, ("deleted",))]


def test_emit_many_validates_before_adding_anything(direct_sync: LiveSync, session: Session) -> None:
    with pytest.raises(InvalidChange, match="item 1: changes"):
        direct_sync.emit_many(session, [("event", 1, ["created"]), ("event", 2, ["nonsense"])])


def test_a_failed_publish_after_commit_is_logged_and_the_commit_stands(
    models: Models,
    sessions: sessionmaker,
    caplog: pytest.LogCaptureFixture,  # type: ignore[type-arg]
) -> None:
    # Given direct mode publishing to a Redis that does not answer
    unreachable = Publisher.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="nowhere")
    sync = LiveSync(publisher=unreachable)
    sync.register(models.Event, "event")
    sync.attach(sessions)
    try:
        with sessions() as session:
            session.add(models.Event(id=1, title="Opening"))
            # When the transaction commits
            with caplog.at_level(logging.ERROR, logger="livesync.integrations.sqlalchemy"):
                session.commit()
            # Then the commit stood, the session goes on, and the lost change is named in the log
            assert session.get(models.Event, 1) is not None
    finally:
        sync.detach(sessions)
        unreachable.close()
    assert "were not published (1 change(s): event 1 created)" in caplog.text


def test_on_error_receives_the_changes_of_a_failed_publish(models: Models, sessions: sessionmaker) -> None:  # type: ignore[type-arg]
    failures: list[tuple[list[Any], Exception]] = []
    unreachable = Publisher.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="nowhere")
    sync = LiveSync(publisher=unreachable, on_error=lambda changes, exc: failures.append((changes, exc)))
    sync.register(models.Event, "event")
    sync.attach(sessions)
    try:
        with sessions() as session:
            session.add(models.Event(id=1, title="Opening"))
            session.commit()
    finally:
        sync.detach(sessions)
        unreachable.close()
    assert [changes for changes, _ in failures] == [[("event", 1, 1)]]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flags": {"title": "nonsense"}}, "unknown flag 'nonsense'"),
        ({"flags": {"title": "deleted"}}, "'deleted' is a lifecycle flag"),
        ({"flags": {"nothing": "data_changed"}}, "has no attribute 'nothing'"),
        ({"soft_delete": "is_deleted", "flags": {"is_deleted": "data_changed"}}, "leave it out of flags="),
        ({"cascade": {"contributions": "created"}}, "'created' is a lifecycle flag"),
    ],
)
def test_registration_errors_name_the_bad_part(
    publisher: Publisher, models: Models, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LiveSync(publisher=publisher).register(models.Event, "event", **options)


def test_registration_refuses_a_bad_type_and_a_mode_without_publisher(publisher: Publisher, models: Models) -> None:
    with pytest.raises(ConfigurationError, match="not a valid type"):
        LiveSync(publisher=publisher).register(models.Event, "Event")
    with pytest.raises(ConfigurationError, match="direct mode publishes through a Publisher"):
        LiveSync()
