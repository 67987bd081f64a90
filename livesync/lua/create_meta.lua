-- create_meta.lua: create a namespace's meta unless it exists, with an epoch from the server's clock.
--
-- KEYS[1]  livesync:{ns}:meta      hash: granularity, partitions, schema, created_at, epoch
-- ARGV[1]  granularity in seconds
-- ARGV[2]  number of partitions
-- ARGV[3]  schema version
-- ARGV[4]  floor: the new epoch is greater than this (epochs seen before: a client's cached
--          one, leftover partition epoch keys); 0 when none is known
-- ARGV[5]  an epoch to reuse as it is (init --repair when every partition agrees); 0: none
--
-- Returns 1 when it created the meta, 0 when a meta existed (then nothing is written), so
-- two racing creators end with one meta. The epoch is the server's TIME in microseconds:
-- it survives the loss of every key, which a counter would not.
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
local now = redis.call('TIME')
local epoch = tonumber(ARGV[5])
if epoch == 0 then
    epoch = tonumber(now[1]) * 1000000 + tonumber(now[2])
    local floor = tonumber(ARGV[4])
    if epoch <= floor then
        epoch = floor + 1
    end
end
redis.call('HSET', KEYS[1],
    'granularity', ARGV[1],
    'partitions', ARGV[2],
    'schema', ARGV[3],
    'created_at', string.format('%d.%06d', tonumber(now[1]), tonumber(now[2])),
    'epoch', string.format('%d', epoch))
return 1
