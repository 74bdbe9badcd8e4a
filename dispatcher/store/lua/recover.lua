-- Puts back a job that was published, never started, and is neither waiting in its
-- queue nor reserved by a worker: Redis lost it (a crash between a worker's BRPOP and
-- its bookkeeping). Atomic, so it cannot race a consumer's pop.
-- KEYS[1] the publication's marker, KEYS[2] the in-flight index, KEYS[3] kombu's
-- unacked hash, KEYS[4] the job's record (a finished job is never re-queued: a worker
-- that did not have the task, or a stock one, may have ended it), KEYS[5] the delay
-- store; ARGV[1] publish id, ARGV[2] now, ARGV[3] the verdict: 'ask' only
-- answers such a job's queue key; 'drop' stops watching it (-1: a stock worker ran
-- it); otherwise it is re-queued (1). Anything else answers 0.
local held = redis.call('GET', KEYS[1])
if not held or held == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 0 end  -- delayed: not due yet
local cut = string.find(held, '\n', 1, true)
local queue = string.sub(held, 1, cut - 1)
local message = string.sub(held, cut + 1)
local tag = cjson.decode(message)['properties']['delivery_tag']
if redis.call('HEXISTS', KEYS[3], tag) == 1 then return 0 end
if redis.call('LPOS', queue, message) then return 0 end
local record = redis.call('GET', KEYS[4])
if record then
  local ok, value = pcall(cjson.decode, record)
  if ok and type(value) == 'table' and (value['status'] == 'SUCCESS'
      or value['status'] == 'FAILURE' or value['status'] == 'REVOKED') then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 0
  end
end
if ARGV[3] == 'ask' then return queue end
if ARGV[3] == 'drop' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return -1
end
redis.call('LPUSH', queue, message)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
