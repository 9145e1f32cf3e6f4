"""The Lua scripts the Redis store runs: each one check-then-write, atomic on the server.

Each names its KEYS, ARGV and return value. Every key a script touches shares the store's hash
tag (``keys.py``), so each runs on one node of a Redis Cluster too.
"""

from __future__ import annotations

from gateway.quota import CONCURRENT_RETRY_S, MIN_CONCURRENT_RETRY_S

# Compare-and-set of the config.
# KEYS[1]: config hash (fields version, payload). KEYS[2]: change channel.
# ARGV[1]: expected version, or "" for an unconditional write. ARGV[2]: payload.
# Returns {1, new_version} on success, {0, current_version} when ARGV[1] is stale.
PUT_CONFIG = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
local new = current + 1
redis.call('HSET', KEYS[1], 'version', new, 'payload', ARGV[2])
redis.call('PUBLISH', KEYS[2], new)
return {1, new}
"""

# Shared Lua helpers: the clock, dropping lapsed leases, and totalling a backend's leases.
# A backend's leases live in two keys: a sorted set of lease ids scored by expiry (ms, Redis
# server time) and a hash of lease id -> "kv_tokens context tpot_us" (tpot_us -1: none).
_LEASE_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function drop_lapsed(expiry, weights, now)
  local lapsed = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for _, id in ipairs(lapsed) do redis.call('HDEL', weights, id) end
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
end
local function totals(weights, skip)
  local count, kv, ctx, tight = 0, 0, 0, -1
  local found = false
  local fields = redis.call('HGETALL', weights)
  for i = 1, #fields, 2 do
    if fields[i] == skip then
      found = true
    else
      local k, c, p = string.match(fields[i + 1], '(%S+) (%S+) (%S+)')
      count = count + 1
      kv = kv + tonumber(k)
      ctx = ctx + tonumber(c)
      p = tonumber(p)
      if p >= 0 and (tight < 0 or p < tight) then tight = p end
    end
  end
  return count, kv, ctx, tight, found
end
local function hold(expiry, weights, id, weight, now, ttl)
  redis.call('ZADD', expiry, now + ttl, id)
  redis.call('HSET', weights, id, weight)
  redis.call('PEXPIRE', expiry, ttl * 2)
  redis.call('PEXPIRE', weights, ttl * 2)
end
"""

# Admit one lease if the backend, with every replica's leases and this one, passes the VBS
# rule of gateway/state/load.py (``admits``, which this mirrors).
# KEYS[1], KEYS[2]: the backend's lease expiry set and weight hash.
# ARGV: 1 lease id, 2 ttl ms, 3 weight ("kv ctx tpot_us"), 4 max in flight,
#   5 KV capacity (-1: unknown), 6 epsilon, 7 margin, 8..11 ITL a b c d in s ('' if no VBS).
# Returns {admitted, count, kv, ctx, tightest tpot_us (-1: none)} after the decision.
ADMIT_LEASE = (
    _LEASE_LIB
    + """
local now, ttl = now_ms(), tonumber(ARGV[2])
drop_lapsed(KEYS[1], KEYS[2], now)
local count, kv, ctx, tight, renewing = totals(KEYS[2], ARGV[1])
local k, c, p = string.match(ARGV[3], '(%S+) (%S+) (%S+)')
k, c, p = tonumber(k), tonumber(c), tonumber(p)
local held_tight = tight
if p >= 0 and (tight < 0 or p < tight) then tight = p end
local ok = renewing or count + 1 <= tonumber(ARGV[4])
local capacity = tonumber(ARGV[5])
if ok and not renewing and capacity >= 0 and kv + k > capacity then ok = false end
if ok and not renewing and ARGV[8] ~= '' and tight >= 0 then
  local n = count + 1
  local mean = (ctx + c) / n
  local itl = tonumber(ARGV[8]) * n * mean + tonumber(ARGV[9]) * n
    + tonumber(ARGV[10]) * mean + tonumber(ARGV[11])
  if itl < 1e-4 then itl = 1e-4 end
  if tonumber(ARGV[6]) * itl > tonumber(ARGV[7]) * tight / 1e6 then ok = false end
end
if not ok then return {0, count, kv, ctx, held_tight} end
hold(KEYS[1], KEYS[2], ARGV[1], ARGV[3], now, ttl)
return {1, count + 1, kv + k, ctx + c, tight}
"""
)

# Renew a replica's leases and total every named backend.
# KEYS[1]: the store's epoch key; then per backend its lease expiry set and weight hash.
# ARGV[1]: ttl ms. ARGV[2]: the epoch the replica last saw. ARGV[3]: a fresh epoch, used if
#   the key is missing (the store lost its state). ARGV[3 + i]: the replica's leases on
#   backend i, JSON [[id, "weight"], ...].
# A lease is renewed if present; all are registered again when the epoch is not the one the
# replica saw. Returns {epoch, then per backend count, kv, ctx, tightest tpot_us}.
SYNC_LEASES = (
    _LEASE_LIB
    + """
local now, ttl = now_ms(), tonumber(ARGV[1])
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[1], epoch)
end
local register = epoch ~= ARGV[2]
local out = {epoch}
for i = 1, (#KEYS - 1) / 2 do
  local expiry, weights = KEYS[2 * i], KEYS[2 * i + 1]
  drop_lapsed(expiry, weights, now)
  for _, lease in ipairs(cjson.decode(ARGV[3 + i])) do
    if register or redis.call('ZSCORE', expiry, lease[1]) then
      hold(expiry, weights, lease[1], lease[2], now, ttl)
    end
  end
  local count, kv, ctx, tight = totals(weights, '')
  table.insert(out, count)
  table.insert(out, kv)
  table.insert(out, ctx)
  table.insert(out, tight)
end
return out
"""
)

# Totals of one backend's live leases. KEYS[1], KEYS[2]: its expiry set and weight hash.
LOAD_TOTALS = (
    _LEASE_LIB
    + """
drop_lapsed(KEYS[1], KEYS[2], now_ms())
local count, kv, ctx, tight = totals(KEYS[2], '')
return {count, kv, ctx, tight}
"""
)


# Release one lease. KEYS[1], KEYS[2]: the backend's lease expiry set and weight hash.
# ARGV[1]: the lease id. Returns 1 if the lease was held, else 0.
RELEASE_LEASE = """
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# Append predictor samples, keep the newest, refresh the TTL.
# KEYS[1]: the samples list. ARGV[1]: how many to keep. ARGV[2]: TTL s. ARGV[3..]: lines.
# Returns the list's length.
PUSH_SAMPLES = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return redis.call('LLEN', KEYS[1])
"""

# Write one client key record and announce it on the config channel, so that replicas
# refresh their key tables at once (they also poll).
# KEYS[1]: the client keys hash. KEYS[2]: the change channel. ARGV[1]: key id.
# ARGV[2]: the record (JSON). Returns 1.
PUT_KEY = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], 'keys')
return 1
"""

# A tenant's rate-limit buckets (gateway/quota.py, which this mirrors), on the server's clock
# in seconds. KEYS[1]: the tenant's bucket hash (rl, rt: requests level and when; tl, tt:
# tokens). KEYS[2]: its sorted set of concurrent leases by expiry. Absent fields are full
# buckets: each hash expires once both buckets would be full again.
_QUOTA_LIB = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function refill(v, at, cap, rate)
  if not v then return cap end
  return math.min(cap, tonumber(v) + math.max(0, now - tonumber(at)) * rate)
end
local function num(x) return string.format('%.17g', x) end
local function keep_until_full(key, seconds)
  local left = redis.call('PTTL', key)
  local want = math.ceil(seconds * 1000) + 1000
  if left < want then redis.call('PEXPIRE', key, want) end
end
local function fmt(rl, rr, tl, tr, conc)
  local out = {}
  if rl then out[1], out[2] = num(rl), num(rr) else out[1], out[2] = '', '0' end
  if tl then out[3], out[4] = num(tl), num(tr) else out[3], out[4] = '', '0' end
  out[5] = conc
  return out
end
"""

# Admit one request against its tenant's limits, taking a request, its token reservation and
# a concurrent lease at once, or nothing. KEYS[3]: the sorted set of the leases' predicted
# ends, from which a refusal for concurrency says when the soonest slot should free.
# ARGV: 1 requests/s, 2 tokens/min, 3 max concurrent ('' for each limit not set), 4 prompt
#   tokens, 5 tokens to reserve, 6 lease id, 7 lease ttl s, 8 how long the request is
#   predicted to hold its slot, s ('' if not known).
# Returns {admitted, reason ('' or requests|tokens|concurrent|too_large), retry s, requests
#   level, its seconds to full, tokens level, its seconds to full, concurrent} (levels '' for
#   a limit not set).
TAKE_QUOTA = (
    _QUOTA_LIB
    + f"local MIN_CONCURRENT_RETRY_S = {MIN_CONCURRENT_RETRY_S!r}\n"
    + f"local CONCURRENT_RETRY_S = {CONCURRENT_RETRY_S!r}\n"
    + """
local rps, tpm, cmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prompt, need, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local h = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], id)  -- lapsed: its replica stopped renewing it
  redis.call('ZREM', KEYS[3], id)
end
local conc = redis.call('ZCARD', KEYS[2])
local rank = {too_large = 1, concurrent = 2, requests = 3, tokens = 4}
local reason, wait = '', 0
local function refuse(r, w)
  if reason == '' or rank[r] < rank[reason] then reason = r end
  if w > wait then wait = w end
end
local rl, tl, rcap
if rps then
  rcap = math.max(rps, 1)
  rl = refill(h[1], h[2], rcap, rps)
  if rl < 1 then refuse('requests', (1 - rl) / rps) end
end
if tpm then
  tl = refill(h[3], h[4], tpm, tpm / 60)
  if prompt > tpm then refuse('too_large', 0)
  elseif tl < need then refuse('tokens', (need - tl) / (tpm / 60)) end
end
if cmax and conc >= cmax then
  local soonest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if soonest[2] then
    refuse('concurrent', math.max(MIN_CONCURRENT_RETRY_S, tonumber(soonest[2]) - now))
  else
    refuse('concurrent', CONCURRENT_RETRY_S)
  end
end
local ok = reason == ''
if ok then
  if rl then
    rl = rl - 1
    redis.call('HSET', KEYS[1], 'rl', num(rl), 'rt', num(now))
    keep_until_full(KEYS[1], (rcap - rl) / rps)
  end
  if tl then
    tl = tl - need
    redis.call('HSET', KEYS[1], 'tl', num(tl), 'tt', num(now))
    keep_until_full(KEYS[1], (tpm - tl) / (tpm / 60))
  end
  if cmax then
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
    redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 2000))
    local hold = tonumber(ARGV[8])
    if hold then
      redis.call('ZADD', KEYS[3], now + hold, ARGV[6])
      redis.call('PEXPIRE', KEYS[3], math.ceil(ttl * 2000))
    end
    conc = conc + 1
  end
end
if reason == 'too_large' then wait = 0 end
local rr, tr = 0, 0
if rl then rr = math.max(0, (rcap - rl) / rps) end
if tl then tr = math.max(0, (tpm - tl) / (tpm / 60)) end
local out = fmt(rl, rr, tl, tr, conc)
return {ok and 1 or 0, reason, num(wait), out[1], out[2], out[3], out[4], out[5]}
"""
)

# A tenant's buckets now, taking nothing. ARGV: 1 requests/s, 2 tokens/min ('' if not set).
# Returns {requests level, its seconds to full, tokens level, its seconds to full, concurrent}.
QUOTA_USAGE = (
    _QUOTA_LIB
    + """
local rps, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local h = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')
local conc = redis.call('ZCOUNT', KEYS[2], '(' .. num(now), '+inf')
local rl, tl, rr, tr = nil, nil, 0, 0
if rps then
  rl = refill(h[1], h[2], math.max(rps, 1), rps)
  rr = math.max(0, (math.max(rps, 1) - rl) / rps)
end
if tpm then
  tl = refill(h[3], h[4], tpm, tpm / 60)
  tr = math.max(0, (tpm - tl) / (tpm / 60))
end
return fmt(rl, rr, tl, tr, conc)
"""
)

# One replica's settlements since its last call, and the renewal of its concurrent leases.
# KEYS[1]: the sorted set of replicas by when last seen; then per tenant its bucket hash,
#   lease set and set of the leases' predicted ends. ARGV: 1 replica id, 2 lease ttl s,
#   3 replica ttl s; then per tenant 4 values: tokens/min ('' if not set), tokens to give
#   back (negative: owed), lease ids ended and lease ids to renew (each space-separated).
# Returns how many replicas were seen within the replica ttl, this one included.
SETTLE_QUOTA = (
    _QUOTA_LIB
    + """
local ttl, replica_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, (#KEYS - 1) / 3 do
  local quota, leases, ends = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local base = 3 + 4 * (i - 1)
  local tpm, refund = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  for id in string.gmatch(ARGV[base + 3], '%S+') do
    redis.call('ZREM', leases, id)
    redis.call('ZREM', ends, id)
  end
  local renewed = false
  for id in string.gmatch(ARGV[base + 4], '%S+') do
    redis.call('ZADD', leases, 'XX', now + ttl, id)
    renewed = true
  end
  if renewed then
    redis.call('PEXPIRE', leases, math.ceil(ttl * 2000))
    if redis.call('EXISTS', ends) == 1 then redis.call('PEXPIRE', ends, math.ceil(ttl * 2000)) end
  end
  if tpm and refund ~= 0 then
    local h = redis.call('HMGET', quota, 'tl', 'tt')
    local tl = math.min(tpm, refill(h[1], h[2], tpm, tpm / 60) + refund)
    if tl < tpm then
      redis.call('HSET', quota, 'tl', num(tl), 'tt', num(now))
      keep_until_full(quota, (tpm - tl) / (tpm / 60))
    else
      redis.call('HDEL', quota, 'tl', 'tt')
    end
  end
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - replica_ttl)
redis.call('PEXPIRE', KEYS[1], math.ceil(replica_ttl * 2000))
return redis.call('ZCARD', KEYS[1])
"""
)
