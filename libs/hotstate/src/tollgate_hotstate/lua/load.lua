-- Initialise a customer's hot state from Postgres when it is missing (first use or after Redis
-- lost its data). Never overwrites a loaded state: concurrent loaders are harmless.
-- KEYS: 1 acct, 2 unposted (optional)
-- ARGV: field, value pairs (bal, seq, limits, plan fields)
-- Returns 1 if it loaded, 0 if already present.
if redis.call("HEXISTS", KEYS[1], "loaded") == 1 then return 0 end
-- Usage settled while the state was missing is not in Postgres yet: it stays counted.
local unposted = 0
if KEYS[2] then
  for _, cost in ipairs(redis.call("HVALS", KEYS[2])) do unposted = unposted + tonumber(cost) end
end
redis.call("HSET", KEYS[1], unpack(ARGV))
redis.call("HSET", KEYS[1], "loaded", "1", "unposted", unposted, "reserved", "0", "dheld", "0")
return 1
