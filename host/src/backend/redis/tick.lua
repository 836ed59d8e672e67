-- tick.lua: one heartbeat of this instance on a batch of topics (on a cluster,
-- topics of one slot): for each, refresh its hold and sweep expired holds, and
-- now and then verify it and renew its keys' backstop. O(1) in the users held
-- ("one round trip"); the engine pipelines the batches. One call covers many
-- topics so Redis pays the call and the clock read once per batch, and a
-- steady tick costs two commands per topic (ZADD, ZRANGEBYSCORE).
--
-- A topic comes in one of two forms:
--   quick: only its `inst` key is declared. Its hold is refreshed and its
--          holds checked for expiry; if the hold is gone or another expired,
--          the reply asks for a full tick of the topic (mark 'f'), which the
--          backend sends at once, in the same heartbeat. Most topics on most
--          ticks, and one key instead of seven is most of what they cost.
--   full:   all seven keys. Everything below, sweep included. A topic is full
--          when it has duties (a connection count to report is one).
--
-- KEYS: per topic, quick: 1 inst; full: the prelude's seven (1 users, 2 refs,
--       3 inst, 4 holds, 5 seq, 6 epoch, 7 conns)
-- ARGV: 1 instance id, 2 ttl (ms), 3 backstop (ms), then per topic: how many
--       users this instance believes it holds there (0: it only observes),
--       its duties ('' = quick, or any of: 'v' verify, 'r' renew the backstop,
--       's' sweep, 'c' report connections), and for a full topic three more:
--       the epoch this instance knows ('' = none), the channel, its
--       connections there when changed since its last report ('' = unchanged)
-- Reply: {redis now (ms), marks, details...}: `marks` has one byte per topic:
--   'a' alive with nothing more to say (most ticks), 'f' tick it again in
--   full, or 'd' and its {status, epoch or ''[, seq, members]} is the next
--   detail. (A string of marks costs Redis far less than an item per topic.)
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

-- Refresh this instance's hold where it believes it holds users: false when
-- the hold is gone (XX: never re-created here).
local function refreshed(inst, believed)
  return believed == 0 or redis.call('ZADD', inst, 'XX', 'CH', expiry, instance) == 1
      or redis.call('ZSCORE', inst, instance) ~= false
end

-- A quick topic, whose only key is KEYS[b + 1]: 'f' when it needs a full
-- tick ("crash expiry": its sweep is in this heartbeat all the same).
local function quick_tick(b, a)
  local inst = KEYS[b + 1]
  if not refreshed(inst, tonumber(ARGV[a + 1])) then return 'f' end
  if redis.call('ZRANGEBYSCORE', inst, '-inf', now_text, 'LIMIT', 0, 1)[1] then return 'f' end
  return 'a'
end

-- A full topic, whose keys start at KEYS[b + 1].
local function tick_topic(b, a)
  local users, refs, inst, holds, seq_key, epoch_key, conns = unpack(KEYS, b + 1, b + 7)
  local believed, duties, known_epoch, channel, connections = unpack(ARGV, a + 1, a + 5)
  believed = tonumber(believed)
  local verify, renew = string.find(duties, 'v', 1, true), string.find(duties, 'r', 1, true)
  local status, epoch = 'alive', nil
  if not refreshed(inst, believed) then
    epoch = redis.call('GET', epoch_key)
    status = (epoch and epoch ~= known_epoch) and 'cleared' or 'lost'
  elseif verify and redis.call('ZLEXCOUNT', holds, holds_range(instance)) < believed then
    status = 'lost'
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

  sweep(users, refs, inst, holds, seq_key, conns, channel, now)
  if not verify then return (status ~= 'alive' or epoch) and {status, epoch or ''} or nil end
  return {status, epoch or '', seq, redis.call('HLEN', users)}
end

local marks, details, b, a = {}, {}, 0, 3
while a < #ARGV do
  local ok, detail
  if ARGV[a + 2] == '' then
    ok, detail = pcall(quick_tick, b, a)
    b, a = b + 1, a + 2
  else
    ok, detail = pcall(tick_topic, b, a)
    b, a = b + 7, a + 5
  end
  if not ok then
    detail = {'error', type(detail) == 'table' and tostring(detail.err) or tostring(detail)}
  end
  if type(detail) == 'string' then
    marks[#marks + 1] = detail
  elseif detail then
    marks[#marks + 1] = 'd'
    details[#details + 1] = detail
  else
    marks[#marks + 1] = 'a'
  end
end
return {now, table.concat(marks), unpack(details)}
