-- count.lua: sweep, then count a topic's unique users: O(1) (HLEN) after the
-- sweep, which costs nothing when no hold has expired.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 channel
-- Reply: integer
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], ARGV[1], redis_now())
return redis.call('HLEN', KEYS[1])
