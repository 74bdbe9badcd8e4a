-- Writes one flush of a records buffer. KEYS[1] the jobs index.
-- ARGV[1] ttl, ARGV[2] the index's retention cut-off, then three counted runs of
-- fields (helpers' fields()): ARGV[3] triples in ARGV[4] of (job id, record, "1" when
-- the record is ready: published on the record's key, as Celery's Redis result backend
-- does, for clients waiting in ``AsyncResult.get()``), ARGV[5]
-- pairs in ARGV[6] of (job id, history entry), ARGV[7] pairs in ARGV[8] of (job id,
-- dispatch time); ARGV[9] the record key prefix, ARGV[10] the history key prefix.
-- With ARGV[11], a delivery tag, the message it names is acknowledged too (KEYS[2]
-- kombu's unacked index, KEYS[3] its unacked hash): after its job's records, in the
-- same step, so a consumer sends both with its next take and never acknowledges a job
-- whose records did not land.
local ttl = ARGV[1]
local record_prefix, history_prefix = ARGV[9], ARGV[10]
local field = fields(ARGV[4])
for _ = 1, tonumber(ARGV[3]) do
  local job, record, ready = field(), field(), field()
  redis.call('SET', record_prefix .. job, record, 'EX', ttl)
  if ready == '1' then redis.call('PUBLISH', record_prefix .. job, record) end
end
field = fields(ARGV[6])
local touched = {}
for _ = 1, tonumber(ARGV[5]) do
  local key, entry = history_prefix .. field(), field()
  redis.call('RPUSH', key, entry)
  touched[key] = true
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
field = fields(ARGV[8])
local scored = {}
for _ = 1, tonumber(ARGV[7]) do
  local job, at = field(), field()
  scored[#scored + 1] = at
  scored[#scored + 1] = job
end
if #scored > 0 then
  bulk('ZADD', KEYS[1], scored)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
end
if ARGV[11] then
  redis.call('ZREM', KEYS[2], ARGV[11])
  redis.call('HDEL', KEYS[3], ARGV[11])
end
return 1
