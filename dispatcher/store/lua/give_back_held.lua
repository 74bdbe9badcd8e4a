-- A direct consumer that starts again gives back a message its last run held, if that
-- is still written down as it took it (not acknowledged, not given back by a rescue or
-- by the consumer itself and taken again since: its index entry keeps the take's time):
-- one step, so never twice. As kombu's restore: to the end of its queue. A finished job
-- (its record says so) only has its entry removed.
-- KEYS[1] the queue list it was taken from, KEYS[2] kombu's unacked hash, KEYS[3] its
-- index, KEYS[4] the consumer's holding key. ARGV[1] the delivery tag, ARGV[2] the
-- unacked entry as read, ARGV[3] the message to push (the entry's first element),
-- ARGV[4] the take's time as the holding key says ('': not said), ARGV[5] '1' for a
-- finished job. Returns 1 when the message went back, else 0.
redis.call('DEL', KEYS[4])
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
if ARGV[4] ~= '' and tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1])) ~= tonumber(ARGV[4]) then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[5] == '1' then
  return 0
end
redis.call('LPUSH', KEYS[1], ARGV[3])
return 1
