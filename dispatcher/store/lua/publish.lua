-- Publishes a batch of Celery messages, each exactly once per publication.
-- KEYS[1] the in-flight index, KEYS[2] the jobs index, KEYS[3] the delay store.
-- ARGV[1] marker ttl, ARGV[2] record ttl, ARGV[3] now, ARGV[4] the number of jobs,
-- ARGV[5] five fields per job (helpers' fields()): publish id, queue key, message,
-- record ('' for none, '=' left to the take: see take_one.lua), due time ('' for now);
-- ARGV[6] the marker key prefix, ARGV[7] the record key prefix.
-- The marker holds "<queue key>\n<message>" until a worker starts the job (then "1"),
-- so the sweeper can put back a message that Redis lost between queue and worker, and
-- a reader can tell a job whose PENDING record is left to the take (store/records.py).
-- A job due later is not pushed: it waits in the delay store, scored by its due time,
-- until release_due.lua pushes its marker's message (its marker lives that much longer,
-- and the in-flight index scores it by its due time, so the sweeper waits for it too).
-- Pushes and index entries are gathered and sent as one command per run of jobs: each
-- redis.call has a fixed cost that dominated the script's time when paid per job.
-- Keys are built here from the prefixes: the dispatcher needs a single Redis.
local marker_ttl, record_ttl, now = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local marker_prefix, record_prefix = ARGV[6], ARGV[7]
local field = fields(ARGV[5])
local pushed, run_queue, run, inflight, index, delayed = 0, nil, {}, {}, {}, {}
for _ = 1, tonumber(ARGV[4]) do
  local pid, queue, message, record, due = field(), field(), field(), field(), field()
  due = tonumber(due)
  if due and due <= now then due = nil end
  local ttl = marker_ttl
  if due then ttl = marker_ttl + math.ceil(due - now) end
  if redis.call('SET', marker_prefix .. pid, queue .. '\n' .. message,
                'NX', 'EX', ttl) then
    if due then
      delayed[#delayed + 1] = due
      delayed[#delayed + 1] = pid
    else
      if queue ~= run_queue then
        if run_queue then bulk('LPUSH', run_queue, run) end
        run_queue, run = queue, {}
      end
      run[#run + 1] = message
    end
    inflight[#inflight + 1] = due or now
    inflight[#inflight + 1] = pid
    if record ~= '' then
      local job = string.match(pid, '^(.*):%d+$')
      if record ~= '=' then
        redis.call('SET', record_prefix .. job, record, 'EX', record_ttl + (ttl - marker_ttl))
      end
      index[#index + 1] = now
      index[#index + 1] = job
    end
    pushed = pushed + 1
  end
end
if run_queue then bulk('LPUSH', run_queue, run) end
bulk('ZADD', KEYS[1], inflight)
bulk('ZADD', KEYS[2], index)
bulk('ZADD', KEYS[3], delayed)
return pushed
