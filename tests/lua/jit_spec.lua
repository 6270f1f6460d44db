-- The hot paths stay JIT-compiled: each loop below is recorded as a trace
-- with no abort, no NYI and no stitching.
--
-- Each loop is compiled from source twice. The first copy runs a few times
-- with the JIT off for it, which warms what it calls (FFI symbols resolved,
-- tables filled). Then every trace is flushed, so that hot counts start
-- afresh, and the second copy, new bytecode, runs while jit.v is logging;
-- its loop is recorded then. The operations are made outside the chunks, so
-- that both copies share them.
local sprun = require "sprun"
local jit_v = require "jit.v"

local WARM_UP = 100
local ITERATIONS = 20000

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs `src`, a chunk called as (iterations, ...), to warm up and then under
-- jit.v; returns the result of the measured run and the log.
local function traced(name, src, ...)
  local warm = assert(loadstring(src, "=" .. name .. "_warm"))
  jit.off(warm)
  warm(WARM_UP, ...)
  jit.flush()
  -- A finalizer run while a trace is recorded aborts it: run them now.
  collectgarbage()
  collectgarbage()
  local measured = assert(loadstring(src, "=" .. name))
  local path = os.tmpname()
  jit_v.start(path)
  local result = measured(ITERATIONS, ...)
  jit_v.off()
  local log = read(path)
  os.remove(path)
  return result, log
end

-- Fails on a trace of the measured loop (its root trace or a side trace of
-- it) that aborted, on any stitch or blacklisting in the log, on any NYI
-- but one, and when the loop was not compiled at all.
--
-- The one: a function called from the loop while the loop is still
-- interpreted may get hot first and start a trace at its entry. If it runs
-- under pcall, or returns through a vararg frame, that trace cannot return
-- below its root ("NYI: return to lower frame", LuaJIT 2.1) and is dropped.
-- That is how LuaJIT finds the loop, not a fault of the loop: the loop's
-- own trace takes the function in. Were it to happen so often that LuaJIT
-- gave up on the function, the log would say "blacklisted", which fails.
-- So may the function holding the loop, whose entry trace then gives up
-- where it reaches the loop ("inner loop in root trace"), or leaves it.
-- Likewise a side trace of such a function that runs into the loop and
-- gives up there ("loop unroll limit reached") is not counted.
local function assert_compiled(name, log)
  local mine, traces = {}, 0
  for line in log:gmatch("[^\n]+") do
    -- "[TRACE 3 name:4 loop]", "[TRACE 5 (3/2) file:9 -> 3]",
    -- "[TRACE --- file:9 -- why]", "[TRACE --- (3/2) file:9 -- why]"
    local head, body = line:match("^%[TRACE%s+(%S+) (.*)%]$")
    local parent, start = (body or ""):match("^%((%d+)/%d+%) (.*)$")
    start = start or body or ""
    if head ~= "---" and parent == nil
      and start:find("^" .. name .. ":%d+ loop$") then
      mine[head] = true
      traces = traces + 1
    elseif head ~= "---" and parent and mine[parent] then
      mine[head] = true
    elseif head ~= "---" and parent == nil
      and start:find(" tail%-recursion$") then
      -- LuaJIT may find the loop as a tail recursion in the code it calls
      -- (the retry loop's attempts), and compile the measured loop into
      -- side traces of that, linked back to it.
      mine[head] = true
      traces = traces + 1
    end
    local entry_root = head == "---" and parent == nil
      and ((start:find("^%S+ %-%- NYI: return to lower frame") ~= nil
            and not start:find("^" .. name .. ":%d+ %-%- NYI"))
           or start:find("^%S+ %-%- inner loop in root trace") ~= nil
           or start:find("^%S+ %-%- leaving loop in root trace") ~= nil)
    local aborted = head == "---" and not entry_root
      and (start:find(name .. ":", 1, true) == 1
           or (parent ~= nil and mine[parent] == true))
    -- jit.v's own code (v.lua) may be traced while it logs; those traces
    -- are the logger's, not the measured loop's.
    local logger = start:find("^v%.lua:%d") ~= nil
    local bad = not logger and (aborted or line:find("stitch", 1, true)
      or (line:find("NYI", 1, true) and not entry_root)
      or line:find("abort", 1, true) or line:find("blacklist", 1, true))
    assert.is_true(not bad, "in the trace log: " .. line)
  end
  assert.is_true(traces >= 1, "no trace of the " .. name .. " loop in:\n"
                 .. log)
end

describe("hot paths under the JIT", function()
  it("are checked by a test that can fail: a NYI in a loop is caught",
    function()
      -- A loop that cannot be compiled (a new closure per iteration is
      -- NYI), to prove the check below can fail.
      local _, log = traced("probe", [[
        local n, sum = ..., 0
        for i = 1, n do
          local f = function() return i end
          sum = sum + f()
        end
        return sum
      ]])
      local ok, err = pcall(assert_compiled, "probe", log)
      assert.is_false(ok)
      -- The NYI may end the root trace or a side trace of it.
      assert.matches("in the trace log: %[TRACE %-%-%- [^%]]-probe:%d+ %-%- NYI",
                     tostring(type(err) == "table" and err.message or err))
    end)

  it("circuit_breaker.call on a closed breaker", function()
    local cb = sprun.circuit_breaker.start_link { name = "hot" }
    local function op() return 1 end
    local function op2(a, b) return a, b end
    local sum, log = traced("closed", [[
      local n, cb, op, op2 = ...
      local sum = 0
      for i = 1, n do
        local r = cb:call(op)
        local a, b = cb:call(op2, i, 2)
        sum = sum + r + a + b
      end
      return sum
    ]], cb, op, op2)
    assert.are.equal(ITERATIONS * 3 + ITERATIONS * (ITERATIONS + 1) / 2,
                     sum)
    assert_compiled("closed", log)
    assert.are.same({ "closed", 0 }, { cb:state(), cb:stats().failure_count })
  end)

  it("circuit_breaker.call rejected by an open breaker", function()
    local cb = sprun.circuit_breaker.start_link { name = "hot",
      failure_threshold = 1, reset_timeout_ms = 3600000 }
    cb:record_failure()
    local function op() return 1 end
    local rejected, log = traced("open", [[
      local n, cb, op = ...
      local rejected = 0
      for i = 1, n do
        local r, err = cb:call(op)
        if r == nil and err.kind == "circuit_open" then
          rejected = rejected + 1
        end
      end
      return rejected
    ]], cb, op)
    assert.are.equal(ITERATIONS, rejected)
    assert_compiled("open", log)
    assert.are.equal(WARM_UP + ITERATIONS, cb:stats().rejected_count)
  end)

  it("retry_policy.backoff_for_attempt and should_retry", function()
    local p = sprun.retry_policy.new { max_attempts = 4, jitter = true,
                                       seed = 1 }
    local total, log = traced("retry", [[
      local n, p = ...
      local total = 0
      for i = 1, n do
        local attempt = i % 6 + 1
        if p:should_retry(attempt) then
          total = total + p:backoff_for_attempt(attempt)
        end
      end
      return total
    ]], p)
    assert.is_true(total > 0)
    assert_compiled("retry", log)
  end)

  it("health_monitor.record_crash and is_healthy", function()
    local hm = sprun.health_monitor.start_link { max_crashes = 1000000 }
    hm:record_crash("w1")
    hm:record_crash("w2")
    local healthy, log = traced("health", [[
      local n, hm = ...
      local info = { reason = "segfault" }
      local healthy = 0
      for i = 1, n do
        hm:record_crash(i % 2 == 0 and "w1" or "w2", info)
        if hm:is_healthy() then healthy = healthy + 1 end
      end
      return healthy
    ]], hm)
    assert.are.equal(ITERATIONS, healthy)
    assert_compiled("health", log)
    assert.are.equal(2 + WARM_UP + ITERATIONS, hm:stats().total_crashes)
  end)
  it("circuit_breaker.call on a breaker in an upvalue", function()
      local cb = sprun.circuit_breaker.start_link { name = "hot" }
      local function op() return 1 end
      local sum, log = traced("upvalue", [[
        local n, cb, op = ...
        local function loop(k)
          local sum = 0
          for _ = 1, k do sum = sum + cb:call(op) end
          return sum
        end
        return loop(n)
      ]], cb, op)
      assert.are.equal(ITERATIONS, sum)
      assert_compiled("upvalue", log)
      assert.are.equal(WARM_UP + ITERATIONS, cb:stats().total_successes)
    end)

  it("executor.execute_with_retry: a first success, and one after 2 "
     .. "failures with zero backoff", function()
    local p = sprun.retry_policy.new { max_attempts = 3, backoff_ms = { 0 },
                                       retriable_errors = "all" }
    local ERR = { kind = "io", message = "flaky" }
    local calls = 0
    local function ok() return 1 end
    local function flaky()
      calls = calls + 1
      if calls % 3 ~= 0 then
        return nil, ERR
      end
      return 1
    end
    sprun.run(function()
      local src = [[
        local n, retry, p, op = ...
        local sum = 0
        for _ = 1, n do sum = sum + retry(op, p) end
        return sum
      ]]
      local first, log = traced("retry_first", src,
                                sprun.executor.execute_with_retry, p, ok)
      assert.are.equal(ITERATIONS, first)
      assert_compiled("retry_first", log)
      local third, log2 = traced("retry_third", src,
                                 sprun.executor.execute_with_retry, p, flaky)
      assert.are.equal(ITERATIONS, third)
      assert_compiled("retry_third", log2)
    end)
    assert.are.equal(3 * (WARM_UP + ITERATIONS), calls)
  end)

  it("a telemetry event with no handler", function()
    local telemetry = sprun.telemetry
    local sum, log = traced("emit", [[
      local n, telemetry = ...
      local enabled, emit = telemetry.enabled, telemetry.emit
      local EVENT = "snakepit.circuit_breaker.opened"
      local sum = 0
      for i = 1, n do
        sum = sum + i
        if enabled[EVENT] then
          emit(EVENT, { failure_count = i }, { pool = "hot" })
        end
      end
      return sum
    ]], telemetry)
    assert.are.equal(ITERATIONS * (ITERATIONS + 1) / 2, sum)
    assert_compiled("emit", log)
  end)
  it("a pipeline of retry, breaker and bulkhead", function()
    local p = sprun.pipeline { name = "hot", retry = { max_attempts = 3 },
      breaker = { failure_threshold = 5 },
      bulkhead = { max_concurrent = 10, max_queue = 10 } }
    local function op(x) return x end
    sprun.run(function()
      local sum, log = traced("pipeline", [[
        local n, p, op = ...
        local sum = 0
        for i = 1, n do sum = sum + p:execute(op, i) end
        return sum
      ]], p, op)
      assert.are.equal(ITERATIONS * (ITERATIONS + 1) / 2, sum)
      assert_compiled("pipeline", log)
    end)
    assert.are.equal(WARM_UP + ITERATIONS,
                     p:breaker():stats().total_successes)
  end)
end)
