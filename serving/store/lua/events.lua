-- The helpers that append.lua and commit.lua share (the store loads this file before each of them).
local function append_event(ts, eid, body, kind, action)
  if redis.call('ZSCORE', KEYS[2], eid) then return 0 end
  local seq = string.format('%012d', redis.call('INCR', KEYS[5]))
  redis.call('ZADD', KEYS[2], seq, eid)
  redis.call('ZADD', KEYS[1], ts, seq .. ':' .. body)
  if kind == 's' or kind == 'u' then
    local current = redis.call('HGET', KEYS[4], 'ts')
    if (not current) or tonumber(ts) >= tonumber(current) then
      redis.call('HSET', KEYS[4], 'v', kind == 's' and '1' or '0', 'ts', ts)
    end
  elseif kind == 'm' then
    redis.call('ZADD', KEYS[3], ts, action .. '|' .. eid)
  end
  return 1
end

local function trim_and_prune(max_events, keep_us, wall_us)
  local n = redis.call('ZCARD', KEYS[1])
  if n > max_events then
    local old = redis.call('ZRANGE', KEYS[1], 0, n - max_events - 1)
    for _, member in ipairs(old) do
      local seq = string.sub(member, 1, 12)
      redis.call('ZREMRANGEBYSCORE', KEYS[2], seq, seq)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max_events - 1)
  end
  -- Relative to the older of the newest send and the wall clock: a send stamped in the future never
  -- erases the history that decisions today read.
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  if newest[2] then
    local cutoff = string.format('%.0f', math.min(tonumber(newest[2]), wall_us) - keep_us)
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. cutoff)
  end
end
