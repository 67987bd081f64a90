"""The ``sql`` backend, for real on SQLite, PostgreSQL and MariaDB (see :mod:`support.sql_databases`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text
from support.sql_databases import table_locked

from livesync.backends import create_backend, redact_options, reference_options
from livesync.backends.sql import SqlBackend
from livesync.backends.sql_mirror import mirror_table
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Record
from livesync.testing import BASE_VERSION, BackendContract, TargetState, make_record

State = dict[tuple[str, str], TargetState]


@pytest.fixture
def make_backend(database_url: str, table: str) -> Callable[..., SqlBackend]:
    def make(**options: Any) -> SqlBackend:
        return SqlBackend("contract", SqlBackend.Options(url=database_url, table=table, **{"create": True, **options}))

    return make


@pytest.fixture
def read_target(admin: Engine, table: str) -> Callable[[], State]:
    def read() -> State:
        mirror = mirror_table(table)
        with admin.connect() as connection:
            rows = connection.execute(select(mirror)).all()
        return {(row.type, row.id): TargetState(row.version, not row.deleted, row.document) for row in rows}

    return read


class TestSqlContract(BackendContract):
    @pytest.fixture
    def make_backend(self, database_url: str, table: str) -> Callable[[], SqlBackend]:
        return lambda: SqlBackend("contract", SqlBackend.Options(url=database_url, table=table, create=True, timeout=1))

    @pytest.fixture
    def refused_record(self) -> Callable[[Record], Record]:
        return lambda record: record._replace(document={"when": {1, 2}})  # a set: not JSON

    @pytest.fixture
    def broken_target(self, admin: Engine, table: str) -> Callable[[], AbstractContextManager[object]]:
        # another session holds the table locked: statements wait, then time out (timeout=1)
        def broken() -> AbstractContextManager[object]:
            mirror_table(table).create(admin, checkfirst=True)
            return table_locked(admin, table)

        return broken


def test_records_of_one_object_in_a_batch_apply_in_version_order(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State]
) -> None:
    with make_backend() as backend:
        backend.upload(
            [
                make_record("event", 1, "updated", 30, {"title": "v30"}),
                make_record("event", 1, "deleted", 20),
                make_record("event", 1, "created", 10, {"title": "v10"}),
                make_record("event", 2, "updated", 30, {"title": "two v30"}),
                make_record("event", 2, "created", 10, {"title": "two v10"}),
            ]
        )
    assert read_target() == {
        ("event", "1"): TargetState(BASE_VERSION + 20, False, None),
        ("event", "2"): TargetState(BASE_VERSION + 30, True, {"title": "two v30"}),
    }


def test_a_created_record_without_a_document_stores_an_empty_one(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State]
) -> None:
    with make_backend() as backend:
        backend.upload([make_record("event", "e-1", "created", 10)])
    assert read_target() == {("event", "e-1"): TargetState(BASE_VERSION + 10, True, {})}


def test_ids_differing_only_in_case_or_trailing_spaces_are_distinct_rows(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State]
) -> None:
    ids = ["abc", "ABC", "abc ", "Zürich"]
    with make_backend() as backend:
        backend.upload([make_record("event", id_, "created", n, {"id": id_}) for n, id_ in enumerate(ids, 1)])
    assert {key[1]: state.document for key, state in read_target().items()} == {id_: {"id": id_} for id_ in ids}


def test_concurrent_writers_keep_the_highest_version_of_each_object(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State]
) -> None:
    # two partitions' runners writing the same objects at once, versions interleaved
    objects = range(1, 51)
    with make_backend():
        pass  # create the table before the threads race to

    def writer(parity: int) -> None:
        with make_backend() as backend:
            for version in range(parity, 12, 2):
                batch = [make_record("event", n, "created", version, {"v": version}) for n in objects]
                for _attempt in range(5):  # a deadlock fails the batch, which the runner sends again
                    try:
                        backend.upload(batch)
                        break
                    except BackendError:
                        continue
                else:
                    raise AssertionError("a batch failed five times")

    threads = [threading.Thread(target=writer, args=(parity,)) for parity in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    state = read_target()
    assert {key: (held.version, held.document) for key, held in state.items()} == {
        ("event", str(n)): (BASE_VERSION + 11, {"v": 11}) for n in objects
    }


def test_the_created_table_has_the_documented_shape(make_backend: Callable[..., SqlBackend], admin: Engine) -> None:
    with make_backend() as backend:
        name = backend.table_name
    columns = {column["name"]: column for column in inspect(admin).get_columns(name)}
    assert list(columns) == ["type", "id", "version", "document", "deleted"]
    assert inspect(admin).get_pk_constraint(name)["constrained_columns"] == ["type", "id"]
    kinds = {key: str(column["type"]).upper() for key, column in columns.items()}
    assert kinds["version"] in ("BIGINT", "INTEGER" if admin.dialect.name == "sqlite" else "BIGINT")
    if admin.dialect.name == "postgresql":
        assert kinds["document"] == "JSONB"
    if admin.dialect.name in ("mysql", "mariadb"):
        assert kinds["id"].startswith("VARBINARY")


def test_a_missing_table_is_refused_unless_create_is_given(make_backend: Callable[..., SqlBackend]) -> None:
    with pytest.raises(ConfigurationError, match=r"does not exist.*create=true"):
        make_backend(create=False).open()


def test_a_table_of_the_wrong_shape_is_refused_naming_its_wrong_columns(
    make_backend: Callable[..., SqlBackend], admin: Engine, table: str
) -> None:
    with admin.begin() as connection:
        connection.execute(
            text(f"CREATE TABLE {table} (type VARCHAR(64), id INTEGER, version INTEGER NOT NULL, PRIMARY KEY (id))")
        )
    with pytest.raises(ConfigurationError) as caught:
        make_backend().open()  # create=True never alters an existing table
    message = str(caught.value)
    assert f"sql table {table} is not a livesync mirror table" in message
    for problem in ("column id is INTEGER, not a string", "document is missing", "deleted is missing"):
        assert problem in message
    assert "the primary key is (id), not (type, id)" in message


def test_an_operator_made_table_with_a_check_rejects_exactly_the_rows_it_refuses(
    make_backend: Callable[..., SqlBackend], admin: Engine, table: str, read_target: Callable[[], State]
) -> None:
    dialect = admin.dialect.name
    id_type = "VARBINARY(1024)" if dialect in ("mysql", "mariadb") else "VARCHAR(256)"
    document = "JSONB" if dialect == "postgresql" else "JSON"
    with admin.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE {table} (type VARCHAR(64) NOT NULL, id {id_type} NOT NULL, version BIGINT NOT NULL, "
                f"document {document}, deleted BOOLEAN NOT NULL, PRIMARY KEY (type, id), "
                "CONSTRAINT no_poison CHECK (id <> 'poison'))"
            )
        )
    good = [make_record("event", n, "created", n, {"n": n}) for n in range(1, 4)]
    poison = make_record("event", "poison", "created", 9, {"n": 9})
    with make_backend(create=False) as backend:
        with pytest.raises(RecordRejected) as caught:
            backend.upload([good[0], poison, *good[1:]])
        assert [record for record, _reason in caught.value.rejections] == [poison]
        assert "refused by the database" in caught.value.rejections[0][1]
        # a batch the database refuses whole, one row at a time too: the target is broken, nothing dead-lettered
        with pytest.raises(BackendError, match="refused every row"):
            backend.upload([poison, poison._replace(type="contribution")])
    assert set(read_target()) == {("event", "1"), ("event", "2"), ("event", "3")}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"when": {1}}, "not JSON-serialisable"),
        ({"score": float("nan")}, "not JSON-serialisable"),
        ({"text": "\ud800"}, "not valid unicode"),
        ({"text": "x" * 2000}, "more than max_document_bytes (1,000)"),
    ],
    ids=["set", "nan", "lone-surrogate", "too-large"],
)
def test_a_document_the_target_cannot_store_is_rejected_and_the_rest_written(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State], document: dict[str, Any], reason: str
) -> None:
    bad = make_record("event", 2, "created", 2, document)
    with make_backend(max_document_bytes=1000) as backend, pytest.raises(RecordRejected) as caught:
        backend.upload([make_record("event", 1, "created", 1, {"ok": True}), bad])
    assert [record for record, _reason in caught.value.rejections] == [bad]
    assert reason in caught.value.rejections[0][1]
    assert set(read_target()) == {("event", "1")}


def test_a_nul_character_is_rejected_on_postgresql_and_stored_elsewhere(
    make_backend: Callable[..., SqlBackend], read_target: Callable[[], State], admin: Engine
) -> None:
    record = make_record("event", 1, "created", 1, {"text": "a\x00b", "path": "C:\\u0000"})
    with make_backend() as backend:
        if admin.dialect.name == "postgresql":
            with pytest.raises(RecordRejected, match="NUL character"):
                backend.upload([record])
            backend.upload([record._replace(document={"path": "C:\\u0000"})])  # a backslash is no NUL
            assert read_target()[("event", "1")].document == {"path": "C:\\u0000"}
        else:
            backend.upload([record])
            assert read_target()[("event", "1")].document == record.document


def test_a_statement_waiting_past_the_timeout_fails_the_batch(
    make_backend: Callable[..., SqlBackend], admin: Engine, table: str, read_target: Callable[[], State]
) -> None:
    with make_backend(timeout=1) as backend:
        with table_locked(admin, table), pytest.raises(BackendError, match="failed"):
            backend.upload([make_record("event", 1, "created", 1)])
        backend.upload([make_record("event", 2, "created", 2)])  # the same backend works again
    assert set(read_target()) == {("event", "2")}


def test_an_unreachable_server_fails_without_showing_the_password(tmp_path: Path) -> None:
    url = "postgresql://app:hunter2-secret@127.0.0.1:9/db"  # port 9 (discard): nothing listens
    backend = SqlBackend("a", SqlBackend.Options(url=url, timeout=2))
    assert "hunter2" not in repr(backend.options)
    with pytest.raises(BackendError) as caught:
        backend.open()
    assert "hunter2" not in str(caught.value)
    assert "postgresql://***@127.0.0.1:9/db" in str(caught.value)


def test_the_password_may_be_a_reference_kept_out_of_the_url(database_url: str, table: str) -> None:
    assert {"url", "password"} <= reference_options(SqlBackend)
    if not database_url.startswith("postgresql"):
        pytest.skip("trust authentication takes any password on the test PostgreSQL only")
    options = {"url": database_url, "password": "@env:SQL_PASSWORD", "table": table, "create": "true"}
    backend = create_backend("sql", "a", options, environ={"SQL_PASSWORD": "s3cret-pw"})
    assert isinstance(backend, SqlBackend)
    assert "s3cret-pw" not in repr(backend.options)
    with backend:
        backend.upload([make_record("event", 1, "created", 1)])
    assert redact_options("sql", {"url": "postgresql://u:pw@h/db", "password": "x"})["password"] == "***"


def test_options_are_prepared_where_the_agent_is_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SqlBackend.Options(url="sqlite:///mirror.db")
    assert SqlBackend.prepare_options(relative, {"url": "sqlite:///mirror.db"}) == {
        "url": f"sqlite:///{tmp_path / 'mirror.db'}"
    }
    twice = SqlBackend.Options(url="postgresql://u:pw@h/db", password="pw")
    with pytest.raises(ConfigurationError, match="option 'password'"):
        SqlBackend.prepare_options(twice, {})
    with pytest.raises(ValueError, match="not supported"):
        SqlBackend.Options(url="oracle://h/db")
    assert SqlBackend.Options.model_validate({"url": "sqlite://", "schema": "mirror"}).db_schema == "mirror"
