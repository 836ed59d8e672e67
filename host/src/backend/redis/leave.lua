-- leave.lua: this instance lets go of its hold of a user on a topic (its last
-- local connection closed). One round trip ("one round trip"); O(log n) in
-- the topic's holds, never a walk over its members.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 instance id, 2 user key, 3 backstop (ms), 4 channel
-- Reply: {'left', seq, data} | {'held', 0} (another instance still holds the
--        user) | {'absent', 0} (this instance did not hold it, another shows it)
--
-- "exactly once": `leave` is published when the last holder anywhere lets go.
-- "recovery": when this instance's hold vanished with lost data and nobody shows
-- the user, `leave` is still published (with null data), so every replica that
-- kept a copy from before the loss drops it instead of showing a ghost.
local instance, user = ARGV[1], ARGV[2]
local keep, channel = tonumber(ARGV[3]), ARGV[4]

if redis.call('ZREM', KEYS[4], instance .. user) == 0 then
  if redis.call('HEXISTS', KEYS[1], user) == 1 then return {'absent', 0} end
  local seq, before = next_seq(KEYS[5], redis_now())
  redis.call('PEXPIRE', KEYS[5], keep)
  publish_change(channel, instance, seq, before, 'leave', user, 'null')
  return {'left', seq, 'null'}
end
-- With its last user here gone, this instance has no connections here either.
if redis.call('ZLEXCOUNT', KEYS[4], holds_range(instance)) == 0 then redis.call('HDEL', KEYS[7], instance) end
if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then return {'held', 0} end

redis.call('HDEL', KEYS[2], user)
local data = redis.call('HGET', KEYS[1], user) or 'null'
redis.call('HDEL', KEYS[1], user)
local seq, before = next_seq(KEYS[5], redis_now())
redis.call('PEXPIRE', KEYS[5], keep)
publish_change(channel, instance, seq, before, 'leave', user, data)
return {'left', seq, data}
