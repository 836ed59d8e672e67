-- kv_prelude.lua: quota bookkeeping shared by the plugin kv scripts (prepended
-- at load time).
--
-- Layout under a deployment prefix P, per shard S of the store (every key of a
-- shard carries the hash tag {P.S}, so a shard's values and its bookkeeping
-- live in one cluster slot and stay atomic, while the shards spread over a
-- cluster; `#` never appears in a prefix, so no presence key of any deployment
-- can collide with these):
--   P#kv{P.S}:v:<key>  string  a value
--   P#kv{P.S}:index    zset    key -> expiry (ms, Redis clock; +inf = none)
--   P#kv{P.S}:sizes    hash    key -> bytes it takes (key + value); '' -> total
-- The quota limits passed in ARGV are the shard's share.
-- Expired keys vanish on their own (PX); their bookkeeping is reclaimed by
-- the next write, a bounded number at a time.

local function kv_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Drop the bookkeeping of up to 256 expired keys.
local function kv_reclaim(index, sizes, now)
  local expired = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 256)
  if #expired == 0 then return end
  local freed = 0
  for _, key in ipairs(expired) do
    freed = freed + tonumber(redis.call('HGET', sizes, key) or '0')
    redis.call('HDEL', sizes, key)
    redis.call('ZREM', index, key)
  end
  redis.call('HINCRBY', sizes, '', -freed)
end

-- Refuse a write that takes the plugin past its quota: a new key beyond
-- max_keys, or a size beyond max_bytes in total. Returns nil when it fits,
-- else the error reply.
local function kv_over_quota(index, sizes, key, size, max_keys, max_bytes)
  local old = tonumber(redis.call('HGET', sizes, key) or '0')
  if old == 0 and redis.call('ZCARD', index) >= max_keys then
    return {'quota', 'keys', max_keys}
  end
  local total = tonumber(redis.call('HGET', sizes, '') or '0')
  if total - old + size > max_bytes then
    return {'quota', 'bytes', max_bytes}
  end
  return nil
end

-- Record a key's size and expiry (ms left; negative = none).
local function kv_account(index, sizes, key, size, now, left)
  local old = tonumber(redis.call('HGET', sizes, key) or '0')
  redis.call('HSET', sizes, key, size)
  redis.call('HINCRBY', sizes, '', size - old)
  local expiry = '+inf'
  if left >= 0 then expiry = now + left end
  redis.call('ZADD', index, expiry, key)
end
