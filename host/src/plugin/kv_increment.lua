-- kv_increment.lua: atomic increment for the plugin key-value store, with an
-- expiry set when the key has none (so a counter is a fixed window).
--
-- KEYS: 1 the namespaced key
-- ARGV: 1 delta (integer), 2 ttl in ms (0 = no expiry)
-- Reply: the new value (integer)
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return value
