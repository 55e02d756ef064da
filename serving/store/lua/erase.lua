-- KEYS: events, ids, sends, consent, seq, customer's decisions, all decisions. ARGV: decision key prefix.
-- The decision hashes are found from the customer's list, so they are not declared in KEYS: fine on one
-- server, not on Redis Cluster (which this store does not support).
local n_events = redis.call('ZCARD', KEYS[1])
local ids = redis.call('ZRANGE', KEYS[6], 0, -1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[7], id)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return n_events + #ids
