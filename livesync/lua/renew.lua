#!lua flags=allow-oom
-- renew.lua: extend a run lock, only while the caller still holds it.
--
-- KEYS[1]  livesync:{ns:p}:lock:<agent>
-- ARGV[1]  the runner's lock token
-- ARGV[2]  new time to live in milliseconds
--
-- Returns 1 when renewed, 0 when the lock is held by someone else or expired.
--
-- allow-oom: a run at maxmemory (noeviction) must keep its lock to ack and prune.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
