"""The agent: one target system, its backend, filter, counters and state.

The model stored in the agent's hash (``keys.agent``), its states, and how a hash that
cannot be decoded is shown (state ``corrupt``) instead of stopping every reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livesync.backends import redact_options
from livesync.changes import validate_type
from livesync.errors import describe_validation
from livesync.keys import AGENT_ID_PATTERN

State = Literal["active", "paused", "needs_export", "gap", "rollback", "corrupt"]
#: ``rollback``: the partition was rewound under the agent (pointer beyond the head, epoch
#: changed); ``corrupt``: the agent's stored hash cannot be decoded (shown, never run).
STATES: tuple[State, ...] = ("active", "paused", "needs_export", "gap", "rollback", "corrupt")
#: Fields of the agent hash stored as JSON.
JSON_FIELDS = ("options", "include_types", "exclude_types")


class Agent(BaseModel):
    """An agent: one target system, its backend and where it stands."""

    # validation errors would repeat the input, backend options (secrets) included
    model_config = ConfigDict(hide_input_in_errors=True)

    id: str
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    name: str = ""
    description: str = ""
    update_time: int = Field(60, ge=0, description="seconds between scheduled runs")
    state: State = "active"
    include_types: list[str] = Field(default_factory=list)
    exclude_types: list[str] = Field(default_factory=list)
    expander: str | None = None
    loader: str | None = None
    created_at: float = 0.0
    last_run_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    runs: int = 0
    failures: int = 0
    changes: int = 0
    records: int = 0
    rejected: int = 0

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not AGENT_ID_PATTERN.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not a valid agent id (1-64 of letters, digits, '_', '.', '-')")
        return value

    @field_validator("include_types", "exclude_types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        return [validate_type(item, "object type") for item in value]

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() and str() reach logs and tracebacks: options shown as `agent show` shows them
        for key, value in super().__repr_args__():
            yield key, (redact_options(self.backend, value) if key == "options" else value)

    def object_excluded(self, type_: str) -> bool:
        """Whether this agent ignores objects of ``type_`` (``objectExcluded``)."""
        if self.include_types and type_ not in self.include_types:
            return True
        return type_ in self.exclude_types

    def to_hash(self) -> dict[str, str]:
        """The fields as stored in the agent's Redis hash."""
        data = self.model_dump(exclude={"id"})
        out: dict[str, str] = {}
        for key, value in data.items():
            if value is None:
                continue
            if isinstance(value, dict | list):
                out[key] = json.dumps(value, sort_keys=True)
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_hash(cls, agent_id: str, raw: dict[bytes, bytes]) -> Agent:
        """Rebuild an agent from its Redis hash.

        Raises :class:`ValueError` saying which field is wrong when the hash cannot be
        decoded (not UTF-8, not JSON, an unknown state, a counter that is no number).
        """
        fields: dict[str, Any] = {"id": agent_id}
        for key, value in raw.items():
            try:
                name, text = key.decode(), value.decode()
            except UnicodeDecodeError:
                raise ValueError(f"field {key[:40]!r} is not UTF-8") from None
            if name in JSON_FIELDS:
                try:
                    fields[name] = json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"{name} is not JSON ({exc})") from None
            else:
                fields[name] = text
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise ValueError(_problems(exc)) from None

    @classmethod
    def corrupt(cls, agent_id: str, raw: dict[bytes, bytes], problem: str) -> Agent:
        """A stand-in for an agent whose hash cannot be decoded: state ``corrupt``, ``problem`` as last error.

        It is shown (status, lists, metrics) and never run; nothing is validated, so
        even an id outside the pattern can be shown and removed.
        """
        text = {name: raw.get(name.encode(), b"").decode(errors="replace") for name in ("backend", "name")}
        return cls.model_construct(
            id=agent_id, backend=text["backend"], name=text["name"], state="corrupt", last_error=problem
        )


def _problems(exc: ValidationError) -> str:
    """The fields of an agent hash that failed validation, one clause each, with the stored value."""
    return describe_validation(exc.errors(), lambda location: ".".join(location) or "agent", tidy=False, show_input=60)


def rewound_message(agent_id: str, partition: int, pointer: int, head: int) -> str:
    """What an agent in ``rollback`` says when its pointer is beyond its partition's head.

    One text for the run that finds it and the tick that marks it.
    """
    return (
        f"rollback: partition {partition} was rewound: pointer {pointer} is beyond head {head} "
        "(Redis lost or rolled back data); nothing was skipped; "
        f"recover with 'livesync agent reset {agent_id} --to tail' or re-export"
    )


def reused_message(agent_id: str, partition: int, seq: int, acked: int, found: int) -> str:
    """What an agent in ``rollback`` says when the change at its pointer is not the one it acknowledged.

    The head was set back and then overtaken by new publishes: the seqs after the
    rewind were handed out again, and resuming after the pointer would skip the new
    changes that got seqs up to it.
    """
    return (
        f"rollback: partition {partition} was rewound and its seqs were handed out again: the change at seq {seq} "
        f"is not the one this agent acknowledged (version {found}, acknowledged {acked}; Redis lost or rolled "
        "back data); nothing was skipped; "
        f"recover with 'livesync agent reset {agent_id} --to tail' or re-export"
    )
