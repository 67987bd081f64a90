"""RQ worker settings: ``rq worker -c livesync.rqconfig.settings`` equals ``livesync worker``.

RQ reads the upper-case names of this module. Values come from the same
``LIVESYNC_*`` environment as the rest of livesync; a bad one raises one
:class:`~livesync.errors.ConfigurationError` line naming the variable (never its value).
"""

from livesync.config import load_settings

_settings = load_settings()

REDIS_URL = _settings.queue_url
QUEUES = [_settings.queue]
SERIALIZER = "rq.serializers.JSONSerializer"
