"""Fuzzing invariant 5, "bad input never half-lands", with generated malformed input.

Three doors let data into livesync, and each one is fuzzed here with hypothesis:

- the Python API (``Publisher.emit``, ``emit_many``, ``collect``): wrong types, unknown
  flags, empty, oversized and control-character ids, invalid type names, appear and
  disappear in one change, mixtures of valid and invalid items. Every call must raise
  ``InvalidChange`` (a ``ValueError``) naming the field (and ``item N`` in a batch), and
  nothing may be written: the namespace's keys keep their exact values.
- ``livesync publish --file``: files with invalid JSON, wrong types, unknown flags,
  truncated lines, lines over 1 MiB, invalid UTF-8 and random bytes, each at a known
  line between valid ones. Exit 2, the message names the line (and field), nothing
  written.
- stored data: corrupt members written into a bucket by hand (the layout of DESIGN.md:
  ``b"<seq>:<ts ms>:" + msgpack body`` scored by seq). ``run_agent`` and ``livesync agent
  run`` must stop with the key and the seq of the bad change, the pointer unchanged.

An oracle written from the spec (not livesync's validation code) decides which stored
bodies are valid and which seq is the first bad one.

The number of bad inputs tried is printed at the end of the module and appended as a
JSON line to ``$LIVESYNC_RELIABILITY_REPORT`` when that is set.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.backends import RecordingBackend

from livesync import Publisher
from livesync.changes import FLAG_BITS, FLAGS
from livesync.cli import main
from livesync.codec import encode_body
from livesync.errors import DecodeError, InvalidChange
from livesync.keys import namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.runner import run_agent

REPO = Path(__file__).resolve().parents[2]

#: Bad inputs tried, per door; reported once the module is done.
TRIED: Counter[str] = Counter()

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SLOW = settings(FUZZ, max_examples=60)
FUZZ_LINES = settings(FUZZ, max_examples=25)

# --- the spec, independently of livesync's validation ---------------------------------------

TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
APPEAR_NAMES = ("created", "undeleted", "published")
DISAPPEAR_NAMES = ("deleted", "unpublished")
APPEAR = sum(FLAG_BITS[name] for name in APPEAR_NAMES)
DISAPPEAR = sum(FLAG_BITS[name] for name in DISAPPEAR_NAMES)
ALL_FLAGS = (1 << len(FLAGS)) - 1
MAX_LINE = 1 << 20
#: Byte sequences no UTF-8 decoder may accept: stray bytes, overlong forms, an encoded surrogate, 5-byte forms.
INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]


def spec_type_ok(value: object) -> bool:
    return type(value) is str and TYPE_RE.fullmatch(value) is not None


def spec_id_ok(value: object) -> bool:
    if type(value) is int:
        return 0 <= value < 1 << 63
    if type(value) is not str or not 1 <= len(value) <= 256 or CONTROL.search(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def spec_mask_ok(value: object) -> bool:
    return type(value) is int and 1 <= value <= ALL_FLAGS and not (value & APPEAR and value & DISAPPEAR)


def spec_names_ok(value: object) -> bool:
    if not isinstance(value, list) or not value or not all(type(name) is str and name in FLAGS for name in value):
        return False
    names = set(value)
    return not (names & set(APPEAR_NAMES) and names & set(DISAPPEAR_NAMES))


def first_bad_seq(body: bytes, first: int) -> int | None:
    """Seq of the first invalid change of a stored body (``first`` when it is no list of triples); None: valid."""
    try:
        flat = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        return first
    if not isinstance(flat, list) or not flat or len(flat) % 3:
        return first
    for index in range(len(flat) // 3):
        type_, id_, mask = flat[3 * index : 3 * index + 3]
        if not (spec_type_ok(type_) and spec_id_ok(id_) and spec_mask_ok(mask)):
            return first + index
    return None


def line_is_valid_change(raw: bytes) -> bool:
    """Whether ``publish --file`` must accept this line (or skip it as blank)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not text.strip():
        return True  # blank lines are skipped, not bad
    try:
        item = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(item, dict)
        and set(item) == {"type", "id", "changes"}
        and spec_type_ok(item["type"])
        and spec_id_ok(item["id"])
        and spec_names_ok(item["changes"])
    )


# --- strategies -----------------------------------------------------------------------------

valid_types = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
valid_ids = st.one_of(
    st.integers(0, (1 << 63) - 1),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=20),
)
valid_flags = (
    st.lists(st.sampled_from(FLAGS), min_size=1, max_size=4)
    .filter(lambda names: not (set(names) & set(APPEAR_NAMES) and set(names) & set(DISAPPEAR_NAMES)))
    .map(lambda names: list(dict.fromkeys(names)))
)
valid_triples = st.tuples(valid_types, valid_ids, valid_flags)

#: Values of the wrong type for any field.
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=6),
    st.tuples(st.integers()),
    st.complex_numbers(allow_nan=False, max_magnitude=10),
)
bad_types = st.one_of(
    junk,
    st.integers(),
    st.text(max_size=70).filter(lambda s: not TYPE_RE.fullmatch(s)),
    st.from_regex(r"[a-z][a-z0-9_]{64,80}", fullmatch=True),
    st.sampled_from(["", "Event", "1event", "event-1", "événement", "event ", " event", "ev.ent", "_event"]),
)
control_chars = st.characters(min_codepoint=0, max_codepoint=0x9F).filter(lambda c: CONTROL.match(c) is not None)
bad_ids = st.one_of(
    junk.filter(lambda value: not isinstance(value, str | int)),
    st.integers(max_value=-1),
    st.integers(min_value=1 << 63, max_value=1 << 70),
    st.just(""),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=257, max_size=300),
    st.tuples(st.text(max_size=10), control_chars, st.text(max_size=10)).map("".join),
    st.text(st.characters(categories=("Cs",)), min_size=1, max_size=3),
)
unknown_flag_names = st.text(max_size=30).filter(lambda name: name not in FLAGS)
appear_and_disappear = st.tuples(
    st.lists(st.sampled_from(APPEAR_NAMES), min_size=1, max_size=2),
    st.lists(st.sampled_from(DISAPPEAR_NAMES), min_size=1, max_size=2),
    st.lists(st.sampled_from(FLAGS), max_size=2),
    st.randoms(use_true_random=False),
).map(lambda parts: parts[3].sample(parts[0] + parts[1] + parts[2], len(parts[0] + parts[1] + parts[2])))


def _insert(parts: tuple[list[Any], Any, int]) -> list[Any]:
    values, extra, at = parts
    at = at % (len(values) + 1)
    return [*values[:at], extra, *values[at:]]


#: Flag lists (as varargs of ``emit``) that must be refused.
bad_flag_args = st.one_of(
    st.just([]),
    st.tuples(valid_flags, junk.filter(lambda value: not isinstance(value, str)), st.integers(0, 5)).map(_insert),
    st.tuples(valid_flags, st.integers(), st.integers(0, 5)).map(_insert),
    st.tuples(valid_flags, unknown_flag_names, st.integers(0, 5)).map(_insert),
    appear_and_disappear,
)
#: Values of the ``changes`` field that must be refused (not a list at all, or a bad list).
bad_changes = st.one_of(
    bad_flag_args,
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=5),
    st.sampled_from(FLAGS),  # a bare string is not a list of flags
    st.dictionaries(st.sampled_from(FLAGS), st.booleans(), min_size=1, max_size=2),
)


@st.composite
def broken_change(draw: st.DrawFn, changes: st.SearchStrategy[Any] = bad_changes) -> tuple[str, Any, Any, Any]:
    """A change with exactly one bad field: ``(field, type, id, changes)``."""
    type_, id_, flags = draw(valid_triples)
    field = draw(st.sampled_from(["type", "id", "changes"]))
    if field == "type":
        type_ = draw(bad_types)
    elif field == "id":
        id_ = draw(bad_ids)
    else:
        flags = draw(changes)
    return field, type_, id_, flags


def field_matches(error: InvalidChange, prefix: str, field: str) -> bool:
    """The error names ``prefix + field`` (flags errors may name ``changes[i]``)."""
    named = error.field.startswith(prefix + field) if field == "changes" else error.field == prefix + field
    return named and str(error).startswith(error.field + ": ")


# --- fixtures -------------------------------------------------------------------------------


def snapshot(client: redis.Redis, namespace: str) -> dict[bytes, object]:
    """Every key of the namespace with its full value."""
    state: dict[bytes, object] = {}
    for key in client.scan_iter(match=f"livesync:{{{namespace}*", count=1000):
        kind = client.type(key)
        if kind == b"string":
            state[key] = client.get(key)
        elif kind == b"zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            state[key] = client.hgetall(key)
        elif kind == b"list":
            state[key] = client.lrange(key, 0, -1)
        else:
            state[key] = (kind, client.dump(key))
    return state


@pytest.fixture(scope="module", autouse=True)
def report_tried(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many bad inputs were tried; append it to $LIVESYNC_RELIABILITY_REPORT."""
    yield
    total = sum(TRIED.values())
    line = f"test_rel_fuzz: {total} bad inputs tried ({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n{line}")
    path = os.environ.get("LIVESYNC_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"suite": "test_rel_fuzz", "bad_inputs": total, "by_kind": dict(TRIED)}) + "\n")


@pytest.fixture
def seeded_publisher(real_redis: redis.Redis, namespace: str) -> Publisher:
    """A publisher whose namespace already holds one change (meta, bucket and head exist)."""
    pub = Publisher(real_redis, namespace)
    assert pub.emit("event", 1, "created") == 1
    return pub


@pytest.fixture
def unchanged(real_redis: redis.Redis, namespace: str, seeded_publisher: Publisher) -> Callable[[], None]:
    """Assert the namespace holds exactly what it held after the first valid publish."""
    before = snapshot(real_redis, namespace)
    head_key = namespace_keys(namespace).partition(0).seq

    def check() -> None:
        assert real_redis.get(head_key) == b"1", "the head moved"
        assert snapshot(real_redis, namespace) == before, "a key of the namespace was written"

    return check


# --- the Python API -----------------------------------------------------------------------------


@FUZZ
@given(bad=broken_change(changes=bad_flag_args))
def test_emit_refuses_every_malformed_change_naming_the_field(
    seeded_publisher: Publisher, unchanged: Callable[[], None], bad: tuple[str, Any, Any, Any]
) -> None:
    # Given a change with one bad field (flags as emit's varargs)
    field, type_, id_, flags = bad
    TRIED["emit"] += 1

    # When it is emitted
    with pytest.raises(InvalidChange) as info:
        seeded_publisher.emit(type_, id_, *flags)

    # Then InvalidChange (a ValueError) names that field, and nothing was written
    assert isinstance(info.value, ValueError)
    assert field_matches(info.value, "", field), (field, str(info.value))
    unchanged()


@st.composite
def bad_item(draw: st.DrawFn) -> tuple[str | None, Any]:
    """One item emit_many must refuse, with the field its error names (None: the item as a whole)."""
    kind = draw(st.sampled_from(["tuple", "dict", "unknown key", "missing key", "shape"]))
    if kind in ("tuple", "dict"):
        field, type_, id_, changes = draw(broken_change())
        if kind == "tuple":
            return field, draw(st.sampled_from([tuple, list]))((type_, id_, changes))
        return field, {"type": type_, "id": id_, "changes": changes}
    type_, id_, changes = draw(valid_triples)
    item = {"type": type_, "id": id_, "changes": changes}
    if kind == "unknown key":
        key = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(lambda k: k not in item))
        return key, {**item, key: draw(st.integers())}
    if kind == "missing key":
        missing = draw(st.sampled_from(sorted(item)))
        del item[missing]
        return missing, item
    shape = draw(
        st.one_of(
            st.tuples(valid_types, valid_ids),
            st.tuples(valid_types, valid_ids, valid_flags, st.integers()),
            st.just(()),
            st.none(),
            st.integers(),
            st.text(min_size=3, max_size=3),
            st.binary(min_size=3, max_size=3),
            st.frozensets(st.integers(), min_size=3, max_size=3),
        )
    )
    return None, shape


@FUZZ
@given(
    good=st.lists(valid_triples, max_size=8),
    bad=st.lists(st.tuples(st.integers(0, 8), bad_item()), min_size=1, max_size=3),
    as_dicts=st.booleans(),
)
def test_emit_many_refuses_a_batch_with_any_bad_item_naming_item_and_field(
    seeded_publisher: Publisher,
    unchanged: Callable[[], None],
    good: list[tuple[str, Any, list[str]]],
    bad: list[tuple[int, tuple[str | None, Any]]],
    as_dicts: bool,
) -> None:
    # Given valid items (tuples or dicts) with one to three bad items mixed in
    items: list[Any] = [{"type": t, "id": i, "changes": c} if as_dicts else (t, i, c) for t, i, c in good]
    positions: list[tuple[int, str | None]] = []
    for at, (field, item) in bad:
        at = min(at, len(items))
        positions = [(p + 1 if p >= at else p, f) for p, f in positions]
        items.insert(at, item)
        positions.append((at, field))
    first, field = min(positions, key=lambda position: position[0])
    TRIED["emit_many"] += 1

    # When the batch is emitted
    with pytest.raises(InvalidChange) as info:
        seeded_publisher.emit_many(items)

    # Then the error names the first bad item's index and field, and nothing of the batch was written
    message = str(info.value)
    assert message.startswith(f"item {first}: ") or message.startswith(f"item {first}:"), (first, message)
    if field is not None:
        assert field_matches(info.value, f"item {first}: ", field), (field, message)
    unchanged()


@FUZZ
@given(items=st.one_of(st.none(), st.integers(), st.text(), st.binary(), st.dictionaries(st.text(), st.integers())))
def test_emit_many_refuses_what_is_not_a_list_of_changes(
    seeded_publisher: Publisher, unchanged: Callable[[], None], items: Any
) -> None:
    # Given something that is not a collection of items
    TRIED["emit_many"] += 1

    # When / Then emit_many refuses it naming "items", and nothing was written
    with pytest.raises(InvalidChange, match=r"^items: "):
        seeded_publisher.emit_many(items)
    unchanged()


@FUZZ
@given(good=st.lists(valid_triples, max_size=5), bad=broken_change(changes=bad_flag_args), position=st.integers(0, 5))
def test_collect_refuses_a_bad_change_and_discards_the_whole_unit(
    seeded_publisher: Publisher,
    unchanged: Callable[[], None],
    good: list[tuple[str, Any, list[str]]],
    bad: tuple[str, Any, Any, Any],
    position: int,
) -> None:
    # Given a unit of work that emits valid changes and, somewhere among them, a bad one
    field, type_, id_, flags = bad
    position = min(position, len(good))
    TRIED["collect"] += 1

    # When the unit runs
    with pytest.raises(InvalidChange) as info, seeded_publisher.collect() as unit:
        for type_ok, id_ok, flags_ok in good[:position]:
            unit.emit(type_ok, id_ok, *flags_ok)
        unit.emit(type_, id_, *flags)
        for type_ok, id_ok, flags_ok in good[position:]:
            unit.emit(type_ok, id_ok, *flags_ok)

    # Then the error names the field, and nothing of the unit was published
    assert field_matches(info.value, "", field), (field, str(info.value))
    assert unit.seqs == []
    unchanged()


def test_appear_and_disappear_in_one_change_is_refused_everywhere_but_split_by_collect(
    seeded_publisher: Publisher, unchanged: Callable[[], None]
) -> None:
    # Given / When created + deleted is emitted as one change, alone or in a batch
    for call in (
        lambda: seeded_publisher.emit("event", 9, "created", "deleted"),
        lambda: seeded_publisher.emit_many([("event", 8, ["moved"]), ("event", 9, ["published", "unpublished"])]),
    ):
        TRIED["emit"] += 1
        # Then it is refused naming the changes, and nothing is written
        with pytest.raises(InvalidChange, match=r"changes: .*both appear and disappear"):
            call()
        unchanged()

    # Given / When a unit emits the two flags one after the other
    with seeded_publisher.collect() as unit:
        unit.emit("event", 9, "created")
        unit.emit("event", 9, "deleted")

    # Then collect split them into two changes, in order
    assert len(unit.seqs) == 2
    assert unit.seqs[1] == unit.seqs[0] + 1


# --- livesync publish --file -----------------------------------------------------------------


@pytest.fixture
def publish_file_cli(redis_url: str, namespace: str, unchanged: Callable[[], None]) -> Callable[[bytes], Result]:
    """``livesync publish --file -`` in-process on the test's namespace (which holds one change)."""
    runner = CliRunner()
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}

    def invoke(data: bytes) -> Result:
        return runner.invoke(main, ["publish", "--file", "-"], input=data, env=env)

    return invoke


def valid_line(triple: tuple[str, Any, list[str]]) -> bytes:
    type_, id_, changes = triple
    return json.dumps({"type": type_, "id": id_, "changes": changes}).encode()


def json_safe(value: object) -> bool:
    """Whether ``json.dumps`` writes ``value`` as it is (no tuples, bytes, sets or complex numbers)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(map(json_safe, value))
    if isinstance(value, dict):
        return all(isinstance(key, str) and json_safe(item) for key, item in value.items())
    return False


LINE_KINDS = [
    "invalid json",
    "wrong type",
    "unknown flag",
    "unknown field",
    "missing field",
    "truncated",
    "utf-8",
    "bytes",
]


@st.composite
def bad_line(draw: st.DrawFn, kind: str) -> tuple[bytes, str]:
    """A line of ``kind`` ``publish --file`` must refuse: ``(raw bytes without newline, expected message part)``."""
    triple = draw(valid_triples)
    item: dict[str, Any] = {"type": triple[0], "id": triple[1], "changes": triple[2]}
    if kind == "invalid json":
        text = draw(st.text(st.characters(exclude_characters="\n"), min_size=1, max_size=60))
        return text.encode("utf-8", "surrogatepass"), ""
    if kind == "wrong type":
        field, type_, id_, changes = draw(broken_change().filter(lambda bad: all(map(json_safe, bad[1:]))))
        return json.dumps({"type": type_, "id": id_, "changes": changes}).encode(), field
    if kind == "unknown flag":
        item["changes"] = _insert((list(item["changes"]), draw(unknown_flag_names), draw(st.integers(0, 4))))
        return json.dumps(item).encode(), "changes["
    if kind == "unknown field":
        key = draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda k: k not in item))
        item[key] = draw(st.integers())
        return json.dumps(item).encode(), f"{key}: unknown field"
    if kind == "missing field":
        missing = draw(st.sampled_from(sorted(item)))
        del item[missing]
        return json.dumps(item).encode(), f"{missing}: field required"
    if kind == "truncated":
        raw = json.dumps(item).encode()
        return raw[: draw(st.integers(1, len(raw) - 1))], "invalid JSON"
    if kind == "utf-8":
        raw = json.dumps(item, ensure_ascii=False).encode()
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from(INVALID_UTF8)) + raw[at:], "not valid UTF-8"
    assert kind == "bytes"
    return draw(st.binary(min_size=1, max_size=80)).replace(b"\n", b""), ""


@pytest.mark.parametrize("kind", LINE_KINDS)
@FUZZ_LINES
@given(
    data=st.data(),
    before=st.lists(st.one_of(valid_triples.map(valid_line), st.sampled_from([b"", b"   ", b"\t"])), max_size=5),
    after=st.lists(valid_triples.map(valid_line), max_size=3),
    final_newline=st.booleans(),
)
def test_publish_file_refuses_a_malformed_line_naming_it_and_publishes_nothing(
    publish_file_cli: Callable[[bytes], Result],
    unchanged: Callable[[], None],
    kind: str,
    data: st.DataObject,
    before: list[bytes],
    after: list[bytes],
    final_newline: bool,
) -> None:
    # Given a file of valid (and blank) lines with one malformed line of the kind at a known number
    raw, expected = data.draw(bad_line(kind))
    assume(raw and not line_is_valid_change(raw))
    number = len(before) + 1
    content = b"\n".join([*before, raw, *after]) + (b"\n" if final_newline else b"")
    TRIED[f"publish --file: {kind}"] += 1

    # When it is published
    result = publish_file_cli(content)

    # Then the command fails with exit 2 and one line naming the line (and the field), and nothing is published
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert f"line {number}: {expected}" in result.stderr, (raw, result.stderr)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    unchanged()


HUGE: dict[str, tuple[bytes, str]] = {
    "1 MiB + 1 of garbage": (b"x" * (MAX_LINE + 1), f"longer than {MAX_LINE} bytes"),
    "valid JSON with an id over 1 MiB": (
        json.dumps({"type": "event", "id": "i" * MAX_LINE, "changes": ["created"]}).encode(),
        f"longer than {MAX_LINE} bytes",
    ),
    "exactly 1 MiB, not JSON": (b"y" * MAX_LINE, "invalid JSON"),
    "3 MiB of spaces then a brace": (b" " * (3 * MAX_LINE) + b"{", f"longer than {MAX_LINE} bytes"),
}


@pytest.mark.parametrize("final_newline", [True, False], ids=["newline", "eof"])
@pytest.mark.parametrize(("raw", "expected"), list(HUGE.values()), ids=list(HUGE))
def test_publish_file_refuses_huge_lines_naming_them(
    publish_file_cli: Callable[[bytes], Result],
    unchanged: Callable[[], None],
    raw: bytes,
    expected: str,
    final_newline: bool,
) -> None:
    # Given a huge line 3 between valid ones (last when the file ends without newline)
    lines = [valid_line(("event", 5, ["created"])), valid_line(("event", 6, ["created"])), raw]
    if final_newline:
        lines.append(valid_line(("event", 7, ["created"])))
    TRIED["publish --file: huge"] += 1

    # When it is published
    result = publish_file_cli(b"\n".join(lines) + (b"\n" if final_newline else b""))

    # Then exit 2 names line 3 and why, and nothing is published
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"line 3: {expected}" in result.stderr
    unchanged()


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"type": ' + b"[" * 5000 + b"]" * 5000 + b', "id": 1}'])
def test_publish_file_refuses_deeply_nested_json_naming_the_line(
    publish_file_cli: Callable[[bytes], Result], unchanged: Callable[[], None], raw: bytes
) -> None:
    # Given a file whose second line is deeply nested JSON (far under the 1 MiB line limit)
    TRIED["publish --file: deep nesting"] += 1
    data = valid_line(("event", 5, ["created"])) + b"\n" + raw + b"\n"

    # When it is published
    result = publish_file_cli(data)

    # Then, like any other bad line: exit 2 naming line 2, nothing published
    unchanged()
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    assert "line 2: " in result.stderr


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"type": "event", "id": 1, "changes": ["cr\xe9ated"]}', "line 2: not valid UTF-8"),
        (bytes(range(256)).replace(b"\n", b""), "line 2: "),
    ],
    ids=["latin-1 flag", "every byte"],
)
def test_publish_file_subprocess_fails_with_one_line_and_exit_2(
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    unchanged: Callable[[], None],
    raw: bytes,
    expected: str,
) -> None:
    # Given a file with a bad second line, published by a real `livesync publish --file` process
    path = tmp_path / "changes.jsonl"
    path.write_bytes(valid_line(("event", 5, ["created"])) + b"\n" + raw + b"\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVESYNC_")}
    env.update({"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace})
    TRIED["publish --file: subprocess"] += 1

    # When it runs
    done = subprocess.run(
        [sys.executable, "-m", "livesync", "publish", "--file", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    # Then exit 2 with exactly one line on stderr naming the line, nothing on stdout, nothing published
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(f"Error: {expected}") and done.stderr.count("\n") == 1, done.stderr
    unchanged()


# --- corrupt stored members ------------------------------------------------------------------------

AGENT = "fuzzed"
BUCKET = 29_000_000
TS = BUCKET * 60 * 1000 + 1234
CREATED = FLAG_BITS["created"]


def packable(value: object) -> bool:
    """Whether msgpack can store ``value`` (ints in 64 bits, no sets or complex numbers)."""
    try:
        msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass")
    except (OverflowError, TypeError, ValueError):
        return False
    return True


@st.composite
def corrupt_body(draw: st.DrawFn) -> bytes:
    """A stored member body that is not a valid run of changes."""
    kind = draw(st.sampled_from(["bytes", "one bad field", "not triples", "truncated", "trailing garbage"]))
    triples = draw(st.lists(st.tuples(valid_types, valid_ids, st.integers(1, ALL_FLAGS)), min_size=1, max_size=4))
    triples = [(t, i, m) for t, i, m in triples if spec_mask_ok(m)] or [("event", 1, CREATED)]
    flat: list[Any] = [value for triple in triples for value in triple]
    if kind == "bytes":
        return draw(st.binary(max_size=48))
    if kind == "one bad field":
        index = draw(st.integers(0, len(triples) - 1))
        field = draw(st.integers(0, 2))
        bad = [
            bad_types,
            bad_ids,
            st.one_of(
                st.integers(-(1 << 40), 0),
                st.integers(ALL_FLAGS + 1, 1 << 40),
                st.sampled_from([APPEAR | DISAPPEAR, CREATED | FLAG_BITS["deleted"]]),
                junk.filter(lambda value: not isinstance(value, int) or isinstance(value, bool)),
                st.sampled_from(FLAGS),
            ),
        ][field]
        flat[3 * index + field] = draw(bad.filter(packable))
        return msgpack.packb(flat, use_bin_type=True, unicode_errors="surrogatepass")
    if kind == "not triples":
        shape = draw(
            st.one_of(
                st.just(flat[:-1]),
                st.just([*flat, "event"]),
                st.just([]),
                st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
                st.integers(),
                st.text(max_size=10),
                st.none(),
            ).filter(packable)
        )
        return msgpack.packb(shape, use_bin_type=True)
    body = encode_body(triples)
    if kind == "truncated":
        return body[: draw(st.integers(0, len(body) - 1))]
    return body + draw(st.binary(min_size=1, max_size=8))


@pytest.fixture
def corrupt_setup(real_redis: redis.Redis, namespace: str) -> SyncManager:
    """A namespace with an agent of the null backend reading from seq 0."""
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id=AGENT, backend="null", update_time=0), start="head")
    return manager


def write_track(client: redis.Redis, namespace: str, bad: bytes) -> tuple[int, int]:
    """Seqs 1-3 valid, a corrupt member at seq 4, two valid changes after it; return (head, bad seq)."""
    keys = namespace_keys(namespace).partition(0)
    expected = first_bad_seq(bad, 4)
    assert expected is not None
    claimed = max(1, len(bad) // 3)  # room for however many changes the member might hold
    after = 4 + claimed
    head = after + 1
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.bucket(BUCKET), keys.buckets, keys.lock(AGENT))
    pipe.zadd(keys.bucket(BUCKET), {f"1:{TS}:".encode() + encode_body([("event", i, CREATED) for i in (1, 2, 3)]): 1})
    pipe.zadd(keys.bucket(BUCKET), {f"4:{TS}:".encode() + bad: 4})
    pipe.zadd(keys.bucket(BUCKET), {f"{after}:{TS}:".encode() + encode_body([("event", 9, CREATED)] * 2): after})
    pipe.zadd(keys.buckets, {str(BUCKET): 1})
    pipe.set(keys.seq, head)
    pipe.hset(keys.pointers, AGENT, 0)
    pipe.execute()
    return head, expected


@FUZZ_SLOW
@given(body=corrupt_body())
def test_corrupt_member_stops_run_and_cli_with_key_and_seq_pointer_unchanged(
    corrupt_setup: SyncManager, real_redis: redis.Redis, redis_url: str, namespace: str, body: bytes
) -> None:
    # Given a bucket whose member at seq 4 is corrupt, between valid changes
    assume(first_bad_seq(body, 4) is not None)
    _head, bad_seq = write_track(real_redis, namespace, body)
    key = namespace_keys(namespace).partition(0).bucket(BUCKET)
    TRIED["corrupt member"] += 1

    # When the agent runs in-process
    backend = RecordingBackend(AGENT)
    with pytest.raises(DecodeError) as info:
        run_agent(corrupt_setup, AGENT, 0, backend=backend)

    # Then the run stops naming the key and the first bad seq, uploads nothing, and the pointer stays
    assert (info.value.key, info.value.seq) == (key, bad_seq), str(info.value)
    assert f"corrupt change in {key} at seq {bad_seq}: " in str(info.value)
    assert backend.batches == []
    assert corrupt_setup.pointers(AGENT) == [0]
    assert key in (corrupt_setup.get_agent(AGENT).last_error or "")

    # When `livesync agent run` runs it
    result = CliRunner().invoke(
        main, ["agent", "run", AGENT], env={"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}
    )

    # Then it fails with exit 1 and one line naming the key and seq; the pointer stays
    assert result.exit_code == 1, (result.output, result.exception)
    assert f"{key} at seq {bad_seq}: " in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert corrupt_setup.pointers(AGENT) == [0]


@pytest.mark.parametrize("window", [1, 2, 10_000])
def test_corrupt_member_is_never_skipped_whatever_the_window(
    corrupt_setup: SyncManager, real_redis: redis.Redis, namespace: str, window: int
) -> None:
    # Given a corrupt member at seq 4 (its second change has flags 0), valid changes before and after
    body = msgpack.packb(["event", 4, CREATED, "event", 5, 0])
    _head, bad_seq = write_track(real_redis, namespace, body)
    assert bad_seq == 5
    TRIED["corrupt member"] += 1

    # When the agent runs with small or large windows
    backend = RecordingBackend(AGENT)
    with pytest.raises(DecodeError, match=rf"at seq {bad_seq}: "):
        run_agent(corrupt_setup, AGENT, 0, backend=backend, window=window)

    # Then it delivered and acked the whole windows before the member, never anything at or past it
    acked = {1: 3, 2: 2, 10_000: 0}[window]
    assert sorted(record.seq for record in backend.records) == list(range(1, acked + 1))
    assert corrupt_setup.pointers(AGENT) == [acked]
