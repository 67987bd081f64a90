#!lua flags=allow-oom
-- prune.lua: delete buckets every agent has read, and buckets past retention.
--
-- KEYS[1]  livesync:{ns:p}:buckets    zset bucket id -> first seq
-- KEYS[2]  livesync:{ns:p}:pointers   hash agent id -> last acknowledged seq
-- KEYS[3]  livesync:{ns:p}:seq        head
-- KEYS[4]  livesync:{ns:p}:pruned     highest seq ever deleted
-- KEYS[5]  livesync:{ns:p}:acked      hash agent id -> version of the change at its pointer (fenced ack)
-- KEYS[6]  livesync:{ns:p}:b:         the prefix of bucket keys: the bucket holding an agent's pointer
--          is read as KEYS[6] .. id (same hash tag, so the same cluster slot as every declared key)
-- KEYS[7..n]  candidate bucket keys, oldest first
-- ARGV[1]  granularity in seconds
-- ARGV[2]  retention in seconds (0: keep unread changes forever)
-- ARGV[3..n-4]  the bucket ids of KEYS[7..n], in the same order
--
-- A bucket's last seq is the next bucket's first seq - 1 (the head for the newest).
-- A candidate is deleted when the lowest pointer is at or past its last seq (with no
-- pointer at all, nothing counts as read: an agent added later may start at the
-- tail; nor while any pointer is beyond the head: the head was lost or rewound, the
-- seqs after it are handed out again to new changes, and such a pointer has read none
-- of them; nor while the change stored at an agent's pointer is not the one it
-- acknowledged (its version differs): the head was set back and overtaken again, the
-- seqs up to that pointer now hold changes it never read, and deleting them would leave
-- its run nothing to compare with, so it would skip them), or when retention is set and the whole bucket is older than it by the
-- server's clock. The script stops at the first candidate it must keep. KEYS[4] keeps
-- the highest seq deleted, so a pointer below it shows that agent lost unread changes.
-- Returns {buckets deleted, highest seq deleted (0 if none)}.
-- the version of the stored change with this seq, or nil when none is stored: the member
-- holding it is the last one starting at or below it, "<first seq>:<first version>:..."
-- with consecutive seqs and versions
local function version_at(seq)
    local bucket = redis.call('ZREVRANGEBYSCORE', KEYS[1], seq, '-inf', 'LIMIT', 0, 1)
    if not bucket[1] then
        return nil
    end
    local member = redis.call('ZREVRANGEBYSCORE', KEYS[6] .. bucket[1], seq, '-inf', 'LIMIT', 0, 1)
    if not member[1] then
        return nil
    end
    local first_seq, first_version = string.match(member[1], '^(%d+):(%d+):')
    if not first_seq then
        return nil
    end
    return tonumber(first_version) + (seq - tonumber(first_seq))
end

local pointers = redis.call('HGETALL', KEYS[2])
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
local lowest = -1
for i = 1, #pointers, 2 do
    local seq = tonumber(pointers[i + 1]) or 0  -- a corrupt pointer counts as nothing read: keep its changes
    if seq > head then
        -- rewound: the tick marks that agent rollback; until then only retention deletes here
        lowest = -1
        break
    end
    local acked = tonumber(redis.call('HGET', KEYS[5], pointers[i]) or '')
    if seq > 0 and acked then
        local stored = version_at(seq)
        if stored and stored ~= acked then
            -- seqs handed out again under this pointer: it has read none of them
            lowest = -1
            break
        end
    end
    if i == 1 or seq < lowest then
        lowest = seq
    end
end
local granularity = tonumber(ARGV[1])
local retention = tonumber(ARGV[2])
local expired_before = nil
if retention > 0 then
    local now = redis.call('TIME')
    expired_before = math.floor((tonumber(now[1]) - retention) / granularity)
end
local deleted = 0
local highest = 0
for i = 7, #KEYS do
    local id = ARGV[i - 4]
    local first = redis.call('ZSCORE', KEYS[1], id)
    if first then
        local following = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. first, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
        local last = head
        if following[2] then
            last = tonumber(following[2]) - 1
        end
        local read = lowest >= 0 and last <= lowest
        local expired = expired_before ~= nil and tonumber(id) < expired_before
        if not (read or expired) then
            break
        end
        -- UNLINK: a large bucket is freed off the main thread, so a call's time does not grow with bucket size
        redis.call('UNLINK', KEYS[i])
        redis.call('ZREM', KEYS[1], id)
        deleted = deleted + 1
        if last > highest then
            highest = last
        end
    end
end
if highest > tonumber(redis.call('GET', KEYS[4]) or '0') then
    redis.call('SET', KEYS[4], highest)
end
return {deleted, highest}
