-- A direct consumer that starts again gives back the message its last run held, if that
-- is still written down as it read it (not acknowledged, not given back by a rescue
-- meanwhile): one step, so never twice. As kombu's restore: to the end of its queue.
-- KEYS[1] the queue list it was taken from, KEYS[2] kombu's unacked hash, KEYS[3] its
-- index, KEYS[4] the consumer's holding key. ARGV[1] the delivery tag, ARGV[2] the
-- unacked entry as read, ARGV[3] the message to push (the entry's first element).
-- Returns 1 when the message went back, 0 when there was nothing to give back.
redis.call('DEL', KEYS[4])
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[3])
return 1
