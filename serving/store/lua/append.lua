-- KEYS: events, ids, sends, consent, seq. ARGV: max_events, keep_us, wall_us, then ts, event_id, body,
-- kind, action per event. Returns the number of events accepted. Runs after events.lua.
local accepted = 0
for i = 4, #ARGV, 5 do
  accepted = accepted + append_event(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
if accepted > 0 then trim_and_prune(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) end
return accepted
