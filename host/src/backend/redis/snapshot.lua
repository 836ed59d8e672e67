-- snapshot.lua: sweep, then read a topic's whole state atomically, for list()
-- and for seeding an instance's local replica.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 seq, 5 epoch
-- ARGV: 1 now (ms), 2 channel, 3 prefix of held:<instance> keys
-- Reply: {seq, epoch or '', user1, data1, user2, data2, ...}
--   Events with a sequence number <= seq are already reflected in the reply.
local now, channel, held_prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], held_prefix, channel, now)
local reply = {tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('GET', KEYS[5]) or ''}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat do reply[#reply + 1] = flat[i] end
return reply
