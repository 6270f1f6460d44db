-- What the scheduler's fast paths must not change: reused coroutines
-- carry nothing from one task to the next; execute_with_timeout and
-- execute_batch run an operation inline until it waits, then as a real,
-- cancellable task; a cancellation during the inline part is seen as an
-- await would see it; equal deadlines keep the order of arming; the
-- collector's pause comes back after bulk work; and the timer calls of the
-- loop binding (sp_lua_timer_*: ids in timer events, batched timer events,
-- reserved places among equal deadlines). Every run checks that no handle
-- is left.
local h = require "helpers"
local sp = require "sprun"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local core = require "sprun.core"
local ffi = require "ffi"
local C = require("sprun.ffi").C

local ex = sp.executor
local run = h.run_tasks
local VIRTUAL = { clock = "virtual" }

local function kind(err)
  return sp.error_kind(err)
end

local function pack(...)
  return { n = select("#", ...), ... }
end

describe("reused coroutines", function()
  it("are reused: tasks that run one after another share one", function()
    local a, b = run(function()
      local co1 = sp.spawn(function() return coroutine.running() end):await()
      local co2 = sp.spawn(function() return coroutine.running() end):await()
      return co1, co2
    end)
    assert.are.equal("thread", type(a))
    assert.are.equal(a, b)
  end)

  it("a task that raised leaves no coroutine behind for the next one",
    function()
      local r = run(function()
        local t1 = sp.spawn(function()
          local co = coroutine.running()
          error({ co = co })
        end)
        local _, err = t1:await()
        local dead = err.details.error.co
        local co2, x = sp.spawn(function(v)
          return coroutine.running(), v
        end, "fresh"):await()
        return { coroutine.status(dead), dead ~= co2, x }
      end)
      assert.are.same({ "dead", true, "fresh" }, r)
    end)

  it("a cancelled task's coroutine is not reused, and the next task runs "
     .. "clean", function()
    local r = run(VIRTUAL, function()
      local seen
      local victim = sp.spawn(function()
        seen = coroutine.running()
        sp.sleep(1000)
      end)
      sp.sleep(1)
      victim:cancel()
      local _, err = victim:await()
      local co, cancelled = sp.spawn(function()
        local me = sched.current()
        sp.sleep(1)
        return coroutine.running(), kernel.is_cancelled(me)
      end):await()
      return { kind(err), co ~= seen, cancelled == false,
               coroutine.status(seen) }
    end)
    assert.are.same({ "cancelled", true, true, "dead" }, r)
  end)

  it("a task that swallowed its cancellation hands over a clean coroutine",
    function()
      local r = run(VIRTUAL, function()
        local t = sp.spawn(function()
          pcall(sp.sleep, 1000)
          return "swallowed"
        end)
        sp.sleep(1)
        t:cancel()
        local v = t:await()
        -- The next task may get that coroutine: it is not cancelled.
        local ok, slept = sp.spawn(function()
          local ok = pcall(sp.sleep, 5)
          return ok, "slept"
        end):await()
        return { v, ok, slept }
      end)
      assert.are.same({ "swallowed", true, "slept" }, r)
    end)

  it("a task that never started (cancelled while pending) leaves nothing "
     .. "behind", function()
    local r = run(function()
      local ran = false
      local t = sp.spawn(function() ran = true end)
      t:cancel()
      local v = sp.spawn(function(x) return x * 2 end, 21):await()
      return { t:status(), ran, v }
    end)
    assert.are.same({ "cancelled", false, 42 }, r)
  end)

  it("a job that replaced its thread's environment does not pass it on",
    function()
      local r = run(function()
        local sandbox = setmetatable({}, { __index = _G })
        local t1 = sp.spawn(function()
          setfenv(0, sandbox)
          return getfenv(0) == sandbox
        end)
        local inside = t1:await()
        local after = sp.spawn(function()
          return getfenv(0) == sandbox, loadstring("return x_unset")()
        end)
        local leaked, x = after:await()
        return { inside, leaked, x }
      end)
      assert.are.same({ true, false }, { r[1], r[2] })
      assert.is_nil(r[3])
    end)

  it("passes the arguments of every arity, nils included, and more than "
     .. "three values back", function()
    local r = run(function()
      local out = {}
      for n = 0, 6 do
        local args = {}
        for i = 1, n do args[i] = (i % 2 == 0) and i or nil end
        local t = sp.spawn(function(...) return select("#", ...), ... end,
                           unpack(args, 1, n))
        out[#out + 1] = pack(t:await())
      end
      return out
    end)
    for n = 0, 6 do
      local got = r[n + 1]
      assert.are.equal(n + 1, got.n)
      assert.are.equal(n, got[1])
      for i = 1, n do
        assert.are.equal((i % 2 == 0) and i or nil, got[i + 1])
      end
    end
  end)

  it("keeps the traceback of a failed task free of the scheduler's frames",
    function()
      local _, err = run(function()
        return sp.spawn(function() error("deep") end):await()
      end)
      local tb = err.details.traceback
      assert.truthy(tb:find("sched_reuse_spec.lua", 1, true))
      assert.is_nil(tb:find("sprun/sched/", 1, true))
    end)
end)

describe("execute_with_timeout's inline run", function()
  it("makes no task and arms no timer for an operation that returns",
    function()
      local r = run(function()
        local S = kernel.state()
        local before = S.ntokens
        local seen_timers
        local a, b = ex.execute_with_timeout(function(x, y)
          seen_timers = S.loop:timer_count()
          return x + y, "sum"
        end, { timeout_ms = 50 }, 40, 2)
        return { a, b, seen_timers, S.ntokens - before, S.live }
      end)
      -- Only the main task is alive and has a token.
      assert.are.same({ 42, "sum", 0, 0, 1 }, r)
    end)

  it("becomes a child task when the operation waits: the same task before "
     .. "and after, its parent the caller", function()
    local r = run(VIRTUAL, function()
      local me = sched.current()
      local before, after, parent_ok
      local v = ex.execute_with_timeout(function()
        before = sched.current()
        sp.sleep(10)
        after = sched.current()
        parent_ok = before[4] == me
        return "woke"
      end, { timeout_ms = 100 })
      return { v, before == after, parent_ok, before:status() }
    end)
    assert.are.same({ "woke", true, true, "done" }, r)
  end)

  it("times out an operation that first returns quickly, then waits",
    function()
      local r = run(VIRTUAL, function()
        local t0 = sp.now()
        local calls = 0
        local function op()
          calls = calls + 1
          if calls > 1 then
            sp.sleep(1000)
          end
          return calls
        end
        local first = ex.execute_with_timeout(op, { timeout_ms = 20 })
        local v, err = ex.execute_with_timeout(op, { timeout_ms = 20 })
        return { first, v, kind(err), sp.now() - t0 }
      end)
      assert.are.same({ 1, nil, "timeout", 20 }, r)
    end)

  it("an operation that sleeps exactly the timeout times out, as when its "
     .. "timeout was armed first", function()
    local r = run(VIRTUAL, function()
      local _, err = ex.execute_with_timeout(function()
        sp.sleep(30)
        return "late"
      end, { timeout_ms = 30 })
      local in_time = ex.execute_with_timeout(function()
        sp.sleep(29)
        return "in time"
      end, { timeout_ms = 30 })
      return { kind(err), in_time }
    end)
    assert.are.same({ "timeout", "in time" }, r)
  end)

  it("a cancellation of the caller made by the operation, which returns, "
     .. "raises in the caller", function()
    local r = run(function()
      local caller
      caller = sp.spawn(function()
        local ok, err = pcall(ex.execute_with_timeout, function()
          caller:cancel()
          return "returned"
        end, { timeout_ms = 100 })
        return ok, kind(err)
      end)
      -- It caught the cancellation (so it ends done, with what it caught).
      local ok, caught = caller:await()
      return { ok, caught, caller:status() }
    end)
    assert.are.same({ false, "cancelled", "done" }, r)
  end)

  it("a cancellation of the caller made by the operation before it waits "
     .. "cancels the operation too", function()
    local log = {}
    run(VIRTUAL, function()
      local caller
      caller = sp.spawn(function()
        ex.execute_with_timeout(function()
          caller:cancel()
          local ok, err = pcall(sp.sleep, 1000)
          log[#log + 1] = "op: " .. tostring(ok) .. " " .. kind(err)
          error(err, 0)
        end, { timeout_ms = 5000 })
        log[#log + 1] = "caller went on (must not happen)"
      end)
      local _, err = caller:await()
      log[#log + 1] = "caller: " .. kind(err)
    end)
    assert.are.same({ "op: false cancelled", "caller: cancelled" }, log)
  end)

  it("a caller cancelled while the operation waits cancels it for real",
    function()
      local r = run(VIRTUAL, function()
        local op_saw
        local caller = sp.spawn(function()
          return ex.execute_with_timeout(function()
            local ok, err = pcall(sp.sleep, 1000)
            op_saw = kind(err)
            error(err, 0)
          end, { timeout_ms = 5000 })
        end)
        sp.sleep(10)
        caller:cancel()
        local _, err = caller:await()
        return { kind(err), op_saw, sp.now() }
      end)
      assert.are.same({ "cancelled", "cancelled" }, { r[1], r[2] })
    end)

  it("an operation that calls coroutine.yield itself gives task_crashed",
    function()
      local _, err = run(function()
        return ex.execute_with_timeout(function()
          coroutine.yield("stray")
        end, { timeout_ms = 100 })
      end)
      assert.are.equal("task_crashed", err.kind)
      assert.matches("called coroutine%.yield outside a sprun wait",
                     err.message)
    end)

  it("an operation that raises after it waited gives task_crashed with "
     .. "its traceback", function()
    local _, err = run(VIRTUAL, function()
      return ex.execute_with_timeout(function()
        sp.sleep(5)
        error("after the wait")
      end, { timeout_ms = 100 })
    end)
    assert.are.equal("task_crashed", err.kind)
    assert.matches("after the wait", err.message)
    assert.truthy(err.details.traceback:find("sched_reuse_spec.lua", 1,
                                             true))
  end)

  it("nests deeper than the inline limit", function()
    local depth = 40
    local r = run(VIRTUAL, function()
      local function nest(k)
        if k == 0 then
          sp.sleep(1)
          return "bottom"
        end
        return ex.execute_with_timeout(nest, { timeout_ms = 1000 }, k - 1)
      end
      return nest(depth)
    end)
    assert.are.equal("bottom", r)
  end)

  it("an operation that spawns and returns leaves its child running",
    function()
      local r = run(VIRTUAL, function()
        local child
        local v = ex.execute_with_timeout(function()
          child = sp.spawn(function() sp.sleep(10); return "child" end)
          return "op"
        end, { timeout_ms = 100 })
        return { v, child:await() }
      end)
      assert.are.same({ "op", "child" }, r)
    end)
end)

describe("execute_batch's group", function()
  it("times out each item on its own deadline, with one timer", function()
    local r = run(VIRTUAL, function()
      local t0 = sp.now()
      local delays = { 5, 50, 10, 80, 1 }
      local fns = {}
      for i, d in ipairs(delays) do
        fns[i] = function() sp.sleep(d); return d end
      end
      local res = ex.execute_batch(fns, { timeout_ms = 20,
                                          max_concurrency = 2 })
      local out = {}
      for i = 1, #res do
        out[i] = res[i].ok and res[i].value or kind(res[i].error)
      end
      return { out, sp.now() - t0 }
    end)
    -- 5 and 50 start at 0; 10 at 5 (done 15); 50 times out at 20; 80
    -- starts at 15 and times out at 35; 1 starts at 20, done 21.
    assert.are.same({ 5, "timeout", 10, "timeout", 1 }, r[1])
    assert.are.equal(35, r[2])
  end)

  it("an item that sleeps exactly the timeout times out", function()
    local res = run(VIRTUAL, function()
      return ex.execute_batch({
        function() sp.sleep(30) return "late" end,
        function() sp.sleep(29) return "in time" end,
      }, { timeout_ms = 30 })
    end)
    assert.are.equal("timeout", kind(res[1].error))
    assert.are.equal("in time", res[2].value)
  end)

  it("keeps every value of every item, inline or not, and its own list",
    function()
      local res = run(VIRTUAL, function()
        return ex.execute_batch({
          function() return 1, nil, 3, nil, 5 end,
          function() sp.sleep(1); return nil, nil, "x", nil, nil end,
          function() return end,
          function() sp.sleep(1) end,
          function() return nil, "failed" end,
          function() sp.sleep(1); error("raised") end,
        })
      end)
      assert.are.same({ n = 5, 1, nil, 3, nil, 5 },
                      { n = res[1].n, unpack(res[1].values, 1, 5) })
      assert.are.equal(5, res[2].n)
      assert.are.equal("x", res[2].values[3])
      assert.are.same({ true, 0 }, { res[3].ok, res[3].n })
      assert.are.same({ true, 0 }, { res[4].ok, res[4].n })
      assert.are_not.equal(res[3].values, res[4].values)
      assert.are.same({ false, "failed" }, { res[5].ok, res[5].error })
      assert.are.equal("task_crashed", kind(res[6].error))
    end)

  it("a swallowed cancellation at the timeout still gives a timeout",
    function()
      local res = run(VIRTUAL, function()
        return ex.execute_batch({
          function()
            pcall(sp.sleep, 1000)
            return "swallowed"
          end,
        }, { timeout_ms = 10 })
      end)
      assert.are.equal("timeout", kind(res[1].error))
    end)
end)

describe("bulk work and the collector", function()
  it("sets the pause back after a task spawned thousands at once", function()
    local before = collectgarbage("setpause", 175)
    local during
    run(function()
      local tasks = {}
      for i = 1, 5000 do tasks[i] = sp.spawn(function() end) end
      during = collectgarbage("setpause", 175)
      collectgarbage("setpause", during)
      sp.sleep(0)
      for i = 1, #tasks do tasks[i]:await() end
    end)
    local after = collectgarbage("setpause", before)
    assert.is_true(during > 175)
    assert.are.equal(175, after)
  end)

  it("sets the pause back after a large batch, and after one cut short",
    function()
      local before = collectgarbage("setpause", 180)
      local fns = {}
      for i = 1, 5000 do fns[i] = function() return i end end
      local res = ex.execute_batch(fns, { max_concurrency = 100 })
      assert.are.equal(5000, #res)
      assert.are.equal(180, collectgarbage("setpause", 180))
      run(VIRTUAL, function()
        local t = sp.spawn(function()
          local slow = {}
          for i = 1, 5000 do slow[i] = function() sp.sleep(1000) end end
          return ex.execute_batch(slow, { max_concurrency = 10 })
        end)
        sp.sleep(1)
        t:cancel()
        t:await()
      end)
      local after = collectgarbage("setpause", before)
      assert.are.equal(180, after)
    end)
end)

describe("sprun.core timers", function()
  local function recorder(batch)
    local r = { ev = {} }
    r.loop = core.loop_new(true, function(token, kind_, a, b, data, list)
      r.ev[#r.ev + 1] = { token = token, type = kind_, a = a, b = b,
                          list = list and { unpack(list, 1, 2 * a) } }
    end, batch)
    r.h = ffi.cast("void *", r.loop:handle())
    return r
  end

  -- The scheduler's timer calls on the loop of `r` (seq: -1 for none).
  local function add(r, deadline, token, seq)
    return C.sp_lua_timer_add(r.h, deadline, token, seq or -1)
  end

  local function after(r, ms, token, seq)
    return C.sp_lua_timer_after(r.h, ms, token, seq or -1)
  end

  it("a timer event carries the timer's id", function()
    local r = recorder(false)
    local now = r.loop:now()
    local id1 = add(r, now + 5, 7)
    local id2 = after(r, 5, 8)
    while r.loop:step(false) do end
    r.loop:close()
    assert.are.same({ { 7, id1 }, { 8, id2 } },
                    { { r.ev[1].token, r.ev[1].b },
                      { r.ev[2].token, r.ev[2].b } })
  end)

  it("with batch_timers, the timers of a step come in one call, in order; "
     .. "a lone one as itself", function()
    local r = recorder(true)
    local now = r.loop:now()
    local ids = {}
    for i = 1, 3 do ids[i] = add(r, now + 10, 100 + i) end
    local lone = add(r, now + 20, 200)
    while r.loop:step(false) do end
    r.loop:close()
    assert.are.equal(2, #r.ev)
    assert.are.equal(core.EV_TIMERS, r.ev[1].type)
    assert.are.equal(3, r.ev[1].a)
    assert.are.same({ 101, ids[1], 102, ids[2], 103, ids[3] }, r.ev[1].list)
    assert.are.same({ core.EV_TIMER, 200, lone },
                    { r.ev[2].type, r.ev[2].token, r.ev[2].b })
  end)

  it("a reserved place fires before the timers of its deadline armed "
     .. "after the reservation", function()
    local r = recorder(false)
    local now = r.loop:now()
    add(r, now + 10, 1)
    local seq = C.sp_lua_timer_reserve(r.h)
    add(r, now + 10, 2)
    after(r, 10, 3, seq)
    add(r, now + 5, 4)
    while r.loop:step(false) do end
    local order = {}
    for i, e in ipairs(r.ev) do order[i] = e.token end
    -- A seq never handed out is refused.
    local code = add(r, now + 1, 5, 1e9)
    local code_after = after(r, 1, 5, 1e9)
    r.loop:close()
    assert.are.same({ 4, 1, 3, 2 }, order)
    assert.are.equal("EINVAL", core.uv_err_name(code))
    assert.are.equal("EINVAL", core.uv_err_name(code_after))
  end)
end)

describe("the loop a run leaves with nothing in it", function()
  it("is kept for the next real-time run; between runs sprun.now() reads "
     .. "the real clock", function()
    local h1, h2
    sp.run(function() h1 = kernel.state().loop end)
    local t1 = sp.now()
    os.execute("sleep 0.05")
    assert.is_true(sp.now() - t1 >= 50)
    sp.run(function()
      h2 = kernel.state().loop
      -- Its clock is brought up to date when the run starts.
      assert.is_true(sp.now() - t1 >= 50)
    end)
    assert.are.equal(h1, h2)
    -- A virtual run has a loop of its own.
    local hv
    sp.run(VIRTUAL, function() hv = kernel.state().loop end)
    assert.are_not.equal(h1, hv)
  end)

  it("is not kept when the run leaves a child's watchdog: the next run "
     .. "makes a new loop", function()
    local h1, h2
    sp.run(function()
      h1 = kernel.state().loop
      assert(sp.process.run { "true" })
    end)
    h.assert_no_handles()
    sp.run(function() h2 = kernel.state().loop end)
    assert.are_not.equal(h1, h2)
  end)
end)

describe("the state a run leaves with nothing in it", function()
  it("is taken back by the next real-time run, each run with an identity "
     .. "of its own", function()
    local s1, s2, id1, id2
    sp.run(function() s1, id1 = kernel.state(), kernel.running() end)
    sp.run(function() s2, id2 = kernel.state(), kernel.running() end)
    assert.are.equal(s1, s2)
    assert.are_not.equal(id1, id2)
    assert.is_nil(kernel.running())
    -- A virtual run has a state of its own.
    local sv
    sp.run(VIRTUAL, function() sv = kernel.state() end)
    assert.are_not.equal(s1, sv)
  end)

  it("starts clean after a run whose main task raised", function()
    assert.has_error(function()
      sp.run(function()
        sp.spawn(function() sp.sleep(10) end)
        error("first run fails", 0)
      end)
    end, "first run fails")
    local s = kernel.state
    local r = run(function()
      local st = s()
      return { st.live, st.main_failed, st.stop_status, st.idepth,
               sp.spawn(function(x) return x + 1 end, 41):await() }
    end)
    -- live counts the main task only.
    assert.are.same({ 1, false, false, 0, 42 }, r)
  end)

  it("never gives an earlier run's task token to a new task: cancelling a "
     .. "finished task from an earlier run touches nothing", function()
    local old = sp.run(function()
      local t = sp.spawn(function() return "old" end)
      t:await()
      return t
    end)
    local r = run(function()
      local t = sp.spawn(function() sp.sleep(20) return "new" end)
      old:cancel()
      return { t:await(), old:status() }
    end)
    assert.are.same({ "new", "done" }, r)
  end)

  it("keeps a health monitor's cleanup to the run that armed it: the next "
     .. "run arms its own", function()
    local m = sp.health_monitor.start_link {
      name = "reuse_hm", pool = "p", crash_window_ms = 30,
      check_interval_ms = 10 }
    local armed = {}
    for i = 1, 2 do
      sp.run(function()
        m:record_crash("w" .. i)
        -- The cleanup is a background timer of this run (an I/O token).
        armed[i] = next(kernel.state().io_tokens) ~= nil
      end)
    end
    assert.are.same({ true, true }, armed)
    h.assert_no_handles()
  end)
end)
