-- Gives back a job's concurrency slot and pushes the Celery publication that has
-- waited longest for one onto its queue at once (held_push), so a waiting job starts
-- when a slot frees, not when its delay runs out.
-- KEYS[1] the slot key's leases, KEYS[2] its waiting publications, KEYS[3] the delay
-- store, KEYS[4] the in-flight index; ARGV[1] the holder's publication, ARGV[2] now,
-- ARGV[3] the marker key prefix, ARGV[4] the cancel mark prefix. Returns 1 if a waiting
-- job was pushed.
redis.call('ZREM', KEYS[1], ARGV[1])
for _ = 1, 20 do
  local pid = redis.call('ZPOPMIN', KEYS[2])[1]
  if not pid then break end
  -- Only one still in the delay store waits (others started or were pushed already).
  if redis.call('ZREM', KEYS[3], pid) == 1 and
      held_push(pid, KEYS[4], ARGV[2], ARGV[3], ARGV[4]) then
    return 1
  end
end
return 0
