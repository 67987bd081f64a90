"""What a flush of registered models means: the ``created``, updated and ``deleted`` changes it gives.

:class:`Registry` holds the registrations (a model and its subclasses) and reads a
flush's inserts, updates (from the attributes' history) and deletes into a
:class:`~livesync.client.Unit`, following cascades through relationships.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.orm import Mapper, Session

from livesync.client import Unit
from livesync.errors import ConfigurationError
from livesync.integrations.rules import ModelRule, object_id
from livesync.records import ObjectId


class Registration:
    """A registered model: its rule, how to read an object's id, which attributes count."""

    def __init__(self, model: type, rule: ModelRule, id: str | Callable[[Any], object] | None) -> None:
        mapper: Mapper[Any] = inspect(model)
        self.rule = rule
        self.mapper = mapper
        if id is None:
            if len(mapper.primary_key) != 1:
                raise ConfigurationError(
                    f"registering {rule.type!r}: {model.__name__} has a composite primary key; pass id= "
                    "(an attribute name or a function of the object)"
                )
            self.id_key: str | None = mapper.get_property_by_column(mapper.primary_key[0]).key
            self.id_function: Callable[[Any], object] | None = None
        elif isinstance(id, str):
            self.id_key, self.id_function = id, None
        else:
            self.id_key, self.id_function = None, id
        self.is_primary_key = id is None
        known = set(mapper.attrs.keys())
        for name in [*rule.flags, *rule.lifecycle_attributes, *rule.cascade, *([id] if isinstance(id, str) else [])]:
            if name not in known:
                raise ConfigurationError(f"registering {rule.type!r}: {model.__name__} has no attribute {name!r}")
        self._watched: tuple[str, ...] | None = None

    @property
    def watched(self) -> tuple[str, ...]:
        """Column attributes, and the relationships ``flags`` names (mappers are configured by the first flush)."""
        if self._watched is None:
            columns = [prop.key for prop in self.mapper.column_attrs]
            self._watched = (*columns, *(name for name in self.rule.flags if name not in columns))
        return self._watched

    def object_id(self, obj: Any) -> ObjectId:
        """The livesync id of ``obj``."""
        if self.id_function is not None:
            return object_id(self.id_function(obj))
        state = inspect(obj)
        if self.is_primary_key and state.identity is not None:
            return object_id(state.identity[0])  # known even when the (deleted) object is expired
        assert self.id_key is not None
        return object_id(getattr(obj, self.id_key))


class Registry:
    """The registered models, and what a flush of them gives."""

    def __init__(self) -> None:
        self._registrations: dict[type, Registration] = {}

    def add(self, model: type, rule: ModelRule, id: str | Callable[[Any], object] | None) -> None:
        """Register ``model`` (and its subclasses) under ``rule``."""
        registration = Registration(model, rule, id)
        for name in rule.lifecycle_attributes:
            # active_history: the attribute's old value is loaded when it is set, so its history has it
            event.listen(getattr(model, name), "set", _keep_old_value, active_history=True)
        self._registrations[model] = registration

    def of(self, cls: type) -> Registration | None:
        """The registration of ``cls`` or of its nearest registered base class."""
        for klass in cls.__mro__:
            registration = self._registrations.get(klass)
            if registration is not None:
                return registration
        return None

    def load_deleted_ids(self, session: Session) -> None:
        """Before a flush: load the id attributes of deleted objects while their rows still exist."""
        for obj in session.deleted:
            registration = self.of(type(obj))
            if registration is not None and registration.id_key and not registration.is_primary_key:
                getattr(obj, registration.id_key)

    def flushed(self, session: Session, unit: Unit) -> None:
        """After a flush (history still holds its changes): add them to ``unit``."""
        for obj in session.new:
            registration = self.of(type(obj))
            if registration is not None:
                flags = registration.rule.created(partial(getattr, obj))
                if flags:
                    unit.emit(registration.rule.type, registration.object_id(obj), *flags)
        for obj in session.dirty:
            registration = self.of(type(obj))
            if registration is not None:
                self._updated(unit, registration, obj)
        for obj in session.deleted:
            registration = self.of(type(obj))
            if registration is not None:
                unit.emit(registration.rule.type, registration.object_id(obj), "deleted")

    def _updated(self, unit: Unit, registration: Registration, obj: Any) -> None:
        state = inspect(obj)
        histories = {name: state.attrs[name].history for name in registration.watched}
        changed = [name for name, history in histories.items() if history.has_changes()]
        if not changed:
            return

        def after(name: str) -> Any:
            history = histories[name]
            return (history.added or history.unchanged or (None,))[0]

        def before(name: str) -> Any:
            history = histories[name]
            if history.deleted or history.unchanged:
                return (history.deleted or history.unchanged)[0]
            return not after(name) if history.added else None  # old value unknown: it changed

        flags = registration.rule.updated(changed, before, after)
        if flags:
            self._emit_with_cascades(unit, registration, obj, flags, set())

    def _emit_with_cascades(
        self, unit: Unit, registration: Registration, obj: Any, flags: Sequence[str], seen: set[tuple[str, ObjectId]]
    ) -> None:
        key = (registration.rule.type, registration.object_id(obj))
        unit.emit(key[0], key[1], *flags)
        seen.add(key)
        for relationship in registration.rule.cascade:
            related = getattr(obj, relationship)  # lazy loads work in after_flush (no autoflush during a flush)
            for other in related if isinstance(related, Iterable) else () if related is None else (related,):
                target = self.of(type(other))
                if target is None:
                    raise ConfigurationError(
                        f"cascade {registration.rule.type}.{relationship}: {type(other).__name__} is not registered"
                    )
                if (target.rule.type, target.object_id(other)) not in seen:
                    self._emit_with_cascades(
                        unit, target, other, registration.rule.cascade_flags(relationship, flags), seen
                    )


def _keep_old_value(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    """A ``set`` listener registered with ``active_history=True`` only for that flag's effect."""


__all__ = ["Registration", "Registry"]
