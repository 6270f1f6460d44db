-- The hot paths of the core objects, each next to the bare operation it
-- wraps: the breaker's call and rejection, the retry wrapper, the health
-- monitor with 10,000 crashes in its window, and a telemetry event with no
-- handler.
--
-- Each loop is compiled afresh for its case (see `fresh`): a function that
-- gets hot on its own is blacklisted by LuaJIT once its traces abort, and
-- would slow every later case that calls it. The objects a loop uses are
-- locals of the loop's function, as in any hot loop written for LuaJIT:
-- LuaJIT then keeps their lookups out of the loop. The breaker is also
-- measured through an upvalue, where it is looked up at every call, which is
-- the cost of a single call made from elsewhere.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"
local ex = sprun.executor
local telemetry = sprun.telemetry

-- A new function from `src`, called with the given values.
local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

local ZERO = { bytes = 0 }

print("-- bare operations")
local bare = H.case("bare call of an operation returning at once", 1e7, fresh [[
  local function op() return true end
  return function(n)
    local f = op
    for _ = 1, n do f() end
  end
]])
local empty_loop = H.case("empty loop", 1e7, fresh [[
  return function(n)
    local s = 0
    for i = 1, n do s = s + i end
    return s
  end
]])

print("-- circuit breaker")
local cb = sprun.circuit_breaker.start_link { name = "bench_closed" }
local CALL = [[
  local cb = ...
  local function op() return true end
  return function(n)
    local b = cb
    for _ = 1, n do b:call(op) end
  end
]]
H.case("breaker call, closed", 1e7, fresh(CALL, cb), bare,
       { over = 5, bytes = 0 })
H.case("breaker call, closed, breaker in an upvalue", 1e7, fresh([[
  local cb = ...
  local function op() return true end
  return function(n)
    for _ = 1, n do cb:call(op) end
  end
]], cb), bare, { over = 5, bytes = 0 })
telemetry.attach("bench", { "snakepit", "circuit_breaker", "call", "success" },
                 fresh "return function() end")
H.case("breaker call, closed, a handler on call.success", 1e6, fresh(CALL, cb),
       bare)
telemetry.detach("bench")

local open = sprun.circuit_breaker.start_link {
  name = "bench_open", failure_threshold = 1, reset_timeout_ms = 3600000,
}
open:record_failure()
assert(open:state() == "open")
H.case("breaker rejection, open", 1e7, fresh(CALL, open), bare,
       { over = 5, bytes = 0 })

print("-- retry")
local policy = sprun.retry_policy.new { max_attempts = 3, backoff_ms = { 0 },
                                        retriable_errors = "all" }
H.case("execute_with_retry, first attempt succeeds", 1e7, fresh([[
  local ex, policy = ...
  local function op() return true end
  return function(n)
    local retry, p = ex.execute_with_retry, policy
    for _ = 1, n do retry(op, p) end
  end
]], ex, policy), bare, { over = 20, bytes = 0 })
H.case("execute_with_retry, succeeds after 2 failures", 1e6, fresh([[
  local ex, policy = ...
  local ERR = { kind = "io", message = "flaky" }
  local calls = 0
  local function op()
    calls = calls + 1
    if calls % 3 ~= 0 then
      return nil, ERR
    end
    return true
  end
  return function(n)
    local retry, p = ex.execute_with_retry, policy
    for _ = 1, n do retry(op, p) end
  end
]], ex, policy), bare, { over = 300 })

print("-- health monitor")
local RECORD = [[
  local hm = ...
  return function(n)
    local m = hm
    for _ = 1, n do m:record_crash("w1") end
  end
]]
local QUERY = [[
  local hm = ...
  return function(n)
    local m, s = hm, 0
    for _ = 1, n do if m:is_healthy() then s = s + 1 end end
    return s
  end
]]
-- The same two calls on a monitor holding 10 crashes and on one holding
-- 10,000: the cost must not depend on it. A window of an hour keeps every
-- crash in it, and the ring holds exactly that many: once it is full, each
-- record_crash replaces the oldest crash, so the count stays put.
for _, crashes in ipairs { 10, 10000 } do
  local hm = sprun.health_monitor.start_link {
    crash_window_ms = 3600000, max_crashes = crashes,
  }
  for i = 1, crashes do
    hm:record_crash("w" .. (i % 100))
  end
  local with = string.format(", %d crashes in the window", crashes)
  H.case("health record_crash" .. with, 1e6, fresh(RECORD, hm), bare,
         { ns = 20, bytes = 0 })
  H.case("health is_healthy" .. with, 1e7, fresh(QUERY, hm), bare,
         { ns = 20, bytes = 0 })
end

print("-- telemetry")
H.case("event with no handler (emit site)", 1e7, fresh([[
  local telemetry = ...
  local OPENED = "snakepit.circuit_breaker.opened"
  return function(n)
    local enabled, emit = telemetry.enabled, telemetry.emit
    local s = 0
    for i = 1, n do
      s = s + i
      if enabled[OPENED] then
        emit(OPENED, { failure_count = i }, { pool = "bench" })
      end
    end
    return s
  end
]], telemetry), empty_loop, { over = 1, bytes = 0 })
