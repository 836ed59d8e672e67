-- tick.lua: one heartbeat of this instance on one topic: refresh its hold, then
-- sweep expired holds. Cost is O(1) in the users this instance holds
-- (property 1); the engine pipelines one call per topic.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 held:<this instance>, 5 seq, 6 epoch
-- ARGV: 1 instance id, 2 now (ms), 3 ttl (ms), 4 backstop (ms),
--       5 epoch this instance knows ('' = none), 6 channel,
--       7 '1' if this instance holds users here ('0': it only observes),
--       8 prefix of held:<instance> keys (same hash tag, so same slot)
-- Reply: {'alive'|'lost'|'cleared', epoch or ''}
--   lost:    the hold is gone (Redis lost its data, or this instance was cut off
--            longer than ttl and swept) and no clear() happened: the engine
--            re-asserts its users with join.lua (property 4). The hold is never
--            re-created here (ZADD XX semantics), so nothing is resurrected.
--   cleared: clear() ran since this instance last looked (property 5).
local instance, now, ttl, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local known_epoch, channel, holds, held_prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local epoch = redis.call('GET', KEYS[6])
local status = 'alive'
if epoch and epoch ~= known_epoch then
  status = 'cleared'
elseif holds == '1' then
  if redis.call('ZADD', KEYS[3], 'XX', 'CH', now + ttl, instance) == 0
      and not redis.call('ZSCORE', KEYS[3], instance) then
    status = 'lost'
  else
    backstop({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]}, keep)
    if epoch then redis.call('PEXPIRE', KEYS[6], keep) end
  end
end

sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[5], held_prefix, channel, now)
return {status, epoch or ''}
