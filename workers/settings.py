"""RQ worker settings: ``rq worker -c workers.settings`` equals ``livesync worker``.

RQ reads the upper-case names of this module. Values come from the same
``LIVESYNC_*`` environment as the rest of livesync.
"""

from livesync.config import Settings

_settings = Settings()

REDIS_URL = _settings.queue_url
QUEUES = [_settings.queue]
SERIALIZER = "rq.serializers.JSONSerializer"
