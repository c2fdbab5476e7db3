-- Update limit or plan fields of a loaded hot state (tier and plan changes). A state that is not
-- loaded is left alone: the next load reads the new values from Postgres anyway.
-- KEYS: 1 acct
-- ARGV: 1 version, 2 version field name, then field, value pairs
-- Returns 1 if applied.
local f = redis.call("HMGET", KEYS[1], "loaded", ARGV[2])
if not f[1] then return 0 end
if f[2] and tonumber(f[2]) >= tonumber(ARGV[1]) then return 0 end
local args = {ARGV[2], ARGV[1]}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call("HSET", KEYS[1], unpack(args))
return 1
