-- A worker takes the next message of its queues without blocking (the first list in
-- order that has one, as BRPOP would pick) and writes it down in the same step:
-- kombu's unacknowledged entry and index (as kombu's Redis transport writes them),
-- and for a message of ours the started mark, the cancel mark's answer and the run
-- count (routes/celery/transport.py). One round trip per message while a backlog
-- lasts, and no moment where a taken message is recorded nowhere.
-- KEYS[1] kombu's unacked index, KEYS[2] its unacked hash, KEYS[3] the in-flight
-- index, KEYS[4..] the queue lists in order. ARGV[1] now, ARGV[2] the run count's ttl
-- (0: not counted here), ARGV[3] the marker prefix, ARGV[4] the cancel-mark prefix,
-- ARGV[5] the run-count prefix, ARGV[6] the taken-mark prefix; for the direct consumer,
-- which starts its first message at once (not held), ARGV[7] '0', ARGV[8] its holding
-- key (set to the take's time, then "<list>\n<tag>" per message taken, one per line)
-- and ARGV[9] that key's lifetime, ARGV[10] the most messages to take (those after the
-- first are held ahead, see routes/celery/ahead.py); when its BRPOP brought a message,
-- ARGV[11] that message and ARGV[12] its list: written down as if popped here (and
-- nothing else taken).
-- The delivery is counted by count_delivery.lua (put before this script).
-- Per message: {list, message} for one it could not read (kombu writes it down as
-- usual); else {list, message, 1, runs (-1: not counted), cancelled (0/1), ours (0/1)}.
-- Returns nil when every list is empty; else that reply for the one message, or with
-- ARGV[10] given, the list of the replies of the messages taken.
-- The pop is the first write: Redis refuses a script for lack of memory only at its
-- first write, and only for a command that may grow memory (RPOP may not), so a full
-- Redis still lets a message be taken and written down. (Should a later write be
-- refused all the same, say by an ACL, the message would be taken and recorded
-- nowhere: the worker's Redis user needs every command used here.) A message a BRPOP
-- brought is written down or refused whole; refused, the consumer puts it back.
local holding = {}
local function take_one(item, from, held)
  local ok, message = pcall(cjson.decode, item)
  if not ok or type(message) ~= 'table' or type(message['properties']) ~= 'table' then
    return {from, item}
  end
  local properties = message['properties']
  local info, tag = properties['delivery_info'], properties['delivery_tag']
  if type(info) ~= 'table' or type(tag) ~= 'string' then
    return {from, item}
  end
  redis.call('ZADD', KEYS[1], ARGV[1], tag)
  redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
             .. cjson.encode(info['routing_key']) .. ']')
  holding[#holding + 1] = from .. '\n' .. tag
  local headers = message['headers']
  if type(headers) ~= 'table' or type(headers['id']) ~= 'string'
      or type(headers['dispatch']) ~= 'table'
      or (headers['eta'] ~= nil and headers['eta'] ~= cjson.null and headers['eta'] ~= '') then
    return {from, item, 1, -1, 0, 0}
  end
  local id = headers['id']
  local attempt = headers['dispatch']['attempt']
  if type(attempt) ~= 'number' then
    attempt = 1
  end
  local publication = id .. ':' .. string.format('%d', attempt)
  redis.call('ZREM', KEYS[3], publication)
  redis.call('SET', ARGV[3] .. publication, '1', 'XX', 'KEEPTTL')
  local cancelled = redis.call('EXISTS', ARGV[4] .. id)
  local runs = -1
  if tonumber(ARGV[2]) > 0 then
    runs = count_delivery(ARGV[5] .. id, ARGV[6] .. id, ARGV[2], held)
  end
  return {from, item, 1, runs, cancelled, 1}
end
local function pop()
  for i = 4, #KEYS do
    local item = redis.call('RPOP', KEYS[i])
    if item then
      return item, KEYS[i]
    end
  end
end
local replies, held = {}, ARGV[7] ~= '0'
local item, from = ARGV[11], ARGV[12]
if not item then
  item, from = pop()
end
while item do
  replies[#replies + 1] = take_one(item, from, held)
  if ARGV[11] or #replies >= tonumber(ARGV[10] or 1) then
    break
  end
  held = true  -- started after the ones before it
  item, from = pop()
end
if #replies == 0 then
  return false
end
if ARGV[8] and #holding > 0 then
  redis.call('SET', ARGV[8], ARGV[1] .. '\n' .. table.concat(holding, '\n'), 'EX', ARGV[9])
end
if ARGV[10] then
  return replies
end
return replies[1]
