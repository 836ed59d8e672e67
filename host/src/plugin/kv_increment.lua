-- kv_increment.lua: atomic increment of a plugin counter, with an expiry set
-- when the key has none (so a counter is a fixed window), within the quota.
--
-- KEYS: 1 the value's key, 2 index, 3 sizes (see kv_prelude.lua)
-- ARGV: 1 the guest's key, 2 delta (integer), 3 ttl in ms (0 = none),
--       4 max keys, 5 max bytes
-- Reply: {'ok', value} | {'quota', 'keys'|'bytes', limit}
local key, ttl = ARGV[1], tonumber(ARGV[3])
local now = kv_now()
kv_reclaim(KEYS[2], KEYS[3], now)
-- A counter takes at most 20 digits: account for the widest.
local size = #key + 20
local over = kv_over_quota(KEYS[2], KEYS[3], key, size, tonumber(ARGV[4]), tonumber(ARGV[5]))
if over then return over end
local value = redis.call('INCRBY', KEYS[1], ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
kv_account(KEYS[2], KEYS[3], key, size, now, redis.call('PTTL', KEYS[1]))
return {'ok', value}
