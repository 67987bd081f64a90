#!lua flags=allow-oom
-- release.lua: drop a run lock, only while the caller still holds it.
--
-- KEYS[1]  livesync:{ns:p}:lock:<agent>
-- ARGV[1]  the runner's lock token
--
-- Returns 1 when released, 0 when the lock was not the caller's any more.
--
-- allow-oom: releasing frees memory; a full Redis must still run it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
