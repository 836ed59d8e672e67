-- kv_set.lua: store a plugin value, within the plugin's quota.
--
-- KEYS: 1 the value's key, 2 index, 3 sizes (see kv_prelude.lua)
-- ARGV: 1 the guest's key, 2 value, 3 ttl in ms (0 = none), 4 max keys, 5 max bytes
-- Reply: {'ok'} | {'quota', 'keys'|'bytes', limit}
local key, value, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = kv_now()
kv_reclaim(KEYS[2], KEYS[3], now)
local size = #key + #value
local over = kv_over_quota(KEYS[2], KEYS[3], key, size, tonumber(ARGV[4]), tonumber(ARGV[5]))
if over then return over end
if ttl > 0 then
  redis.call('SET', KEYS[1], value, 'PX', ttl)
  kv_account(KEYS[2], KEYS[3], key, size, now, ttl)
else
  redis.call('SET', KEYS[1], value)
  kv_account(KEYS[2], KEYS[3], key, size, now, -1)
end
return {'ok'}
