-- publish.lua for one job (the one-by-one .dispatch()): the same keys, markers, record
-- and index entries, without the batch's field parsing and gathering, which cost
-- Redis about a quarter of the script's time when the batch is a single job.
-- KEYS as publish.lua's. ARGV[1] marker ttl, ARGV[2] record ttl, ARGV[3] now,
-- ARGV[4] publish id, ARGV[5] queue key, ARGV[6] message, ARGV[7] record ('' for
-- none), ARGV[8] due time ('' for now), ARGV[9] the marker key prefix, ARGV[10] the
-- record key prefix; to hand a job due now to a consumer idling on its list
-- (routes/celery/handoff.py), ARGV[11] its queue's idle set ('' or none: never handed).
-- An idle consumer's idle key holds, one per line, its run counts' lifetime, its
-- holding key and that key's lifetime, its inbox, its handed set, its node's
-- task-events switch ('' none), kombu's unacked index and hash, the cancel-mark,
-- run-count and taken-mark prefixes, then its queues' idle sets.
-- Returns 1 if pushed (or handed) now, 0 if it had been published already.
-- A handed job is written down for the consumer as its own take would (take_one.lua,
-- counted as the first job of a take, which starts at once) and waits in the
-- consumer's inbox, which its
-- BRPOP watches first: the job starts without the consumer's round trip to write it
-- down. Its tag stays in the consumer's handed set (held, for the rescue) until the
-- consumer's next take; its holding key names it (given back if the consumer starts
-- again). Only while the list is empty (no job overtakes an older one).
local marker_ttl, now = tonumber(ARGV[1]), tonumber(ARGV[3])
local pid, queue, message, record, due = ARGV[4], ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
if due and due <= now then due = nil end
local ttl = marker_ttl
if due then ttl = marker_ttl + math.ceil(due - now) end
local function hand_off()
  local idle_set = ARGV[11]
  if idle_set == nil or idle_set == '' then
    return false
  end
  for tries = 1, 4 do  -- the newest idler first; one that stopped idling is dropped
    local newest = redis.call('ZRANGE', idle_set, -1, -1)
    if #newest == 0 or (tries == 1 and redis.call('LLEN', queue) > 0) then
      return false
    end
    local idle_key = newest[1]
    local value = redis.call('GET', idle_key) or ''
    local say, pos = {}, 1  -- its lines (see handoff.idle_args), empty ones kept
    while pos <= #value do
      local cut = string.find(value, '\n', pos, true) or (#value + 1)
      say[#say + 1] = string.sub(value, pos, cut - 1)
      pos = cut + 1
    end
    if #say >= 12 then  -- else no idler, or one of a release that says it otherwise
      local runs_ttl, holding, holding_ttl, inbox, handed = say[1], say[2], say[3], say[4], say[5]
      local events = ''  -- the consumer starts the job with its node's switch read now
      if say[6] ~= '' then
        events = tostring(redis.call('EXISTS', say[6]))
      end
      local reply, tag, id = take_one(message, queue, false, {
        unacked_index = say[7], unacked = say[8], inflight = KEYS[1], now = ARGV[3],
        runs_ttl = runs_ttl, marker_prefix = ARGV[9], cancel_prefix = say[9],
        runs_prefix = say[10], taken_prefix = say[11]})
      if not tag then  -- not a message a consumer can read: queued as it is
        return false
      end
      for i = 12, #say do  -- it no longer idles on any of its queues
        redis.call('ZREM', say[i], idle_key)
      end
      redis.call('DEL', idle_key)
      redis.call('LPUSH', inbox, handed_entry(reply, tag, id, ARGV[3], events))
      redis.call('EXPIRE', inbox, holding_ttl)
      redis.call('SADD', handed, tag)
      redis.call('EXPIRE', handed, holding_ttl)
      redis.call('SET', holding, ARGV[3] .. '\n' .. queue .. '\n' .. tag, 'EX', holding_ttl)
      return true
    end
    redis.call('ZREM', idle_set, idle_key)
  end
  return false
end
if not redis.call('SET', ARGV[9] .. pid, queue .. '\n' .. message, 'NX', 'EX', ttl) then
  return 0
end
if due then
  redis.call('ZADD', KEYS[3], due, pid)
  redis.call('ZADD', KEYS[1], due, pid)
elseif not hand_off() then
  redis.call('LPUSH', queue, message)
  redis.call('ZADD', KEYS[1], now, pid)
end
if record ~= '' then
  local job = string.match(pid, '^(.*):%d+$')
  redis.call('SET', ARGV[10] .. job, record, 'EX', ARGV[2] + (ttl - marker_ttl))
  redis.call('ZADD', KEYS[2], now, job)
end
return 1
