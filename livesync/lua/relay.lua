-- relay.lua: publish outbox rows to a partition's track and mark them relayed, atomically.
--
-- The body of publish.lua runs unchanged as the local function publish() below:
-- livesync/lua/__init__.py puts that file's text where the line '--@include publish.lua'
-- stands when the script is loaded, so there is one publish logic, not two. This script
-- takes publish.lua's KEYS and ARGV with its own appended at the ends, and removes its
-- own before publish() reads them:
--
-- KEYS[1..n-1]  as publish.lua (KEYS[1] head ... KEYS[6] pointers)
-- KEYS[n]       livesync:{ns:p}:relayed   zset mark -> server ms when published (the last key)
-- ARGV[1..]     as publish.lua (granularity, bucket, epoch, then pairs (count, packed body))
-- then          the marks, one per published change, in order, each '<epoch>:<row id>:<row created_us>',
--               joined by single spaces into one argument (one argument, not one per row:
--               the client packs fewer), then the marks to remove (space-joined the same way,
--               maybe empty: marks of rows whose delete committed, see livesync/outbox/relay.py),
--               then the marks' TTL in milliseconds (the last three)
--
-- When none of the marks is stored yet, the reply is publish.lua's (the first seq; or
-- -(bucket + 1) or an error reply, nothing written) and, on success only, every mark is
-- added with the server's time in the same call: the changes and their marks land
-- together or not at all, and the marks to remove are removed. Marks older than the TTL are dropped, and the key expires a TTL
-- after the last relay. When some marks are stored already (those rows were relayed by
-- a relay that died before deleting them), nothing is written and the reply is the error
-- 'LIVESYNC_RELAYED <i> <j> ...' naming the 1-based positions of those marks: the client
-- sends the other rows again without them.
local marks_key = KEYS[#KEYS]
KEYS[#KEYS] = nil
local ttl = tonumber(ARGV[#ARGV])
local removed = ARGV[#ARGV - 1]
local joined = ARGV[#ARGV - 2]
ARGV[#ARGV] = nil
ARGV[#ARGV] = nil
ARGV[#ARGV] = nil
local marks = {}
for mark in string.gmatch(joined, '[^ ]+') do
    marks[#marks + 1] = mark
end
local seen = {}
for start = 1, #marks, 400 do
    local stop = math.min(start + 399, #marks)
    local scores = redis.call('ZMSCORE', marks_key, unpack(marks, start, stop))
    for i = start, stop do
        if scores[i - start + 1] then
            seen[#seen + 1] = string.format('%d', i)
        end
    end
end
if #seen > 0 then
    return redis.error_reply('LIVESYNC_RELAYED ' .. table.concat(seen, ' '))
end

local function publish()
--@include publish.lua
end

local first = publish()
if type(first) ~= 'number' or first <= 0 then
    return first
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local stamp = string.format('%d', ms)
local args = {}
for i = 1, #marks do
    args[#args + 1] = stamp
    args[#args + 1] = marks[i]
    if #args >= 400 then
        redis.call('ZADD', marks_key, unpack(args))
        args = {}
    end
end
if #args > 0 then
    redis.call('ZADD', marks_key, unpack(args))
end
local gone = {}
for mark in string.gmatch(removed, '[^ ]+') do
    gone[#gone + 1] = mark
    if #gone >= 400 then
        redis.call('ZREM', marks_key, unpack(gone))
        gone = {}
    end
end
if #gone > 0 then
    redis.call('ZREM', marks_key, unpack(gone))
end
redis.call('ZREMRANGEBYSCORE', marks_key, '-inf', '(' .. string.format('%d', ms - ttl))
redis.call('PEXPIRE', marks_key, ttl)
return first
