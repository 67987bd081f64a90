"""The backend base class: how records leave livesync for a target system."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict

from livesync.records import Record
from livesync.urls import redact_url


class Backend(ABC):
    """Uploads an agent's records to one target system.

    A backend is registered under :attr:`name` in the ``livesync.backends`` entry point
    group and configured by its :class:`Options` model. The runner creates one instance
    per run and uses it as a context manager::

        with backend:            # open()
            backend.upload(batch)
            ...                  # close(), also on error

    Delivery is at-least-once: after a crash or a failed batch the runner sends the
    same records again, and records of one object may come from several partitions
    (an expander's records carry the version of the change that caused them). The rule
    every target follows (DESIGN.md, "Versions and epochs"):

    - keep, per object, the highest ``version`` applied, a tombstone's too (a deleted
      object remembers the version of its delete), and drop a record whose version is
      not above it: it is a stale duplicate. Compare versions, never seqs: seqs repeat
      after Redis loses data or a namespace is re-created, versions only grow;
    - an ``updated`` record for an object the target does not have (never created, or
      deleted) changes nothing, neither the object nor its stored version: only
      ``created`` makes an object live. (Loaders, where an agent has one, settle such
      records from the source instead.)
    """

    name: ClassVar[str]
    """The name the backend is registered under; used in messages."""

    partition: int | None = None
    """The one partition whose records this instance uploads, set before :meth:`open` by a
    run; ``None`` when its records come from every partition (an export, a requeue)."""

    class Options(BaseModel):
        """The backend's options; subclasses extend it with their own fields.

        Options arrive as strings (``--option KEY=VALUE``) and are converted by
        pydantic; unknown keys are refused so a typo never passes silently.
        """

        model_config = ConfigDict(extra="forbid", frozen=True)

        def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
            # an option named *url may carry credentials or a token (user info, query, path): redacted
            for key, value in super().__repr_args__():
                yield key, (redact_url(value) if key and key.endswith("url") and isinstance(value, str) else value)

    def __init__(self, agent_id: str, options: Options) -> None:
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} needs {type(self).__name__}.Options, got {type(options).__name__}")
        self.agent_id = agent_id
        self.options = options

    @classmethod
    def prepare_options(cls, options: Options, raw: Mapping[str, object]) -> dict[str, object]:
        """Check ``options`` when an agent is added; return the raw options to store.

        Called once, in the process that runs ``agent add``, with the validated
        ``options`` and the ``raw`` ones they came from. Workers run elsewhere (another
        directory, host or user), so a backend resolves here what only makes sense
        where the agent is added (a relative path, say) and raises
        :class:`~livesync.errors.ConfigurationError` naming the option for what it can
        tell is unusable already. The default stores ``raw`` unchanged.
        """
        return dict(raw)

    def open(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Acquire what uploads need (files, sessions); called once before the first batch."""

    @abstractmethod
    def upload(self, records: Sequence[Record]) -> None:
        """Deliver one batch of records to the target.

        Return only once the whole batch is durable on the target: the runner moves
        the agent's pointer past these records as soon as this returns. There are
        exactly three outcomes:

        - return: every record was accepted;
        - raise :class:`~livesync.errors.RecordRejected` listing ``(record, reason)``
          pairs: those records were refused for good (they go to the dead-letter
          list) and every other record of the batch was accepted and is durable;
        - raise anything else: nothing of the batch counts; the pointer stays and the
          whole batch is sent again later.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what :meth:`open` acquired; called once, also after an error."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} agent={self.agent_id!r}>"


@runtime_checkable
class Generations(Protocol):
    """What a backend offers for a zero-downtime reindex (``livesync agent reindex``): generations of its target.

    A *generation* is one concrete container of the agent's objects (an index behind
    the alias the agent writes through, a table under the mirror's name). A reindex
    creates a new generation beside the live one, fills it while live runs keep writing
    the live one, then swaps it in atomically; readers of the target see the old
    generation until that swap and the new one, complete, after it. A backend supports
    reindexing by having these methods (no base class needed); each is called on an open
    backend, and each is safe to call again after a crash (a reindex resumes).
    """

    def live_generation(self) -> str:
        """The name of the generation the agent's writes land in now."""
        ...

    def create_generation(self, token: str) -> str:
        """Create an empty generation beside the live one, shaped like it; return its name.

        ``token`` (lowercase letters and digits) makes the name unique. When the
        generation of ``token`` exists already (a reindex resumed), it is kept as it is.
        """
        ...

    def write_generation(self, name: str) -> None:
        """Send this instance's uploads to generation ``name`` instead of the live one."""
        ...

    def swap_generation(self, name: str, live: str) -> str:
        """Make ``name`` the live generation in one atomic step; return the old one's name now.

        ``live`` is what :meth:`live_generation` said when the reindex began. When
        ``name`` is live already (a swap that completed before a crash), nothing changes
        and the same name is returned.
        """
        ...

    def drop_generation(self, name: str) -> None:
        """Delete generation ``name`` and what it holds; refuses the live one. Absent: nothing to do."""
        ...
