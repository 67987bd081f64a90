-- publish.lua: append one publish call's changes to a partition's track, atomically.
--
-- KEYS[1]  livesync:{ns:p}:seq         head (last seq handed out)
-- KEYS[2]  livesync:{ns:p}:buckets     zset bucket id -> first seq of the bucket
-- KEYS[3]  livesync:{ns:p}:b:<bucket>  the bucket the client expects to write to
-- KEYS[4]  livesync:{ns:p}:epoch       the namespace epoch this partition belongs to
-- KEYS[5]  livesync:{ns:p}:clock       last version handed out (server microseconds)
-- KEYS[6]  livesync:{ns:p}:pointers    hash agent id -> last acknowledged seq
-- ARGV[1]  granularity in seconds
-- ARGV[2]  the bucket id of KEYS[3]
-- ARGV[3]  the epoch the client expects (from the namespace meta it read)
-- ARGV[4], ARGV[5], ...  pairs of (number of changes, packed body) - one member each
--
-- Returns the first seq (> 0) on success, or -(bucket + 1) when the server's current
-- bucket is not ARGV[2]: nothing was written and the client retries with that bucket
-- (so every key the script writes is declared in KEYS). One integer keeps the reply
-- cheap to parse on the hot path of single emits. When KEYS[4] is missing or differs
-- from ARGV[3] (the namespace was destroyed, re-created or restored under the client),
-- nothing is written and the reply is the error 'LIVESYNC_EPOCH <actual epoch or none>'.
-- When the head (KEYS[1]) is missing while the clock exists or a pointer is above 0, the
-- head was lost (evicted, deleted, a restore without it): seqs from 1 again would land
-- below those pointers, where runs never read them. Nothing is written and the reply is
-- the error 'LIVESYNC_HEAD_LOST clock' or 'LIVESYNC_HEAD_LOST pointer <highest pointer>'.
-- A new partition (no head, no clock, pointers 0) is the only one that pays for the check.
--
-- Seqs come from the head, time from the server's TIME: publishers' clocks play no
-- part, and every seq <= head is stored when the script returns. Change i of the call
-- gets version v0 + i with v0 = max(TIME in microseconds, clock + 1): versions only grow
-- in a partition, even when the server's clock goes back or the head is rewound. A
-- member is '<first seq>:<first version>:' .. body.
local epoch = redis.call('GET', KEYS[4])
if epoch ~= ARGV[3] then
    return redis.error_reply('LIVESYNC_EPOCH ' .. (epoch or 'none'))
end
if not redis.call('GET', KEYS[1]) then
    if redis.call('EXISTS', KEYS[5]) == 1 then
        return redis.error_reply('LIVESYNC_HEAD_LOST clock')
    end
    local highest = 0
    for _, value in ipairs(redis.call('HVALS', KEYS[6])) do
        local seq = tonumber(value) or 0
        if seq > highest then
            highest = seq
        end
    end
    if highest > 0 then
        return redis.error_reply('LIVESYNC_HEAD_LOST pointer ' .. string.format('%d', highest))
    end
end
local now = redis.call('TIME')
local granularity = tonumber(ARGV[1])
local bucket = math.floor(tonumber(now[1]) / granularity)
local newest = redis.call('ZREVRANGE', KEYS[2], 0, 0)
local indexed = false
if newest[1] then
    local newest_id = tonumber(newest[1])
    if newest_id > bucket then
        -- the clock went back: keep buckets in seq order
        bucket = newest_id
    end
    indexed = newest_id == bucket
end
if bucket ~= tonumber(ARGV[2]) then
    return -(bucket + 1)
end

local total = 0
for i = 4, #ARGV, 2 do
    total = total + tonumber(ARGV[i])
end
local first = redis.call('INCRBY', KEYS[1], total) - total + 1
local version = tonumber(now[1]) * 1000000 + tonumber(now[2])
local clock = tonumber(redis.call('GET', KEYS[5]))
if clock and clock >= version then
    version = clock + 1
end
redis.call('SET', KEYS[5], string.format('%d', version + total - 1))
-- from here on version - first is the offset of seq to version
version = version - first
local seq = first
local args = {}
for i = 4, #ARGV, 2 do
    args[#args + 1] = seq
    args[#args + 1] = string.format('%d:%d:', seq, seq + version) .. ARGV[i + 1]
    seq = seq + tonumber(ARGV[i])
    if #args >= 400 then
        redis.call('ZADD', KEYS[3], unpack(args))
        args = {}
    end
end
if #args > 0 then
    redis.call('ZADD', KEYS[3], unpack(args))
end
if not indexed then
    redis.call('ZADD', KEYS[2], 'NX', first, string.format('%d', bucket))
end
return first
