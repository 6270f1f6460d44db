-- Virtual time: when every task waits on a timer, the clock jumps to the
-- next deadline. An hour of backoff and reset timeouts runs at once, with
-- the same order of events as in real time; real I/O still works (and
-- moves the clock at the real speed while it is in flight).
local h = require "helpers"
local sp = require "sprun"

local run = h.run_tasks
local VIRTUAL = { clock = "virtual" }

local function wall_ms(t0)
  return (sp.hrtime() - t0) / 1e6
end

-- One scenario, in units of `u` ms: a worker calls a failing operation
-- through a circuit breaker (failure_threshold 2, reset timeout 6u) and
-- backs off 2u, 4u, 8u between its 4 attempts, as a retry loop does
-- (relative sleeps); a monitor looks at the breaker at 5u, 11u, 17u, 23u
-- (absolute deadlines). Returns the events in order, and their times in
-- units (exact only under a virtual clock). In real time each relative
-- sleep may end late; the order holds while the three of them together
-- are less than 3u late, hence REAL_U below.
--
--   0 attempt 1 fails (closed)        11 monitor: half_open
--   2 attempt 2 fails, opens          14 attempt 4 probes, fails, re-opens
--   5 monitor: open                   17 monitor: open
--   6 attempt 3 rejected (open)       23 monitor: half_open
local SCENARIO = [[
return function(sp, u)
  local log, times = {}, {}
  local t0 = sp.now()
  local function event(name)
    log[#log + 1] = name
    times[#times + 1] = (sp.now() - t0) / u
  end
  local cb = sp.circuit_breaker.start_link{ name = "vt",
    failure_threshold = 2, reset_timeout_ms = 6 * u }
  local policy = sp.retry_policy.new{ max_attempts = 4,
    backoff_ms = { 2 * u, 4 * u, 8 * u }, max_backoff_ms = 8 * u }
  local worker = sp.spawn(function()
    for attempt = 1, 4 do
      local _, err = cb:call(function() return nil, "unavailable" end)
      event("attempt " .. attempt .. " " .. sp.error_kind(err) .. " "
            .. cb:state())
      if policy:should_retry(attempt) then
        sp.sleep(policy:backoff_for_attempt(attempt))
      end
    end
  end)
  local monitor = sp.spawn(function()
    for _, at in ipairs { 5, 11, 17, 23 } do
      sp.sleep(t0 + at * u - sp.now())
      event("monitor " .. cb:state())
    end
  end)
  worker:await()
  monitor:await()
  return log, times
end
]]

local EXPECTED = {
  "attempt 1 unavailable closed", "attempt 2 unavailable open",
  "monitor open", "attempt 3 circuit_open open", "monitor half_open",
  "attempt 4 unavailable open", "monitor open", "monitor half_open",
}

local scenario = assert(loadstring(SCENARIO, "=scenario"))()

-- The unit of the real-time runs: 23 units take 1.15 s, and the sleeps
-- may be 150 ms late in all before the order changes.
local REAL_U = 50

describe("virtual time", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("runs an hour of backoff and reset timeouts at once, in the same "
    .. "order as real time", function()
    local t0 = sp.hrtime()
    local real_log, real_times = run(scenario, sp, REAL_U)
    local real_ms = wall_ms(t0)

    local u = 160000 -- 23 units: 61 minutes and 20 seconds
    t0 = sp.hrtime()
    local v_log, v_times, v_elapsed = run(VIRTUAL, function()
      local start = sp.now()
      local log, times = scenario(sp, u)
      return log, times, sp.now() - start
    end)
    local virtual_ms = wall_ms(t0)

    assert.are.same(EXPECTED, real_log)
    assert.are.same(EXPECTED, v_log)
    -- Exact times under the virtual clock; at least as late in real time.
    assert.are.same({ 0, 2, 5, 6, 11, 14, 17, 23 }, v_times)
    for i, t in ipairs(real_times) do
      assert.is_true(t >= v_times[i], "real event " .. i .. " early")
    end
    assert.are.equal(23 * u, v_elapsed)
    assert.is_true(v_elapsed > 3600000)
    assert.is_true(virtual_ms < 10000, "virtual run took " .. virtual_ms)
    -- (the loop counts whole ms: up to 1 ms less measured with hrtime)
    assert.is_true(real_ms >= 23 * REAL_U - 1, "real run took only "
      .. real_ms)
  end)

  it("a script run by sprun --virtual-time prints what a real-time run "
    .. "prints, at once", function()
    local dir = h.tmpdir()
    local path = h.write_file(dir .. "/scenario.lua",
      "local sp = require 'sprun'\n"
      .. "local scenario = (function() " .. SCENARIO .. " end)()\n"
      .. "local log = scenario(sp, tonumber(arg[1]))\n"
      .. "print(table.concat(log, '\\n'))\n"
      .. "print('virtual ms: ' .. (sp.now() - T0))\n")
    -- Record the start time before anything else runs.
    h.write_file(path, "T0 = require('sprun').now()\n" .. h.read_file(path))
    local real = h.sprun_run { path, tostring(REAL_U) }
    local t0 = sp.hrtime()
    local virtual = h.sprun_run { "--virtual-time", path, "160000" }
    local ms = wall_ms(t0)
    h.rmrf(dir)
    local expected = table.concat(EXPECTED, "\n") .. "\n"
    assert.are.same({ code = 0, stderr = "" },
      { code = real.code, stderr = real.stderr })
    assert.are.equal(expected, real.stdout:match("^(.*\n)virtual ms"))
    assert.are.same({ code = 0, stderr = "",
      stdout = expected .. "virtual ms: 3680000\n" }, virtual)
    assert.is_true(ms < 10000, "took " .. ms .. " ms")
  end)

  it("sprun --virtual-time -e: an hour's sleep prints done at once",
    function()
      local t0 = sp.hrtime()
      local r = h.sprun_run { "--virtual-time", "-e",
        'local sp=require"sprun"; sp.sleep(3600000); print("done")' }
      local ms = wall_ms(t0)
      assert.are.same({ code = 0, stdout = "done\n", stderr = "" }, r)
      assert.is_true(ms < 10000, "took " .. ms .. " ms")
    end)

  it("execute_with_retry backs off an hour in virtual time", function()
    local t0 = sp.hrtime()
    local r = run(VIRTUAL, function()
      local start = sp.now()
      local calls = {}
      local v, err = sp.executor.execute_with_retry(function()
        calls[#calls + 1] = sp.now() - start
        return nil, "unavailable"
      end, { max_attempts = 4, backoff_ms = { 600000, 1200000, 1800000 },
             max_backoff_ms = 3600000 })
      return { v, sp.error_kind(err), calls, sp.now() - start }
    end)
    assert.are.same({ nil, "unavailable", { 0, 600000, 1800000, 3600000 },
      3600000 }, r)
    assert.is_true(wall_ms(t0) < 10000)
  end)

  it("equal deadlines fire in arming order; the clock jumps exactly",
    function()
      local log = run(VIRTUAL, function()
        local log = {}
        local t0 = sp.now()
        local tasks = {}
        for _, name in ipairs { "c", "a", "d", "b" } do
          tasks[#tasks + 1] = sp.spawn(function()
            sp.sleep(3600000)
            log[#log + 1] = name .. "@" .. (sp.now() - t0)
          end)
        end
        sp.sleep(1800000)
        log[#log + 1] = "main@" .. (sp.now() - t0)
        for _, t in ipairs(tasks) do t:await() end
        return log
      end)
      assert.are.same({ "main@1800000", "c@3600000", "a@3600000",
        "d@3600000", "b@3600000" }, log)
    end)

  it("starts at the real monotonic time and gives it back after", function()
    local before = sp.now()
    local inside, jumped = run(VIRTUAL, function()
      local t = sp.now()
      sp.sleep(86400000) -- a day
      return t, sp.now()
    end)
    local after = sp.now()
    assert.is_true(inside >= before and inside - before < 10000)
    assert.are.equal(inside + 86400000, jumped)
    assert.is_true(after >= before and after - before < 10000)
  end)

  it("an await timeout of an hour fires on the virtual clock", function()
    local r = run(VIRTUAL, function()
      local t0 = sp.now()
      local t = sp.spawn(function() sp.sleep(7200000) end)
      local v, err = t:await(3600000)
      return { v, sp.error_kind(err), t:status(), sp.now() - t0 }
    end)
    assert.are.same({ nil, "timeout", "cancelled", 3600000 }, r)
  end)

  it("real I/O works: a process runs inside a virtual run", function()
    local t0 = sp.hrtime()
    local r = run(VIRTUAL, function()
      local v0 = sp.now()
      local log = {}
      local sleeper = sp.spawn(function()
        sp.sleep(600000)
        log[#log + 1] = "slept 10 min"
      end)
      -- Long enough that the child still runs when the wait starts, even
      -- under valgrind (the clock follows real time only while waiting).
      local res = sp.process.run{ "sh", "-c", "sleep 0.3; echo from child" }
      log[#log + 1] = "child: " .. res.stdout:gsub("\n$", "") .. " "
        .. res.code
      local during = sp.now() - v0
      sleeper:await()
      return { log, during >= 250 and during < 5000, sp.now() - v0 }
    end)
    assert.are.same({ { "child: from child 0", "slept 10 min" }, true,
      600000 }, r)
    assert.is_true(wall_ms(t0) < 3000)
  end)
end)

describe("virtual time with live workers", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  -- The demo's pattern: a worker process that stays alive between
  -- requests, a supervisor that sends it work with pauses of minutes (in
  -- units of arg[1] ms), restarts it with a backoff when it crashes, and
  -- guards it with a breaker and a health monitor. Nothing printed
  -- depends on time.
  local SUPERVISOR = [[
local sprun = require "sprun"
local unit = tonumber(arg[1])
local MINUTE = 60 * unit
local WORKER = { "sh", "-c", [=[
while read -r line; do
  case "$line" in
    crash) exit 3 ;;
    *) echo "done $line" ;;
  esac
done]=], stdin = true }
local hm = sprun.health_monitor.start_link { pool = "workers",
  crash_window_ms = 60 * MINUTE, max_crashes = 3 }
local cb = sprun.circuit_breaker.start_link { name = "worker",
  failure_threshold = 2, reset_timeout_ms = 5 * MINUTE }
local worker = assert(sprun.process.spawn(WORKER))
local restarts = 0
local function ask(job)
  worker:write(job .. "\n")
  local line = worker:read_line()
  if line == nil then
    local st = worker:wait()
    hm:record_crash("worker", { reason = "exit " .. tostring(st.code) })
    restarts = restarts + 1
    sprun.sleep(restarts * MINUTE)
    worker = assert(sprun.process.spawn(WORKER))
    return nil, sprun.error("worker_crash", "exit " .. tostring(st.code))
  end
  return line
end
for i, job in ipairs { "a", "b", "crash", "c", "crash", "crash", "d" } do
  local v, err = cb:call(ask, job)
  print(i, job, v or sprun.error_kind(err), cb:state(), hm:is_healthy())
  sprun.sleep(2 * MINUTE)
end
sprun.sleep(10 * MINUTE)
print("end", cb:state(), restarts, hm:stats().crashes_in_window)
worker:close_stdin()
print("worker exit", worker:wait().code)
]]

  it("runs minutes of backoff at once while the worker lives, with the "
     .. "output of a real run", function()
    local script = h.write_file(dir .. "/supervise.lua", SUPERVISOR)
    local real = h.sprun_run { script, "5" }
    local t0 = sp.hrtime()
    local virtual = h.sprun_run { "--virtual-time", script, "60000" }
    local ms = wall_ms(t0)
    assert.are.same({ code = 0, stderr = "" },
                    { code = real.code, stderr = real.stderr })
    assert.are.equal(table.concat({
      "1\ta\tdone a\tclosed\ttrue",
      "2\tb\tdone b\tclosed\ttrue",
      "3\tcrash\tworker_crash\tclosed\ttrue",
      "4\tc\tdone c\tclosed\ttrue",
      "5\tcrash\tworker_crash\tclosed\ttrue",
      "6\tcrash\tworker_crash\topen\tfalse",
      "7\td\tcircuit_open\topen\tfalse",
      "end\thalf_open\t3\t3",
      "worker exit\t0", "" }, "\n"), real.stdout)
    assert.are.same(real, virtual)
    assert.is_true(ms < 1000, ms .. " ms of wall time")
  end)
end)
