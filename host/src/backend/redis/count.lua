-- count.lua: sweep, then count a topic's unique users: O(1) (HLEN) after the
-- sweep, which costs nothing when no hold has expired.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 seq
-- ARGV: 1 channel, 2 prefix of held:<instance> keys
-- Reply: integer
local channel, held_prefix = ARGV[1], ARGV[2]
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], held_prefix, channel, redis_now())
return redis.call('HLEN', KEYS[1])
