-- Put before take.lua and count_run.lua. count_delivery(count, mark, ttl, held) counts
-- a delivery of a job in its run count (key count) and returns the count. The count
-- tells deaths apart (runs - attempt), so a delivery that never started must not stay
-- counted: a delivery taken ahead of its start (held true: the worker's consumer took
-- it) is marked (key mark) until the worker says a pool process started it
-- (routes/celery/started.py). The next delivery that finds the mark takes that count
-- over instead of counting again: a job held by a worker that died or stopped before
-- starting it gets no death.
local function count_delivery(count, mark, ttl, held)
  local runs
  if redis.call('DEL', mark) == 1 and redis.call('EXISTS', count) == 1 then
    runs = tonumber(redis.call('GET', count))
  else
    runs = redis.call('INCR', count)
  end
  redis.call('EXPIRE', count, ttl)
  if held then
    redis.call('SET', mark, '1', 'EX', ttl)
  end
  return runs
end
