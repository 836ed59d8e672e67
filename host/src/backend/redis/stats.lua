-- stats.lua: sweep, then a topic's unique users and connections, without
-- reading its members: HLEN, and the connection counts the instances holding
-- the topic reported with their heartbeats (O(instances)). A swept instance's
-- count goes with its hold.
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 channel, 2 instance id
-- Reply: {users, connections of every instance, this instance's own report}
sweep(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7], ARGV[1], redis_now())
local total, own = 0, 0
local reported = redis.call('HGETALL', KEYS[7])
for i = 1, #reported, 2 do
  local n = tonumber(reported[i + 1])
  total = total + n
  if reported[i] == ARGV[2] then own = n end
end
return {redis.call('HLEN', KEYS[1]), total, own}
