-- One scheduler pass over one schedule: claims a tick (at most one worker of the fleet
-- dispatches each tick), moves the time of the schedule's latest pass forward (never
-- back: another worker may have gone further) and lists the claimed ticks whose
-- dispatch is overdue.
-- A claimed tick stays owed (KEYS[3], scored by when it was claimed) until its
-- claimer settles it after the dispatch. One owed longer than the lease (its claimer
-- died between claim and dispatch, or cannot reach Redis) may be claimed by another:
-- ticks are dispatched under an idempotency key, so a tick dispatched after all is
-- not dispatched twice.
-- KEYS[1] the tick's claim, KEYS[2] the latest pass, KEYS[3] the owed ticks;
-- ARGV[1] the claim's lifetime in seconds ('' for no claim), ARGV[2] the time of this
-- pass, ARGV[3] who claims, ARGV[4] now, ARGV[5] the lease in seconds, ARGV[6] the
-- tick (as the owed set names it).
-- Returns {1 if this caller claimed the tick, now or before (its reply may have been
-- lost to a Redis restart: the claimer asks again), else 0; then up to ten overdue
-- ticks}.
local claimed = 0
local now, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[1] ~= '' then
  if redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
    claimed = 1
    redis.call('ZADD', KEYS[3], now, ARGV[6])
  elseif redis.call('GET', KEYS[1]) == ARGV[3] then
    claimed = 1
  else
    local since = redis.call('ZSCORE', KEYS[3], ARGV[6])
    if since and tonumber(since) <= now - lease then
      redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[1])
      redis.call('ZADD', KEYS[3], now, ARGV[6])
      claimed = 1
    end
  end
end
local latest = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[2]) > latest then
  redis.call('SET', KEYS[2], ARGV[2])
end
local reply = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - lease, 'LIMIT', 0, 10)
table.insert(reply, 1, claimed)
return reply
