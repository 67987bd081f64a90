-- ack.lua: move an agent's pointer, fenced by its run lock.
--
-- KEYS[1]  livesync:{ns:p}:lock:<agent>   run lock holding the runner's token
-- KEYS[2]  livesync:{ns:p}:pointers       hash agent id -> last acknowledged seq
-- KEYS[3]  livesync:{ns:p}:seq            head
-- ARGV[1]  the runner's lock token
-- ARGV[2]  agent id
-- ARGV[3]  seq to acknowledge
--
-- Returns 1 when the pointer moved, 0 when the caller no longer holds the lock
-- (nothing changed), -1 when the agent has no pointer any more (it was removed),
-- -2 when the seq is behind the pointer, -3 when it is beyond the head (nothing
-- changed: a pointer past the head would skip changes published later).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local current = redis.call('HGET', KEYS[2], ARGV[2])
if not current then
    return -1
end
if tonumber(ARGV[3]) < tonumber(current) then
    return -2
end
if tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
    return -3
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
