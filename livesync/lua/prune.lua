-- prune.lua: delete buckets that every agent has read.
--
-- KEYS[1]  livesync:{ns:p}:buckets    zset bucket id -> first seq
-- KEYS[2]  livesync:{ns:p}:pointers   hash agent id -> last acknowledged seq
-- KEYS[3]  livesync:{ns:p}:seq        head
-- KEYS[4..n]  candidate bucket keys, oldest first
-- ARGV[1..n-3]  the bucket ids of KEYS[4..n], in the same order
--
-- A bucket's last seq is the next bucket's first seq - 1 (the head for the newest).
-- A candidate is deleted only when the lowest pointer is at or past its last seq;
-- the script stops at the first candidate still needed. With no pointer at all,
-- nothing is deleted (an agent added later may start at the tail).
-- Returns the number of buckets deleted.
local pointers = redis.call('HVALS', KEYS[2])
if #pointers == 0 then
    return 0
end
local lowest = nil
for _, value in ipairs(pointers) do
    local seq = tonumber(value)
    if lowest == nil or seq < lowest then
        lowest = seq
    end
end
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
local deleted = 0
for i = 4, #KEYS do
    local id = ARGV[i - 3]
    local first = redis.call('ZSCORE', KEYS[1], id)
    if first then
        local following = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. first, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        local last = head
        if following[2] then
            last = tonumber(following[2]) - 1
        end
        if last > lowest then
            return deleted
        end
        redis.call('DEL', KEYS[i])
        redis.call('ZREM', KEYS[1], id)
        deleted = deleted + 1
    end
end
return deleted
