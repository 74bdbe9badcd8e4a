-- Put before a script's body. fields(data) returns a function that gives the next
-- NUL-separated field of data at each call ('' past the end); bulk(command, key,
-- values) sends values in commands of at most 1,000 (Lua's unpack has a limit)
-- instead of one redis.call per value, each with its fixed cost. held_push(pid, ...)
-- pushes a delayed publication's message (held in its marker) onto its queue.
local function fields(data)
  local pos = 1
  return function()
    local stop = string.find(data, '\0', pos, true) or (#data + 1)
    local value = string.sub(data, pos, stop - 1)
    pos = stop + 1
    return value
  end
end
local function bulk(command, key, values)
  for first = 1, #values, 1000 do
    redis.call(command, key, unpack(values, first, math.min(first + 999, #values)))
  end
end
-- Push the message publication pid's marker holds onto its queue and let the sweeper
-- watch it from now; a started (or lost) one, or a cancelled job, is only forgotten.
local function held_push(pid, inflight, now, marker_prefix, cancel_prefix)
  local held = redis.call('GET', marker_prefix .. pid)
  local job = string.match(pid, '^(.*):%d+$')
  if held and held ~= '1' and redis.call('EXISTS', cancel_prefix .. job) == 0 then
    local cut = string.find(held, '\n', 1, true)
    redis.call('LPUSH', string.sub(held, 1, cut - 1), string.sub(held, cut + 1))
    redis.call('ZADD', inflight, now, pid)
    return true
  end
  redis.call('ZREM', inflight, pid)
  return false
end
