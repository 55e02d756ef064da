-- KEYS: events, ids, sends, consent, seq, customer's decisions, decision hash, all decisions.
-- ARGV: 1 max_events, 2 keep_us, 3 wall_us, 4 ts, 5 decision_id, 6 decision json, 7 is_message,
-- 8 event_id, 9 event body, 10 action, 11 require_consent, 12 consent_ts ('' for none), 13 quiet,
-- 14-16 lo7, hi7, max7, 17-19 lo28, hi28, max28, 20-21 gap bounds, 22-23 cooldown bounds (bounds are
-- exclusive ZCOUNT bounds; '' for no gap or cooldown). The checks are those of `_refusal`, in its order.
-- Returns 'ok' when the decision stands, else the refusing rule ('cooldown' for the action's cooldown).
-- Runs after events.lua.
if redis.call('EXISTS', KEYS[7]) == 1 then return 'ok' end
if ARGV[7] == '1' then
  if ARGV[11] == '1' then
    local consent = redis.call('HMGET', KEYS[4], 'v', 'ts')
    if consent[1] == '0' and (ARGV[12] == '' or tonumber(consent[2]) >= tonumber(ARGV[12])) then
      return 'consent'
    end
  end
  if ARGV[13] == '1' then return 'quiet_hours' end
  if redis.call('ZCOUNT', KEYS[3], ARGV[14], ARGV[15]) >= tonumber(ARGV[16]) then
    return 'frequency_cap_7d'
  end
  if redis.call('ZCOUNT', KEYS[3], ARGV[17], ARGV[18]) >= tonumber(ARGV[19]) then
    return 'frequency_cap_28d'
  end
  if ARGV[20] ~= '' and redis.call('ZCOUNT', KEYS[3], ARGV[20], ARGV[21]) > 0 then return 'min_gap' end
  if ARGV[22] ~= '' then
    local prefix = ARGV[10] .. '|'
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[22], ARGV[23])) do
      if string.sub(member, 1, #prefix) == prefix then return 'cooldown' end
    end
  end
end
redis.call('HSET', KEYS[7], 'json', ARGV[6])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[5])
if ARGV[7] == '1' then
  if append_event(ARGV[4], ARGV[8], ARGV[9], 'm', ARGV[10]) == 1 then
    trim_and_prune(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
  end
end
return 'ok'
