-- Soak: a million protected calls, then a check that none was lost and
-- that memory stayed flat. Run by `make soak` (not by `make test`):
--
--   build/sprun scripts/soak.lua [calls] [breakers] [in_flight] [seed]
--
-- Each call is executor.execute_with_protection (retry around a breaker)
-- of executor.execute_with_timeout (a child task with a per-call timeout)
-- of an operation that, drawn from a seeded generator, returns at once,
-- fails by return (retried), raises (not retried) or sleeps past its
-- timeout (cancelled, then retried). A pool of `in_flight` worker tasks
-- keeps that many calls going; breakers 1..90% of them fail rarely, the
-- rest fail often enough to open, so calls are also rejected.
--
-- Printed: calls/s; latency, as per-call wall time through the protection
-- for calls whose operation returned at once (so it is the protection's
-- cost plus the time spent waiting behind the other calls in flight),
-- and the same with one call in flight (the protection's own cost);
-- peak RSS (VmHWM) and RSS after warm-up (the first 10% of calls) vs at
-- the end. Exits 1 with a message when a call ended twice or never, when
-- the breakers' counts disagree with what the calls saw, when a task was
-- left over, or when RSS grew past 10% + 8 MiB of the warm-up figure.
local sprun = require "sprun"
local ffi = require "ffi"

local ex = sprun.executor
local hrtime = sprun.hrtime
local random = math.random
local floor = math.floor

local CALLS = tonumber(arg and arg[1]) or 1000000
local BREAKERS = tonumber(arg and arg[2]) or 100
local IN_FLIGHT = tonumber(arg and arg[3]) or 1000
local SEED = tonumber(arg and arg[4]) or 20240601
local TIMEOUT_MS = 10
local OVERHEAD_CALLS = 100000

-- The RSS rule: the end may exceed the warm-up figure by this much.
local RSS_GROWTH = 0.10
local RSS_SLACK_KB = 8 * 1024

local function fail(msg)
  io.stderr:write("soak: FAILED: ", msg, "\n")
  os.exit(1)
end

local function status_kb(field)
  local f = assert(io.open("/proc/self/status", "r"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB"))
end

--- Latency histogram: fixed memory, 1% relative resolution ------------------
-- Bucket k holds durations in [1.01^k, 1.01^(k+1)) ns.

local NBUCKETS = 2400               -- 1.01^2400 ns is about 6.5 hours
local LOG_STEP = math.log(1.01)

local function histogram()
  return { counts = ffi.new("uint32_t[?]", NBUCKETS), n = 0 }
end

local function record(hist, ns)
  local k = 0
  if ns >= 1 then
    k = floor(math.log(ns) / LOG_STEP)
    if k >= NBUCKETS then k = NBUCKETS - 1 end
  end
  hist.counts[k] = hist.counts[k] + 1
  hist.n = hist.n + 1
end

-- The p-th percentile in microseconds (the upper bound of its bucket).
local function percentile(hist, p)
  local want = math.ceil(hist.n * p / 100)
  local seen = 0
  for k = 0, NBUCKETS - 1 do
    seen = seen + hist.counts[k]
    if seen >= want then
      return 1.01 ^ (k + 1) / 1000
    end
  end
  return 0 / 0
end

--- The operation --------------------------------------------------------------

math.randomseed(SEED)

local breakers = {}
local bad_from = floor(BREAKERS * 0.9) + 1
for b = 1, BREAKERS do
  breakers[b] = sprun.circuit_breaker.start_link {
    name = "soak-" .. b, failure_threshold = 5, reset_timeout_ms = 20,
  }
end

local policy = sprun.retry_policy.new {
  max_attempts = 2, backoff_ms = { 1 },
  retriable_errors = { "timeout", "unavailable" }, seed = SEED,
}
local PROTECT = { policy = policy }
local TIMEOUT = { timeout_ms = TIMEOUT_MS }
local UNAVAILABLE = sprun.error("unavailable", "try again")

-- 1 while every attempt of call i returned at once: its latency is that
-- of the protection alone (plus waiting behind the calls in flight).
local quick = ffi.new("uint8_t[?]", CALLS + 1)
local admitted = 0          -- attempts the breakers let through

-- The operation of call i on breaker b: mostly immediate.
local function operation(i, bad)
  local r = random()
  local fail_p = bad and 0.45 or 0.02
  if r < fail_p then
    quick[i] = 0                   -- retried after a backoff
    return nil, UNAVAILABLE
  elseif r < fail_p + 0.01 then
    quick[i] = 0
    error("operation " .. i .. " raised", 0)
  elseif r < fail_p + 0.011 then
    quick[i] = 0
    sprun.sleep(1000)              -- far past the timeout: cancelled
    return "too late"
  end
  return i
end

local function timed(i, bad)
  admitted = admitted + 1
  return ex.execute_with_timeout(operation, TIMEOUT, i, bad)
end

--- The run ------------------------------------------------------------------

local ended = ffi.new("uint8_t[?]", CALLS + 1)
local outcomes = { ok = 0 }
local loaded = histogram()
local alone = histogram()
local next_call, completed = 1, 0
local warm_rss, rss_min, rss_max = nil, nil, nil
local warm_at = floor(CALLS / 10)
local sample_every = math.max(1, floor(CALLS / 100))

local function one_call(i, hist)
  local b = (i - 1) % BREAKERS + 1
  quick[i] = 1
  local t0 = hrtime()
  local v, err = ex.execute_with_protection(breakers[b], timed, PROTECT, i,
                                            b >= bad_from)
  local ns = hrtime() - t0
  if v == i then
    outcomes.ok = outcomes.ok + 1
  else
    local kind = sprun.error_kind(err)
    outcomes[kind] = (outcomes[kind] or 0) + 1
  end
  if v == i and quick[i] == 1 then
    record(hist, ns)
  end
end

local function worker()
  while next_call <= CALLS do
    local i = next_call
    next_call = i + 1
    one_call(i, loaded)
    ended[i] = ended[i] + 1
    completed = completed + 1
    if completed % sample_every == 0 then
      local rss = status_kb("VmRSS")
      if completed == warm_at or (warm_rss == nil and completed > warm_at)
      then
        warm_rss, rss_min, rss_max = rss, rss, rss
      elseif warm_rss then
        rss_min, rss_max = math.min(rss_min, rss), math.max(rss_max, rss)
      end
    end
  end
end

local wall0 = hrtime()
local workers = {}
for w = 1, IN_FLIGHT do
  workers[w] = sprun.spawn(worker)
end
for w = 1, IN_FLIGHT do
  local _, err = workers[w]:await()
  if err then
    fail("worker " .. w .. " failed: " .. tostring(err))
  end
end
local secs = (hrtime() - wall0) / 1e9
local end_rss = status_kb("VmRSS")

-- The protection's own cost: one call in flight, an immediate operation.
-- These are extra calls (numbered past CALLS), not part of the count.
local quick_op = function(i) return i end
local overhead_cb = sprun.circuit_breaker.start_link { name = "alone" }
local function alone_call(i)
  return ex.execute_with_timeout(quick_op, TIMEOUT, i)
end
for i = 1, OVERHEAD_CALLS do
  local t0 = hrtime()
  local v = ex.execute_with_protection(overhead_cb, alone_call, PROTECT, i)
  record(alone, hrtime() - t0)
  if v ~= i then
    fail("an immediate call returned " .. tostring(v))
  end
end

--- The report -------------------------------------------------------------

local lost, twice = 0, 0
for i = 1, CALLS do
  if ended[i] == 0 then lost = lost + 1 end
  if ended[i] > 1 then twice = twice + 1 end
end

local kinds = {}
local total = 0
for k, n in pairs(outcomes) do
  kinds[#kinds + 1] = k
  total = total + n
end
table.sort(kinds)

local recorded, rejected, ignored = 0, 0, 0
for b = 1, BREAKERS do
  local s = breakers[b]:stats()
  recorded = recorded + s.total_successes + s.total_failures
  rejected = rejected + s.rejected_count
  ignored = ignored + s.ignored_count
end

print(("soak: %d calls over %d breakers, %d in flight, seed %d"):format(
  CALLS, BREAKERS, IN_FLIGHT, SEED))
print(("  wall time        %.1f s, %.0f calls/s"):format(secs, CALLS / secs))
local parts = {}
for _, k in ipairs(kinds) do
  parts[#parts + 1] = ("%s %d"):format(k, outcomes[k])
end
print("  outcomes         " .. table.concat(parts, ", "))
print(("  breakers         %d attempts admitted = %d recorded + %d ignored "
  .. "(late); %d rejected"):format(admitted, recorded, ignored, rejected))
print(("  latency          p50 %.1f us, p99 %.1f us: per-call wall time "
  .. "through the protection, immediate operations, %d in flight (%d calls)")
  :format(percentile(loaded, 50), percentile(loaded, 99), IN_FLIGHT,
          loaded.n))
print(("  overhead         p50 %.1f us, p99 %.1f us: the same with one call "
  .. "in flight (%d extra calls)"):format(percentile(alone, 50),
                                           percentile(alone, 99),
                                           alone.n))
print(("  RSS              peak %.1f MiB; after warm-up %.1f MiB, at the end "
  .. "%.1f MiB (min %.1f, max %.1f after warm-up)"):format(
  status_kb("VmHWM") / 1024, warm_rss / 1024, end_rss / 1024,
  rss_min / 1024, rss_max / 1024))

if lost > 0 or twice > 0 or completed ~= CALLS or total ~= CALLS then
  fail(("%d calls never ended, %d ended more than once (%d completed, %d "
    .. "outcomes, %d submitted)"):format(lost, twice, completed, total,
                                          CALLS))
end
if admitted ~= recorded + ignored then
  fail(("the breakers admitted %d attempts but recorded %d and ignored %d")
    :format(admitted, recorded, ignored))
end
if rejected ~= (outcomes.circuit_open or 0) then
  fail(("the breakers rejected %d attempts but %d calls ended circuit_open")
    :format(rejected, outcomes.circuit_open or 0))
end
local live = 0
for _ in pairs(require("sprun.sched.kernel").tasks()) do
  live = live + 1
end
if live ~= 1 then
  fail(("%d tasks are left besides the main one"):format(live - 1))
end
if end_rss > warm_rss * (1 + RSS_GROWTH) + RSS_SLACK_KB then
  fail(("RSS grew from %.1f MiB after warm-up to %.1f MiB at the end")
    :format(warm_rss / 1024, end_rss / 1024))
end
print("soak: ok")
return 0
