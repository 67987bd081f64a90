"""Configuration for plain RQ commands, equal to livesync's own.

    rq worker -c livesync.rqconfig.settings -S json -w livesync.worker.LiveSyncWorker   # = livesync worker
    rq cron -c livesync.rqconfig.settings livesync.rqconfig.cron                         # = livesync scheduler

Both modules read the ``LIVESYNC_*`` environment when RQ imports them; importing this
package alone does nothing.
"""
