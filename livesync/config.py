"""Settings: one pydantic-settings object, environment prefix ``LIVESYNC_``.

The CLI builds it from flags and the environment and passes it down; no other module
reads the environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from livesync import defaults
from livesync.errors import ConfigurationError, describe_validation
from livesync.keys import NAMESPACE_RULE, check_namespace_name
from livesync.urls import MASK, mask_url, url_problem

DEFAULT_REDIS_URL = defaults.REDIS_URL


class Settings(BaseSettings):
    """Everything livesync can be configured with; each field maps to ``LIVESYNC_<NAME>``."""

    # hide_input_in_errors: pydantic's messages would repeat the raw value, and a Redis
    # URL holds its password; the validators below name the value masked instead
    model_config = SettingsConfigDict(
        env_prefix="LIVESYNC_", extra="ignore", validate_default=True, hide_input_in_errors=True
    )

    redis_url: str = Field(DEFAULT_REDIS_URL, description="Redis holding the track")
    rq_url: str | None = Field(None, description="Redis for the RQ queue (default: redis_url)")
    redis_cluster: bool = Field(False, description="the track's Redis is a Redis Cluster (or use redis+cluster://)")
    namespace: str = Field(defaults.NAMESPACE, description="namespace of the track and agents")
    # NoDecode: lists come as "a,b" or a JSON list, parsed by _split_list, not by pydantic-settings
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="namespaces the scheduler ticks (comma-separated; default: namespace)"
    )
    granularity: int = Field(
        defaults.GRANULARITY,
        ge=1,
        le=defaults.MAX_GRANULARITY,
        description="bucket width in seconds (fixed per namespace)",
    )
    partitions: int = Field(
        defaults.PARTITIONS, ge=1, le=defaults.MAX_PARTITIONS, description="partitions (fixed per namespace)"
    )
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, le=100_000, description="records per backend upload")
    window: int = Field(defaults.WINDOW, ge=1, le=1_000_000, description="changes read and reduced per window")
    tick_interval: int = Field(defaults.TICK_INTERVAL, ge=1, description="seconds between scheduler ticks")
    retention: int | None = Field(None, ge=1, description="seconds unread changes are kept (None: forever)")
    lock_ttl: int = Field(defaults.LOCK_TTL, ge=2, description="seconds a run lock lives without renewal")
    queue: str = Field(defaults.QUEUE, description="RQ queue name")
    job_timeout: int = Field(defaults.JOB_TIMEOUT, ge=1, description="seconds an RQ run job may take")
    retry_max: int = Field(defaults.RETRY_MAX, ge=0, description="RQ retries of a failed run")
    retry_intervals: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: list(defaults.RETRY_INTERVALS), description="seconds between retries (comma-separated)"
    )
    allow_eviction: bool = Field(
        False,
        description="run although Redis may evict keys (maxmemory-policy not noeviction): DANGEROUS, may lose data",
    )
    allowed_imports: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="module prefixes (comma-separated) from which module:callable plugins may be imported "
        "(default: entry points only)",
    )
    dead_letter_limit: int = Field(
        defaults.DEAD_LETTER_LIMIT,
        ge=1,
        description="dead letters one run may write before the agent is paused (a broken target)",
    )
    prune_chunk: int = Field(defaults.PRUNE_CHUNK, ge=1, le=10_000, description="buckets deleted per prune script call")
    outbox_url: str | None = Field(
        None, description="SQLAlchemy URL of the database holding the outbox table (livesync relay, the relay job)"
    )
    outbox_table: str = Field(defaults.OUTBOX_TABLE, description="name of the outbox table")
    relay_batch: int = Field(defaults.RELAY_BATCH, ge=1, le=5000, description="outbox rows moved per relay batch")
    relay_poll: float = Field(defaults.RELAY_POLL, gt=0, description="seconds an idle relay waits between looks")
    relay_mark_ttl: int = Field(
        defaults.RELAY_MARK_TTL, ge=60, description="seconds a relayed row's mark is kept until its delete is seen"
    )
    tick_lock_ttl: int = Field(defaults.TICK_LOCK_TTL, ge=1, description="seconds the tick's lock lives")
    # layout (no os.environ read outside config): the dashboard's basic auth, each pair taken whole
    # by dashboard.credentials_from_settings; rq-dashboard's own variables are the fallback pair
    dashboard_username: str | None = Field(None, description="basic auth user of livesync dashboard")
    dashboard_password: SecretStr | None = Field(None, description="basic auth password of livesync dashboard")
    rq_dashboard_username: str | None = Field(
        None, validation_alias="RQ_DASHBOARD_USERNAME", description="fallback dashboard user (rq-dashboard's)"
    )
    rq_dashboard_password: SecretStr | None = Field(
        None, validation_alias="RQ_DASHBOARD_PASSWORD", description="fallback dashboard password (rq-dashboard's)"
    )

    @field_validator("namespaces", "retry_intervals", "allowed_imports", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        # the environment gives a string: "a,b" (blanks and empty items dropped) or a JSON list
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError("is neither a comma-separated list nor a JSON list") from None
        return [item.strip() for item in text.split(",") if item.strip()]

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        try:
            return check_namespace_name(value)
        except ConfigurationError:
            # the message names the variable already (LIVESYNC_NAMESPACE: ...): the rule alone
            raise ValueError(NAMESPACE_RULE) from None

    @field_validator("namespaces")
    @classmethod
    def _check_namespaces(cls, value: list[str]) -> list[str]:
        return [cls._check_namespace(item) for item in value]

    @property
    def scheduled_namespaces(self) -> list[str]:
        """The namespaces the scheduler ticks."""
        return self.namespaces or [self.namespace]

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")):
            raise ValueError(f"{mask_url(value)} is not a redis://, rediss://, unix:// or redis+cluster:// URL")
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(f"{mask_url(value)}: {problem}")
        return value

    @field_validator("rq_url")
    @classmethod
    def _check_rq_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{mask_url(value)} is not a redis://, rediss:// or unix:// URL (RQ does not support Redis Cluster)"
            )
        problem = None if value is None else url_problem(value)
        if problem is not None:
            raise ValueError(f"{mask_url(value or '')}: {problem}")
        return value

    @model_validator(mode="after")
    def _queue_outside_cluster(self) -> Settings:
        if self.cluster and self.rq_url is None:
            raise ValueError(
                "the track is on a Redis Cluster, which RQ does not support: set LIVESYNC_RQ_URL to a plain Redis"
            )
        return self

    @property
    def cluster(self) -> bool:
        """Whether the track's Redis is a Redis Cluster."""
        return self.redis_cluster or self.redis_url.startswith(("redis+cluster://", "rediss+cluster://"))

    @property
    def queue_url(self) -> str:
        """The Redis URL of the RQ queue."""
        return self.rq_url or self.redis_url

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() and str() of settings end up in logs and tracebacks: URLs masked
        for key, value in super().__repr_args__():
            masked = key in ("redis_url", "rq_url", "outbox_url") and isinstance(value, str)
            yield key, (mask_url(value) if masked else value)

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with every password masked, for printing."""
        data = self.model_dump()
        data["redis_url"] = mask_url(self.redis_url)
        data["rq_url"] = mask_url(self.rq_url) if self.rq_url else None
        data["outbox_url"] = mask_url(self.outbox_url) if self.outbox_url else None
        for key in ("dashboard_password", "rq_dashboard_password"):
            data[key] = MASK if data[key] is not None else None
        return data


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``overrides``; any error as one :class:`ConfigurationError` line.

    The message names each bad variable (``LIVESYNC_RETRY_INTERVALS: ...``; joined by
    ``; ``) and never its value. Raised ``from None``: pydantic's own text repeats the
    input. What the CLI, ``livesync.rqconfig.settings`` and RQ jobs build their settings with.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(
            describe_validation(exc.errors(), _subject, lower=lambda location: len(location) > 1)
        ) from None
    except SettingsError as exc:  # a value the environment source could not even decode
        raise ConfigurationError(str(exc)) from None


def variable(field: str) -> str:
    """The environment variable of a settings field (``retry_intervals`` -> ``LIVESYNC_RETRY_INTERVALS``)."""
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _subject(location: list[str]) -> str:
    # the variable, and for one item of a list which item (1-based)
    subject = variable(location[0]) if location else "settings"
    if len(location) > 1:
        item = f"item {int(location[1]) + 1}" if location[1].isdigit() else ".".join(location[1:])
        subject = f"{subject}: {item}"
    return subject
