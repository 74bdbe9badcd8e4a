-- Releases delayed publications that are due: each is taken out of the delay store and
-- its marker's message pushed onto its queue, atomically, so it is published exactly
-- once however many processes release at the same time.
-- KEYS[1] the delay store, KEYS[2] the in-flight index; ARGV[1] now, ARGV[2] at most
-- this many, ARGV[3] the marker key prefix, ARGV[4] the cancel mark prefix (a cancelled
-- job is dropped, never pushed). Returns how many were pushed and the next
-- due time ('' when none is held).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local pushed = 0
for _, pid in ipairs(due) do
  redis.call('ZREM', KEYS[1], pid)
  local held = redis.call('GET', ARGV[3] .. pid)
  local job = string.match(pid, '^(.*):%d+$')
  if held and held ~= '1' and redis.call('EXISTS', ARGV[4] .. job) == 0 then
    local cut = string.find(held, '\n', 1, true)
    redis.call('LPUSH', string.sub(held, 1, cut - 1), string.sub(held, cut + 1))
    redis.call('ZADD', KEYS[2], ARGV[1], pid)  -- the sweeper watches it from now on
    pushed = pushed + 1
  else
    redis.call('ZREM', KEYS[2], pid)  -- nothing left to watch
  end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or ''
return {pushed, next_due}
