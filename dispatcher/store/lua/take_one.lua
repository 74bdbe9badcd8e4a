-- Put before take.lua and publish_one.lua (after count_delivery.lua). take_one(item,
-- from, held, w) writes down a message taken off list `from` for a consumer: kombu's
-- unacknowledged entry and index (as kombu's Redis transport writes them), and for a
-- message of ours the started mark, the cancel mark's answer and the run count (held:
-- counted as taken ahead of its start, see count_delivery). w: the keys and values it
-- needs (unacked_index, unacked, inflight, now, runs_ttl, and the marker, cancel, runs
-- and taken prefixes; record_prefix and record_ttl, absent for a hand-off and 0 where the
-- records live apart from the broker). A job whose
-- publish left its PENDING record to the take (a dispatch_many batch: its header says
-- record_at = 'take') gets it here, unless it has one. Returns the reply for the
-- message, {list, message} for one it could not read (nothing written), else {list,
-- message, 1, runs (-1: not counted), cancelled (0/1), ours (0/1)}; its delivery tag
-- (nil: unreadable); and its job id (nil: not ours).
-- The PENDING record core/record.make_record writes, from the message's headers (the
-- same as core/record.implied_pending reads from a publish marker), equal once decoded
-- (cjson escapes differently): numbers in %.17g, which reads back as the same number,
-- the dispatch time always with a fraction (a float in Python too).
local function pending_record(id, name, meta)
  local function text(value)
    if type(value) == 'string' then
      return cjson.encode(value)
    end
    return 'null'
  end
  local function number(value, fraction)
    if type(value) ~= 'number' then
      return 'null'
    end
    local text = string.format('%.17g', value)
    if fraction and not string.find(text, '[.eE]') then
      text = text .. '.0'
    end
    return text
  end
  return '{"task_id": ' .. cjson.encode(id) .. ', "status": "PENDING", "task_name": '
    .. text(name) .. ', "route": "celery", "queue": ' .. text(meta['queue'])
    .. ', "priority": ' .. number(meta['priority']) .. ', "attempt": '
    .. number(meta['attempt']) .. ', "max_attempts": ' .. number(meta['max_attempts'])
    .. ', "request_id": ' .. text(meta['request_id']) .. ', "dispatched_at": '
    .. number(meta['dispatched_at'], true) .. ', "result": null, "error": null, '
    .. '"traceback": null, "children": [], "date_done": null}'
end
local function take_one(item, from, held, w)
  local ok, message = pcall(cjson.decode, item)
  if not ok or type(message) ~= 'table' or type(message['properties']) ~= 'table' then
    return {from, item}
  end
  local properties = message['properties']
  local info, tag = properties['delivery_info'], properties['delivery_tag']
  if type(info) ~= 'table' or type(tag) ~= 'string' then
    return {from, item}
  end
  redis.call('ZADD', w.unacked_index, w.now, tag)
  redis.call('HSET', w.unacked, tag, '[' .. item .. ',' .. cjson.encode(info['exchange']) .. ','
             .. cjson.encode(info['routing_key']) .. ']')
  local headers = message['headers']
  if type(headers) ~= 'table' or type(headers['id']) ~= 'string'
      or type(headers['dispatch']) ~= 'table'
      or (headers['eta'] ~= nil and headers['eta'] ~= cjson.null and headers['eta'] ~= '') then
    return {from, item, 1, -1, 0, 0}, tag
  end
  local id = headers['id']
  local attempt = headers['dispatch']['attempt']
  if type(attempt) ~= 'number' then
    attempt = 1
  end
  local publication = id .. ':' .. string.format('%d', attempt)
  redis.call('ZREM', w.inflight, publication)
  redis.call('SET', w.marker_prefix .. publication, '1', 'XX', 'KEEPTTL')
  if tonumber(w.record_ttl or 0) > 0 and headers['dispatch']['record_at'] == 'take' then
    redis.call('SET', w.record_prefix .. id, pending_record(id, headers['task'],
               headers['dispatch']), 'NX', 'EX', w.record_ttl)
  end
  local cancelled = redis.call('EXISTS', w.cancel_prefix .. id)
  local runs = -1
  if tonumber(w.runs_ttl) > 0 then
    runs = count_delivery(w.runs_prefix .. id, w.taken_prefix .. id, w.runs_ttl, held)
  end
  return {from, item, 1, runs, cancelled, 1}, tag, id
end
-- A message handed to an idle consumer at publish waits in its inbox as one string:
-- "<handed at>\n<list>\n<tag>\n<job id>\n<runs>\n<cancelled>\n<ours>\n<events>\n
-- <message>" (events: its node's task-events switch as the hand-off read it, '' not
-- read; routes/celery/handoff.py reads the same).
local function handed_entry(reply, tag, id, now, events)
  return table.concat({now, reply[1], tag, id or '', reply[4], reply[5], reply[6], events,
                       reply[2]}, '\n')
end
-- The take's reply for an inbox entry, its delivery tag and its job id (nil: not ours).
local function handed_reply(entry)
  local parts, pos = {}, 1
  for _ = 1, 8 do
    local cut = string.find(entry, '\n', pos, true)
    parts[#parts + 1] = string.sub(entry, pos, cut - 1)
    pos = cut + 1
  end
  local id = parts[4]
  if id == '' then
    id = nil
  end
  return {parts[2], string.sub(entry, pos), 1, tonumber(parts[5]), tonumber(parts[6]),
          tonumber(parts[7])}, parts[3], id
end
