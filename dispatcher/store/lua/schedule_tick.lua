-- One scheduler pass over one schedule: claims a tick (at most one worker of the fleet
-- dispatches each tick) and moves the time of the schedule's latest pass forward
-- (never back: another worker may have gone further).
-- KEYS[1] the tick's claim, KEYS[2] the latest pass; ARGV[1] the claim's lifetime in
-- seconds ('' for no claim), ARGV[2] the time of this pass, ARGV[3] who claims.
-- Returns 1 if this caller claimed the tick, now or before (its reply may have been
-- lost to a Redis restart: the claimer asks again).
local claimed = 0
if ARGV[1] ~= '' then
  if redis.call('SET', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[1]) then
    claimed = 1
  elseif redis.call('GET', KEYS[1]) == ARGV[3] then
    claimed = 1
  end
end
local latest = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[2]) > latest then
  redis.call('SET', KEYS[2], ARGV[2])
end
return claimed
