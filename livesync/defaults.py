"""Defaults: the plain constants behind :class:`~livesync.config.Settings`' field defaults.

Each default is written once, here. ``Settings`` declares its fields with them, and the
modules that take these values as explicit arguments (the runner, the export, the
dead-letter requeue, the publisher side's ``namespace`` and ``track``) default to the
same constants without importing pydantic. Change a default here, never in a signature.
"""

from __future__ import annotations

REDIS_URL = "redis://localhost:6379/0"
NAMESPACE = "default"
#: bucket width in seconds (fixed per namespace)
GRANULARITY = 60
#: partitions (fixed per namespace)
PARTITIONS = 1
#: records per backend upload
BATCH_SIZE = 500
#: changes read and reduced per window
WINDOW = 10_000
#: seconds between scheduler ticks
TICK_INTERVAL = 10
#: seconds a run lock lives without renewal
LOCK_TTL = 60
QUEUE = "livesync"
#: seconds an RQ run job may take
JOB_TIMEOUT = 3600
#: RQ retries of a failed run, and the seconds between them
RETRY_MAX = 5
RETRY_INTERVALS = (10, 30, 60, 300, 900)
#: dead letters one run may write before the agent is paused (a broken target)
DEAD_LETTER_LIMIT = 1000
#: buckets one prune script call deletes at most
PRUNE_CHUNK = 500
#: a publisher's retries of a publish Redis could not take (failover, BUSY), and the first wait between them
PUBLISH_RETRIES = 0
PUBLISH_RETRY_BACKOFF = 0.1
#: seconds a publish with ``wait_replicas`` waits for its replicas
WAIT_TIMEOUT = 1.0
#: seconds the tick's lock lives (one tick at a time per namespace)
TICK_LOCK_TTL = 30
#: seconds a connection attempt to Redis may take
CONNECT_TIMEOUT = 5.0
#: seconds before the scheduler's first reconnection attempt; the wait doubles up to RECONNECT_MAX
RECONNECT_FIRST = 1.0
RECONNECT_MAX = 30.0
#: where ``livesync metrics`` and ``livesync dashboard`` listen unless ``--host``/``--port`` say otherwise
#: (loopback: nothing exposed by default)
METRICS_HOST = "127.0.0.1"
METRICS_PORT = 9468
DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 9181

#: the outbox table ``livesync.outbox`` writes and ``livesync relay`` drains
OUTBOX_TABLE = "livesync_outbox"
#: outbox rows one relay batch moves (one transaction, one Lua call per partition)
RELAY_BATCH = 500
#: seconds an idle relay waits before looking at the outbox again
RELAY_POLL = 0.5
#: seconds between two lag reports (rows, oldest age) of a relay
RELAY_REPORT_INTERVAL = 5.0
#: seconds a relay's mark outlives its rows: a relay that died between publishing and
#: deleting its rows must be followed by another within this time, or they are sent twice
RELAY_MARK_TTL = 7 * 86400

# limits, not defaults, but checked in Settings and in the namespace alike
MAX_GRANULARITY = 86400
MAX_PARTITIONS = 1024
