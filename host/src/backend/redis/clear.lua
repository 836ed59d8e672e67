-- clear.lua: wipe one topic and stamp it with a new epoch, so no instance's
-- heartbeat or late join brings the old state back ("clear sticks").
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 seq, 5 epoch
-- ARGV: 1 instance id, 2 new epoch token, 3 backstop (ms), 4 channel,
--       5 prefix of held:<instance> keys
-- Reply: 1
local instance, epoch, keep, channel, held_prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
for _, holder in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  redis.call('DEL', held_prefix .. holder)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], epoch, 'PX', keep)
redis.call('PUBLISH', channel,
  '{"i":' .. cjson.encode(instance) .. ',"s":0,"e":"clear","p":' .. cjson.encode(epoch) .. '}')
return 1
