-- Files a delivered publication a limit refused back in the delay store, due when the
-- limiter said, with a fresh message (a new delivery tag: the delivery being refused
-- is acknowledged after this, and its tag must not name the next one). One waiting
-- for a slot is also filed as a waiter, in this same step, so a slot freed from now on
-- pushes it (release_slot.lua); if one freed since it was refused, it goes back on its
-- queue at once.
-- KEYS[1] its marker, KEYS[2] the delay store, KEYS[3] the in-flight index, KEYS[4]
-- the slot key's leases, KEYS[5] its waiters, KEYS[6] the job's run count, KEYS[7] its
-- taken mark (count_delivery.lua). ARGV[1]
-- publish id, ARGV[2] due, ARGV[3] marker ttl (s), ARGV[4] the message, ARGV[5] its
-- queue key, ARGV[6] slots (0: it waits for a rate limit), ARGV[7] now, ARGV[8] 1 if
-- the worker counted this delivery as a run when it took it (it never ran: uncounted).
-- Returns 2 if queued at once, else 1.
redis.call('SET', KEYS[1], ARGV[5] .. '\n' .. ARGV[4], 'EX', ARGV[3])
if ARGV[8] == '1' and tonumber(redis.call('GET', KEYS[6]) or '0') > 0 then
  redis.call('DECR', KEYS[6])
  redis.call('DEL', KEYS[7])
end
local slots = tonumber(ARGV[6])
if slots > 0 then
  local t = redis.call('TIME')
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(t[1]) + tonumber(t[2]) / 1000000)
  if redis.call('ZCARD', KEYS[4]) < slots then
    redis.call('LPUSH', ARGV[5], ARGV[4])
    redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
    return 2
  end
  redis.call('ZADD', KEYS[5], 'NX', ARGV[7], ARGV[1])
  redis.call('EXPIRE', KEYS[5], 86400)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
