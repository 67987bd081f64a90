#!lua flags=allow-oom
-- note_job.lua: remember the RQ job id of the run a tick enqueued for (agent, partition).
--
-- KEYS[1]  livesync:{ns}:jobs   hash <agent>:<partition> -> job id
-- ARGV[1]  <agent>:<partition>
-- ARGV[2]  the RQ job id
--
-- Returns 1 when the field is new, 0 when it replaced an older job id.
--
-- allow-oom: with the RQ queue on another Redis, a tick at a full track Redis (noeviction,
-- at maxmemory) enqueues the runs that drain it; without this note the next tick cannot
-- see them standing and enqueues twins. One field per (agent, partition), replaced each
-- time by an id of the same length, so this cannot grow memory without bound.
return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
