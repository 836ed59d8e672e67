-- join.lua: this instance asserts its hold of a user on a topic: its first local
-- connection, a change of the user's public data, or a re-assert after a loss.
-- One round trip ("one round trip").
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 instance id, 2 user key, 3 public data (JSON), 4 ttl (ms),
--       5 backstop (ms), 6 epoch this instance knows ('' = none), 7 channel,
--       8 most users the topic may list (0 = no cap)
-- Reply: {'join'|'updated', seq, fresh} | {'same', 0, fresh} | {'stale', epoch} | {'full', users}
--   fresh: 1 when this call created the instance's hold on the topic (its
--   first join there, or its hold was lost): the backend then has the next
--   tick count the instance's holds, since a loss would hide behind it.
--
-- "exactly once": only the first holder anywhere publishes `join`; a later
-- holder publishes `updated` when its data differs, nothing otherwise.
-- "clear sticks": a join made by an instance that missed a clear() is refused
-- ('stale'), so that instance drops its pre-clear state instead of reviving it.
-- "one clock": the hold's expiry is stamped with Redis's clock.
-- The member cap is checked in the same step as the join, so concurrent
-- joins on every instance together never list more than the cap.
local instance, user, data = ARGV[1], ARGV[2], ARGV[3]
local ttl, keep = tonumber(ARGV[4]), tonumber(ARGV[5])
local known_epoch, channel = ARGV[6], ARGV[7]
local max_users = tonumber(ARGV[8])

local epoch = redis.call('GET', KEYS[6])
if epoch and epoch ~= known_epoch then return {'stale', epoch} end

if max_users > 0 then
  local users = redis.call('HLEN', KEYS[1])
  if users >= max_users and redis.call('HEXISTS', KEYS[1], user) == 0 then return {'full', users} end
end

local now = redis_now()
local fresh = redis.call('ZADD', KEYS[3], now + ttl, instance)
local kind
if redis.call('ZADD', KEYS[4], 'NX', 0, instance .. user) == 1 and redis.call('HINCRBY', KEYS[2], user, 1) == 1 then
  kind = 'join'
elseif redis.call('HGET', KEYS[1], user) == data then
  kind = 'same'
else
  kind = 'updated'
end
backstop({KEYS[1], KEYS[2], KEYS[3], KEYS[4]}, keep)
if kind == 'same' then return {'same', 0, fresh} end

redis.call('HSET', KEYS[1], user, data)
local seq, before = next_seq(KEYS[5], now)
redis.call('PEXPIRE', KEYS[5], keep)
publish_change(channel, instance, seq, before, kind, user, data)
return {kind, seq, fresh}
