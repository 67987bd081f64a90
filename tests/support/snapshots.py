"""A Redis that loses its recent writes, exactly: a namespace's keys saved and put back with DUMP/RESTORE.

A restart from an older RDB/AOF, or a failover to an asynchronous replica that lagged,
leaves every key as it was at one earlier moment. :class:`Snapshot` saves the DUMP of
every key of a namespace at such a moment (on the shared test Redis: only that
namespace's keys, never the server) and :meth:`Snapshot.restore` puts them back, deleting
whatever was written since.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

from livesync.keys import namespace_keys

#: Keys of a partition that say where an agent stands; a rewind of the partition's track leaves them.
POSITION_KEYS = (":pointers", ":acked", ":dlq:", ":lock:")


@dataclass(frozen=True)
class Snapshot:
    """The DUMP of every key of ``namespace`` at one moment."""

    client: redis.Redis
    namespace: str
    dumps: dict[bytes, bytes]

    @classmethod
    def take(cls, client: redis.Redis, namespace: str) -> Snapshot:
        """Save every key of ``namespace`` now (take it while no run holds a lock: locks have a TTL)."""
        keys = keys_of(client, namespace)
        dumps = {key: dump for key in keys if (dump := client.dump(key)) is not None}
        return cls(client, namespace, dumps)

    def restore(self, partitions: Iterable[int] | None = None) -> None:
        """Put the namespace back as it was when the snapshot was taken.

        ``partitions=None``: every key, as a restart from the snapshot does (tracks,
        pointers, acknowledged versions and agents go back together: a consistent older
        state). Otherwise only the tracks of ``partitions`` (head, clock, buckets,
        pruned mark, epoch) go back while every agent's pointer, acknowledged version,
        dead letters and the namespace's own keys stay: a head rewound under pointers.
        """
        if partitions is None:
            tags: list[bytes] = []
        else:
            keys = namespace_keys(self.namespace)
            tags = [keys.partition(p).pattern.removesuffix("*").encode() for p in partitions]

        def goes_back(key: bytes) -> bool:
            if partitions is None:
                return True
            return key.startswith(tuple(tags)) and not any(part.encode() in key for part in POSITION_KEYS)

        doomed = [key for key in keys_of(self.client, self.namespace) if goes_back(key)]
        if doomed:
            self.client.delete(*doomed)
        for key, dump in self.dumps.items():
            if goes_back(key):
                self.client.restore(key, 0, dump, replace=True)


def keys_of(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key of ``namespace``: its own (``{ns}``) and its partitions' (``{ns:p}``)."""
    own = client.scan_iter(match=f"livesync:{{{namespace}}}:*", count=1000)
    return [*own, *client.scan_iter(match=f"livesync:{{{namespace}:*", count=1000)]
