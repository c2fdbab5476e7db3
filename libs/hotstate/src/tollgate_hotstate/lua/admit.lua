-- Admit one request: expire stale holds, rate-limit (RPM sliding log, TPM token bucket), pick
-- who pays (paid plan, credits, free allowance) and reserve the worst-case cost, atomically.
-- KEYS: 1 acct, 2 holds, 3 holdexp, 4 rl
-- ARGV: 1 request_id, 2 model, 3 est_tokens, 4 input_cost (nanos), 5 out_per_m (nanos per 1M
--       output tokens), 6 max_out (tokens asked, already capped by the model), 7 min_out,
--       8 hold_ttl_ms, 9 check_rate (1/0), 10 list_worst (nanos, for free allowance)
-- Returns a flat array: {verdict, ..., request_id}. Verdicts (the request id omitted):
--   {"LOAD"}                                  hot state missing: load from Postgres, retry
--   {"RPM"|"TPM", retry_after_ms, limit, remaining, reset_ms}
--   {"OK", mode, max_out, hold, available_after, rpm_limit, rpm_left, tpm_limit, tpm_left, plan_info}
--   {"NOFUNDS", available, free_left}       free_left: Free allowance left today, or -1
--   {"FROZEN"}
local acct, holds, holdexp, rl = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid, model = ARGV[1], ARGV[2]
local est_tokens = tonumber(ARGV[3])
local input_cost = tonumber(ARGV[4])
local out_per_m = tonumber(ARGV[5])
local max_out = tonumber(ARGV[6])
local min_out = tonumber(ARGV[7])
local hold_ttl = tonumber(ARGV[8])
local check_rate = ARGV[9] == "1"
local list_worst = tonumber(ARGV[10])

local function run()
  local f = redis.call("HMGET", acct, "loaded", "bal", "unposted", "reserved", "rpm", "tpm",
    "tb_tokens", "tb_ts", "plan", "plan_models", "fallback", "cap", "pused", "status",
    "free_models", "daily_cap", "dused", "dday", "dheld")
  if not f[1] then return {"LOAD"} end
  if f[14] == "frozen" then return {"FROZEN"} end

  local t = redis.call("TIME")
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

  -- Holds left by a crashed process expire: their reservation returns to the balance (or, for a
  -- "free:" hold, to the day's allowance).
  local reserved = tonumber(f[4] or "0")
  local dheld = tonumber(f[19] or "0")
  local stale = redis.call("ZRANGEBYSCORE", holdexp, "-inf", now)
  for _, old in ipairs(stale) do
    local amt = tonumber(redis.call("HGET", holds, old) or "0")
    if string.sub(old, 1, 5) == "free:" then dheld = dheld - amt else reserved = reserved - amt end
    redis.call("HDEL", holds, old)
    redis.call("ZREM", holdexp, old)
  end
  if #stale > 0 then redis.call("HSET", acct, "reserved", reserved, "dheld", dheld) end

  local rpm = tonumber(f[5] or "0")
  local tpm = tonumber(f[6] or "0")
  local rpm_left, tpm_left = -1, -1
  local tb_tokens = tonumber(f[7] or tostring(tpm))
  if check_rate then
    if rpm > 0 then
      redis.call("ZREMRANGEBYSCORE", rl, "-inf", now - 60000)
      local used = redis.call("ZCARD", rl)
      if used >= rpm then
        local oldest = redis.call("ZRANGE", rl, 0, 0, "WITHSCORES")
        local retry = tonumber(oldest[2]) + 60000 - now
        return {"RPM", retry, rpm, 0, retry}
      end
      rpm_left = rpm - used - 1
    end
    if tpm > 0 then
      local last = tonumber(f[8] or tostring(now))
      tb_tokens = math.min(tpm, tb_tokens + (now - last) * tpm / 60000)
      -- A request larger than the whole bucket may still run when the bucket is full, once.
      local need = math.min(est_tokens, tpm)
      if tb_tokens < need then
        local retry = math.ceil((need - tb_tokens) * 60000 / tpm)
        return {"TPM", retry, tpm, math.floor(tb_tokens), retry}
      end
      tb_tokens = tb_tokens - need
      tpm_left = math.floor(tb_tokens)
    end
  end

  local function commit_rate()
    if check_rate then
      if rpm > 0 then
        redis.call("ZADD", rl, now, rid)
        redis.call("PEXPIRE", rl, 61000)
      end
      if tpm > 0 then redis.call("HSET", acct, "tb_tokens", tb_tokens, "tb_ts", now) end
    end
  end

  -- 1) A paid plan that includes the model pays; past the soft cap the fallback model serves.
  local plan = f[9] or ""
  if plan ~= "" and plan ~= "free" and string.find(f[10] or "", "," .. model .. ",", 1, true) then
    commit_rate()
    local served = model
    local cap = tonumber(f[12] or "-1")
    if cap >= 0 and tonumber(f[13] or "0") >= cap then
      local fb = string.match(f[11] or "", "," .. model:gsub("%p", "%%%0") .. "=([^,]+),")
      if fb then served = fb end
    end
    return {"OK", "subscription", max_out, 0, 0, rpm, rpm_left, tpm, tpm_left, plan .. "|" .. served}
  end

  -- 2) Credits: reserve the worst case, lowering max_tokens to what the balance can pay for.
  local available = tonumber(f[2] or "0") - tonumber(f[3] or "0") - reserved
  local worst = input_cost + math.ceil(max_out * out_per_m / 1000000)
  local out = max_out
  if worst > available and available > input_cost and out_per_m > 0 then
    out = math.floor((available - input_cost) * 1000000 / out_per_m)
    if out * out_per_m > (available - input_cost) * 1000000 then out = out - 1 end
    if out > max_out then out = max_out end
    worst = input_cost + math.ceil(out * out_per_m / 1000000)
  end
  if worst <= available and out >= min_out then
    commit_rate()
    redis.call("HSET", holds, rid, worst)
    redis.call("ZADD", holdexp, now + hold_ttl, rid)
    redis.call("HSET", acct, "reserved", reserved + worst)
    return {"OK", "credits", out, worst, available - worst, rpm, rpm_left, tpm, tpm_left, ""}
  end

  -- 3) The free plan's daily allowance, for its models only (a hard cap, priced at list price):
  --    the worst case is held against it like credits, so concurrent calls cannot overshoot.
  local free_left = -1
  if plan == "free" and string.find(f[15] or "", "," .. model .. ",", 1, true) then
    local day = math.floor(now / 86400000)
    local dused = 0
    if tonumber(f[18] or "-1") == day then dused = tonumber(f[17] or "0") end
    local dcap = tonumber(f[16] or "0")
    if dused + dheld + list_worst <= dcap then
      commit_rate()
      redis.call("HSET", holds, "free:" .. rid, list_worst)
      redis.call("ZADD", holdexp, now + hold_ttl, "free:" .. rid)
      redis.call("HSET", acct, "dday", day, "dused", dused, "dheld", dheld + list_worst)
      return {"OK", "free", max_out, 0, 0, rpm, rpm_left, tpm, tpm_left, "free|" .. model}
    end
    free_left = math.max(dcap - dused - dheld, 0)
  end
  return {"NOFUNDS", available, free_left}
end

-- The request id closes every reply, so a pipelining client can tell whose reply it holds.
local reply = run()
reply[#reply + 1] = rid
return reply
