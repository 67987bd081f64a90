"""``rq cron`` configuration: tick every namespace of ``LIVESYNC_NAMESPACES`` (a JSON
list; default ``LIVESYNC_NAMESPACE``) every ``LIVESYNC_TICK_INTERVAL`` seconds.

    rq cron -c livesync.rqconfig.settings livesync.rqconfig.cron

is the same as ``livesync scheduler``. RQ's cron enqueues with the pickle serializer,
while livesync's queue is JSON-only; this module therefore makes RQ's cron jobs
enqueue the way livesync's own scheduler does (``livesync.scheduler.JsonCronJob``: JSON, at
most one tick waiting) and run its loop (``livesync.scheduler.start``: reconnecting
after a Redis outage).
"""

from rq import cron

from livesync.config import load_settings
from livesync.scheduler import JsonCronJob, Scheduler, register_ticks

cron.CronJob.enqueue = JsonCronJob.enqueue  # type: ignore[method-assign,assignment]
# `rq cron` calls start() after loading this file: it then rides out Redis outages too
cron.CronScheduler.start = Scheduler.start  # type: ignore[method-assign,assignment]

# rq.cron.register has the signature of CronScheduler.register: the module stands in.
register_ticks(cron, load_settings())  # type: ignore[arg-type]
