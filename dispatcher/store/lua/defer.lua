-- Files a delivered publication back in the delay store, due later (a job a limit
-- refused): its marker keeps (or is given) the message release_due.lua pushes.
-- KEYS[1] its marker, KEYS[2] the delay store, KEYS[3] the in-flight index.
-- ARGV[1] publish id, ARGV[2] due, ARGV[3] marker ttl (s), ARGV[4] the message ('':
-- the one its marker holds), ARGV[5] its queue key (with a message).
-- Returns 0 when no message was given and the marker holds none (the caller builds it).
local held = redis.call('GET', KEYS[1])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[1], ARGV[5] .. '\n' .. ARGV[4], 'EX', ARGV[3])
elseif held and held ~= '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
else
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
