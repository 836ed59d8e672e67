-- join.lua: this instance takes its first local connection of a user on a topic
-- (or that user's public data changed). One round trip (property 1).
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 held:<this instance>, 5 seq, 6 epoch
-- ARGV: 1 instance id, 2 user key, 3 public data (JSON), 4 now (ms), 5 ttl (ms),
--       6 backstop (ms), 7 epoch this instance knows ('' = none), 8 channel
-- Reply: {'join'|'updated', seq} | {'same', 0} | {'stale', epoch}
--
-- Property 3: only the first holder anywhere publishes `join`; a later holder
-- publishes `updated` when its data differs, nothing otherwise.
-- Property 5: a join made by an instance that missed a clear() is refused
-- ('stale'), so that instance drops its pre-clear state instead of reviving it.
local instance, user, data = ARGV[1], ARGV[2], ARGV[3]
local now, ttl, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local known_epoch, channel = ARGV[7], ARGV[8]

local epoch = redis.call('GET', KEYS[6])
if epoch and epoch ~= known_epoch then return {'stale', epoch} end

redis.call('ZADD', KEYS[3], now + ttl, instance)
local kind
if redis.call('SADD', KEYS[4], user) == 1 and redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
  kind = 'join'
elseif redis.call('HGET', KEYS[1], user) == data then
  kind = 'same'
else
  kind = 'updated'
end
backstop({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, keep)
if kind == 'same' then return {'same', 0} end

redis.call('HSET', KEYS[1], user, data)
local seq = next_seq(KEYS[5], now)
redis.call('PEXPIRE', KEYS[5], keep)
publish_change(channel, instance, seq, kind, user, data)
return {kind, seq}
