"""The track: reading ranges, pointers, fencing (invariant 3), pruning (invariant 4), corrupt data.

Several buckets need several server times. Rather than sleeping, some tests write the
documented Redis layout by hand (DESIGN.md, "Redis layout"): a member
``b"<seq>:<version>:" + msgpack body`` scored by its first seq in ``b:<bucket>`` (the
version is server microseconds: a version of ``ts * 1000`` reads back with that ``ts`` in
ms), the bucket id scored by its first seq in ``buckets``, and the head in ``seq``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from livesync.changes import FLAG_BITS
from livesync.codec import encode_body
from livesync.errors import DecodeError, LockLost
from livesync.keys import PartitionKeys, namespace_keys
from livesync.namespace import ensure_meta
from livesync.records import ObjectId
from livesync.track import Track

GRANULARITY = 60
CREATED = FLAG_BITS["created"]
MOVED = FLAG_BITS["moved"]
AGENT = "search"
TOKEN = "token-1"

Triple = tuple[str, ObjectId, int]


@pytest.fixture
def track(any_redis: Any, keys: PartitionKeys) -> Track:
    """Partition 0 of the test's namespace, created with 60 s buckets (its epoch lets it publish)."""
    meta = ensure_meta(any_redis, namespace_keys(keys.namespace), granularity=GRANULARITY)
    return Track(any_redis, keys, GRANULARITY, meta.epoch)


def publish(track: Track, *runs: int) -> list[int]:
    """Publish one call made of runs (members) of the given sizes; return the seqs."""
    body_runs: list[tuple[int, bytes]] = []
    for size in runs:
        body_runs.append((size, encode_body([("event", i, MOVED) for i in range(size)])))
    first = track.publish(body_runs)
    return list(range(first, first + sum(runs)))


def write_member(redis: Any, keys: PartitionKeys, bucket: int, seq: int, ts: int, changes: Sequence[Triple]) -> None:
    """Store a member by hand, as the publish script would, and raise the head to its last seq.

    Its first version is ``ts * 1000`` (microseconds), so its changes read back with ``ts``.
    """
    raw = f"{seq}:{ts * 1000}:".encode() + encode_body(changes)
    write_raw(redis, keys, bucket, seq, raw, head=seq + len(changes) - 1)


def write_raw(redis: Any, keys: PartitionKeys, bucket: int, seq: int, raw: bytes, head: int) -> None:
    """Store raw member bytes at ``seq`` in ``bucket`` (first seq of a bucket indexes it)."""
    redis.zadd(keys.bucket(bucket), {raw: seq})
    redis.zadd(keys.buckets, {str(bucket): seq}, nx=True)
    redis.set(keys.seq, max(head, int(redis.get(keys.seq) or 0)))


def ms(bucket: int, offset_ms: int = 0) -> int:
    """A server time in ``bucket`` (60 s buckets)."""
    return bucket * GRANULARITY * 1000 + offset_ms


def three_buckets(redis: Any, keys: PartitionKeys) -> None:
    """Buckets 100 (seqs 1-3), 101 (4-6), 102 (7-9); one member of three changes each."""
    for index, bucket in enumerate((100, 101, 102)):
        first = 3 * index + 1
        triples: list[Triple] = [("event", seq, CREATED) for seq in range(first, first + 3)]
        write_member(redis, keys, bucket, first, ms(bucket, 1000), triples)


def timed_buckets(redis: Any, keys: PartitionKeys) -> None:
    """Changes at known times; bucket 102 is empty (nothing happened in that minute).

    bucket 100: seq 1 at +1000 ms, seqs 2-3 (one member) at +2000 ms;
    bucket 101: seq 4 at +500 ms, seq 5 at +1000 ms; bucket 103: seq 6 at +0 ms.
    """
    write_member(redis, keys, 100, 1, ms(100, 1000), [("event", 1, CREATED)])
    write_member(redis, keys, 100, 2, ms(100, 2000), [("event", 2, CREATED), ("event", 3, CREATED)])
    write_member(redis, keys, 101, 4, ms(101, 500), [("event", 4, CREATED)])
    write_member(redis, keys, 101, 5, ms(101, 1000), [("event", 5, CREATED)])
    write_member(redis, keys, 103, 6, ms(103, 0), [("event", 6, CREATED)])


TIMES = {1: ms(100, 1000), 2: ms(100, 2000), 3: ms(100, 2000), 4: ms(101, 500), 5: ms(101, 1000), 6: ms(103)}


def seqs(changes: Any) -> list[int]:
    return [change.seq for change in changes]


# --- reading ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "till"),
    [(0, None), (0, 9), (1, 5), (3, 7), (2, 2), (4, 4), (5, 3), (8, 9), (9, None), (7, 100), (0, 1)],
)
def test_iter_changes_returns_exactly_after_to_till(track: Track, after: int, till: int | None) -> None:
    # Given one publish call of three members: seqs 1-3, 4-7 and 8-9
    publish(track, 3, 4, 2)
    # When the range ]after, till] is read (bounds may fall in the middle of a member)
    changes = list(track.iter_changes(after, till))
    # Then exactly the seqs after < seq <= till come back, in order
    last = 9 if till is None else min(till, 9)
    assert seqs(changes) == list(range(after + 1, last + 1))


@pytest.mark.parametrize(("after", "till"), [(0, None), (1, 8), (3, 4), (4, 9), (5, 6), (6, 7), (2, 3)])
def test_iter_changes_spans_buckets(
    track: Track, any_redis: Any, keys: PartitionKeys, after: int, till: int | None
) -> None:
    # Given three buckets of three changes each
    three_buckets(any_redis, keys)
    # When a range crossing bucket borders is read
    changes = list(track.iter_changes(after, till))
    # Then exactly ]after, till] comes back, in order
    last = 9 if till is None else till
    assert seqs(changes) == list(range(after + 1, last + 1))
    assert [change.id for change in changes] == list(range(after + 1, last + 1))


def test_iter_changes_pages_through_many_members(track: Track) -> None:
    # Given 300 members of one change each (more than one page of members)
    publish(track, *([1] * 300))
    # When a range inside them is read
    changes = list(track.iter_changes(70, 280))
    # Then every change of the range comes back once, in order
    assert seqs(changes) == list(range(71, 281))


def test_iter_changes_reads_across_more_buckets_than_one_index_page(
    track: Track, any_redis: Any, keys: PartitionKeys
) -> None:
    # Given 300 buckets of one change each (the bucket index is read 256 at a time)
    pipe = any_redis.pipeline(transaction=False)
    for seq in range(1, 301):
        bucket = 1000 + seq
        raw = f"{seq}:{ms(bucket)}:".encode() + encode_body([("event", seq, CREATED)])
        pipe.zadd(keys.bucket(bucket), {raw: seq})
        pipe.zadd(keys.buckets, {str(bucket): seq})
    pipe.set(keys.seq, 300)
    pipe.execute()
    # When everything, and a range starting past the first index page, are read
    # Then every change comes back once, in order
    assert seqs(track.values()) == list(range(1, 301))
    assert seqs(track.iter_changes(255, 290)) == list(range(256, 291))


def test_iter_windows_yields_bounded_lists_covering_the_range(track: Track) -> None:
    # Given ten stored changes in two members
    publish(track, 6, 4)
    # When ]1, 9] is read in windows of four
    windows = list(track.iter_windows(1, 9, 4))
    # Then the windows hold at most four changes and together cover the range in order
    assert [len(window) for window in windows] == [4, 4]
    assert [c.seq for window in windows for c in window] == list(range(2, 10))


def test_iter_windows_last_window_holds_the_rest(track: Track) -> None:
    # Given ten stored changes
    publish(track, 10)
    # When ]0, 10] is read in windows of four
    windows = list(track.iter_windows(0, 10, 4))
    # Then the last window holds the remaining two
    assert [seqs(window) for window in windows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_iter_windows_of_empty_range_yields_nothing(track: Track) -> None:
    # Given stored changes
    publish(track, 5)
    # When an empty range is read in windows
    windows = list(track.iter_windows(5, 5, 4))
    # Then no window is yielded
    assert windows == []


def test_values_yields_every_stored_change_in_order(track: Track) -> None:
    # Given two publish calls
    publish(track, 2, 3)
    publish(track, 1)
    # When every value is read
    changes = list(track.values())
    # Then all six come back, in seq order
    assert seqs(changes) == [1, 2, 3, 4, 5, 6]


# --- head, size, ends --------------------------------------------------------------------------


def test_empty_track_has_no_ends_and_size_zero(track: Track) -> None:
    # Given a track nothing was published to
    # When its ends and size are asked
    # Then there is nothing
    assert track.head() == 0
    assert track.size() == 0
    assert track.oldest() is None
    assert track.newest() is None
    assert list(track.values()) == []


def test_non_empty_track_reports_head_size_and_ends(track: Track) -> None:
    # Given two publish calls, the last ending in a packed member of three
    publish(track, 2)
    publish(track, 1, 3)
    # When its ends and size are asked
    # Then oldest and newest are the first and last change, even inside a packed member
    assert track.head() == 6
    assert track.size() == 6
    oldest, newest = track.oldest(), track.newest()
    assert oldest is not None and newest is not None
    assert (oldest.seq, newest.seq) == (1, 6)
    assert newest.id == 2


def test_size_counts_only_changes_still_stored(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given three buckets of which the first was pruned
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, 3)
    track.prune()
    # When size and ends are asked
    # Then they count from the oldest stored change to the head
    assert track.size() == 6
    oldest = track.oldest()
    assert oldest is not None and oldest.seq == 4


# --- pointers ------------------------------------------------------------------------------


def test_add_pointer_creates_the_pointer(track: Track) -> None:
    # Given a track without pointers
    # When an agent's pointer is added at seq 3
    track.add_pointer(AGENT, 3)
    # Then it reads back
    assert track.pointer(AGENT) == 3
    assert track.pointers() == {AGENT: 3}


def test_pointer_of_unknown_agent_is_none(track: Track) -> None:
    # Given a track with another agent's pointer
    track.add_pointer("other", 1)
    # When an agent without pointer is asked
    # Then it has none
    assert track.pointer(AGENT) is None


def test_move_pointer_sets_it_either_way(track: Track) -> None:
    # Given an agent at seq 5
    track.add_pointer(AGENT, 5)
    # When an operator moves it back and then forward
    track.move_pointer(AGENT, 2)
    back = track.pointer(AGENT)
    track.move_pointer(AGENT, 9)
    # Then each move takes effect unconditionally
    assert (back, track.pointer(AGENT)) == (2, 9)


def test_remove_pointer_drops_pointer_and_lock(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given an agent with a pointer and a run lock
    track.add_pointer(AGENT, 4)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When its pointer is removed
    track.remove_pointer(AGENT)
    # Then the pointer and the lock are gone
    assert track.pointer(AGENT) is None
    assert track.pointers() == {}
    assert any_redis.exists(keys.lock(AGENT)) == 0


def test_pointers_lists_every_agent(track: Track) -> None:
    # Given three agents
    track.add_pointer("a", 1)
    track.add_pointer("b", 7)
    track.add_pointer("c", 0)
    # When every pointer is asked
    # Then each agent's pointer is returned under its id
    assert track.pointers() == {"a": 1, "b": 7, "c": 0}


def test_pending_starts_after_the_pointer(track: Track) -> None:
    # Given eight changes and an agent at seq 3, in the middle of a member
    publish(track, 5, 3)
    track.add_pointer(AGENT, 3)
    # When its pending changes are read
    # Then they run from seq 4 to the head
    assert seqs(track.pending(AGENT)) == [4, 5, 6, 7, 8]


def test_pending_stops_at_till(track: Track) -> None:
    # Given eight changes and an agent at seq 3
    publish(track, 8)
    track.add_pointer(AGENT, 3)
    # When its pending changes up to seq 6 are read
    # Then they are ]3, 6]
    assert seqs(track.pending(AGENT, till=6)) == [4, 5, 6]


def test_pending_of_agent_without_pointer_is_empty(track: Track) -> None:
    # Given stored changes and no pointer for the agent
    publish(track, 3)
    # When its pending changes are read
    # Then there are none
    assert list(track.pending(AGENT)) == []


def test_pending_of_agent_at_head_is_empty(track: Track) -> None:
    # Given an agent that acknowledged everything
    publish(track, 3)
    track.add_pointer(AGENT, 3)
    # When its pending changes are read
    # Then there are none
    assert list(track.pending(AGENT)) == []


# --- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "until"),
    [
        (None, None),
        (TIMES[1], TIMES[2]),
        (TIMES[1] - 1, TIMES[1]),
        (TIMES[2], TIMES[4]),
        (TIMES[1], None),
        (None, TIMES[5] - 1),
        (TIMES[6], None),
        (ms(102, 10_000), None),
        (None, ms(99)),
        (ms(100, 1500), ms(101, 999)),
    ],
)
def test_iter_time_returns_changes_with_ts_in_since_until(
    track: Track, any_redis: Any, keys: PartitionKeys, since: int | None, until: int | None
) -> None:
    # Given changes at known server times over four buckets, one of them empty
    timed_buckets(any_redis, keys)
    # When the changes of ]since, until] are read
    changes = list(track.iter_time(since, until))
    # Then exactly those with since < ts <= until come back, in seq order
    expected = [seq for seq, ts in TIMES.items() if (since is None or ts > since) and (until is None or ts <= until)]
    assert seqs(changes) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (ms(99), 0),
        (TIMES[1] - 1, 0),
        (TIMES[1], 1),
        (TIMES[2] - 1, 1),
        (TIMES[2], 3),
        (ms(100, 59_999), 3),
        (TIMES[4], 4),
        (ms(101, 30_000), 5),
        (ms(102, 30_000), 5),
        (TIMES[6], 6),
        (ms(200), 6),
    ],
)
def test_seq_at_time_is_the_last_seq_published_at_or_before(
    track: Track, any_redis: Any, keys: PartitionKeys, at: int, expected: int
) -> None:
    # Given changes at known server times
    timed_buckets(any_redis, keys)
    # When the seq at a time is asked
    # Then it is the highest seq with ts <= that time (0 before everything)
    assert track.seq_at_time(at) == expected


def test_seq_at_time_of_empty_track_is_the_head(track: Track) -> None:
    # Given an empty track
    # When the seq at any time is asked
    # Then it is the head
    assert track.seq_at_time(ms(100)) == 0


def test_published_change_is_found_by_its_server_time(track: Track) -> None:
    # Given a change published now, and its server time
    [seq] = publish(track, 1)
    [change] = track.values()
    # When the track is read by time around that ts
    # Then ]ts - 1, ts] holds it, ]ts, ...] does not, and seq_at_time(ts) finds it
    assert seqs(track.iter_time(change.ts - 1, change.ts)) == [seq]
    assert list(track.iter_time(change.ts, None)) == []
    assert track.seq_at_time(change.ts) == seq
    assert track.seq_at_time(change.ts - 1) == 0


@pytest.mark.parametrize(
    ("after", "till", "expected"),
    [
        (None, None, [1, 2, 3, 4, 5, 6]),
        (100, 101, [4, 5]),
        (None, 100, [1, 2, 3]),
        (101, None, [6]),
        (101, 102, []),
        (103, None, []),
        (99, 103, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_iter_buckets_returns_changes_of_buckets_in_after_till(
    track: Track,
    any_redis: Any,
    keys: PartitionKeys,
    after: int | None,
    till: int | None,
    expected: list[int],
) -> None:
    # Given changes in buckets 100, 101 and 103
    timed_buckets(any_redis, keys)
    # When the buckets ]after, till] are read
    changes = list(track.iter_buckets(after, till))
    # Then the changes of exactly those buckets come back, in order
    assert seqs(changes) == expected


# --- invariant 3: fencing ---------------------------------------------------------------------


def test_acknowledge_with_the_lock_token_moves_the_pointer(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a head of 10 and an agent at 0 whose run lock holds our token
    any_redis.set(keys.seq, 10)
    track.add_pointer(AGENT, 0)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When it acknowledges seq 5
    track.acknowledge(AGENT, TOKEN, 5)
    # Then its pointer is 5
    assert track.pointer(AGENT) == 5


def test_acknowledge_with_another_token_raises_lock_lost(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given an agent at 2 whose run lock is held by another runner
    track.add_pointer(AGENT, 2)
    any_redis.set(keys.lock(AGENT), "other")
    # When we acknowledge seq 5 with our token
    with pytest.raises(LockLost):
        track.acknowledge(AGENT, TOKEN, 5)
    # Then the pointer stays where it was
    assert track.pointer(AGENT) == 2


@pytest.mark.parametrize("how", ["deleted", "expired"])
def test_acknowledge_after_the_lock_is_gone_raises_lock_lost(
    track: Track, any_redis: Any, keys: PartitionKeys, how: str
) -> None:
    # Given an agent at 2 whose run lock was ours but is gone
    track.add_pointer(AGENT, 2)
    any_redis.set(keys.lock(AGENT), TOKEN)
    if how == "deleted":
        any_redis.delete(keys.lock(AGENT))
    else:
        any_redis.pexpireat(keys.lock(AGENT), 1)  # a deadline in the past: expired now
    # When we acknowledge seq 5
    with pytest.raises(LockLost):
        track.acknowledge(AGENT, TOKEN, 5)
    # Then the pointer stays where it was
    assert track.pointer(AGENT) == 2


def test_acknowledge_behind_the_pointer_raises_lock_lost(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a head of 10 and an agent at 7 whose lock holds our token
    any_redis.set(keys.seq, 10)
    track.add_pointer(AGENT, 7)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When we acknowledge seq 3, behind the pointer
    with pytest.raises(LockLost):
        track.acknowledge(AGENT, TOKEN, 3)
    # Then the pointer is not moved back
    assert track.pointer(AGENT) == 7


def test_acknowledge_at_the_pointer_keeps_it(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a head of 10 and an agent at 7 whose lock holds our token
    any_redis.set(keys.seq, 10)
    track.add_pointer(AGENT, 7)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When we acknowledge seq 7 again (a window with nothing new)
    track.acknowledge(AGENT, TOKEN, 7)
    # Then the pointer is still 7
    assert track.pointer(AGENT) == 7


def test_acknowledge_beyond_the_head_is_refused(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a head of 3 and an agent at 0 whose lock holds our token
    any_redis.set(keys.seq, 3)
    track.add_pointer(AGENT, 0)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When it acknowledges seq 4, past the head
    with pytest.raises(ValueError, match="beyond the head"):
        track.acknowledge(AGENT, TOKEN, 4)
    # Then the pointer stays, so changes published later are not skipped
    assert track.pointer(AGENT) == 0


@pytest.mark.parametrize("lock_after_removal", [False, True])
def test_acknowledge_of_removed_pointer_raises_lock_lost(
    track: Track, any_redis: Any, keys: PartitionKeys, lock_after_removal: bool
) -> None:
    # Given an agent whose pointer was removed while a runner held its lock
    track.add_pointer(AGENT, 2)
    any_redis.set(keys.lock(AGENT), TOKEN)
    track.remove_pointer(AGENT)
    if lock_after_removal:
        any_redis.set(keys.lock(AGENT), TOKEN)  # the lock survives, e.g. re-taken by that runner
    # When the runner acknowledges
    with pytest.raises(LockLost):
        track.acknowledge(AGENT, TOKEN, 5)
    # Then no pointer is created again
    assert track.pointer(AGENT) is None


# --- invariant 4: prune -----------------------------------------------------------------------


def stored_buckets(redis: Any, keys: PartitionKeys, track: Track) -> list[int]:
    """Bucket ids in the index; asserts each indexed bucket key exists and no other does."""
    indexed = [bucket for bucket, _first in track.buckets()]
    existing = sorted(b for b in (100, 101, 102) if redis.exists(keys.bucket(b)))
    assert existing == indexed
    return indexed


@pytest.mark.parametrize(
    ("pointer", "deleted", "left"),
    [(0, 0, [100, 101, 102]), (2, 0, [100, 101, 102]), (3, 1, [101, 102]), (5, 1, [101, 102]), (6, 2, [102])],
)
def test_prune_deletes_only_buckets_whose_last_seq_is_at_or_behind_the_lowest_pointer(
    track: Track, any_redis: Any, keys: PartitionKeys, pointer: int, deleted: int, left: list[int]
) -> None:
    # Given buckets 100 (seqs 1-3), 101 (4-6), 102 (7-9) and one agent at `pointer`
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, pointer)
    # When the track is pruned
    count = track.prune()
    # Then exactly the buckets the agent is past are gone
    assert count == deleted
    assert stored_buckets(any_redis, keys, track) == left


def test_prune_keeps_the_bucket_a_slow_agent_still_needs(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a fast agent at the head and a slow one in the middle of bucket 101
    three_buckets(any_redis, keys)
    track.add_pointer("fast", 9)
    track.add_pointer("slow", 4)
    # When the track is pruned
    count = track.prune()
    # Then only bucket 100 goes; the slow agent keeps 101 (and 102)
    assert count == 1
    assert stored_buckets(any_redis, keys, track) == [101, 102]


def test_prune_without_pointers_deletes_nothing(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given three buckets and no agent
    three_buckets(any_redis, keys)
    # When the track is pruned
    count = track.prune()
    # Then nothing is deleted (an agent added later may start at the tail)
    assert count == 0
    assert stored_buckets(any_redis, keys, track) == [100, 101, 102]


def test_after_prune_every_change_after_the_lowest_pointer_is_readable(
    track: Track, any_redis: Any, keys: PartitionKeys
) -> None:
    # Given three buckets and agents at 5 and 9
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, 5)
    track.add_pointer("fast", 9)
    # When the track is pruned
    track.prune()
    # Then the slow agent's pending changes are complete
    assert seqs(track.pending(AGENT)) == [6, 7, 8, 9]
    assert seqs(track.iter_changes(5)) == [6, 7, 8, 9]


def test_prune_of_everything_keeps_the_head(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given three buckets and one agent at the head
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, 9)
    # When the track is pruned
    count = track.prune()
    # Then every bucket is gone but the head stays, so the next seq is 10
    assert count == 3
    assert (track.head(), track.size(), track.oldest()) == (9, 0, None)
    assert publish(track, 1) == [10]
    assert seqs(track.pending(AGENT)) == [10]


def test_prune_keeps_every_bucket_while_a_pointer_is_beyond_the_head(
    track: Track, any_redis: Any, keys: PartitionKeys
) -> None:
    # Given three buckets (seqs 1-9), an agent at the head, and the head rewound to 2 under it
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, 9)
    any_redis.set(keys.seq, 2)
    # When the track is pruned without retention
    count = track.prune()
    # Then nothing counts as read: what is published from seq 3 on lands in buckets nobody has read
    assert count == 0
    assert stored_buckets(any_redis, keys, track) == [100, 101, 102]


def test_retention_still_prunes_while_a_pointer_is_beyond_the_head(
    track: Track, any_redis: Any, keys: PartitionKeys
) -> None:
    # Given three ancient buckets, an agent at the head, and the head rewound to 2 under it
    three_buckets(any_redis, keys)
    track.add_pointer(AGENT, 9)
    any_redis.set(keys.seq, 2)
    # When the track is pruned with a retention of an hour
    count = track.prune(3600)
    # Then the expired buckets go all the same
    assert count == 3
    assert stored_buckets(any_redis, keys, track) == []


# --- the acknowledged version of each pointer ---------------------------------------------------


def test_acknowledge_stores_the_version_of_the_change_at_the_pointer(
    track: Track, any_redis: Any, keys: PartitionKeys
) -> None:
    # Given an agent at 0 whose run lock holds our token
    any_redis.set(keys.seq, 10)
    track.add_pointer(AGENT, 0)
    any_redis.set(keys.lock(AGENT), TOKEN)
    # When it acknowledges seq 5, whose change has version 123
    track.acknowledge(AGENT, TOKEN, 5, version=123)
    # Then the version is kept with the pointer, and a dead-letter-only ack leaves it
    assert track.acked_version(AGENT) == 123
    track.acknowledge(AGENT, TOKEN, None)
    assert track.acked_version(AGENT) == 123
    # And an ack without a version drops it (nothing to check against)
    track.acknowledge(AGENT, TOKEN, 6)
    assert track.acked_version(AGENT) is None


@pytest.mark.parametrize("writer", ["add_pointer", "move_pointer", "remove_pointer", "destroy"])
def test_every_pointer_writer_drops_the_acknowledged_version(
    track: Track, any_redis: Any, keys: PartitionKeys, writer: str
) -> None:
    # Given an agent that acknowledged seq 5 with version 123
    any_redis.set(keys.seq, 10)
    track.add_pointer(AGENT, 0)
    any_redis.set(keys.lock(AGENT), TOKEN)
    track.acknowledge(AGENT, TOKEN, 5, version=123)
    # When its pointer is written by anyone but an ack
    if writer == "remove_pointer":
        track.remove_pointer(AGENT)
    elif writer == "destroy":
        track.destroy()
    else:
        getattr(track, writer)(AGENT, 3)
    # Then no acknowledged version is left for it: an operator's pointer has none
    assert track.acked_version(AGENT) is None
    assert any_redis.hget(keys.acked, AGENT) is None


# --- invariant 5: corrupt stored data -------------------------------------------------------------

CORRUPT: dict[str, tuple[bytes, int]] = {
    "bad header": (b"garbage", 4),
    "header seq not a number": (b"x:1:" + encode_body([("event", 1, CREATED)]), 4),
    "header seq differs from score": (b"5:1:" + encode_body([("event", 1, CREATED)]), 4),
    "body not msgpack": (b"4:1:\xc1", 4),
    "body wrong length": (b"4:1:" + msgpack.packb(["event", 1]), 4),
    "body empty": (b"4:1:", 4),
    "flags 0": (b"4:1:" + msgpack.packb(["event", 1, 0]), 4),
    "type not str": (b"4:1:" + msgpack.packb([7, 1, CREATED]), 4),
    "id a float": (b"4:1:" + msgpack.packb(["event", 1.5, CREATED]), 4),
    "second change has flags 0": (b"4:1:" + msgpack.packb(["event", 1, CREATED, "event", 2, 0]), 5),
}


@pytest.mark.parametrize(("raw", "bad_seq"), list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_member_stops_reading_with_key_and_seq(
    track: Track, any_redis: Any, keys: PartitionKeys, raw: bytes, bad_seq: int
) -> None:
    # Given good changes 1-3 and, after them in the same bucket, a corrupt member at seq 4
    write_member(any_redis, keys, 100, 1, ms(100), [("event", i, CREATED) for i in (1, 2, 3)])
    write_raw(any_redis, keys, 100, 4, raw, head=5)
    read: list[int] = []
    # When the track is read
    with pytest.raises(DecodeError) as excinfo:
        for change in track.iter_changes(0):
            read.append(change.seq)
    # Then the good changes came first, then the error names the key and the bad seq
    assert read == [1, 2, 3]
    message = str(excinfo.value)
    assert keys.bucket(100) in message
    assert f"at seq {bad_seq}:" in message
    assert (excinfo.value.key, excinfo.value.seq) == (keys.bucket(100), bad_seq)


def test_corrupt_member_is_not_skipped_when_reading_after_it(track: Track, any_redis: Any, keys: PartitionKeys) -> None:
    # Given a corrupt member of two changes at seqs 4-5, with pending reads starting inside it
    write_member(any_redis, keys, 100, 1, ms(100), [("event", i, CREATED) for i in (1, 2, 3)])
    write_raw(any_redis, keys, 100, 4, b"4:1:" + msgpack.packb(["event", 4, 0, "event", 5, CREATED]), head=5)
    track.add_pointer(AGENT, 3)
    # When the agent's pending changes are read
    # Then the run stops with the key and seq instead of skipping the member
    with pytest.raises(DecodeError, match=r"at seq 4:"):
        list(track.pending(AGENT))
