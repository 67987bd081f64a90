"""Publishing with ``WAIT``: the publish script and the replicas' acknowledgement on one connection.

``WAIT`` counts the writes of its own connection, so both go in one pipeline; on a
Redis Cluster that pipeline goes to the node serving the partition's slot, following
failovers. Used by :meth:`Track.publish <livesync.track.Track.publish>` with ``wait_replicas``.

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from livesync.errors import LiveSyncError


def publish_waiting(
    redis: Any, script: Script, key: str, keys_and_args: tuple[Any, ...], replicas: int, timeout: float
) -> tuple[int, int]:
    """Run the publish ``script`` (six keys, then its arguments: ``keys_and_args``) and ``WAIT`` in one pipeline.

    Returns the script's reply and how many replicas acknowledged within ``timeout``
    seconds. ``key`` (the partition's seq key) picks the cluster node.

    On a cluster the pipeline goes to the node serving the partition's slot; when
    that node is gone or the slot moved (a failover), the slot map is refreshed and
    the error raised, so the caller's retry finds the new master.
    """
    cluster = redis if isinstance(redis, RedisCluster) else None
    for _attempt in range(3):
        client = redis
        if cluster is not None:
            node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
            client = cluster.get_redis_connection(node)
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, 6, *keys_and_args)
        pipe.wait(replicas, int(timeout * 1000))
        try:
            result, acked = pipe.execute()
        except NoScriptError:
            client.script_load(script.script)
            continue
        except (MovedError, AskError):
            if cluster is None:
                raise
            cluster.nodes_manager.initialize()  # the slot moved: nothing was written there
            continue
        except (RedisConnectionError, RedisTimeoutError):
            if cluster is not None:
                with contextlib.suppress(RedisError):
                    cluster.nodes_manager.initialize()
            raise
        return int(result), int(acked)
    raise LiveSyncError(f"publish to {key} kept being redirected; the cluster is reconfiguring")
