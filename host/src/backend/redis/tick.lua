-- tick.lua: one heartbeat of this instance on a batch of topics (on a cluster,
-- topics of one slot): for each, refresh its hold and sweep expired holds, and
-- now and then verify it and renew its keys' backstop. O(1) in the users held
-- ("one round trip"); the engine pipelines the batches. One call covers many
-- topics so Redis pays the call and the clock read once per batch, and a
-- steady tick costs two commands per topic (ZADD, ZRANGEBYSCORE).
--
-- KEYS: 7 per topic, each topic's in the order of the prelude (1 users, 2 refs,
--       3 inst, 4 holds, 5 seq, 6 epoch, 7 conns)
-- ARGV: 1 instance id, 2 ttl (ms), 3 backstop (ms), then 5 per topic:
--       epoch this instance knows ('' = none), channel, how many users this
--       instance believes it holds there (0: it only observes), its
--       connections there when changed since its last report ('' =
--       unchanged), duties ('' or any of: 'v' verify, 'r' renew the backstop)
-- Reply: {redis now (ms), marks, details...}: `marks` has one byte per topic,
--   'a' when it is alive and there is nothing more to say (most ticks), else
--   'd' and its {status, epoch or ''[, seq, members]} is the next detail.
--   (A string of marks costs Redis far less than a reply item per topic.)
--   alive:   hold refreshed, or nothing to refresh.
--   lost:    some or all of the holds are gone (Redis lost its data, or this
--            instance was cut off longer than ttl and swept) and no clear()
--            happened: the engine re-asserts its users with join.lua
--            ("recovery"). A missing hold is never re-created here (XX), so
--            nothing is resurrected. A verify also counts the held set, which
--            catches a loss after a join re-created the hold (the backend asks
--            for a verify whenever a join reports it created the hold).
--   cleared: clear() ran since this instance last looked ("clear sticks").
--            A refreshed hold proves there was none: clear() deletes the
--            holds, and join.lua re-creates one only for an instance that
--            knows the new epoch. Observers read the epoch when verifying.
--   error:   this topic's keys are unusable (the epoch field carries Redis's
--            message); the other topics of the batch are unaffected.
--   seq, members (verify only): the topic's latest sequence number (0 when
--            Redis has none) and unique users, so the instance can tell its
--            replica drifted.
local instance, ttl, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = redis_now()
-- Formatted once: a Lua number given to redis.call is formatted on each call.
local now_text, expiry = string.format('%d', now), string.format('%d', now + ttl)

-- The topic whose keys start at KEYS[b + 1] and arguments at ARGV[a + 1].
local function tick_topic(b, a)
  local users, refs, inst, holds, seq_key, epoch_key, conns = unpack(KEYS, b + 1, b + 7)
  local known_epoch, channel, believed, connections, duties = unpack(ARGV, a + 1, a + 5)
  believed = tonumber(believed)
  local verify, renew = false, false
  if duties ~= '' then
    verify, renew = string.find(duties, 'v', 1, true), string.find(duties, 'r', 1, true)
  end
  local status, epoch = 'alive', nil
  if believed > 0 then
    if redis.call('ZADD', inst, 'XX', 'CH', expiry, instance) == 0
        and not redis.call('ZSCORE', inst, instance) then
      epoch = redis.call('GET', epoch_key)
      status = (epoch and epoch ~= known_epoch) and 'cleared' or 'lost'
    elseif verify and redis.call('ZLEXCOUNT', holds, holds_range(instance)) < believed then
      status = 'lost'
    end
  end
  local seq
  if verify and status ~= 'cleared' then
    local read = redis.call('MGET', epoch_key, seq_key)
    epoch, seq = read[1] or nil, tonumber(read[2] or '0')
    if epoch and epoch ~= known_epoch then status = 'cleared' end
  end
  if status == 'alive' and believed > 0 and renew then
    backstop({users, refs, inst, holds, seq_key, conns}, keep)
    if epoch then redis.call('PEXPIRE', epoch_key, keep) end
  end

  -- The instance's connections, for stats: kept with its hold, dropped with it.
  if status == 'alive' and connections ~= '' then
    if believed > 0 and tonumber(connections) > 0 then
      redis.call('HSET', conns, instance, connections)
      -- A report is rare (a count changed): it renews the backstop itself, so
      -- a key it creates never waits for the next renewal.
      redis.call('PEXPIRE', conns, keep)
    else
      redis.call('HDEL', conns, instance)
    end
  end

  sweep(users, refs, inst, holds, seq_key, conns, channel, now, now_text)
  if not verify then return (status ~= 'alive' or epoch) and {status, epoch or ''} or nil end
  return {status, epoch or '', seq, redis.call('HLEN', users)}
end

local marks, details = {}, {}
for t = 0, #KEYS / 7 - 1 do
  local ok, detail = pcall(tick_topic, t * 7, 3 + t * 5)
  if not ok then
    detail = {'error', type(detail) == 'table' and tostring(detail.err) or tostring(detail)}
  end
  if detail then
    marks[t + 1] = 'd'
    details[#details + 1] = detail
  else
    marks[t + 1] = 'a'
  end
end
return {now, table.concat(marks), unpack(details)}
