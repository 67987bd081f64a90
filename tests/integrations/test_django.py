"""The Django integration on SQLite and PostgreSQL with the real Redis, without pytest-django.

Django is set up once per session (``settings.configure`` from ``django_settings``, then
``migrate`` on both databases); each test gets its namespace through
``override_settings(LIVESYNC=...)``, which rebuilds the app's collector, and finds the
tables empty.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text
from support.outbox import track_changes
from support.sql_databases import POSTGRES_URL, admin_engine, unreachable

django = pytest.importorskip("django", reason="the Django integration's tests need livesync[django]")

from django.conf import settings as django_settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from livesync.changes import flag_names  # noqa: E402

from . import django_settings as test_settings  # noqa: E402

POSTGRES = os.environ.get("LIVESYNC_TEST_POSTGRES_URL", POSTGRES_URL)
MODELS = {
    "djangoapp.Event": {
        "type": "event",
        "flags": {"title": "title_changed", "views": None},
        "soft_delete": "is_deleted",
        "published": "is_public",
        "m2m": {"tags": "data_changed"},
    },
    "djangoapp.Category": {"type": "category", "flags": {"title": "title_changed"}, "cascade": {"event_set": None}},
}


@pytest.fixture(scope="session")
def django_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Django set up, migrated on SQLite and (when it answers) on PostgreSQL; the aliases that work."""
    schema = f"ls_{uuid.uuid4().hex[:12]}"
    postgres_problem = unreachable(POSTGRES)
    if postgres_problem is None:
        engine = admin_engine(POSTGRES)
        with engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
    if not django_settings.configured:
        django_settings.configure(**test_settings.settings(tmp_path_factory.mktemp("django"), POSTGRES, schema))
        django.setup()
    aliases = ["default"] + (["postgresql"] if postgres_problem is None else [])
    for alias in aliases:
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)
    yield aliases
    for connection in connections.all():
        connection.close()
    if postgres_problem is None:
        with engine.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.fixture(params=["default", "postgresql"])
def alias(request: pytest.FixtureRequest, django_databases: list[str]) -> str:
    """The test's database alias (the test runs on each)."""
    if request.param not in django_databases:
        pytest.skip(f"{POSTGRES} does not answer")
    return str(request.param)


def configure(namespace: str, redis_url: str, alias: str, mode: str) -> Iterator[Any]:
    """The test's LIVESYNC settings while the test runs; the tables emptied afterwards."""
    from integrations.djangoapp.models import Category, Event, Tag
    from livesync.integrations.django.models import OutboxRow

    config = {"REDIS_URL": redis_url, "NAMESPACE": namespace, "MODE": mode, "MODELS": MODELS, "DATABASE": alias}
    with override_settings(LIVESYNC=config):
        yield
    with connections[alias].cursor() as cursor:
        for model in (Event.tags.through, Event, Category, Tag, OutboxRow):
            cursor.execute(f"DELETE FROM {model._meta.db_table}")


@pytest.fixture
def direct(namespace: str, redis_url: str, alias: str, real_redis: redis.Redis) -> Iterator[Any]:
    """Direct mode to the test's namespace."""
    yield from configure(namespace, redis_url, alias, "direct")


@pytest.fixture
def outbox(namespace: str, redis_url: str, alias: str, real_redis: redis.Redis) -> Iterator[Any]:
    """Outbox mode to the test's namespace."""
    yield from configure(namespace, redis_url, alias, "outbox")


def published(real_redis: redis.Redis, namespace: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    return track_changes(real_redis, namespace)


class Rollback(Exception):
    """Raised to roll an atomic block back."""


# --- direct mode ------------------------------------------------------------------------


def test_commit_publishes_once_merged_per_object(
    direct: None, alias: str, real_redis: redis.Redis, namespace: str
) -> None:
    from integrations.djangoapp.models import Event

    # Given an event created and renamed in one transaction
    with transaction.atomic(using=alias):
        event = Event.objects.using(alias).create(title="Opening")
        event.title = "Grand opening"
        event.save(using=alias)
        assert published(real_redis, namespace) == []  # nothing before the commit
    # Then the commit published one change with both flags
    assert published(real_redis, namespace) == [("event", event.pk, ("created", "title_changed"))]


def test_rollback_publishes_nothing(direct: None, alias: str, real_redis: redis.Redis, namespace: str) -> None:
    from integrations.djangoapp.models import Event

    with pytest.raises(Rollback), transaction.atomic(using=alias):
        Event.objects.using(alias).create(title="Opening")
        raise Rollback
    # a later transaction does not bring it back
    with transaction.atomic(using=alias):
        kept = Event.objects.using(alias).create(title="Kept")
    assert published(real_redis, namespace) == [("event", kept.pk, ("created",))]


def test_rolled_back_savepoint_drops_only_its_part(
    direct: None, alias: str, real_redis: redis.Redis, namespace: str
) -> None:
    from integrations.djangoapp.models import Event

    with transaction.atomic(using=alias):
        kept = Event.objects.using(alias).create(title="Kept")
        with pytest.raises(Rollback), transaction.atomic(using=alias):
            Event.objects.using(alias).create(title="Dropped")
            kept.title = "Renamed in the dropped savepoint"
            kept.save(using=alias)
            raise Rollback
        with transaction.atomic(using=alias):
            released = Event.objects.using(alias).create(title="Released")
    assert published(real_redis, namespace) == [
        ("event", kept.pk, ("created",)),
        ("event", released.pk, ("created",)),
    ]


def test_a_save_outside_a_transaction_publishes_at_once(
    direct: None, alias: str, real_redis: redis.Redis, namespace: str
) -> None:
    from integrations.djangoapp.models import Event

    event = Event.objects.using(alias).create(title="Opening")
    assert published(real_redis, namespace) == [("event", event.pk, ("created",))]


def test_post_delete_publishes_deleted(direct: None, alias: str, real_redis: redis.Redis, namespace: str) -> None:
    from integrations.djangoapp.models import Event

    event = Event.objects.using(alias).create(title="Opening")
    pk = event.pk
    with transaction.atomic(using=alias):
        event.delete()
    assert published(real_redis, namespace) == [("event", pk, ("created",)), ("event", pk, ("deleted",))]


def test_fields_map_to_flags_and_soft_delete(direct: None, alias: str, real_redis: redis.Redis, namespace: str) -> None:
    from integrations.djangoapp.models import Event

    event = Event.objects.using(alias).create(title="Opening")
    event.title = "Grand opening"
    event.save(using=alias)
    event.description = "All welcome"
    event.save(using=alias)
    event.views = 3  # ignored
    event.save(using=alias)
    event.save(using=alias)  # nothing changed
    event.is_deleted = True
    event.title = "Gone"
    event.save(using=alias)
    event.title = "Still gone"
    event.save(using=alias)
    reloaded = Event.objects.using(alias).get(pk=event.pk)  # a fresh instance: its snapshot is the row
    reloaded.is_deleted = False
    reloaded.save(using=alias)
    assert [flags for _, _, flags in published(real_redis, namespace)] == [
        ("created",),
        ("title_changed",),
        ("data_changed",),
        ("deleted",),
        ("undeleted",),
    ]


def test_update_fields_limit_what_counts(direct: None, alias: str, real_redis: redis.Redis, namespace: str) -> None:
    from integrations.djangoapp.models import Event

    event = Event.objects.using(alias).create(title="Opening", is_public=False)
    event.title = "Grand opening"
    event.description = "not saved"
    event.save(using=alias, update_fields=["title"])  # unpublished: nothing
    event.is_public = True
    event.save(using=alias, update_fields=["is_public"])
    assert published(real_redis, namespace) == [("event", event.pk, ("published",))]


def test_m2m_changes_on_either_side(direct: None, alias: str, real_redis: redis.Redis, namespace: str) -> None:
    from integrations.djangoapp.models import Event, Tag

    event = Event.objects.using(alias).create(title="Opening")
    tag = Tag.objects.using(alias).create(name="music")
    event.tags.add(tag)
    tag.event_set.remove(event)
    event.tags.add(tag)
    tag.event_set.clear()
    assert published(real_redis, namespace)[1:] == [("event", event.pk, ("data_changed",))] * 4


def test_cascade_marks_the_events_of_a_category(
    direct: None, alias: str, real_redis: redis.Redis, namespace: str
) -> None:
    from integrations.djangoapp.models import Category, Event

    category = Category.objects.using(alias).create(title="Talks")
    event = Event.objects.using(alias).create(title="Opening", category=category)
    with transaction.atomic(using=alias):
        category.title = "Lectures"
        category.save(using=alias)
    assert published(real_redis, namespace)[2:] == [
        ("category", category.pk, ("title_changed",)),
        ("event", event.pk, ("title_changed",)),
    ]


# --- outbox mode ------------------------------------------------------------------------


def outbox_rows(alias: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    from livesync.integrations.django.models import OutboxRow

    return [
        (row.type, int(row.object_id) if row.integer_id else row.object_id, flag_names(row.flags))
        for row in OutboxRow.objects.using(alias).order_by("id")
    ]


def test_outbox_rows_follow_the_transaction_and_its_savepoints(outbox: None, alias: str) -> None:
    from integrations.djangoapp.models import Event

    with pytest.raises(Rollback), transaction.atomic(using=alias):
        Event.objects.using(alias).create(title="Rolled back")
        raise Rollback
    assert outbox_rows(alias) == []
    with transaction.atomic(using=alias):
        kept = Event.objects.using(alias).create(title="Kept")
        with pytest.raises(Rollback), transaction.atomic(using=alias):
            Event.objects.using(alias).create(title="Dropped")
            raise Rollback
    assert outbox_rows(alias) == [("event", kept.pk, ("created",))]


def test_the_relay_command_moves_the_rows_once(
    outbox: None, alias: str, real_redis: redis.Redis, namespace: str
) -> None:
    from integrations.djangoapp.models import Event

    # Given committed outbox rows
    with transaction.atomic(using=alias):
        event = Event.objects.using(alias).create(title="Opening")
    pk = event.pk
    event.delete()
    assert len(outbox_rows(alias)) == 2
    # When the management command drains them
    out = StringIO()
    call_command("livesync_relay", "--once", "--database", alias, stdout=out)
    # Then they are on the track, in order, and gone from the outbox; a second run has nothing
    assert "relayed 2 change(s)" in out.getvalue()
    assert published(real_redis, namespace) == [("event", pk, ("created",)), ("event", pk, ("deleted",))]
    assert outbox_rows(alias) == []
    call_command("livesync_relay", "--once", "--database", alias, stdout=out)
    assert "relayed 0 change(s)" in out.getvalue()
    assert len(published(real_redis, namespace)) == 2


def test_the_outbox_model_matches_the_sqlalchemy_table(outbox: None, alias: str, django_databases: list[str]) -> None:
    from sqlalchemy import create_engine, inspect

    from livesync.integrations.django.conf import sqlalchemy_url
    from livesync.outbox import outbox_table

    engine = create_engine(sqlalchemy_url(alias))
    try:
        columns = {column["name"] for column in inspect(engine).get_columns("livesync_outbox")}
        indexes = {index["name"] for index in inspect(engine).get_indexes("livesync_outbox")}
    finally:
        engine.dispose()
    assert columns == {column.name for column in outbox_table().columns}
    assert "livesync_outbox_namespace_id" in indexes


def test_unknown_settings_keys_are_refused(direct: None) -> None:
    from livesync.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown key 'MDOE'"), override_settings(LIVESYNC={"MDOE": "x"}):
        pass


def test_sqlite_path_is_the_relays(django_databases: list[str]) -> None:
    from livesync.integrations.django.conf import sqlalchemy_url

    assert sqlalchemy_url("default") == f"sqlite:///{Path(connections['default'].settings_dict['NAME'])}"


def test_the_migration_matches_the_outbox_model(django_databases: list[str]) -> None:
    # makemigrations --check exits non-zero when a model change has no migration
    call_command("makemigrations", "livesync", "--check", "--dry-run", verbosity=0)
