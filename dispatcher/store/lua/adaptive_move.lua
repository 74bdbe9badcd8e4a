-- Moves a weight="auto" task to another route, once among many processes.
-- KEYS[1] the task's state hash; ARGV: expected route, new route, since, reason, ttl.
-- A missing hash means the task has not moved yet: inline.
local current = redis.call('HGET', KEYS[1], 'route')
if not current then current = 'inline' end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'route', ARGV[2], 'since', ARGV[3], 'reason', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
