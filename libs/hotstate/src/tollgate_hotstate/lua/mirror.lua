-- Mirror the ledger's posted balance into the hot copy. Applied only if the ledger version is
-- newer; the usage it posted leaves the unposted set in the same step, so the hot balance never
-- counts a charge twice nor drops one (it can only look lower for a moment, never higher).
-- KEYS: 1 acct, 2 unposted, 3 unposted_ev
-- ARGV: 1 balance (nanos), 2 seq, 3.. request ids posted by this ledger change
-- Returns {applied (0/1), available}
local acct, unposted, unposted_ev = KEYS[1], KEYS[2], KEYS[3]
local f = redis.call("HMGET", acct, "loaded", "seq", "unposted", "reserved", "bal")
if not f[1] then
  -- Not loaded (e.g. Redis was flushed): a request settled since then may sit in the unposted
  -- set without a loaded total; drop what is now posted so a later load does not count it.
  for i = 3, #ARGV do
    redis.call("HDEL", unposted, ARGV[i])
    redis.call("HDEL", unposted_ev, ARGV[i])
  end
  return {0, 0}
end
local applied = 0
local bal = tonumber(f[5] or "0")
if tonumber(ARGV[2]) > tonumber(f[2] or "-1") then
  bal = tonumber(ARGV[1])
  redis.call("HSET", acct, "bal", ARGV[1], "seq", ARGV[2])
  applied = 1
end
local unposted_sum = tonumber(f[3] or "0")
for i = 3, #ARGV do
  local cost = redis.call("HGET", unposted, ARGV[i])
  if cost then
    unposted_sum = unposted_sum - tonumber(cost)
    redis.call("HDEL", unposted, ARGV[i])
    redis.call("HDEL", unposted_ev, ARGV[i])
  end
end
redis.call("HSET", acct, "unposted", unposted_sum)
return {applied, bal - unposted_sum - tonumber(f[4] or "0")}
