#!lua flags=allow-oom
-- acquire.lua: take a run lock when nobody holds it (SET NX PX that a full Redis still runs).
--
-- KEYS[1]  livesync:{ns:p}:lock:<agent>
-- ARGV[1]  the runner's lock token
-- ARGV[2]  time to live in milliseconds
--
-- Returns 1 when taken, 0 when another runner holds it.
--
-- allow-oom: at maxmemory with noeviction Redis refuses a plain SET, and a run that
-- cannot take its lock can never ack and prune, the only way memory is freed. The lock
-- is one small key per (agent, partition), so this cannot grow memory without bound.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
