-- snapshot.lua: sweep, then read a topic's whole state atomically, for list()
-- and for seeding or repairing an instance's local replica.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 channel, 2 backstop (ms), 3 the newest sequence number the caller has seen (0: none)
-- Reply: {seq, epoch or '', user1, data1, user2, data2, ...}
--   Events with a sequence number <= seq are already reflected in the reply.
--   "recovery": when Redis lost data its counter reads less than what the
--   caller has seen, and a replica would keep every copy from before the loss
--   as "newer". The snapshot then takes a fresh number, above both, so it
--   replaces them. A topic without a counter gets one at now * 1024 (every
--   instance reads a topic before it writes to it), so only a counter lost
--   with Redis's data is found missing by a write, which then jumps past every
--   number handed out before the loss (see next_seq).
local channel, keep, seen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis_now()
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], channel, now)
local stored = redis.call('GET', KEYS[5])
if not stored and seen == 0 then
  redis.call('SET', KEYS[5], string.format('%d', now * 1024), 'PX', keep)
  stored = string.format('%d', now * 1024)
end
local seq = tonumber(stored or '0')
if seq < seen then
  redis.call('SET', KEYS[5], string.format('%d', seen))
  seq = next_seq(KEYS[5], now)
  redis.call('PEXPIRE', KEYS[5], keep)
end
local reply = {seq, redis.call('GET', KEYS[6]) or ''}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat do reply[#reply + 1] = flat[i] end
return reply
