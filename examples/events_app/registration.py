"""How the application's writes become livesync changes: the models registered with the SQLAlchemy integration."""

from __future__ import annotations

from examples.events_app.models import Category, Event
from livesync.integrations.sqlalchemy import LiveSync


def live_sync(namespace: str) -> LiveSync:
    """The integration in outbox mode: every commit writes its changes to ``livesync_outbox``, in its transaction.

    ``livesync relay`` publishes the committed rows to ``namespace`` exactly once. An
    event is on the targets while it is public: a new public event gives ``created`` (a
    private one nothing), ``is_public`` turning false ``unpublished`` (it leaves the
    targets) and true again ``published`` (it comes back, whole); a new title gives
    ``title_changed``, a new category ``moved``, any other column ``data_changed``, and
    a private event's edits nothing. A renamed category marks its events
    ``data_changed``: their documents carry the category's name.
    """
    sync = LiveSync("outbox", namespace=namespace)
    sync.register(Category, "category", flags={"name": "title_changed"}, cascade={"events": "data_changed"})
    sync.register(Event, "event", flags={"title": "title_changed", "category_id": "moved"}, published="is_public")
    return sync
