-- publish.lua for one job (the one-by-one .dispatch()): the same keys, markers, record
-- and index entries, without the batch's field parsing and gathering, which cost
-- Redis about a quarter of the script's time when the batch is a single job.
-- KEYS as publish.lua's. ARGV[1] marker ttl, ARGV[2] record ttl, ARGV[3] now,
-- ARGV[4] publish id, ARGV[5] queue key, ARGV[6] message, ARGV[7] record ('' for
-- none), ARGV[8] due time ('' for now), ARGV[9] the marker key prefix, ARGV[10] the
-- record key prefix. Returns 1 if pushed now, 0 if it had been published already.
local marker_ttl, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local pid, queue, message, record, due = ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
if due and due <= now then due = nil end
local ttl = marker_ttl
if due then ttl = marker_ttl + math.ceil(due - now) end
if not redis.call('SET', ARGV[9] .. pid, queue .. '\n' .. message, 'NX', 'EX', ttl) then
  return 0
end
if due then
  redis.call('ZADD', KEYS[3], due, pid)
else
  redis.call('LPUSH', queue, message)
end
redis.call('ZADD', KEYS[1], due or now, pid)
if record ~= '' then
  local job = string.match(pid, '^(.*):%d+$')
  redis.call('SET', ARGV[10] .. job, record, 'EX', ARGV[2] + (ttl - marker_ttl))
  redis.call('ZADD', KEYS[2], now, job)
end
return 1
