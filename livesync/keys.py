"""Every Redis key livesync uses is built here and nowhere else.

Keys of the namespace carry the hash tag ``{ns}``; keys of one partition carry
``{ns:p}``, so every key a Lua script touches lives in one hash slot and the layout
works unchanged on Redis Cluster.
"""

from __future__ import annotations

import re

from livesync.errors import ConfigurationError

PREFIX = "livesync"
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# what NAMESPACE_PATTERN allows, in words, for error messages
NAMESPACE_RULE = "1-64 of letters, digits, '_', '.', '-'"


def check_namespace_name(namespace: str) -> str:
    """Return ``namespace`` if it is a valid namespace name, else raise ``ConfigurationError``.

    The one namespace check: settings, the publisher and the manager all apply it.
    """
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigurationError(f"namespace: {namespace!r} is not valid ({NAMESPACE_RULE})")
    return namespace


def reindex_pointer(agent_id: str) -> str:
    """The pointer id (a field of each partition's ``pointers``) of ``agent_id``'s reindex in progress.

    ``<agent>@reindex``: no agent id holds ``@`` (:data:`AGENT_ID_PATTERN`), so it is never an
    agent's. It holds the track from where the reindex began against prune (which honours
    every pointer) until the new generation has caught up; its run lock and fenced acks
    are a run's (``lock:<agent>@reindex``).
    """
    return f"{agent_id}@reindex"


def namespace_keys(namespace: str) -> NamespaceKeys:
    """Return the key builder of ``namespace``."""
    return NamespaceKeys(namespace)


class NamespaceKeys:
    """Keys of one namespace (hash tag ``{ns}``)."""

    __slots__ = ("_base", "namespace")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._base = f"{PREFIX}:{{{namespace}}}"

    @property
    def meta(self) -> str:
        """Hash: granularity, partitions, schema version, created at, epoch."""
        return f"{self._base}:meta"

    @property
    def agents(self) -> str:
        """Set of agent ids."""
        return f"{self._base}:agents"

    def agent(self, agent_id: str) -> str:
        """Hash describing one agent: backend, options, state, counters."""
        return f"{self._base}:agent:{agent_id}"

    def reindex(self, agent_id: str) -> str:
        """Hash: the agent's reindex in progress (generation, phase, start positions, objects exported).

        Present from the start of a reindex until it finished or was abandoned, so a
        reindex run again after a crash continues where the last one stopped.
        """
        return f"{self._base}:reindex:{agent_id}"

    @property
    def jobs(self) -> str:
        """Hash: ``<agent>:<partition>`` -> id of the last RQ run job enqueued for it."""
        return f"{self._base}:jobs"

    @property
    def tick_lock(self) -> str:
        """Short lock that keeps two ticks from enqueueing the same run twice."""
        return f"{self._base}:tick"

    @property
    def outbox(self) -> str:
        """Hash: the outbox lag the last relay reported (rows, oldest_us, at_us, relay); expires.

        Written by ``livesync relay`` (:mod:`livesync.outbox.lag`), read by status and
        metrics, so neither needs the application's database. Not in the footprint: a
        report is no data of the namespace.
        """
        return f"{self._base}:outbox"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every namespace-level key."""
        return f"{self._base}:*"

    def partition(self, partition: int) -> PartitionKeys:
        """Keys of one partition of this namespace."""
        return PartitionKeys(self.namespace, partition)

    @property
    def footprint(self) -> tuple[str, ...]:
        """Namespace-level keys whose presence means the namespace is in use.

        With :attr:`PartitionKeys.footprint`, what tells a namespace that lost its meta
        from one that never existed (a new durable key belongs in one of the two).
        """
        return (self.agents, self.jobs)


class PartitionKeys:
    """Keys of one partition (hash tag ``{ns:p}``)."""

    __slots__ = ("_base", "namespace", "partition")

    def __init__(self, namespace: str, partition: int) -> None:
        self.namespace = namespace
        self.partition = partition
        self._base = f"{PREFIX}:{{{namespace}:{partition}}}"

    @property
    def seq(self) -> str:
        """String: the head, last seq handed out."""
        return f"{self._base}:seq"

    @property
    def buckets(self) -> str:
        """Sorted set: member bucket id, score first seq stored in that bucket."""
        return f"{self._base}:buckets"

    def bucket(self, bucket: int) -> str:
        """Sorted set of packed changes of one bucket; score = first seq of the member."""
        return f"{self.bucket_prefix}{bucket}"

    @property
    def bucket_prefix(self) -> str:
        """What every bucket key starts with (the prune script looks up the bucket at a pointer by id)."""
        return f"{self._base}:b:"

    @property
    def clock(self) -> str:
        """String: the last version handed out (server microseconds, never decreasing)."""
        return f"{self._base}:clock"

    @property
    def epoch(self) -> str:
        """String: copy of the namespace meta's epoch, checked by scripts of this partition.

        Lives in the partition's hash slot so the publish script can compare it on a
        Redis Cluster; a missing or different value means the partition was lost,
        rewound or belongs to another creation of the namespace.
        """
        return f"{self._base}:epoch"

    @property
    def pruned(self) -> str:
        """String: highest seq ever pruned; a pointer below it lost unread changes."""
        return f"{self._base}:pruned"

    @property
    def pointers(self) -> str:
        """Hash: agent id -> last acknowledged seq."""
        return f"{self._base}:pointers"

    @property
    def acked(self) -> str:
        """Hash: agent id -> version of the change at its pointer, as its last ack saw it.

        Written by the fenced ack only; every other writer of a pointer drops the field
        (an operator's pointer has no acknowledged version). A run that finds another
        version at that seq knows the seqs were handed out again after a rewind.
        """
        return f"{self._base}:acked"

    @property
    def relayed(self) -> str:
        """Sorted set: the relay's marks, outbox rows published but not known deleted yet.

        Member ``<epoch>:<row id>:<row created_us>``, score the server's milliseconds when
        the row was published. ``relay.lua`` publishes a batch of outbox rows and adds
        their marks in one call, and skips rows already marked, so a relay that dies
        before deleting its rows never publishes them twice; the relay removes the marks
        once the delete committed, and marks older than the relay's mark TTL expire.
        Not in the footprint: marks come with publishes, and the epoch in each member
        keeps marks of an earlier creation of the namespace from matching.
        """
        return f"{self._base}:relayed"

    def lock(self, agent_id: str) -> str:
        """String: run lock token of one agent in this partition."""
        return f"{self._base}:lock:{agent_id}"

    def dlq(self, agent_id: str) -> str:
        """List of dead letters (JSON) of one agent in this partition."""
        return f"{self._base}:dlq:{agent_id}"

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this partition."""
        return f"{self._base}:*"

    @property
    def footprint(self) -> tuple[str, ...]:
        """Keys of this partition whose presence means it holds data (one hash slot)."""
        return (self.seq, self.clock, self.epoch, self.buckets, self.pointers, self.pruned, self.acked)
