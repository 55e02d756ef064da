-- KEYS: decision hash. ARGV: field, value. The existence check keeps an outcome of an unknown (or
-- erased) decision from creating a stray key.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return 1
