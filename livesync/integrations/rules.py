"""What a registered model's changes mean: its object type, and the flags each write gives.

Shared by the SQLAlchemy and Django integrations; nothing here imports a framework. An
integration tells a :class:`ModelRule` which attributes a write changed and how to read
their values before and after; the rule answers with the change's flags:

- an insert gives ``created`` (nothing when the object starts soft-deleted or unpublished:
  it never reached a target);
- an update gives the flag mapped to each changed attribute (``flags={"title":
  "title_changed"}``), ``default`` (``data_changed``) for the others, nothing for those
  mapped to ``None``; the ``soft_delete`` attribute turning true gives ``deleted``, false
  again ``undeleted``; the ``published`` attribute turning true gives ``published``, false
  ``unpublished``; an object hidden before and after (soft-deleted or unpublished) gives
  nothing;
- a delete gives ``deleted``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from livesync.changes import FLAG_BITS, LIFECYCLE, validate_type
from livesync.errors import ConfigurationError, InvalidChange
from livesync.records import ObjectId

#: Reads one attribute's value (before or after the write) by name.
Values = Callable[[str], Any]
#: Flags of a cascade: ``None`` passes the cause's own flags on (see :meth:`ModelRule.cascade_flags`).
CascadeFlags = str | Sequence[str] | None


def _flag_list(value: str | Sequence[str], where: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    for name in names:
        bit = FLAG_BITS.get(name)
        if bit is None:
            raise ConfigurationError(f"{where}: unknown flag {name!r} (known: {', '.join(FLAG_BITS)})")
        if bit & LIFECYCLE:
            raise ConfigurationError(
                f"{where}: {name!r} is a lifecycle flag; inserts, deletes, soft_delete= and published= give those"
            )
    if not names:
        raise ConfigurationError(f"{where}: at least one flag (or None to ignore the attribute)")
    return names


@dataclass(frozen=True)
class ModelRule:
    """How one model's writes become changes of objects of type ``type``.

    ``flags`` maps attribute names to a flag (or several, or ``None`` to ignore the
    attribute); every other changed attribute gives ``default`` (``None``: ignored).
    ``soft_delete`` and ``published`` name the attributes whose truth hides the object
    (a ``deleted_at`` timestamp or an ``is_deleted`` boolean both work) or shows it.
    ``cascade`` maps relationship names to the flags their related objects get when
    this one is updated (see :meth:`cascade_flags`); the related models must be
    registered too.
    """

    type: str
    flags: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    default: tuple[str, ...] | None = ("data_changed",)
    soft_delete: str | None = None
    published: str | None = None
    cascade: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        type: str,
        *,
        flags: Mapping[str, str | Sequence[str] | None] | None = None,
        default: str | Sequence[str] | None = "data_changed",
        soft_delete: str | None = None,
        published: str | None = None,
        cascade: Mapping[str, CascadeFlags] | Iterable[str] | None = None,
    ) -> ModelRule:
        """Validate a registration: raise :class:`ConfigurationError` naming the bad part."""
        try:
            validate_type(type)
        except InvalidChange as exc:
            raise ConfigurationError(f"registering {type!r}: {exc}") from exc
        where = f"registering {type!r}"
        mapped = {
            name: None if value is None else _flag_list(value, f"{where}: flags[{name!r}]")
            for name, value in (flags or {}).items()
        }
        for name in (soft_delete, published):
            if name is not None and name in mapped:
                raise ConfigurationError(f"{where}: {name!r} gives lifecycle flags; leave it out of flags=")
        if cascade is None:
            cascades: dict[str, tuple[str, ...] | None] = {}
        elif isinstance(cascade, Mapping):
            cascades = {
                name: None if value is None else _flag_list(value, f"{where}: cascade[{name!r}]")
                for name, value in cascade.items()
            }
        else:
            cascades = dict.fromkeys(cascade)
        return cls(
            type=type,
            flags=mapped,
            default=None if default is None else _flag_list(default, f"{where}: default"),
            soft_delete=soft_delete,
            published=published,
            cascade=cascades,
        )

    @property
    def lifecycle_attributes(self) -> tuple[str, ...]:
        """The attributes whose changes make the object appear or disappear."""
        return tuple(name for name in (self.soft_delete, self.published) if name is not None)

    def visible(self, value: Values) -> bool:
        """Whether an object with these values is on targets (not soft-deleted, published)."""
        if self.soft_delete is not None and value(self.soft_delete):
            return False
        return self.published is None or bool(value(self.published))

    def created(self, value: Values) -> tuple[str, ...]:
        """Flags of an insert with these values: ``created``, or nothing for a hidden object."""
        return ("created",) if self.visible(value) else ()

    def updated(self, changed: Iterable[str], before: Values, after: Values) -> tuple[str, ...]:
        """Flags of an update that changed the attributes ``changed``.

        ``before``/``after`` read a lifecycle attribute's value before and after the
        write (only asked for :attr:`lifecycle_attributes`).
        """
        changed = set(changed)
        lifecycle = set(self.lifecycle_attributes)
        data: set[str] = set()
        for name in changed - lifecycle:
            flags = self.flags.get(name, self.default)
            data.update(flags or ())
        if not changed & lifecycle:
            return tuple(sorted(data)) if data and self.visible(after) else ()
        was, now = self.visible(before), self.visible(after)
        if was and now:
            return tuple(sorted(data))
        if not was and not now:
            return ()
        soft = self.soft_delete is not None and bool(before(self.soft_delete)) != bool(after(self.soft_delete))
        if was:  # gone: what it carried no longer matters
            return ("deleted",) if soft else ("unpublished",)
        return tuple(sorted({"undeleted" if soft else "published", *data}))

    def cascade_flags(self, relationship: str, flags: Sequence[str]) -> tuple[str, ...]:
        """Flags the objects of ``relationship`` get when this object changed with ``flags``.

        The cascade's own flags when it names some; else the cause's flags without the
        lifecycle ones, or ``data_changed`` when the cause only appeared or disappeared
        (a category unpublished changes what its events show).
        """
        declared = self.cascade[relationship]
        if declared is not None:
            return declared
        passed = tuple(name for name in flags if not FLAG_BITS[name] & LIFECYCLE)
        return passed or ("data_changed",)


def object_id(value: object) -> ObjectId:
    """A key value as a livesync id: integers stay integers, anything else (a UUID...) becomes its string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return value if isinstance(value, str) else str(value)


__all__ = ["CascadeFlags", "ModelRule", "Values", "object_id"]
