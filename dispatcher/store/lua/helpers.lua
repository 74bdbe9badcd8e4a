-- Put before a script's body. fields(data) returns a function that gives the next
-- NUL-separated field of data at each call ('' past the end); bulk(command, key,
-- values) sends values in commands of at most 1,000 (Lua's unpack has a limit)
-- instead of one redis.call per value, each with its fixed cost.
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
