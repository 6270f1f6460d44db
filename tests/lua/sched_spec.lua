-- The scheduler: ordering, sleep, await, cancel, errors in tasks, nested
-- tasks, many tasks, and the sprun executable running a script as the main
-- task. Every run is driven synchronously (h.run_tasks checks that the
-- tasks left no handle open); after each test no child process is left.
local h = require "helpers"
local sp = require "sprun"
local sched = require "sprun.sched"

local run = h.run_tasks
local VIRTUAL = { clock = "virtual" }

local function kind(err)
  return sp.error_kind(err)
end

-- Raises "boom" on the line this function is defined on.
local function boom() error("boom") end
local BOOM_LINE = debug.getinfo(boom, "S").linedefined
local SPEC = "sched_spec.lua"

describe("sprun scheduler", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  describe("ordering", function()
    it("starts spawned tasks in spawn order, after the spawner yields",
      function()
        local log = {}
        run(function()
          for i = 1, 5 do
            sp.spawn(function() log[#log + 1] = "t" .. i end)
            log[#log + 1] = "spawned" .. i
          end
          log[#log + 1] = "main yields"
          sp.sleep(0)
          log[#log + 1] = "main resumed"
        end)
        assert.are.same({ "spawned1", "spawned2", "spawned3", "spawned4",
          "spawned5", "main yields", "t1", "t2", "t3", "t4", "t5",
          "main resumed" }, log)
      end)

    it("fires equal deadlines in the order they were armed, not spawned",
      function()
        local log = {}
        run(VIRTUAL, function()
          local t0 = sp.now()
          for i = 1, 5 do
            sp.spawn(function()
              -- Task i arms its second timer at t0 + (6 - i): task 5
              -- first, task 1 last; all for the deadline t0 + 100.
              sp.sleep(6 - i)
              log[#log + 1] = "armed" .. i
              sp.sleep(t0 + 100 - sp.now())
              log[#log + 1] = "fired" .. i .. "@" .. (sp.now() - t0)
            end)
          end
        end)
        assert.are.same({ "armed5", "armed4", "armed3", "armed2", "armed1",
          "fired5@100", "fired4@100", "fired3@100", "fired2@100",
          "fired1@100" }, log)
      end)

    it("fires equal real-time deadlines armed in one turn in arming order",
      function()
        local log = {}
        run(function()
          for i = 1, 8 do
            sp.spawn(function()
              sp.sleep(15)
              log[#log + 1] = i
            end)
          end
        end)
        assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8 }, log)
      end)

    it("fires 2000 random timers by deadline, ties in arming order",
      function()
        local seed = 12345
        local function rand(n)
          seed = (seed * 1103515245 + 12345) % 2147483648
          return seed % n
        end
        local expected, fired = {}, {}
        run(VIRTUAL, function()
          local t0 = sp.now()
          for i = 1, 2000 do
            local ms = rand(50)
            expected[i] = { ms = ms, i = i }
            sp.spawn(function()
              sp.sleep(ms)
              fired[#fired + 1] = i
              assert(sp.now() - t0 == ms, "woke at the wrong time")
            end)
          end
        end)
        table.sort(expected, function(a, b)
          if a.ms ~= b.ms then return a.ms < b.ms end
          return a.i < b.i
        end)
        for k = 1, #expected do expected[k] = expected[k].i end
        assert.are.equal(2000, #fired)
        assert.are.same(expected, fired)
      end)

    it("wakes the awaiters of a task in the order they started waiting",
      function()
        local log = {}
        run(function()
          local target = sp.spawn(function() sp.sleep(10); return "v" end)
          for _, name in ipairs { "c", "a", "b" } do
            sp.spawn(function()
              local v = target:await()
              log[#log + 1] = name .. "=" .. v
            end)
          end
        end)
        assert.are.same({ "c=v", "a=v", "b=v" }, log)
      end)
  end)

  describe("sleep", function()
    it("sleeps at least the time asked in real time", function()
      local elapsed = run(function()
        local t = sp.now()
        sp.sleep(30)
        return sp.now() - t
      end)
      assert.is_true(elapsed >= 30 and elapsed < 5000, "slept " .. elapsed)
    end)

    it("lets other tasks run while one sleeps", function()
      local log = {}
      run(VIRTUAL, function()
        local t0 = sp.now()
        sp.spawn(function()
          sp.sleep(20); log[#log + 1] = "a" .. (sp.now() - t0)
        end)
        sp.spawn(function()
          sp.sleep(10); log[#log + 1] = "b" .. (sp.now() - t0)
          sp.sleep(20); log[#log + 1] = "b" .. (sp.now() - t0)
        end)
        sp.sleep(25); log[#log + 1] = "main" .. (sp.now() - t0)
      end)
      assert.are.same({ "b10", "a20", "main25", "b30" }, log)
    end)

    it("sleep(0) yields to the other ready tasks", function()
      local log = {}
      run(function()
        sp.spawn(function() log[#log + 1] = "other" end)
        log[#log + 1] = "before"
        sp.sleep(0)
        log[#log + 1] = "after"
      end)
      assert.are.same({ "before", "other", "after" }, log)
    end)

    it("rejects a negative or non-number delay", function()
      run(function()
        assert.has_error(function() sp.sleep(-1) end,
          "sprun.sleep: ms must be a number >= 0, got -1")
        local ok, err = pcall(sp.sleep, "5")
        assert.is_false(ok)
        assert.matches("^sprun%.sleep: ms must be a number >= 0, got", err)
      end)
    end)

    it("outside a loop runs one until the sleep is over", function()
      local t = sp.hrtime()
      sp.sleep(20)
      -- The loop's clock counts whole ms (libuv's), so a real sleep may
      -- end up to 1 ms short of 20 ms measured with hrtime.
      local ms = (sp.hrtime() - t) / 1e6
      assert.is_true(ms >= 19 and ms < 5000, "slept " .. ms .. " ms")
      assert.are.equal(0, sched.last_run.handles)
    end)
  end)

  describe("await", function()
    it("returns every value, nils in the middle and at the end", function()
      local n, a, b, c, d = run(function()
        local t = sp.spawn(function() return 1, nil, 3, nil end)
        local function count(...) return select("#", ...), ... end
        return count(t:await())
      end)
      assert.are.equal(4, n)
      assert.are.same({ 1, nil, 3, nil }, { a, b, c, d })
    end)

    it("returns no values for a task that returned none", function()
      local n = run(function()
        local t = sp.spawn(function() sp.sleep(1) end)
        return select("#", t:await())
      end)
      assert.are.equal(0, n)
    end)

    it("returns the same values to every awaiter and on a second await",
      function()
        local got = run(function()
          local t = sp.spawn(function(x, y) sp.sleep(5); return x + y, "s" end,
            2, 3)
          local other = sp.spawn(function() return { t:await() } end)
          local first = { t:await() }
          local second = { t:await() }
          return { first, second, other:await() }
        end)
        assert.are.same({ { 5, "s" }, { 5, "s" }, { 5, "s" } }, got)
      end)

    it("passes the spawn arguments through, nils included", function()
      local got = run(function()
        return { sp.spawn(function(...) return select("#", ...), ... end,
          nil, "b", nil):await() }
      end)
      assert.are.same({ 3, nil, "b", nil }, got)
      assert.are.equal(3, got[1])
    end)

    it("sprun.run returns the main task's values, select('#') kept",
      function()
        local function count(...) return select("#", ...), ... end
        assert.are.same({ 3, nil, false, nil },
          { count(run(function() return nil, false, nil end)) })
        assert.are.equal(0, (count(run(function() end))))
      end)

    it("times out: nil, timeout error, and the task is cancelled and stopped",
      function()
        local log = {}
        local r = run(VIRTUAL, function()
          local t0 = sp.now()
          local t = sp.spawn(function()
            local ok, err = pcall(sp.sleep, 1000)
            log[#log + 1] = "cleanup " .. tostring(ok) .. " " .. kind(err)
            error(err, 0)
          end)
          local v, err = t:await(50)
          log[#log + 1] = "await returned"
          return { v = v, kind = kind(err), ms = err.details.timeout_ms,
                   msg = tostring(err), status = t:status(),
                   elapsed = sp.now() - t0 }
        end)
        assert.are.same({ v = nil, kind = "timeout", ms = 50,
          msg = "timeout: did not finish within 50 ms", status = "cancelled",
          elapsed = 50 }, r)
        assert.are.same({ "cleanup false cancelled", "await returned" }, log)
      end)

    it("a timeout longer than the task returns its values", function()
      local got = run(VIRTUAL, function()
        local t = sp.spawn(function() sp.sleep(10); return "in time" end)
        return { t:await(11) }
      end)
      assert.are.same({ "in time" }, got)
    end)

    it("a timeout due with the task's end: its values, and no stale wake-up",
      function()
        local r = run(VIRTUAL, function()
          local t0 = sp.now()
          local target = sp.spawn(function() sp.sleep(10); return "v" end)
          -- Let the target arm its timer first: both fire at t0 + 10, the
          -- target's first, so it ends before this task sees its timeout.
          sp.sleep(0)
          local v, err = target:await(10)
          local at = sp.now() - t0
          -- A second wake-up left in the queue would end this sleep early.
          sp.sleep(100)
          return { v, err, at, sp.now() - t0 }
        end)
        assert.are.same({ "v", nil, 10, 110 }, r)
      end)

    it("a task cannot await itself", function()
      local msg = run(function()
        local me
        me = sp.spawn(function()
          local ok, err = pcall(function() return me:await() end)
          return ok, err
        end)
        local ok, err = me:await()
        assert.is_false(ok)
        return err
      end)
      assert.matches("task.await: a task cannot await itself", msg, 1, true)
    end)
  end)

  describe("status", function()
    it("goes pending, running, waiting, done", function()
      local seen = {}
      run(function()
        local t
        t = sp.spawn(function()
          seen[#seen + 1] = t:status()
          sp.sleep(5)
        end)
        seen[#seen + 1] = t:status()
        sp.sleep(1)
        seen[#seen + 1] = t:status()
        t:await()
        seen[#seen + 1] = t:status()
      end)
      assert.are.same({ "pending", "running", "waiting", "done" }, seen)
    end)

    it("is failed after an error and cancelled after a cancel", function()
      local st = run(function()
        local a = sp.spawn(function() error("x") end)
        local b = sp.spawn(function() sp.sleep(100) end)
        sp.sleep(1)
        b:cancel()
        a:await(); b:await()
        return { a:status(), b:status() }
      end)
      assert.are.same({ "failed", "cancelled" }, st)
    end)
  end)

  describe("cancel", function()
    it("stops a task blocked in sleep at once; its timer is gone", function()
      local log = {}
      local r = run(VIRTUAL, function()
        local t0 = sp.now()
        local t = sp.spawn(function()
          sp.sleep(10000)
          log[#log + 1] = "after sleep (must not run)"
        end)
        sp.sleep(5)
        local first, second = t:cancel(), t:cancel()
        local v, err = t:await()
        -- The cancelled sleep's timer does not hold the virtual clock:
        -- the run ends at 5 ms, not at 10 s.
        return { first, second, v, kind(err), t:status(), sp.now() - t0 }
      end)
      assert.are.same({ true, false, nil, "cancelled", "cancelled", 5 }, r)
      assert.are.same({}, log)
    end)

    it("stops a real-time sleep of a minute at once", function()
      local t0 = sp.hrtime()
      local st = run(function()
        local t = sp.spawn(function() sp.sleep(60000) end)
        sp.sleep(5)
        t:cancel()
        t:await()
        return t:status()
      end)
      assert.are.equal("cancelled", st)
      assert.is_true((sp.hrtime() - t0) / 1e6 < 10000)
    end)

    it("of a pending task: it never runs", function()
      local ran = false
      local r = run(function()
        local t = sp.spawn(function() ran = true end)
        local c = t:cancel()
        local st = t:status()
        local v, err = t:await()
        return { c, st, v, kind(err) }
      end)
      assert.are.same({ true, "cancelled", nil, "cancelled" }, r)
      assert.is_false(ran)
    end)

    it("of a finished task returns false and changes nothing", function()
      local r = run(function()
        local t = sp.spawn(function() return 7 end)
        local v = t:await()
        return { t:cancel(), t:status(), v, t:await() }
      end)
      assert.are.same({ false, "done", 7, 7 }, r)
    end)

    it("runs the task's cleanups (pcall around the wait) with kind cancelled",
      function()
        local log = {}
        run(function()
          local t = sp.spawn(function()
            local ok, err = pcall(sp.sleep, 1000)
            log[#log + 1] = tostring(ok) .. " " .. kind(err) .. " "
              .. tostring(err)
            error(err, 0)
          end)
          sp.sleep(1)
          t:cancel()
          t:await()
        end)
        assert.matches("^false cancelled cancelled: task %d+ was cancelled$",
          log[1])
        assert.are.equal(1, #log)
      end)

    it("a cancelled task that swallows the cancellation cannot wait again",
      function()
        local r = run(function()
          local t = sp.spawn(function()
            pcall(sp.sleep, 1000)
            -- Any further wait raises the cancellation again.
            local ok, err = pcall(sp.sleep, 1)
            return "swallowed", ok, kind(err)
          end)
          sp.sleep(1)
          t:cancel()
          return { t:await() }
        end)
        -- It returned normally after the cancel: the caller sees its values.
        assert.are.same({ "swallowed", false, "cancelled" }, r)
      end)

    it("of a task already queued to wake: the wake-up raises instead",
      function()
        local log = {}
        run(VIRTUAL, function()
          local victim
          -- The killer's timer is armed first, so at t = 10 it runs first,
          -- while the victim (due at the same time) is already queued.
          sp.spawn(function()
            sp.sleep(10)
            log[#log + 1] = "killer " .. tostring(victim:cancel())
          end)
          victim = sp.spawn(function()
            sp.sleep(10)
            log[#log + 1] = "victim woke (must not happen)"
          end)
          local v, err = victim:await()
          log[#log + 1] = kind(err) .. " " .. victim:status()
        end)
        assert.are.same({ "killer true", "cancelled cancelled" }, log)
      end)

    it("cancels a task blocked in await; the awaited task goes on",
      function()
        local r = run(VIRTUAL, function()
          local inner = sp.spawn(function() sp.sleep(20); return "inner" end)
          local outer = sp.spawn(function() return inner:await() end)
          sp.sleep(5)
          outer:cancel()
          local _, err = outer:await()
          return { kind(err), inner:await(), inner:status() }
        end)
        assert.are.same({ "cancelled", "inner", "done" }, r)
      end)

    it("cancelling a parent cancels its children and grandchildren",
      function()
        local cleaned = {}
        local r = run(function()
          local kids = {}
          local function sleeper(name)
            local ok, err = pcall(sp.sleep, 5000)
            cleaned[#cleaned + 1] = name .. ":" .. kind(err)
            error(err, 0)
          end
          local parent = sp.spawn(function()
            kids.child = sp.spawn(function()
              kids.grandchild = sp.spawn(sleeper, "grandchild")
              sleeper("child")
            end)
            kids.sibling = sp.spawn(sleeper, "sibling")
            sleeper("parent")
          end)
          sp.sleep(5)
          assert(parent:cancel())
          parent:await()
          for _, k in pairs(kids) do k:await() end
          return { parent:status(), kids.child:status(),
                   kids.grandchild:status(), kids.sibling:status() }
        end)
        assert.are.same({ "cancelled", "cancelled", "cancelled",
          "cancelled" }, r)
        table.sort(cleaned)
        assert.are.same({ "child:cancelled", "grandchild:cancelled",
          "parent:cancelled", "sibling:cancelled" }, cleaned)
      end)

    it("cancelling a child leaves its parent running", function()
      local r = run(function()
        local child = sp.spawn(function() sp.sleep(5000) end)
        sp.sleep(1)
        child:cancel()
        local _, err = child:await()
        sp.sleep(1)
        return kind(err) .. ", parent still here"
      end)
      assert.are.equal("cancelled, parent still here", r)
    end)
  end)

  describe("errors in tasks", function()
    it("await gives task_crashed with file:line, the error and a traceback",
      function()
        local v, err = run(function()
          return sp.spawn(boom):await()
        end)
        assert.is_nil(v)
        assert.are.equal("task_crashed", kind(err))
        local where = SPEC .. ":" .. BOOM_LINE .. ": boom"
        assert.are.equal(where, err.details.error:match("[^/]*$"))
        assert.are.equal("task_crashed: " .. err.details.error, tostring(err))
        assert.matches("/" .. where, err.message, 1, true)
        local tb = err.details.traceback
        assert.matches("stack traceback:", tb, 1, true)
        assert.matches(SPEC .. ":" .. BOOM_LINE .. ": in ", tb, 1, true)
        assert.are.equal(1, select(2, tb:gsub("stack traceback:", "")))
      end)

    it("keeps a raised error object as details.error", function()
      local obj = sp.error("unavailable", "down", { n = 1 })
      local err = select(2, run(function()
        return sp.spawn(function() error(obj) end):await()
      end))
      assert.are.equal("task_crashed", kind(err))
      assert.are.equal(obj, err.details.error)
      assert.are.equal("task_crashed: unavailable: down", tostring(err))
    end)

    it("a failing task does not disturb its siblings", function()
      local r = run(function()
        local a = sp.spawn(function() sp.sleep(2); error("a failed") end)
        local b = sp.spawn(function() sp.sleep(5); return "b ok" end)
        local _, ea = a:await()
        return { kind(ea), b:await() }
      end)
      assert.are.same({ "task_crashed", "b ok" }, r)
    end)

    it("sprun.run re-raises the main task's error as it was raised",
      function()
        local ok, err = pcall(sp.run, boom)
        assert.is_false(ok)
        assert.are.equal(SPEC .. ":" .. BOOM_LINE .. ": boom",
          err:match("[^/]*$"))
        assert.are.equal(0, sched.last_run.handles)
        local obj = { custom = true }
        local ok2, err2 = pcall(sp.run, function() sp.sleep(1); error(obj) end)
        assert.is_false(ok2)
        assert.are.equal(obj, err2)
      end)

    it("reports a deadlock instead of hanging", function()
      local ok, err = pcall(sp.run, function()
        local a, b
        a = sp.spawn(function() sp.sleep(1); return b:await() end)
        b = sp.spawn(function() sp.sleep(1); return a:await() end)
        return a:await()
      end)
      assert.is_false(ok)
      assert.are.equal("sprun: deadlock: 3 tasks were waiting with no timer "
        .. "or I/O that could wake them", err)
      assert.are.equal(0, sched.last_run.handles)
    end)
  end)

  describe("many tasks", function()
    it("runs 10,000 tasks to completion with the right results", function()
      local t0 = sp.hrtime()
      local sum, n, statuses = run(function()
        local tasks = {}
        for i = 1, 10000 do
          tasks[i] = sp.spawn(function(x)
            sp.sleep(x % 3)
            return x * 2, x
          end, i)
        end
        local s, count, done = 0, 0, 0
        for i = 1, 10000 do
          local double, x = tasks[i]:await()
          assert(x == i and double == 2 * i, "task " .. i .. " wrong result")
          s = s + double
          count = count + 1
          if tasks[i]:status() == "done" then done = done + 1 end
        end
        return s, count, done
      end)
      assert.are.equal(10000 * 10001, sum)
      assert.are.equal(10000, n)
      assert.are.equal(10000, statuses)
      assert.is_true((sp.hrtime() - t0) / 1e9 < 5)
    end)

    it("runs 10,000 tasks in virtual time on the exact deadlines", function()
      local late, elapsed = run(VIRTUAL, function()
        local t0 = sp.now()
        local wrong = 0
        local tasks = {}
        for i = 1, 10000 do
          tasks[i] = sp.spawn(function()
            sp.sleep(i)
            if sp.now() - t0 ~= i then wrong = wrong + 1 end
          end)
        end
        for i = 1, 10000 do tasks[i]:await() end
        return wrong, sp.now() - t0
      end)
      assert.are.equal(0, late)
      assert.are.equal(10000, elapsed)
    end)
  end)

  describe("misuse", function()
    it("spawn, sleep and await outside a running loop say so", function()
      assert.has_error(function() sp.spawn(function() end) end,
        "sprun.spawn: no loop is running (start one with sprun.run)")
      local t
      run(function() t = sp.spawn(function() sp.sleep(1) end) end)
      assert.are.equal("done", t:status())
      assert.is_nil(t:await())
    end)

  end)
end)

describe("sprun.run inside a running loop", function()
  it("runs fn as a child task and returns its values, nils and all",
    function()
      local r = h.pack(sp.run({ clock = "virtual" }, function()
        local t0 = sp.now()
        local a, b, c, d = sp.run(function(x)
          sp.sleep(1000)
          return x, nil, "c", sched.current() ~= nil
        end, "a")
        return a, b, c, d, sp.now() - t0
      end))
      assert.are.same({ n = 5, "a", nil, "c", true, 1000 }, r)
      h.assert_no_handles()
    end)

  it("raises fn's error as it is, as a run of its own does", function()
    local e = sp.error("boom", "bad")
    local ok, got = pcall(sp.run, function()
      local ok2, err = pcall(sp.run, function() error(e) end)
      return ok2, err
    end)
    assert.is_true(ok)
    assert.are.equal(e, select(2, sp.run(function()
      return pcall(sp.run, function() error(e) end)
    end)))
    assert.is_false(got)
  end)

  it("takes the options that apply: the loop's own clock", function()
    assert.are.equal(42, sp.run({ clock = "virtual" }, function()
      return sp.run({ clock = "virtual" }, function()
        sp.sleep(3600000)
        return 42
      end)
    end))
  end)

  it("is cancelled with its caller", function()
    local inner
    local r = sp.run({ clock = "virtual" }, function()
      local outer = sp.spawn(function()
        return sp.run(function()
          inner = sched.current()
          sp.sleep(60000)
          return "woke"
        end)
      end)
      sp.sleep(10)
      outer:cancel()
      local _, err = outer:await()
      return { sp.error_kind(err), inner:status() }
    end)
    assert.are.same({ "cancelled", "cancelled" }, r)
    h.assert_no_handles()
  end)

  it("from a coroutine of a task's own is misuse", function()
    local ok, msg = sp.run(function()
      local co = coroutine.create(function() return sp.run(function() end) end)
      return coroutine.resume(co)
    end)
    assert.is_false(ok)
    assert.matches("sprun.run: called from a coroutine that is not a sprun "
                   .. "task", msg, 1, true)
  end)
end)

describe("a script written for plain luajit", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  local env = "LUA_PATH=" .. h.shell_quote(h.root .. "/lua/?.lua;"
    .. h.root .. "/lua/?/init.lua;;") .. " LUA_CPATH="
    .. h.shell_quote(h.build .. "/lib/lua/5.1/?.so;;")

  it("prints the same under sprun as under luajit", function()
    local script = h.write_file(dir .. "/plain.lua", [[
local sprun = require "sprun"
print(sprun.run(function()
  local results = sprun.executor.execute_batch({
    function() sprun.sleep(30) return "a" end,
    function() sprun.sleep(10) return "b" end,
  }, { max_concurrency = 2 })
  return results[1].value .. results[2].value
end))
print(sprun.run(function(x) return "second run", x end, 2))
local n = 0
sprun.executor.execute_with_retry(function()
  n = n + 1
  if n < 3 then return nil, "timeout" end
  return true
end, { backoff_ms = { 1 } })
print("attempts", n)
print(pcall(sprun.run, function() error("its error", 0) end))
]])
    local plain = h.run(env .. " luajit " .. h.shell_quote(script))
    local under = h.sprun_run { script }
    assert.are.same({ code = 0, stdout = "ab\nsecond run\t2\nattempts\t3\n"
                      .. "false\tits error\n", stderr = "" }, plain)
    assert.are.same(plain, under)
  end)

  it("with a virtual clock, prints the same under sprun --virtual-time",
    function()
      local script = h.write_file(dir .. "/virtual.lua", [[
local sprun = require "sprun"
print(sprun.run({ clock = "virtual" }, function()
  local t0 = sprun.now()
  sprun.sleep(3600000)
  return sprun.now() - t0
end))
]])
      local plain = h.run(env .. " luajit " .. h.shell_quote(script))
      assert.are.same({ code = 0, stdout = "3600000\n", stderr = "" }, plain)
      assert.are.same(plain, h.sprun_run { "--virtual-time", script })
    end)
end)

describe("sprun executable, scripts as the main task", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function()
    h.rmrf(dir)
    assert.are.same({}, h.live_children())
  end)

  local function script(body)
    return h.write_file(dir .. "/s.lua", body)
  end

  it("top-level sleep and await work", function()
    local r = h.sprun_run { script [[
local sp = require "sprun"
local t0 = sp.now()
sp.sleep(20)
local t = sp.spawn(function(x) sp.sleep(10); return x * 2, "two" end, 21)
local a, b = t:await()
print(a, b, sp.now() - t0 >= 30)
]] }
    assert.are.same({ code = 0, stdout = "42\ttwo\ttrue\n", stderr = "" }, r)
  end)

  it("exits when every task is done, after the main chunk returned",
    function()
      local r = h.sprun_run { script [[
local sp = require "sprun"
sp.spawn(function()
  sp.sleep(30)
  print("late task ran")
  sp.spawn(function() sp.sleep(10); print("grandchild ran") end)
end)
print("main chunk done")
return 3
]] }
      assert.are.same({ code = 3,
        stdout = "main chunk done\nlate task ran\ngrandchild ran\n",
        stderr = "" }, r)
    end)

  it("prints true for sp.now() - t >= 50 after sp.sleep(50)", function()
    local r = h.sprun_run { "-e", 'local sp=require"sprun"; local t=sp.now(); '
      .. 'sp.sleep(50); print(sp.now()-t >= 50)' }
    assert.are.same({ code = 0, stdout = "true\n", stderr = "" }, r)
  end)

  it("an unawaited failing task with a finished parent is reported at once",
    function()
      local path = script [[
local sp = require "sprun"
sp.spawn(function()
  sp.sleep(10)
  error("unawaited boom")
end)
sp.spawn(function()
  sp.sleep(40)
  io.stderr:write("later\n")
end)
]]
      local r = h.sprun_run { path }
      assert.are.equal(0, r.code)
      assert.are.equal("", r.stdout)
      local first, rest = r.stderr:match("^(sprun: task %d+ failed: [^\n]*)\n"
        .. "(.*)$")
      assert.are.equal("sprun: task 2 failed: " .. path .. ":4: unawaited boom",
        first)
      assert.matches("^stack traceback:\n", rest)
      assert.matches(path .. ":4: in function", rest, 1, true)
      assert.matches("\nlater\n$", rest)
    end)

  it("an unawaited failing task is reported when its parent finishes",
    function()
      local path = script [[
local sp = require "sprun"
local parent = sp.spawn(function()
  sp.spawn(function() error("child failed") end)
  sp.sleep(30)
  io.stderr:write("parent finishing\n")
end)
parent:await()
io.stderr:write("main after parent\n")
]]
      local r = h.sprun_run { path }
      assert.are.equal(0, r.code)
      local a, b, c = r.stderr:match("^(parent finishing)\n(sprun: task 3 "
        .. "failed: [^\n]*)\nstack traceback:\n.*\n(main after parent)\n$")
      assert.are.equal("parent finishing", a)
      assert.are.equal("sprun: task 3 failed: " .. path .. ":3: child failed", b)
      assert.are.equal("main after parent", c)
    end)

  it("an awaited failing task is not reported, even awaited after it failed",
    function()
      local r = h.sprun_run { script [[
local sp = require "sprun"
local v, err = sp.spawn(function() error("seen") end):await()
local early = sp.spawn(function() error("failed before the await") end)
sp.sleep(20)
local v2, err2 = early:await()
print(err.kind, early:status(), err2.kind)
]] }
      assert.are.same({ code = 0, stdout = "task_crashed\tfailed\ttask_crashed\n",
        stderr = "" }, r)
    end)

  it("an uncaught error in the main chunk exits 1 with its line", function()
    local path = script [[
local sp = require "sprun"
sp.sleep(1)
error("top-level failure")
]]
    local r = h.sprun_run { path }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: " .. path .. ":3: top-level failure",
      r.stderr:match("^[^\n]*"))
    assert.matches("\nstack traceback:\n", r.stderr, 1, true)
  end)
end)
