-- Renews the leases of the concurrency slots this process holds (on the Redis clock):
-- KEYS the slot keys' leases, ARGV[1] the lease (s), ARGV[2..] the job holding each.
-- A lease that expired meanwhile is not taken back (XX): its slot may be another's.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expiry, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 1)
end
return #KEYS
