"""The one error tree of livesync.

Every error livesync raises on purpose derives from :class:`LiveSyncError`, so an
application can catch them all in one place. Errors that wrap another one are raised
``from`` their cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livesync.records import Record


class LiveSyncError(Exception):
    """Root of every error livesync raises on purpose."""


class InvalidChange(LiveSyncError, ValueError):
    """A change failed validation; the message names the bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ConfigurationError(LiveSyncError, ValueError):
    """Settings or options are invalid or contradict what the namespace holds."""


class UnknownBackend(ConfigurationError):
    """No backend is registered under the given name."""


class UnknownExpander(ConfigurationError):
    """No expander is registered under the given name."""


class UnknownLoader(ConfigurationError):
    """No loader is registered under the given name."""


class AgentNotFound(LiveSyncError, LookupError):
    """No agent with that id exists in the namespace."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"unknown agent {agent_id!r}")
        self.agent_id = agent_id


class AgentExists(LiveSyncError):
    """An agent with that id already exists."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"agent {agent_id!r} already exists")
        self.agent_id = agent_id


class BackendError(LiveSyncError):
    """A target failed a batch as a whole (unreachable, 5xx, timeout, misconfigured); nothing of the batch counts.

    The run fails and the whole batch is sent again later. The message names the target
    as printed (masked URL) and never holds a secret.
    """


class WebhookError(BackendError):
    """A webhook delivery failed; nothing of the batch counts and the run fails.

    The message names the URL (without credentials or query), the last HTTP status or
    the timeout, and how many attempts were made. It never contains the secret.
    """

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts


class SignatureError(LiveSyncError):
    """A webhook request failed ``livesync.signing.verify``: bad headers, wrong HMAC, stale timestamp."""


class DashboardUnavailable(LiveSyncError):
    """rq-dashboard or flask is not installed (the ``dashboard`` extra)."""


class DecodeError(LiveSyncError):
    """A stored member could not be decoded; keeps the key, seq and raw bytes."""

    def __init__(self, key: str, seq: int | None, raw: bytes, reason: str) -> None:
        where = f"seq {seq}" if seq is not None else "unknown seq"
        super().__init__(f"corrupt change in {key} at {where}: {reason}")
        self.key = key
        self.seq = seq
        self.raw = raw


class OutboxError(LiveSyncError):
    """The outbox cannot be relayed: its database failed, or a row is not a valid change (the message names it)."""


class LockError(LiveSyncError):
    """Root of the run-lock errors."""


class AgentBusy(LockError):
    """Another runner holds the lock of this agent and partition."""


class LockLost(LockError):
    """The runner's lock expired or was taken over; it may not move the pointer."""


class AgentNotRunnable(LiveSyncError):
    """The agent's state forbids a run (paused, needs export, gap, rollback, corrupt)."""


class AgentCorrupt(AgentNotRunnable):
    """An agent's stored hash or pointer cannot be decoded; the message names the key and what is wrong."""


class NamespaceDamaged(ConfigurationError):
    """The namespace's meta is missing while its other keys exist; nothing is re-created silently."""


class HeadLost(NamespaceDamaged):
    """A partition lost its head (``seq`` key) while its clock or pointers remain: publishing is refused.

    Handing out seq 1 again would put new changes below agents' pointers, where runs
    never read them. ``livesync init --repair`` restores the head.
    """


class EpochChanged(LiveSyncError):
    """The namespace was destroyed or re-created under a long-lived client."""


class PartitionEpochMismatch(EpochChanged):
    """The publish script refused: the partition's epoch is not the one the caller expected.

    Nothing of that call was written. ``actual`` is the partition's epoch (``None`` when
    its epoch key is missing).
    """

    def __init__(self, key: str, partition: int, expected: int, actual: int | None) -> None:
        found = "no epoch" if actual is None else f"epoch {actual}"
        super().__init__(
            f"{key} holds {found}, not {expected}: the namespace was destroyed, re-created or "
            "restored under this client; nothing of this call was written there"
        )
        self.key = key
        self.partition = partition
        self.expected = expected
        self.actual = actual


class EvictingRedis(ConfigurationError):
    """Redis may evict livesync's keys (``maxmemory-policy`` is not ``noeviction``)."""


class ImportNotAllowed(ConfigurationError):
    """A ``module:callable`` plugin names a module outside ``LIVESYNC_ALLOWED_IMPORTS``."""


class JobRefused(LiveSyncError):
    """A worker was handed a job that is not one of livesync's own job functions."""


class RecordRejected(LiveSyncError):
    """A backend refused some records of a batch; the rest of the batch was accepted.

    The runner puts each rejected record on the agent's dead-letter list with its
    reason and goes on with the run.
    """

    def __init__(self, rejections: Sequence[tuple[Record, str]]) -> None:
        self.rejections = list(rejections)
        count = len(self.rejections)
        first = self.rejections[0][1] if self.rejections else ""
        super().__init__(f"{count} record(s) rejected: {first}")

    @classmethod
    def one(cls, record: Record, reason: str) -> RecordRejected:
        """Reject a single record."""
        return cls([(record, reason)])


class LoaderError(LiveSyncError):
    """An agent's loader failed or returned something that is not documents: the batch fails, it is sent again.

    The message names the loader and what was wrong (the key of a bad document); the
    loader's own exception is the cause.
    """


class DeadLetterLimit(LiveSyncError):
    """A run would dead-letter more records than ``dead_letter_limit``: it stopped, the agent is paused."""


def describe(error: BaseException) -> str:
    """Return a one-line description of ``error`` for status fields and logs."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def describe_validation(
    errors: Iterable[Mapping[str, Any]],
    name: Callable[[list[str]], str],
    *,
    tidy: bool = True,
    lower: bool | Callable[[list[str]], bool] = False,
    special: Callable[[Mapping[str, Any]], str | None] | None = None,
    show_input: int | None = None,
) -> str:
    """Pydantic's validation errors (``exc.errors()``) as one line: ``subject: message`` joined by ``; ``.

    ``name`` turns an error's location (its parts as text) into the subject, e.g. the
    environment variable of a settings field or ``option 'url'``. ``tidy`` drops
    pydantic's ``Value error, `` prefix and folds whitespace; ``lower`` (or a predicate
    of the location) starts the message in lower case. ``special`` may give an error's
    whole message itself (``None``: the usual one). The input values are left out (they
    may hold secrets) unless ``show_input`` asks for the first that many characters of
    each, quoted after the subject (a stored agent hash's fields). Reads plain dicts, so
    pydantic is not imported here.
    """
    clauses = []
    for error in errors:
        location = [str(part) for part in error["loc"]]
        message = special(error) if special is not None else None
        if message is None:
            message = str(error["msg"])
            if tidy:
                message = " ".join(message.removeprefix("Value error, ").split())
            if lower(location) if callable(lower) else lower:
                message = f"{message[:1].lower()}{message[1:]}"
        subject = name(location)
        if show_input is not None:
            subject = f"{subject} {str(error.get('input'))[:show_input]!r}"
        clauses.append(f"{subject}: {message}")
    return "; ".join(clauses)


class RedisUnavailable(LiveSyncError, ConnectionError):
    """Redis did not answer; the message names the (masked) URL."""


class ReplicationError(LiveSyncError):
    """A publish reached fewer replicas than ``wait_replicas`` asked for in time."""


class RedisFull(LiveSyncError):
    """A Redis at ``maxmemory`` (``noeviction``) refused a write that cannot be made without memory.

    Raised when the RQ queue's Redis refuses to enqueue a run; the message says which
    Redis and what to do.
    """
