-- leave.lua: this instance lets go of its last local connection of a user on a
-- topic. One round trip (property 1); O(1) whatever the topic's size.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 held:<this instance>, 5 seq
-- ARGV: 1 instance id, 2 user key, 3 now (ms), 4 backstop (ms), 5 channel
-- Reply: {'left', seq, data} | {'held', 0} (another instance still holds the
--        user) | {'absent', 0} (this instance did not hold it: idempotent)
--
-- Property 3: `leave` is published only when the last holder anywhere lets go.
local instance, user = ARGV[1], ARGV[2]
local now, keep, channel = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

if redis.call('SREM', KEYS[4], user) == 0 then return {'absent', 0} end
if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then return {'held', 0} end

redis.call('HDEL', KEYS[2], user)
local data = redis.call('HGET', KEYS[1], user) or 'null'
redis.call('HDEL', KEYS[1], user)
local seq = next_seq(KEYS[5], now)
redis.call('PEXPIRE', KEYS[5], keep)
publish_change(channel, instance, seq, 'leave', user, data)
return {'left', seq, data}
