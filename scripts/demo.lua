-- sprun demo: a flaky operation behind a circuit breaker, retried with
-- backoff, with its crashes watched by a health monitor.
--
-- Time is simulated (every component takes a `clock` option), so the story
-- of a minute runs in an instant and prints the same every time.
--
--   sprun scripts/demo.lua
local sprun = require "sprun"

local now = 0
local function clock() return now end
local function say(fmt, ...) print(string.format("[t=%6d ms] " .. fmt, now, ...)) end

-- A service that is down between t=1s and t=9s and flaky around it.
local calls = 0
local function flaky_service()
  calls = calls + 1
  if now >= 1000 and now < 9000 then
    return nil, sprun.error("unavailable", "service is down")
  end
  if calls % 4 == 0 then
    return nil, sprun.error("timeout", "no answer in time")
  end
  return "ok #" .. calls
end

print("== circuit breaker ==")
local cb = sprun.circuit_breaker.start_link {
  name = "python_pool", failure_threshold = 3, reset_timeout_ms = 2000,
  half_open_max_calls = 1, clock = clock,
}
local last_state = cb:state()
local function watch()
  local state = cb:state()
  if state ~= last_state then
    say("breaker %s -> %s", last_state:upper(), state:upper())
    last_state = state
  end
end
for _ = 1, 40 do
  watch()
  local value, err = cb:call(flaky_service)
  if value then
    say("call -> %s", value)
  else
    say("call -> %s", tostring(err))
  end
  watch()
  now = now + 500
end
local s = cb:stats()
say("stats: state=%s rejected=%d", s.state, s.rejected_count)

print("\n== retry policy ==")
local policy = sprun.retry_policy.new {
  max_attempts = 5, backoff_ms = { 100, 200, 400, 800 },
  jitter = true, jitter_factor = 0.25, seed = 42,
}
now = 0
local attempt = 1
local fails_left = 3
while true do
  local ok = fails_left == 0
  fails_left = fails_left - 1
  if ok then
    say("attempt %d succeeded", attempt)
    break
  end
  local err = sprun.error("timeout", "attempt failed")
  if not (policy:retry_for_error(err) and policy:should_retry(attempt)) then
    say("attempt %d failed; giving up", attempt)
    break
  end
  local delay = policy:backoff_for_attempt(attempt)
  say("attempt %d failed (%s); retrying in %d ms", attempt, sprun.error_kind(err), delay)
  now = now + delay
  attempt = attempt + 1
end

print("\n== health monitor ==")
now = 0
local hm = sprun.health_monitor.start_link {
  name = "pool_health", pool = "default", crash_window_ms = 10000,
  max_crashes = 3, clock = clock,
}
local reasons = { "segfault", "oom", "segfault", "timeout" }
for i, reason in ipairs(reasons) do
  local worker = "worker_" .. (i % 2 + 1)
  hm:record_crash(worker, { reason = reason })
  local st = hm:stats()
  say("%s crashed (%s): %d in window, healthy=%s", worker, reason,
    st.crashes_in_window, tostring(st.is_healthy))
  now = now + 3000
end
now = now + 10000
local st = hm:stats()
say("later: %d in window, %d in total, healthy=%s", st.crashes_in_window,
  st.total_crashes, tostring(st.is_healthy))
