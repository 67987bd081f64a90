"""Django signals to changes, collected per transaction: published once on commit, or outbox rows.

``post_init`` keeps a snapshot of each registered instance's field values, so
``post_save`` knows which fields a save changed (only real changes count; with
``update_fields`` only those). ``post_delete`` gives ``deleted``; ``m2m_changed`` of the
relations a registration names gives their flags, on either side of the relation.

**direct**: every change is added to its connection's current transaction's batch with a
``transaction.on_commit`` marker of its own, so Django drops the markers of a rolled-back
savepoint (or transaction) with it; one publishing callback, kept behind every marker,
publishes the marked changes merged per object once the commit's callbacks run (robust:
a failure is logged, the commit stands). Outside any atomic block Django has committed
the write already, so the change is published at once.

**outbox**: every change is an ``OutboxRow`` written at once on the signal's database,
inside the transaction, so it commits or rolls back (savepoints too) with it. Django has
no hook before a commit, so rows are merged per signal, not per transaction: the relay's
reduction merges them for the targets.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from django.db import connections, transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_init, post_save

from livesync.changes import Triple, flag_names, validate
from livesync.client import MAX_BATCH, Publisher, Unit
from livesync.errors import ConfigurationError
from livesync.integrations.rules import CascadeFlags, ModelRule, object_id

log = logging.getLogger(__name__)

_SNAPSHOT = "_livesync_snapshot"


class _Registration:
    """A registered model: its rule, and the fields whose values are kept to compare."""

    def __init__(
        self,
        model: type[Model],
        rule: ModelRule,
        id: str | Callable[[Any], object] | None,
        m2m: dict[str, tuple[str, ...]],
    ) -> None:
        self.model = model
        self.rule = rule
        self.id = id
        self.m2m = m2m
        opts = model._meta
        self.fields = {field.name: field.attname for field in opts.concrete_fields}
        names = {field.name for field in opts.get_fields()}
        # reverse relations also by their accessor (event_set), the name getattr knows them by
        names |= {field.get_accessor_name() for field in opts.get_fields() if field.auto_created and not field.concrete}
        wanted = [*rule.flags, *rule.lifecycle_attributes, *rule.cascade, *m2m, *([id] if isinstance(id, str) else [])]
        for name in wanted:
            if name not in names:
                raise ConfigurationError(f"registering {rule.type!r}: {opts.label} has no field {name!r}")

    def object_id(self, instance: Any) -> object:
        if callable(self.id):
            return object_id(self.id(instance))
        return object_id(getattr(instance, self.id) if self.id else instance.pk)

    def values(self, instance: Any) -> dict[str, Any]:
        """The loaded field values (deferred fields are left out: their change is unknown)."""
        loaded = instance.__dict__
        return {name: loaded[attname] for name, attname in self.fields.items() if attname in loaded}


class _Batch:
    """The changes of one transaction on one connection (direct mode)."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.changes: list[Triple] = []
        self.kept: set[int] = set()

    def keep(self, index: int) -> None:
        """A change's marker ran: its savepoints were released and the transaction committed."""
        self.kept.add(index)

    def publish(self) -> None:
        """Publish the kept changes, merged per object (runs after every marker of the commit)."""
        unit = Unit()
        for index, (type_, id_, mask) in enumerate(self.changes):
            if index in self.kept:
                unit.emit(type_, id_, *flag_names(mask))
        self.collector.publish(unit.changes)


class Collector:
    """Registered Django models' changes, per transaction, in ``mode`` ``direct`` or ``outbox``.

    ``publisher`` (direct mode) is made on first use by ``make_publisher``; ``namespace``
    is where outbox rows go.
    """

    def __init__(self, mode: str, *, make_publisher: Callable[[], Publisher] | None = None, namespace: str) -> None:
        if mode not in ("direct", "outbox"):
            raise ConfigurationError(f"LIVESYNC['MODE'] must be 'direct' or 'outbox', got {mode!r}")
        if mode == "direct" and make_publisher is None:
            raise ConfigurationError("direct mode needs a publisher")
        self.mode = mode
        self.namespace = namespace
        self._make_publisher = make_publisher
        self._publisher: Publisher | None = None
        self._registrations: dict[type[Model], _Registration] = {}
        self._batches: weakref.WeakKeyDictionary[Any, _Batch] = weakref.WeakKeyDictionary()
        self._m2m_senders: dict[type[Model], list[tuple[_Registration, str, tuple[str, ...]]]] = {}

    # -- registration ---------------------------------------------------------------

    def register(
        self,
        model: type[Model],
        type: str,
        *,
        id: str | Callable[[Any], object] | None = None,
        flags: dict[str, str | Sequence[str] | None] | None = None,
        default: str | Sequence[str] | None = "data_changed",
        soft_delete: str | None = None,
        published: str | None = None,
        cascade: dict[str, CascadeFlags] | Iterable[str] | None = None,
        m2m: dict[str, str | Sequence[str]] | None = None,
    ) -> None:
        """Publish the changes of ``model`` (and its subclasses) as objects of ``type``.

        The options are :class:`~livesync.integrations.rules.ModelRule`'s (field names
        for attributes; ``cascade`` names forward or reverse relations, e.g. ``event_set``);
        ``m2m`` maps many-to-many fields to the flags an add, remove or clear gives.
        """
        rule = ModelRule.build(
            type, flags=flags, default=default, soft_delete=soft_delete, published=published, cascade=cascade
        )
        relations = ModelRule.build(type, flags=dict(m2m or {})).flags
        registration = _Registration(model, rule, id, {name: value or () for name, value in relations.items()})
        self._registrations[model] = registration
        for name, m2m_flags in registration.m2m.items():
            through = getattr(model, name).through
            self._m2m_senders.setdefault(through, []).append((registration, name, m2m_flags))

    def connect(self) -> None:
        """Connect the signals (once per collector; :meth:`disconnect` undoes it)."""
        uid = f"livesync-{id(self)}"
        post_init.connect(self._post_init, dispatch_uid=f"{uid}-init", weak=False)
        post_save.connect(self._post_save, dispatch_uid=f"{uid}-save", weak=False)
        post_delete.connect(self._post_delete, dispatch_uid=f"{uid}-delete", weak=False)
        m2m_changed.connect(self._m2m_changed, dispatch_uid=f"{uid}-m2m", weak=False)

    def disconnect(self) -> None:
        """Disconnect the signals and close the publisher."""
        uid = f"livesync-{id(self)}"
        post_init.disconnect(dispatch_uid=f"{uid}-init")
        post_save.disconnect(dispatch_uid=f"{uid}-save")
        post_delete.disconnect(dispatch_uid=f"{uid}-delete")
        m2m_changed.disconnect(dispatch_uid=f"{uid}-m2m")
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    # -- signals ----------------------------------------------------------------------

    def _registration_of(self, model: type) -> _Registration | None:
        for klass in model.__mro__:
            registration = self._registrations.get(klass)
            if registration is not None:
                return registration
        return None

    def _post_init(self, sender: type[Model], instance: Model, **kwargs: Any) -> None:
        registration = self._registration_of(sender)
        if registration is not None:
            instance.__dict__[_SNAPSHOT] = registration.values(instance)

    def _post_save(
        self, sender: type[Model], instance: Model, created: bool, update_fields: Any, using: str, **kwargs: Any
    ) -> None:
        registration = self._registration_of(sender)
        if registration is None:
            return
        before: dict[str, Any] = instance.__dict__.get(_SNAPSHOT, {})
        after = registration.values(instance)
        instance.__dict__[_SNAPSHOT] = after
        if created:
            flags = registration.rule.created(after.get)
            if flags:
                self.add(using, [(registration.rule.type, registration.object_id(instance), flags)])
            return
        fields = after.keys() if update_fields is None else set(update_fields) & after.keys()
        changed = [name for name in fields if name not in before or before[name] != after[name]]

        def old(name: str) -> Any:
            return before[name] if name in before else not after.get(name)  # unknown before: it changed

        flags = registration.rule.updated(changed, old, after.get) if changed else ()
        if flags:
            self.add(using, self._with_cascades(registration, instance, flags, set()))

    def _post_delete(self, sender: type[Model], instance: Model, using: str, **kwargs: Any) -> None:
        registration = self._registration_of(sender)
        if registration is not None:
            self.add(using, [(registration.rule.type, registration.object_id(instance), ("deleted",))])

    def _m2m_changed(
        self, sender: type[Model], instance: Model, action: str, reverse: bool, model: type[Model],
        pk_set: set[Any] | None, using: str, **kwargs: Any,
    ) -> None:  # fmt: skip
        watchers = self._m2m_senders.get(sender)
        if not watchers or action not in ("post_add", "post_remove", "post_clear", "pre_clear"):
            return
        for registration, name, flags in watchers:
            if not reverse:  # the instance is the registered side
                if action != "pre_clear" and isinstance(instance, registration.model):
                    self.add(using, [(registration.rule.type, registration.object_id(instance), flags)])
                continue
            # the other side changed: the registered objects are pk_set, or (clear) those related before it
            if action == "post_clear":
                continue
            manager = registration.model._default_manager.using(using)
            objects = (
                manager.filter(**{name: instance}) if action == "pre_clear" else manager.filter(pk__in=pk_set or ())
            )
            if action == "pre_clear":
                objects = list(objects)  # before the rows go
            self.add(using, [(registration.rule.type, registration.object_id(obj), flags) for obj in objects])

    def _with_cascades(
        self, registration: _Registration, instance: Any, flags: Sequence[str], seen: set[tuple[str, object]]
    ) -> list[tuple[str, object, Sequence[str]]]:
        key = (registration.rule.type, registration.object_id(instance))
        seen.add(key)
        changes: list[tuple[str, object, Sequence[str]]] = [(key[0], key[1], flags)]
        for relation in registration.rule.cascade:
            related: Any = getattr(instance, relation, None)
            objects = related.all() if hasattr(related, "all") else () if related is None else (related,)
            for other in objects:
                target = self._registration_of(type(other))
                if target is None:
                    raise ConfigurationError(
                        f"cascade {registration.rule.type}.{relation}: {type(other).__name__} is not registered"
                    )
                if (target.rule.type, target.object_id(other)) not in seen:
                    cascaded = registration.rule.cascade_flags(relation, flags)
                    changes.extend(self._with_cascades(target, other, cascaded, seen))
        return changes

    # -- transactions -----------------------------------------------------------------

    def add(self, using: str, items: Iterable[tuple[str, object, Sequence[str]]]) -> None:
        """Add changes of the transaction open on database ``using`` (validated now)."""
        triples = [validate(type_, id_, flags) for type_, id_, flags in items]
        if not triples:
            return
        if self.mode == "outbox":
            self.write(using, triples)
            return
        connection = connections[using]
        if not connection.in_atomic_block:
            self.publish(triples)  # autocommit: the write is committed already
            return
        batch = self._batch(connection)
        for triple in triples:
            batch.changes.append(triple)
            transaction.on_commit(partial(batch.keep, len(batch.changes) - 1), using=using, robust=True)
        # the publishing callback must run after every marker: move it behind them. It has no
        # savepoint (an empty set), so only a rollback of the whole transaction drops it
        connection.run_on_commit.append((set(), batch.publish, True))

    def _batch(self, connection: Any) -> _Batch:
        """The batch of the connection's open transaction: the one whose publishing callback is registered."""
        batch = self._batches.get(connection)
        if batch is not None:
            pending = connection.run_on_commit
            for index in range(len(pending) - 1, -1, -1):  # it is near the end: search from there
                if pending[index][1] == batch.publish:
                    del pending[index]
                    return batch
        # none, or its transaction committed (callbacks ran) or rolled back (callbacks dropped)
        batch = self._batches[connection] = _Batch(self)
        return batch

    def write(self, using: str, triples: list[Triple]) -> None:
        """Write ``triples`` as outbox rows on database ``using``, in its open transaction."""
        from livesync.integrations.django.models import OutboxRow

        created_us = time.time_ns() // 1000
        OutboxRow.objects.using(using).bulk_create(
            [
                OutboxRow(
                    namespace=self.namespace,
                    type=type_,
                    object_id=str(id_),
                    integer_id=isinstance(id_, int),
                    flags=mask,
                    created_us=created_us,
                )
                for type_, id_, mask in triples
            ]
        )

    def publish(self, changes: list[Triple]) -> None:
        """Publish committed changes; a failure is logged (the commit cannot be undone)."""
        if not changes:
            return
        try:
            if self._publisher is None:
                assert self._make_publisher is not None
                self._publisher = self._make_publisher()
            for start in range(0, len(changes), MAX_BATCH):
                self._publisher.emit_validated(changes[start : start + MAX_BATCH])
        except Exception:
            shown = ", ".join(f"{t} {i!r} {'+'.join(flag_names(m))}" for t, i, m in changes[:10])
            more = f" and {len(changes) - 10} more" if len(changes) > 10 else ""
            log.exception(
                "livesync: the changes of a committed transaction were not published (%d change(s): %s%s)",
                len(changes),
                shown,
                more,
            )


__all__ = ["Collector"]
