-- clear.lua: wipe one topic and stamp it with a new epoch, so no instance's
-- heartbeat or late join brings the old state back ("clear sticks").
--
-- KEYS: 1 users, 2 refs, 3 inst, 4 holds, 5 seq, 6 epoch, 7 conns
-- ARGV: 1 instance id, 2 new epoch token, 3 backstop (ms), 4 channel
-- Reply: 1
local instance, epoch, keep, channel = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[7])
redis.call('SET', KEYS[6], epoch, 'PX', keep)
publish(channel,
  '{"i":' .. cjson.encode(instance) .. ',"s":0,"e":"clear","p":' .. cjson.encode(epoch) .. '}')
return 1
