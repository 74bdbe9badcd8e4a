-- Gives back a message a worker took off its queue with kombu's BRPOP but could not
-- write down (routes/celery/putback.py): pushed back at the head of its queue unless
-- it is somewhere already. Atomic, so it cannot race a consumer or the sweeper.
-- KEYS[1] the queue list it was taken from, KEYS[2] kombu's unacked hash, KEYS[3] its
-- index; for a message of ours also KEYS[4] its publication's marker and KEYS[5] the
-- in-flight index, and when its run was counted KEYS[6] the job's run count and KEYS[7]
-- its taken mark (count_delivery.lua).
-- ARGV[1] the message as taken, ARGV[2] its delivery tag, ARGV[3] the index score the
-- failed write-down carried, ARGV[4] now, ARGV[5] the publication id (ours).
-- Returns 1 when pushed back, 0 when it was somewhere already.
local score = redis.call('ZSCORE', KEYS[3], ARGV[2])
if score then
  -- Written down after all, its reply lost; or written down by another worker that
  -- took the sweeper's re-queued copy: only the entry this worker wrote is taken back.
  if tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  if KEYS[4] then  -- our bookkeeping landed with it: watched again, the run uncounted
    redis.call('SET', KEYS[4], KEYS[1] .. '\n' .. ARGV[1], 'XX', 'KEEPTTL')
    redis.call('ZADD', KEYS[5], ARGV[4], ARGV[5])
    if KEYS[6] and tonumber(redis.call('GET', KEYS[6]) or '0') > 0 then
      redis.call('DECR', KEYS[6])
      redis.call('DEL', KEYS[7])
    end
  end
elseif redis.call('LPOS', KEYS[1], ARGV[1]) then
  return 0  -- still queued: the pop never reached this server (a failover undid it)
elseif KEYS[4] and redis.call('GET', KEYS[4]) == '1' then
  return 0  -- started since: the sweeper re-queued it and a worker took it
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
