-- Settle one request: release its hold, record its exact cost and its event as unposted (until
-- the ledger has posted it to Postgres; zero-cost and plan usage too, so a crash before publishing
-- loses none of it), count plan usage, refund unused TPM. Idempotent per request.
-- KEYS: 1 acct, 2 holds, 3 holdexp, 4 unposted, 5 unposted_ev
-- ARGV: 1 request_id, 2 cost (nanos, charged to credits), 3 mode, 4 list_price (nanos),
--       5 tokens_refund (estimated minus actual tokens), 6 event json
-- Returns {available_after, duplicate(0/1), request_id}
local acct, holds, holdexp, unposted, unposted_ev = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid = ARGV[1]
local cost = tonumber(ARGV[2])
local mode = ARGV[3]
local list_price = tonumber(ARGV[4])
local refund = tonumber(ARGV[5])

local function run()
  local f = redis.call("HMGET", acct, "bal", "unposted", "reserved", "tpm", "tb_tokens")
  local reserved = tonumber(f[3] or "0")
  local hold = redis.call("HGET", holds, rid)
  if hold then
    reserved = reserved - tonumber(hold)
    redis.call("HDEL", holds, rid)
    redis.call("ZREM", holdexp, rid)
    redis.call("HSET", acct, "reserved", reserved)
  end
  local free_hold = redis.call("HGET", holds, "free:" .. rid)
  if free_hold then
    redis.call("HDEL", holds, "free:" .. rid)
    redis.call("ZREM", holdexp, "free:" .. rid)
    redis.call("HINCRBY", acct, "dheld", -tonumber(free_hold))
  end
  local unposted_sum = tonumber(f[2] or "0")
  if redis.call("HEXISTS", unposted, rid) == 1 then
    return {tonumber(f[1] or "0") - unposted_sum - reserved, 1}
  end
  unposted_sum = unposted_sum + cost
  redis.call("HSET", unposted, rid, cost)
  redis.call("HSET", unposted_ev, rid, ARGV[6])
  if cost > 0 then redis.call("HSET", acct, "unposted", unposted_sum) end
  if mode == "subscription" then redis.call("HINCRBY", acct, "pused", list_price) end
  if mode == "free" then redis.call("HINCRBY", acct, "dused", list_price) end
  local tpm = tonumber(f[4] or "0")
  if tpm > 0 and refund > 0 and f[5] then
    redis.call("HSET", acct, "tb_tokens", math.min(tpm, tonumber(f[5]) + refund))
  end
  return {tonumber(f[1] or "0") - unposted_sum - reserved, 0}
end

-- The request id closes every reply, so a pipelining client can tell whose reply it holds.
local reply = run()
reply[#reply + 1] = rid
return reply
