-- Frees an idempotency key if it still belongs to the job whose dispatch failed.
-- KEYS[1] the key; ARGV[1] the job id.
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
