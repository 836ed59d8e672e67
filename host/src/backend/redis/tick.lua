-- tick.lua: one heartbeat of this instance on one topic: refresh its hold, check
-- that every user it believes it holds is still held, sweep expired holds, and
-- report the topic's state. O(1) in the users held ("one round trip"); the
-- engine pipelines one call per topic.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 instance id, 2 ttl (ms), 3 backstop (ms; 0 = not due this tick: the
--         instance refreshes it every quarter of its length, not every tick),
--       4 epoch this instance knows ('' = none), 5 channel,
--       6 how many users this instance believes it holds here (0: it only
--         observes), 7 the instance's own clock (ms), only to report how far
--         off it is, 8 its connections here when changed since its last
--         report ('' = unchanged), 9 the backstop (ms) a report renews on
--         `conns`
-- Reply: {'alive'|'lost'|'cleared', epoch or '', seq, members, redis now (ms)}
--   lost:    some or all of the holds are gone (Redis lost its data, or this
--            instance was cut off longer than ttl and swept) and no clear()
--            happened: the engine re-asserts its users with join.lua
--            ("recovery"). Counting the held set catches a loss even when a join
--            since the loss re-created the hold itself. A missing hold is never
--            re-created here (XX), so nothing is resurrected.
--   cleared: clear() ran since this instance last looked ("clear sticks").
--   seq, members: the topic's latest sequence number (0 when Redis has none)
--            and unique users, so the instance can tell its replica drifted.
local instance, ttl, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local known_epoch, channel, believed = ARGV[4], ARGV[5], tonumber(ARGV[6])
local now = redis_now()

local epoch = redis.call('GET', KEYS[6])
local status = 'alive'
if epoch and epoch ~= known_epoch then
  status = 'cleared'
elseif believed > 0 then
  if redis.call('ZADD', KEYS[3], 'XX', 'CH', now + ttl, instance) == 0
      and not redis.call('ZSCORE', KEYS[3], instance) then
    status = 'lost'
  else
    if redis.call('ZLEXCOUNT', KEYS[4], holds_range(instance)) < believed then status = 'lost' end
    if keep > 0 then
      backstop({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7]}, keep)
      if epoch then redis.call('PEXPIRE', KEYS[6], keep) end
    end
  end
end

-- The instance's connections, for stats: kept with its hold, dropped with it.
local connections = ARGV[8]
if status == 'alive' and connections ~= '' then
  if believed > 0 and tonumber(connections) > 0 then
    redis.call('HSET', KEYS[7], instance, connections)
    -- A report is rare (a count changed): it renews the backstop itself, so
    -- a key it creates never waits for the next backstop tick.
    redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[9]))
  else
    redis.call('HDEL', KEYS[7], instance)
  end
end

sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], channel, now)
local seq = tonumber(redis.call('GET', KEYS[5]) or '0')
return {status, epoch or '', seq, redis.call('HLEN', KEYS[1]), now}
