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
  if held_push(pid, KEYS[2], ARGV[1], ARGV[3], ARGV[4]) then pushed = pushed + 1 end
end
local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or ''
return {pushed, next_due}
