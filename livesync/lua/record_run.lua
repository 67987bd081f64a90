#!lua flags=allow-oom
-- record_run.lua: store the outcome of a run in the agent's hash, if the agent still exists.
--
-- KEYS[1]  livesync:{ns}:agent:<agent>   the agent's hash
-- ARGV[1]  when the run started (seconds, as text)
-- ARGV[2]  changes read
-- ARGV[3]  records accepted
-- ARGV[4]  records dead-lettered
-- ARGV[5]  now (seconds, as text)
-- ARGV[6]  the run's error (one line), or '' when it succeeded
-- ARGV[7]  the state the run leaves the agent in ('paused' when it stopped at the
--          dead-letter limit), or '' to leave the state alone
-- ARGV[8]  '1' when the run was interrupted (Ctrl-C): its work counts, but it is neither
--          a success nor a failure (last_success_at, failures, last_error stay)
--
-- Returns 1 when stored, 0 when the agent is gone (nothing written: a run that
-- finishes after its agent was removed leaves no remnant hash).
--
-- allow-oom: the run that drains a full Redis (noeviction, at maxmemory) must show in
-- status, and the pause of a run that hit the dead-letter limit must hold there too
-- (else every retry would dead-letter another limit's worth). It rewrites a fixed set of
-- fields of one existing hash, so it cannot grow memory without bound.
if redis.call('HEXISTS', KEYS[1], 'backend') == 0 then
    return 0
end
redis.call('HSET', KEYS[1], 'last_run_at', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('HINCRBY', KEYS[1], 'changes', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'records', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'rejected', ARGV[4])
if ARGV[8] == '1' then
    -- interrupted: says nothing about the target
elseif ARGV[6] == '' then
    redis.call('HSET', KEYS[1], 'last_success_at', ARGV[5])
    -- a gap or rollback marked during the run keeps its reason
    local state = redis.call('HGET', KEYS[1], 'state')
    if state ~= 'gap' and state ~= 'rollback' then
        redis.call('HDEL', KEYS[1], 'last_error')
    end
else
    redis.call('HINCRBY', KEYS[1], 'failures', 1)
    redis.call('HSET', KEYS[1], 'last_error', ARGV[6])
end
if ARGV[7] ~= '' then
    redis.call('HSET', KEYS[1], 'state', ARGV[7])
end
return 1
