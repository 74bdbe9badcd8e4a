-- A worker takes the next message of its queues without blocking (the first list in
-- order that has one, as BRPOP would pick) and writes it down in the same step
-- (take_one.lua): one round trip per message while a backlog lasts, and no moment
-- where a taken message is recorded nowhere.
-- KEYS[1] kombu's unacked index, KEYS[2] its unacked hash, KEYS[3] the in-flight
-- index, KEYS[4..] the queue lists in order. ARGV[1] now, ARGV[2] the run count's ttl
-- (0: not counted here), ARGV[3] the marker prefix, ARGV[4] the cancel-mark prefix,
-- ARGV[5] the run-count prefix, ARGV[6] the taken-mark prefix, ARGV[7] the record prefix
-- and ARGV[8] a record's lifetime (for a job whose publish left its PENDING record to
-- the take, see take_one.lua); for the direct consumer,
-- which starts its first message at once (not held), ARGV[9] '0', ARGV[10] its holding
-- key (set to the take's time, then "<list>\n<tag>" per message taken, one per line)
-- and ARGV[11] that key's lifetime, ARGV[12] the most messages to take (those after the
-- first are held ahead, see routes/celery/ahead.py); ARGV[13] a message its BRPOP
-- brought ('' none) and ARGV[14] its list: written down as if popped here (and nothing
-- else taken).
-- A direct consumer that may be handed jobs at publish (routes/celery/handoff.py) adds
-- ARGV[15] its idle key, ARGV[16] that key's value, ARGV[17] its lifetime in seconds,
-- ARGV[18] its queues' idle sets (one per line), ARGV[19] its inbox and ARGV[20] its
-- handed set. Its take first takes what its inbox holds (written down at the hand-off;
-- with a message its BRPOP brought, that one goes back to its queue); a take that
-- finds nothing says the consumer idles (its idle key, and an entry in each list's idle
-- set, where entries older than an idle key lives are dropped); any other take says it
-- no longer does.
-- The delivery is counted by count_delivery.lua (put before this script).
-- Per message: take_one's reply. Returns nil when every list is empty; else that reply
-- for the one message, or with ARGV[12] given, the list of the replies of the messages
-- taken.
-- The pop is the first write: Redis refuses a script for lack of memory only at its
-- first write, and only for a command that may grow memory (RPOP may not), so a full
-- Redis still lets a message be taken and written down. (Should a later write be
-- refused all the same, say by an ACL, the message would be taken and recorded
-- nowhere: the worker's Redis user needs every command used here.) A message a BRPOP
-- brought is written down or refused whole; refused, the consumer puts it back.
local w = {unacked_index = KEYS[1], unacked = KEYS[2], inflight = KEYS[3], now = ARGV[1],
           runs_ttl = ARGV[2], marker_prefix = ARGV[3], cancel_prefix = ARGV[4],
           runs_prefix = ARGV[5], taken_prefix = ARGV[6], record_prefix = ARGV[7],
           record_ttl = ARGV[8]}
local brought = ARGV[13]
if brought == '' then
  brought = nil
end
local idle_key = ARGV[15]
if idle_key == '' then
  idle_key = nil
end
local function answer(replies)
  if #replies == 0 then
    return false
  end
  if ARGV[12] then
    return replies
  end
  return replies[1]
end
local function hold(lines)
  if ARGV[10] and #lines > 0 then
    redis.call('SET', ARGV[10], ARGV[1] .. '\n' .. table.concat(lines, '\n'), 'EX', ARGV[11])
  end
end
local idle_sets = {}
if idle_key then
  for idle_set in string.gmatch(ARGV[18], '[^\n]+') do
    idle_sets[#idle_sets + 1] = idle_set
  end
  if redis.call('DEL', idle_key) == 1 then  -- it idled: its idle-set entries go too
    for _, idle_set in ipairs(idle_sets) do
      redis.call('ZREM', idle_set, idle_key)
    end
  end
  -- What was handed is in the inbox (at most one job), or its consumer holds it.
  local entry = redis.call('RPOP', ARGV[19])
  redis.call('DEL', ARGV[20])
  if entry then
    local reply, tag, id = handed_reply(entry)
    if brought then  -- its BRPOP brought another job first: this one goes back, unstarted
      redis.call('RPUSH', reply[1], reply[2])
      redis.call('HDEL', KEYS[2], tag)
      redis.call('ZREM', KEYS[1], tag)
      if id and reply[4] >= 0 then
        redis.call('DECR', ARGV[5] .. id)
      end
    else  -- taken now, as a take takes (the rescue's clock), its cancel mark read again
      redis.call('ZADD', KEYS[1], ARGV[1], tag)
      if id then
        reply[5] = redis.call('EXISTS', ARGV[4] .. id)
      end
      hold({reply[1] .. '\n' .. tag})
      return answer({reply})
    end
  end
end
local function pop()
  for i = 4, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
      return item, KEYS[i]
    end
  end
end
local replies, holding, held = {}, {}, ARGV[9] ~= '0'
local item, from = brought, ARGV[14]
if not item then
  item, from = pop()
end
while item do
  local reply, tag = take_one(item, from, held, w)
  replies[#replies + 1] = reply
  if tag then
    holding[#holding + 1] = from .. '\n' .. tag
  end
  if brought or #replies >= tonumber(ARGV[12] or 1) then
    break
  end
  held = true  -- started after the ones before it
  item, from = pop()
end
hold(holding)
if #replies == 0 and idle_key then  -- idle: a publish may hand it its next job
  redis.call('SET', idle_key, ARGV[16], 'EX', ARGV[17])
  for _, idle_set in ipairs(idle_sets) do  -- older than an idle key lives: dead ones
    redis.call('ZREMRANGEBYSCORE', idle_set, '-inf', '(' .. (ARGV[1] - ARGV[17]))
    redis.call('ZADD', idle_set, ARGV[1], idle_key)
    redis.call('EXPIRE', idle_set, ARGV[17])
  end
end
return answer(replies)
