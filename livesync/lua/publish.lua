-- publish.lua: append one publish call's changes to a partition's track, atomically.
--
-- KEYS[1]  livesync:{ns:p}:seq         head (last seq handed out)
-- KEYS[2]  livesync:{ns:p}:buckets     zset bucket id -> first seq of the bucket
-- KEYS[3]  livesync:{ns:p}:b:<bucket>  the bucket the client expects to write to
-- ARGV[1]  granularity in seconds
-- ARGV[2]  the bucket id of KEYS[3]
-- ARGV[3], ARGV[4], ...  pairs of (number of changes, packed body) - one member each
--
-- Returns the first seq (> 0) on success, or -(bucket + 1) when the server's current
-- bucket is not ARGV[2]: nothing was written and the client retries with that bucket
-- (so every key the script writes is declared in KEYS). One integer keeps the reply
-- cheap to parse on the hot path of single emits.
--
-- Seqs come from the head, time from the server's TIME: publishers' clocks play no
-- part, and every seq <= head is stored when the script returns.
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
for i = 3, #ARGV, 2 do
    total = total + tonumber(ARGV[i])
end
local first = redis.call('INCRBY', KEYS[1], total) - total + 1
local ts = string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local seq = first
local args = {}
for i = 3, #ARGV, 2 do
    args[#args + 1] = seq
    args[#args + 1] = string.format('%d', seq) .. ':' .. ts .. ':' .. ARGV[i + 1]
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
