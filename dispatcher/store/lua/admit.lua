-- Admits a job about to start, or says how long it should wait: the fleet-wide rate
-- and concurrency limits of its task, on the Redis clock, in one atomic step (a job
-- refused by one limit takes nothing from the other).
-- KEYS[1] the task's admissions (sorted by time: the sliding log), KEYS[2] its jobs
-- told to come back later (by when), KEYS[3] the slot key's leases (by expiry),
-- KEYS[4] the Celery publications waiting for a slot (defer.lua files them).
-- ARGV[1] the publication (job id:attempt; a slot's holder), ARGV[2] rate count (0: no
-- rate limit), ARGV[3] rate window (s), ARGV[4] slots (0: no concurrency limit),
-- ARGV[5] lease (s). Returns {1 admitted | 0 refused, reason, wait (s), now}.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local job = ARGV[1]
local count, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local slots, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local function answer(admitted, reason, wait)
  return {admitted, reason, string.format('%.6f', wait), string.format('%.6f', now)}
end
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)  -- leases whose holder died
  if not redis.call('ZSCORE', KEYS[3], job) and redis.call('ZCARD', KEYS[3]) >= slots then
    local first = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
    return answer(0, 'concurrency', first - now)
  end
end
if count > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window - 60)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= count then
    -- Free when the count-th latest admission leaves the window. A new job is told to
    -- come back one spacing (window / count) after the last one told, so waiting jobs
    -- come back spread out, not at once; a job told before keeps its time.
    local free = tonumber(redis.call('ZRANGE', KEYS[1], n - count, n - count,
                                     'WITHSCORES')[2]) + window
    local at, told = free, redis.call('ZSCORE', KEYS[2], job)
    if told then
      at = math.max(free, tonumber(told))
    else
      local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
      if last then at = math.max(free, tonumber(last) + window / count) end
      redis.call('ZADD', KEYS[2], at, job)
      redis.call('EXPIRE', KEYS[2], math.ceil(at - now + window) + 60)
    end
    return answer(0, 'rate_limit', at - now)
  end
  redis.call('ZADD', KEYS[1], now, job .. '@' .. t[1] .. '.' .. t[2])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
  redis.call('ZREM', KEYS[2], job)
end
if slots > 0 then
  redis.call('ZADD', KEYS[3], now + lease, job)
  redis.call('EXPIRE', KEYS[3], math.ceil(lease) + 1)
  redis.call('ZREM', KEYS[4], job)  -- no longer waiting, if it was
end
return answer(1, '', 0)
