#!lua flags=allow-oom
-- ack.lua: move an agent's pointer and append its dead letters, fenced by its run lock.
--
-- KEYS[1]  livesync:{ns:p}:lock:<agent>   run lock holding the runner's token
-- KEYS[2]  livesync:{ns:p}:pointers       hash agent id -> last acknowledged seq
-- KEYS[3]  livesync:{ns:p}:seq            head
-- KEYS[4]  livesync:{ns:p}:dlq:<agent>    the agent's dead letters in this partition
-- KEYS[5]  livesync:{ns:p}:acked          hash agent id -> version of the change at its pointer
-- ARGV[1]  the runner's lock token
-- ARGV[2]  agent id
-- ARGV[3]  seq to acknowledge, or '' to leave the pointer where it is (requeue, export)
-- ARGV[4]  how many dead letters to drop from the head of KEYS[4] first (what a
--          requeue read and delivered or appends again; 0 for runs)
-- ARGV[5]  version of the change at ARGV[3], stored in KEYS[5]; '' drops the agent's field
--          (nothing known to check against). Unused when ARGV[3] is ''
-- ARGV[6], ARGV[7], ...  dead letters (JSON entries) to append to KEYS[4]
--
-- Returns 1 when done, 0 when the caller no longer holds the lock, -1 when the agent
-- has no pointer any more (it was removed), -2 when the seq is behind the pointer, -3
-- when it is beyond the head (a pointer past the head would skip changes published
-- later). In every case but 1 nothing changed: neither pointer nor dead letters. So a
-- runner that lost its lock, or whose agent was removed (and maybe added again), can
-- never write dead letters the current agent would inherit. The pointer and its
-- acknowledged version move together, so a run can tell the change it acknowledged from
-- another one handed the same seq after a rewind.
--
-- allow-oom: acking is how a full Redis (noeviction, at maxmemory) drains: the pointer
-- moves and prune then frees the buckets. The dead letters it appends are bounded by
-- the per-run dead-letter limit the runner enforces.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local current = redis.call('HGET', KEYS[2], ARGV[2])
if not current then
    return -1
end
if ARGV[3] ~= '' then
    if tonumber(ARGV[3]) < tonumber(current) then
        return -2
    end
    if tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
        return -3
    end
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
    if ARGV[5] ~= '' then
        redis.call('HSET', KEYS[5], ARGV[2], ARGV[5])
    else
        redis.call('HDEL', KEYS[5], ARGV[2])
    end
end
if tonumber(ARGV[4]) > 0 then
    redis.call('LTRIM', KEYS[4], tonumber(ARGV[4]), -1)
end
-- in slices: unpack() of thousands of values would overflow Lua's C stack
for first = 6, #ARGV, 500 do
    redis.call('RPUSH', KEYS[4], unpack(ARGV, first, math.min(first + 499, #ARGV)))
end
return 1
