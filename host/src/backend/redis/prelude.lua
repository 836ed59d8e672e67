-- prelude.lua: helpers shared by every presence script (prepended at load time).
-- The guarantees named in these headers are listed in the backend module's docs
-- (host/src/backend/mod.rs, "Guarantees").
--
-- Key layout for one topic T under prefix P, each named P{:T}:<name> (the hash
-- tag {:T} is never empty, so one topic lives in one cluster slot — "any bytes"):
--   users  hash   user key -> public data (JSON) currently shown for that user
--   refs   hash   user key -> how many instances hold the user on T
--   inst   zset   instance id -> expiry (ms, Redis clock) of that instance's hold on T
--   holds  zset   every score 0, member = instance id .. user key: the users each
--                 instance holds on T, one lexicographic range per instance (ids
--                 are 16 hex chars, so the split is never ambiguous)
--   seq    string last sequence number handed out on T (hybrid logical clock)
--   epoch  string token replaced by clear(); absent until the first clear
--   conns  hash   instance id -> its connections on T, as of its last report
--                 (a heartbeat whose count changed); gone with its last hold
-- Events go to the channel of T as JSON: {"i":instance,"s":seq,"b":the
-- sequence number before it,"e":kind,...},
-- published with `publish_command` (set by the loader above this prelude:
-- PUBLISH on one Redis, SPUBLISH on a cluster, where the channel carries the
-- topic's hash tag and so lives on the topic's shard).
--
-- Every key a script touches is one of its KEYS (no name is built here from
-- a prefix), so a cluster routes it and all of them share one slot. Every
-- script is called with the same KEYS per topic: 1 users, 2 refs, 3 inst,
-- 4 holds, 5 seq, 6 epoch, 7 conns (tick.lua takes many topics, and only
-- `inst` for a topic in its quick form).

-- Milliseconds on Redis's own clock ("one clock"): every expiry is stamped and
-- compared with it, so instances' clocks never matter.
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Next sequence number: max(previous + 1, now_ms * 1024), and the previous
-- one (0 when there was none). The counter is made by the first snapshot of a
-- topic (snapshot.lua), so a write that finds it missing means Redis lost its
-- data: it restarts one second ahead, past any number handed out before the
-- loss (at most 1024 a millisecond), so replicas never mistake new events for
-- old ones ("recovery"). Each event carries the previous number too, so a
-- receiver that missed one sees the gap at the next.
local function next_seq(seq_key, now)
  local current = redis.call('GET', seq_key)
  if not current then
    local fresh = (now + 1000) * 1024
    redis.call('SET', seq_key, string.format('%d', fresh), 'KEEPTTL')
    return fresh, 0
  end
  current = tonumber(current)
  local candidate = now * 1024
  if candidate <= current then candidate = current + 1 end
  -- KEEPTTL: a sweep must not strip the backstop expiry off the counter.
  redis.call('SET', seq_key, string.format('%d', candidate), 'KEEPTTL')
  return candidate, current
end

local function publish(channel, message)
  redis.call(publish_command, channel, message)
end

local function publish_change(channel, instance, seq, before, kind, user, data)
  publish(channel,
    '{"i":' .. cjson.encode(instance) .. ',"s":' .. string.format('%d', seq) ..
    ',"b":' .. string.format('%d', before) ..
    ',"e":"' .. kind .. '","k":' .. cjson.encode(user) .. ',"d":' .. data .. '}')
end

-- Whole-key expiry as a backstop for topics nobody sweeps any more.
local function backstop(keys, ms)
  for _, key in ipairs(keys) do redis.call('PEXPIRE', key, ms) end
end

-- The range of `holds` members that belong to one instance: [id, next id).
local function holds_range(instance)
  local last = string.byte(instance, #instance)
  return '[' .. instance, '(' .. string.sub(instance, 1, #instance - 1) .. string.char(last + 1)
end

-- Sweep ("crash expiry"): every instance whose hold expired loses it; each user
-- whose last holder that was leaves, with exactly one `leave` published —
-- the script is atomic, so concurrent sweepers cannot both see the same hold.
-- The leave is attributed to the dead instance, so the sweeper also receives it.
-- Returns how many users left.
local function sweep(users, refs, inst, holds, seq, conns, channel, now)
  local dead = redis.call('ZRANGEBYSCORE', inst, '-inf', now)
  local left = 0
  for _, instance in ipairs(dead) do
    local from, to = holds_range(instance)
    for _, hold in ipairs(redis.call('ZRANGEBYLEX', holds, from, to)) do
      local user = string.sub(hold, #instance + 1)
      if redis.call('HINCRBY', refs, user, -1) <= 0 then
        redis.call('HDEL', refs, user)
        local data = redis.call('HGET', users, user) or 'null'
        redis.call('HDEL', users, user)
        local number, before = next_seq(seq, now)
        publish_change(channel, instance, number, before, 'leave', user, data)
        left = left + 1
      end
    end
    redis.call('ZREMRANGEBYLEX', holds, from, to)
    redis.call('ZREM', inst, instance)
    redis.call('HDEL', conns, instance)
  end
  return left
end

