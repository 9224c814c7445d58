"""Lua scripts: every change of shared state that must be atomic runs as one script in Redis.

Times come from the Redis server's clock (TIME), so node clocks need not agree. Directory
scripts build key names from the prefix in ARGV[1] (the layout of redis_keys.py): they run on
one Redis (or a Sentinel-managed primary), not on a Redis Cluster.
"""

from __future__ import annotations

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: nodes zset, node key. ARGV: node id, NodeInfo JSON, ttl ms. Returns 1 when the node was
# live before (its record, which expires with the ttl, existed), 0 when it registers afresh.
HEARTBEAT = (
    _NOW_MS
    + """
local now = now_ms()
local was_live = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
return was_live
"""
)

# KEYS: nodes zset. ARGV: ttl ms, node key prefix. Returns [id, heartbeat ms, JSON, ...] of
# the nodes whose heartbeat is younger than the ttl.
LIVE_NODES = (
    _NOW_MS
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1],
  string.format('(%.0f', now_ms() - tonumber(ARGV[1])), '+inf', 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local record = redis.call('GET', ARGV[2] .. ids[i])
  if record then
    table.insert(out, ids[i]); table.insert(out, ids[i + 1]); table.insert(out, record)
  end
end
return out
"""
)

# KEYS: nodes zset. ARGV: ttl ms. Node ids whose heartbeat is too old.
EXPIRED_NODES = (
    _NOW_MS
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf',
  string.format('%.0f', now_ms() - tonumber(ARGV[1])))
"""
)

# KEYS: nodes zset, node key. ARGV: node id, ttl ms. Forget the node only if it is still
# expired (it may have come back since it was listed).
FORGET_NODE = (
    _NOW_MS
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= now_ms() - tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
)

# Shared by the directory scripts. ARGV[1] is the key prefix.
_DIRECTORY = """
local P = ARGV[1]
local K_ROOMS = P .. ':rooms'
local function k_room(name) return P .. ':room:' .. name end
local function k_parts(name) return P .. ':room-participants:' .. name end
local function k_tracks(name) return P .. ':room-tracks:' .. name end
local function k_node_rooms(id) return P .. ':node-rooms:' .. id end

local function now_s()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- 1 if this call created the room, 0 if it existed
local function ensure_room(name, node_id, metadata)
  local key = k_room(name)
  if redis.call('EXISTS', key) == 1 then return 0 end
  redis.call('HSET', key, 'created_at', now_s(), 'created_by', node_id, 'metadata', metadata)
  redis.call('SADD', K_ROOMS, name)
  return 1
end

local function room_fields(name)
  return redis.call('HMGET', k_room(name), 'created_at', 'created_by', 'metadata')
end

-- how many entries a node has in a room: what prune_node has to visit
local function count(node_id, room, delta)
  local key = k_node_rooms(node_id)
  if redis.call('HINCRBY', key, room, delta) <= 0 then redis.call('HDEL', key, room) end
end

local function drop_if_empty(name)
  if redis.call('HLEN', k_parts(name)) == 0 and redis.call('HLEN', k_tracks(name)) == 0 then
    redis.call('DEL', k_room(name))
    redis.call('SREM', K_ROOMS, name)
  end
end

local function put(table_key, room, field, record, node_id)
  local old = redis.call('HGET', table_key, field)
  if old then count(cjson.decode(old)['node_id'], room, -1) end
  redis.call('HSET', table_key, field, record)
  count(node_id, room, 1)
end

-- ParticipantRecord.is_later_connection_than: the later join stays, ties to the larger sid
local function later_connection(a, b)
  local ta, tb = tonumber(a['joined_at']) or 0, tonumber(b['joined_at']) or 0
  if ta ~= tb then return ta > tb end
  return tostring(a['sid']) > tostring(b['sid'])
end

-- an identity's entry, unless the directory holds a later connection of it (writes from two
-- nodes may arrive out of order)
local function put_participant(room, identity, record, node_id)
  local key = k_parts(room)
  local old = redis.call('HGET', key, identity)
  if old and later_connection(cjson.decode(old), cjson.decode(record)) then return end
  put(key, room, identity, record, node_id)
end

-- remove every entry of a node; returns the rooms it had entries in
local function remove_node(node_id)
  local rooms = redis.call('HKEYS', k_node_rooms(node_id))
  for _, room in ipairs(rooms) do
    for _, tkey in ipairs({k_parts(room), k_tracks(room)}) do
      local all = redis.call('HGETALL', tkey)
      for i = 1, #all, 2 do
        if cjson.decode(all[i + 1])['node_id'] == node_id then redis.call('HDEL', tkey, all[i]) end
      end
    end
  end
  redis.call('DEL', k_node_rooms(node_id))
  return rooms
end
"""

# ARGV: prefix, room, node id, metadata JSON. Returns {created 0/1, room fields}.
CREATE_ROOM = (
    _DIRECTORY
    + """
local created = ensure_room(ARGV[2], ARGV[3], ARGV[4])
return {created, room_fields(ARGV[2])}
"""
)

# ARGV: prefix, room, metadata JSON. Returns the room fields, or nil if there is no room.
SET_ROOM_METADATA = (
    _DIRECTORY
    + """
if redis.call('EXISTS', k_room(ARGV[2])) == 0 then return false end
redis.call('HSET', k_room(ARGV[2]), 'metadata', ARGV[3])
return room_fields(ARGV[2])
"""
)

# ARGV: prefix, room, node id, identity, ParticipantRecord JSON. Returns the room fields.
ADD_PARTICIPANT = (
    _DIRECTORY
    + """
ensure_room(ARGV[2], ARGV[3], '{}')
put_participant(ARGV[2], ARGV[4], ARGV[5], ARGV[3])
return room_fields(ARGV[2])
"""
)

# ARGV: prefix, room, identity, sid. 1 if removed (only the same connection's record).
REMOVE_PARTICIPANT = (
    _DIRECTORY
    + """
local key = k_parts(ARGV[2])
local old = redis.call('HGET', key, ARGV[3])
if not old then return 0 end
local record = cjson.decode(old)
if record['sid'] ~= ARGV[4] then return 0 end
redis.call('HDEL', key, ARGV[3])
count(record['node_id'], ARGV[2], -1)
drop_if_empty(ARGV[2])
return 1
"""
)

# ARGV: prefix, room, node id, track id, TrackRecord JSON.
ADD_TRACK = (
    _DIRECTORY
    + """
ensure_room(ARGV[2], ARGV[3], '{}')
put(k_tracks(ARGV[2]), ARGV[2], ARGV[4], ARGV[5], ARGV[3])
return 1
"""
)

# ARGV: prefix, room, track id. 1 if removed.
REMOVE_TRACK = (
    _DIRECTORY
    + """
local key = k_tracks(ARGV[2])
local old = redis.call('HGET', key, ARGV[3])
if not old then return 0 end
redis.call('HDEL', key, ARGV[3])
count(cjson.decode(old)['node_id'], ARGV[2], -1)
drop_if_empty(ARGV[2])
return 1
"""
)

# ARGV: prefix, node id. Returns the rooms the node had entries in.
PRUNE_NODE = (
    _DIRECTORY
    + """
local rooms = remove_node(ARGV[2])
for _, room in ipairs(rooms) do drop_if_empty(room) end
return rooms
"""
)

# ARGV: prefix, node id, {"participants": [[room, identity, JSON]...], "tracks": [[room, id,
# JSON]...]}. The node's entries become exactly the snapshot's; rooms keep their records.
SYNC_NODE = (
    _DIRECTORY
    + """
local node_id = ARGV[2]
local touched = remove_node(node_id)
local snapshot = cjson.decode(ARGV[3])
for _, e in ipairs(snapshot['participants']) do
  ensure_room(e[1], node_id, '{}')
  put_participant(e[1], e[2], e[3], node_id)
end
for _, e in ipairs(snapshot['tracks']) do
  ensure_room(e[1], node_id, '{}')
  put(k_tracks(e[1]), e[1], e[2], e[3], node_id)
end
for _, room in ipairs(touched) do drop_if_empty(room) end
return #touched
"""
)

# KEYS: the channel's seq counter. ARGV: channel, payload, seq ttl ms. Numbers the message
# and publishes "<seq> <payload>" in one step, so the numbers follow the channel's order.
PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[2])
return seq
"""
