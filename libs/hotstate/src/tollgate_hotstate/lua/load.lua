-- Initialise a customer's hot state from Postgres when it is missing (first use or after Redis
-- lost its data). Never overwrites a loaded state: concurrent loaders are harmless.
-- KEYS: 1 acct
-- ARGV: field, value pairs (bal, seq, limits, plan fields)
-- Returns 1 if it loaded, 0 if already present.
if redis.call("HEXISTS", KEYS[1], "loaded") == 1 then return 0 end
redis.call("HSET", KEYS[1], unpack(ARGV))
redis.call("HSET", KEYS[1], "loaded", "1", "unposted", "0", "reserved", "0")
return 1
