-- kv_delete.lua: delete a plugin value and its bookkeeping.
--
-- KEYS: 1 the value's key, 2 index, 3 sizes (see kv_prelude.lua)
-- ARGV: 1 the guest's key
-- Reply: {'ok'}
local key = ARGV[1]
redis.call('DEL', KEYS[1])
local old = tonumber(redis.call('HGET', KEYS[3], key) or '0')
if old > 0 then
  redis.call('HDEL', KEYS[3], key)
  redis.call('HINCRBY', KEYS[3], '', -old)
end
redis.call('ZREM', KEYS[2], key)
kv_reclaim(KEYS[2], KEYS[3], kv_now())
return {'ok'}
