-- sprun.executor: retry, circuit breaker, timeout, batches, protection and
-- async tasks, with the seed's Executor examples in Lua. Timing is checked
-- exactly in virtual time; the process test uses real time (a child's exit
-- is real I/O).
local sprun = require "sprun"
local sched = require "sprun.sched"
local errors = require "sprun.errors"
local circuit_breaker = require "sprun.circuit_breaker"
local retry_policy = require "sprun.retry_policy"
local helpers = require "helpers"

local ex = sprun.executor

-- Runs fn as the main task of a virtual-time loop; returns its values.
local function vrun(fn, ...)
  return sprun.run({ clock = "virtual" }, fn, ...)
end

-- Every spec that ran a loop ends here: nothing may be left open.
local function assert_no_handles()
  assert.are.equal(0, sched.last_run.handles)
  assert.is_nil(sched.running())
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- The state letter of /proc/<pid>/stat ("S", "Z", ...), or nil once the
-- process is gone (exited and reaped).
local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if f == nil then
    return nil
  end
  local line = f:read("*l")
  f:close()
  return line and line:match("^%d+ %b() (%a)")
end

-- Waits (up to about `ms`) until the process no longer runs: gone, or a
-- zombie. Returns its last state.
local function wait_stopped(pid, ms)
  local deadline = sprun.hrtime() + ms * 1e6
  local st = proc_state(pid)
  while st ~= nil and st ~= "Z" and sprun.hrtime() < deadline do
    os.execute("sleep 0.02")
    st = proc_state(pid)
  end
  return st
end

describe("executor", function()
  describe("the seed's examples", function()
    it("execute_with_retry: max_attempts = 3, backoff_ms = {100, 200, 400}",
      function()
        local calls, at = 0, {}
        local result, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local function external_api_call()
            calls = calls + 1
            at[calls] = sprun.now() - t0
            if calls < 3 then
              return nil, sprun.error("unavailable", "try later")
            end
            return "answer"
          end
          local r, e = ex.execute_with_retry(external_api_call,
            { max_attempts = 3, backoff_ms = { 100, 200, 400 } })
          return r, e, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("answer", result)
        assert.is_nil(err)
        assert.are.equal(3, calls)
        assert.are.same({ 0, 100, 300 }, at)
        assert.are.equal(300, elapsed)
      end)

    it("execute_with_circuit_breaker(circuit_breaker, risky_operation)",
      function()
        local circuit_breaker_ = sprun.circuit_breaker.start_link {
          name = "python_pool", failure_threshold = 2,
          reset_timeout_ms = 30000,
        }
        local fail = true
        local function risky_operation()
          if fail then return nil, sprun.error("unavailable", "down") end
          return "risky result"
        end
        local seen = vrun(function()
          local out = {}
          for i = 1, 3 do
            local result, err = ex.execute_with_circuit_breaker(
              circuit_breaker_, risky_operation)
            out[i] = result or sprun.error_kind(err)
          end
          out[4] = circuit_breaker_:state()
          sprun.sleep(30000)
          fail = false
          out[5] = ex.execute_with_circuit_breaker(circuit_breaker_,
            risky_operation)
          out[6] = circuit_breaker_:state()
          return out
        end)
        assert_no_handles()
        assert.are.same({ "unavailable", "unavailable", "circuit_open",
          "open", "risky result", "closed" }, seen)
      end)

    it("execute_with_timeout(slow_operation, timeout_ms = 5000)", function()
      local function slow_operation(ms)
        sprun.sleep(ms)
        return "done after " .. ms
      end
      local r = vrun(function()
        local out = {}
        local t0 = sprun.now()
        out.fast = ex.execute_with_timeout(slow_operation,
          { timeout_ms = 5000 }, 4999)
        out.fast_at = sprun.now() - t0
        t0 = sprun.now()
        out.slow, out.err = ex.execute_with_timeout(slow_operation,
          { timeout_ms = 5000 }, 60000)
        out.slow_at = sprun.now() - t0
        return out
      end)
      assert_no_handles()
      assert.are.equal("done after 4999", r.fast)
      assert.are.equal(4999, r.fast_at)
      assert.is_nil(r.slow)
      assert.are.equal("timeout", r.err.kind)
      assert.are.equal("did not finish within 5000 ms", r.err.message)
      assert.are.equal(5000, r.err.details.timeout_ms)
      assert.are.equal(5000, r.slow_at)
    end)

    it("execute_batch of op1, op2, op3 with timeout_ms = 10000, "
       .. "max_concurrency = 4", function()
      local function op1() sprun.sleep(300) return "one" end
      local function op2() sprun.sleep(100) return nil, "op2 failed" end
      local function op3() error("op3 raised", 0) end
      local results, elapsed = vrun(function()
        local t0 = sprun.now()
        local r = ex.execute_batch({
          function() return op1() end,
          function() return op2() end,
          function() return op3() end,
        }, { timeout_ms = 10000, max_concurrency = 4 })
        return r, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal(3, #results)
      assert.are.same({ ok = true, values = { "one" }, n = 1, value = "one" },
                      results[1])
      assert.are.same({ ok = false, error = "op2 failed" }, results[2])
      assert.is_false(results[3].ok)
      assert.are.equal("task_crashed", results[3].error.kind)
      assert.are.equal("op3 raised", results[3].error.details.error)
      -- All three ran at once: the batch took as long as the slowest.
      assert.are.equal(300, elapsed)
    end)
  end)

  describe("execute_with_retry", function()
    local function unavailable() return sprun.error("unavailable", "down") end

    it("sleeps exactly the backoff between attempts, in virtual time",
      function()
        local at = {}
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local r, e = ex.execute_with_retry(function()
            at[#at + 1] = sprun.now() - t0
            return nil, unavailable()
          end, { max_attempts = 4, backoff_ms = { 100, 250, 1000 } })
          return r, e, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.same({ 0, 100, 350, 1350 }, at)
        assert.are.equal(1350, elapsed)
        assert.are.equal("unavailable", err.kind)
      end)

    it("stops at max_attempts, the last delay repeating", function()
      local calls = 0
      local _, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local r, e = ex.execute_with_retry(function()
          calls = calls + 1
          return nil, unavailable()
        end, { max_attempts = 6, backoff_ms = { 100, 200, 400 } })
        return r, e, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal(6, calls)
      assert.are.equal(100 + 200 + 400 + 400 + 400, elapsed)
      assert.is_true(err.details.retries_exhausted)
      assert.are.equal(6, err.details.attempts)
    end)

    it("calls once when max_attempts = 1", function()
      local calls = 0
      local _, err = vrun(function()
        return ex.execute_with_retry(function()
          calls = calls + 1
          return nil, unavailable()
        end, { max_attempts = 1 })
      end)
      assert_no_handles()
      assert.are.equal(1, calls)
      assert.is_true(err.details.retries_exhausted)
      assert.are.equal(1, err.details.attempts)
    end)

    it("marks the last error with retries_exhausted and attempts, keeping "
       .. "its kind, message, cause and details", function()
      local cause = sprun.error("io", "socket reset")
      local n = 0
      local _, err = vrun(function()
        return ex.execute_with_retry(function()
          n = n + 1
          return nil, sprun.error("timeout", "attempt " .. n,
                                  { host = "db" }, cause)
        end, { max_attempts = 3, backoff_ms = { 1 } })
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      assert.are.equal("attempt 3", err.message)
      assert.are.equal(cause, err.cause)
      assert.are.same({ host = "db", retries_exhausted = true, attempts = 3 },
                      err.details)
      assert.are.equal("timeout: attempt 3", tostring(err))
      assert.is_true(errors.is_error(err))
    end)

    it("leaves an error object the operation keeps returning unmarked",
      function()
        local DOWN = sprun.error("unavailable", "down", { code = 503 })
        local _, err = ex.execute_with_retry(function() return nil, DOWN end,
          { max_attempts = 2, backoff_ms = { 0 } })
        assert_no_handles()
        assert.is_true(err.details.retries_exhausted)
        assert.are.equal(503, err.details.code)
        assert.are.same({ code = 503 }, DOWN.details)
        -- A later non-retriable return of the same object is not marked.
        local _, err2 = ex.execute_with_retry(function() return nil, DOWN end,
          { retriable_errors = { "timeout" } })
        assert.are.equal(DOWN, err2)
        assert.is_nil(err2.details.retries_exhausted)
      end)

    it("returns a non-retriable error at once, unchanged", function()
      local calls = 0
      local bad = sprun.error("invalid_input", "no such user")
      local r, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_retry(function()
          calls = calls + 1
          return nil, bad
        end, { max_attempts = 5, backoff_ms = { 100 } })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal(1, calls)
      assert.are.equal(0, elapsed)
      assert.are.equal(bad, err)
      assert.is_nil(err.details)
    end)

    it("retries string errors by kind and returns the last one as it is",
      function()
        local calls = 0
        local r, err = ex.execute_with_retry(function()
          calls = calls + 1
          return nil, "timeout"
        end, { max_attempts = 3, backoff_ms = { 0 } })
        assert_no_handles()
        assert.is_nil(r)
        assert.are.equal(3, calls)
        assert.are.equal("timeout", err)
      end)

    it("counts a raised error as a failure of kind 'error', not retried by "
       .. "default", function()
      local calls = 0
      local r, err = vrun(function()
        return ex.execute_with_retry(function()
          calls = calls + 1
          error("kaboom", 0)
        end, { max_attempts = 3 })
      end)
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal(1, calls)
      assert.are.equal("error", sprun.error_kind(err))
      assert.are.equal("kaboom", err.message)
      assert.are.equal("kaboom", err.details.value)
    end)

    it("retries raised errors when told to, and keeps a raised error "
       .. "object's kind", function()
      local calls = 0
      local r, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_retry(function()
          calls = calls + 1
          if calls == 1 then error({ code = 7 }) end
          error(sprun.error("timeout", "raised " .. calls))
        end, { max_attempts = 3, backoff_ms = { 10, 20 },
               retriable_errors = "all" })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal(3, calls)
      assert.are.equal(30, elapsed)
      assert.are.equal("timeout", err.kind)
      assert.are.equal("raised 3", err.message)
      assert.is_true(err.details.retries_exhausted)
      assert.are.equal(3, err.details.attempts)
    end)

    it("returns the first success's values unchanged, nils included",
      function()
        local calls = 0
        local res = pack(vrun(function()
          return ex.execute_with_retry(function()
            calls = calls + 1
            if calls < 2 then return nil, "timeout" end
            return nil, nil, 3, false, nil
          end, { backoff_ms = { 5 } })
        end))
        assert_no_handles()
        assert.are.equal(2, calls)
        assert.are.same({ n = 5, nil, nil, 3, false, nil }, res)
        -- No values and a lone false are successes too.
        assert.are.equal(0, select("#", ex.execute_with_retry(function() end)))
        assert.are.same({ n = 1, false },
          pack(ex.execute_with_retry(function() return false end)))
        -- A table returned is the same table.
        local t = {}
        assert.are.equal(t, ex.execute_with_retry(function() return t end))
      end)

    it("passes extra arguments to the operation", function()
      local got = pack(ex.execute_with_retry(function(...)
        return select("#", ...), ...
      end, {}, "a", nil, 3))
      assert.are.same({ n = 4, 3, "a", nil, 3 }, got)
    end)

    it("takes a policy made by retry_policy.new", function()
      local policy = retry_policy.new { max_attempts = 2, backoff_ms = { 70 },
                                        retriable_errors = { "busy" } }
      local calls = 0
      local _, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_retry(function()
          calls = calls + 1
          return nil, sprun.error("busy", "x")
        end, { policy = policy })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal(2, calls)
      assert.are.equal(70, elapsed)
      assert.are.equal(2, err.details.attempts)
    end)

    it("yields to other tasks while it waits", function()
      local log = {}
      vrun(function()
        local t0 = sprun.now()
        local ticker = sprun.spawn(function()
          for _ = 1, 3 do
            sprun.sleep(40)
            log[#log + 1] = "tick@" .. (sprun.now() - t0)
          end
        end)
        ex.execute_with_retry(function()
          log[#log + 1] = "call@" .. (sprun.now() - t0)
          return nil, "timeout"
        end, { max_attempts = 2, backoff_ms = { 100 } })
        ticker:await()
      end)
      assert_no_handles()
      assert.are.same({ "call@0", "tick@40", "tick@80", "call@100",
                        "tick@120" }, log)
    end)

    it("stops retrying when its task is cancelled during a backoff",
      function()
        local calls = 0
        local r, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            return ex.execute_with_retry(function()
              calls = calls + 1
              return nil, "timeout"
            end, { max_attempts = 10, backoff_ms = { 100 } })
          end, { timeout_ms = 250 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.is_nil(r)
        assert.are.equal(3, calls)  -- at 0, 100 and 200
        assert.are.equal("timeout", err.kind)
        assert.are.equal(250, elapsed)
      end)

    it("does not swallow a cancellation raised inside the operation",
      function()
        local calls = 0
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            return ex.execute_with_retry(function()
              calls = calls + 1
              sprun.sleep(1000)
              return "late"
            end, { retriable_errors = "all", max_attempts = 5 })
          end, { timeout_ms = 250 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal(1, calls)
        assert.are.equal("timeout", err.kind)
        assert.are.equal(250, elapsed)
      end)
  end)

  describe("execute_with_retry's attempts", function()
    local function flaky_every(k, fn)
      local calls = 0
      return function(...)
        calls = calls + 1
        if calls % k ~= 0 then
          return nil, "timeout"
        end
        return fn(...)
      end
    end

    it("take a retry policy in place of the options", function()
      local p = retry_policy.new { max_attempts = 3, backoff_ms = { 10 } }
      local r, elapsed = vrun(function()
        local t0 = sprun.now()
        local v = ex.execute_with_retry(flaky_every(3, function()
          return "third"
        end), p)
        return v, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.same({ "third", 20 }, { r, elapsed })
    end)

    it("give every attempt the same arguments, whatever their number",
      function()
        for n = 0, 6 do
          local args = {}
          for i = 1, n do
            -- holes included: every other argument is nil
            args[i] = i % 2 == 1 and i or nil
          end
          local out = pack(vrun(function()
            return ex.execute_with_retry(flaky_every(3, function(...)
              return select("#", ...), ...
            end), { max_attempts = 3, backoff_ms = { 0 } },
            unpack(args, 1, n))
          end))
          assert_no_handles()
          local seen = { n = n }
          for i = 1, n do seen[i] = args[i] end
          assert.are.equal(n, out[1])
          assert.are.same(seen, { n = out.n - 1, unpack(out, 2, out.n) })
        end
      end)

    it("through a breaker give every attempt the same arguments too",
      function()
        for n = 0, 4 do
          local cb = circuit_breaker.start_link { name = "args" .. n }
          local out = pack(vrun(function()
            return ex.execute_with_protection(cb, flaky_every(2,
              function(...) return select("#", ...), ... end),
              { max_attempts = 2, backoff_ms = { 0 } }, "a", nil, "c",
              nil, "e")
          end))
          assert_no_handles()
          assert.are.same({ 5, "a", nil, "c", nil, "e" },
                          { out[1], out[2], out[3], out[4], out[5], out[6] })
          assert.are.equal(6, out.n)
          assert.are.equal(1, cb:stats().total_failures)
        end
      end)

    it("retry at once on a zero backoff, without yielding to other tasks",
      function()
        local log = {}
        vrun(function()
          local other = sprun.spawn(function() log[#log + 1] = "other" end)
          ex.execute_with_retry(flaky_every(3, function()
            log[#log + 1] = "done"
            return true
          end), { max_attempts = 3, backoff_ms = { 0 } })
          other:await()
        end)
        assert_no_handles()
        assert.are.same({ "done", "other" }, log)
      end)

    it("name the caller when a wait is needed outside a task", function()
      local ok, err
      vrun(function()
        ok, err = coroutine.resume(coroutine.create(function()
          return ex.execute_with_retry(flaky_every(2, function()
            return true
          end), { max_attempts = 2, backoff_ms = { 5 } })
        end))
      end)
      assert_no_handles()
      assert.is_false(ok)
      assert.matches("executor.execute_with_retry: called from a coroutine "
                     .. "that is not a sprun task", err, 1, true)
    end)
  end)

  describe("execute_with_circuit_breaker", function()
    it("returns the values, the nil, err and the rejection of cb:call",
      function()
        local cb = circuit_breaker.start_link { name = "svc",
          failure_threshold = 1, reset_timeout_ms = 1000 }
        local r = vrun(function()
          local out = {}
          out.ok = pack(ex.execute_with_circuit_breaker(cb, function(a, b)
            return a + b, nil, "x"
          end, 1, 2))
          out.fail = pack(ex.execute_with_circuit_breaker(cb, function()
            return nil, "boom"
          end))
          local called = false
          out.rej = pack(ex.execute_with_circuit_breaker(cb, function()
            called = true
          end))
          out.called = called
          return out
        end)
        assert_no_handles()
        assert.are.same({ n = 3, 3, nil, "x" }, r.ok)
        assert.are.same({ n = 2, nil, "boom" }, r.fail)
        assert.are.equal(2, r.rej.n)
        assert.are.equal("circuit_open", r.rej[2].kind)
        assert.are.equal("circuit breaker 'svc' is open", r.rej[2].message)
        assert.is_false(r.called)
      end)

    it("re-raises a raised error after counting it", function()
      local cb = circuit_breaker.start_link { name = "svc" }
      local marker = {}
      local ok, e = pcall(ex.execute_with_circuit_breaker, cb, function()
        error(marker)
      end)
      assert_no_handles()
      assert.is_false(ok)
      assert.are.equal(marker, e)
      assert.are.equal(1, cb:stats().failure_count)
    end)
  end)

  describe("execute_with_timeout", function()
    it("returns the operation's values on success, nils included", function()
      local res = pack(vrun(function()
        return ex.execute_with_timeout(function(x)
          sprun.sleep(10)
          return x, nil, false, nil
        end, { timeout_ms = 100 }, "v")
      end))
      assert_no_handles()
      assert.are.same({ n = 4, "v", nil, false, nil }, res)
    end)

    it("returns the operation's own nil, err unchanged", function()
      local mine = sprun.error("unavailable", "down")
      local r, err = ex.execute_with_timeout(function() return nil, mine end,
        { timeout_ms = 100 })
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal(mine, err)
    end)

    it("gives kind task_crashed with the error and traceback in details",
      function()
        local function inner_failing_function()
          error("disk on fire", 0)
        end
        local r, err = vrun(function()
          return ex.execute_with_timeout(function()
            sprun.sleep(5)
            inner_failing_function()
          end, { timeout_ms = 100 })
        end)
        assert_no_handles()
        assert.is_nil(r)
        assert.are.equal("task_crashed", err.kind)
        assert.are.equal("disk on fire", err.message)
        assert.are.equal("disk on fire", err.details.error)
        local tb = err.details.traceback
        assert.are.equal(1, tb:find("disk on fire\nstack traceback:\n", 1,
                                    true))
        assert.truthy(tb:find("inner_failing_function", 1, true))
        assert.truthy(tb:find("executor_spec.lua", 1, true))
      end)

    it("keeps a raised table as details.error", function()
      local raised = { code = 42 }
      local _, err = ex.execute_with_timeout(function() error(raised) end,
        { timeout_ms = 100 })
      assert_no_handles()
      assert.are.equal("task_crashed", err.kind)
      assert.are.equal(raised, err.details.error)
    end)

    it("cancels the operation for real: its timers and child tasks stop",
      function()
        local reached, child_reached = false, false
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            sprun.spawn(function()
              sprun.sleep(10000)
              child_reached = true
            end)
            sprun.sleep(10000)
            reached = true
          end, { timeout_ms = 300 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        -- The loop ended at 300: no timer of the operation was left.
        assert.are.equal(300, elapsed)
        assert.is_false(reached)
        assert.is_false(child_reached)
      end)

    it("kills a `sleep 30` started with process.run inside the operation, "
       .. "and reaps it", function()
      local dir = helpers.tmpdir()
      local pidfile = dir .. "/pid"
      local t0 = sprun.hrtime()
      -- The timeout leaves sh ample time to start and write its pid.
      local r, err, after = sprun.run(function()
        local a, b = ex.execute_with_timeout(function()
          return sprun.process.run { "sh", "-c",
            "echo $$ > " .. helpers.shell_quote(pidfile) .. "; exec sleep 30" }
        end, { timeout_ms = 1000 })
        return a, b, sprun.now()
      end)
      local took_ms = (sprun.hrtime() - t0) / 1e6
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.are.equal(1000, err.details.timeout_ms)
      assert.is_number(after)
      assert.is_true(took_ms < 10000, "took " .. took_ms .. " ms")
      local pid = tonumber((helpers.read_file(pidfile):gsub("%s+", "")))
      helpers.rmrf(dir)
      assert.is_number(pid)
      -- Reaped by the time sprun.run returned: no process, not even a zombie.
      assert.is_nil(proc_state(pid))
      assert.are_not.equal(0, os.execute("kill -0 " .. pid .. " 2>/dev/null"))
    end)

    it("kills a worker started with process.spawn inside the operation",
      function()
        local pid
        local _, err = sprun.run(function()
          return ex.execute_with_timeout(function()
            local w = assert(sprun.process.spawn { "sh", "-c",
              "echo ready; exec sleep 30" })
            pid = w:pid()
            assert(w:read_line() == "ready")
            return w:wait()
          end, { timeout_ms = 300 })
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        assert.is_number(pid)
        assert.is_nil(proc_state(pid))
      end)

    it("kills the child's whole process group", function()
      local dir = helpers.tmpdir()
      local pidfile = dir .. "/pid"
      -- The timeout leaves sh ample time to start and write the pid.
      local _, err = sprun.run(function()
        return ex.execute_with_timeout(function()
          return sprun.process.run { "sh", "-c", "sleep 30 & echo $! > "
            .. helpers.shell_quote(pidfile) .. "; wait" }
        end, { timeout_ms = 1000 })
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      local pid = tonumber((helpers.read_file(pidfile):gsub("%s+", "")))
      helpers.rmrf(dir)
      -- The grandchild is not ours to reap: it must not run any more (gone,
      -- or a zombie left to whoever adopted it).
      local st = wait_stopped(pid, 2000)
      assert.is_true(st == nil or st == "Z", "state " .. tostring(st))
    end)

    it("closes the operation's sockets", function()
      local server_saw
      local _, err = sprun.run(function()
        local server = assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
          conn:write("hello\n")
          local line, e = conn:read_line()
          server_saw = line or sprun.error_kind(e)
        end))
        local got
        -- The timeout leaves ample time to connect and read "hello".
        local a, b = ex.execute_with_timeout(function()
          local conn = assert(sprun.tcp.connect("127.0.0.1", server.port))
          got = conn:read_line()
          conn:read_line() -- the server sends nothing more: blocks
        end, { timeout_ms = 1000 })
        assert(got == "hello", got)
        -- Give the handler the time to see the end of the stream.
        local deadline = sprun.now() + 10000
        while not server_saw and sprun.now() < deadline do
          sprun.sleep(5)
        end
        server:close()
        return a, b
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      assert.are.equal("closed", server_saw)
    end)

    it("lets the outer of two nested timeouts win when it is shorter",
      function()
        local inner_err
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            local r, e = ex.execute_with_timeout(function()
              sprun.sleep(5000)
              return "x"
            end, { timeout_ms = 1000 })
            inner_err = e
            return r, e
          end, { timeout_ms = 100 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        assert.are.equal(100, err.details.timeout_ms)
        assert.are.equal(100, elapsed)
        -- The inner call never returned: its task was cancelled in its wait.
        assert.is_nil(inner_err)
      end)

    it("times out an operation that swallows its cancellation", function()
      local second
      local r, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_timeout(function()
          pcall(sprun.sleep, 5000)
          -- Cancelled: any further wait raises at once.
          local ok, e = pcall(sprun.sleep, 10)
          second = { ok, sprun.error_kind(e) }
          return "swallowed"
        end, { timeout_ms = 100 })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.are.equal(100, elapsed)
      assert.are.same({ false, "cancelled" }, second)
    end)

    it("returns at once when timeout_ms = 0 and the operation does not "
       .. "wait", function()
      assert.are.equal("quick", ex.execute_with_timeout(function()
        return "quick"
      end, { timeout_ms = 0 }))
      assert_no_handles()
      local _, err = vrun(function()
        return ex.execute_with_timeout(function() sprun.sleep(1) end,
                                       { timeout_ms = 0 })
      end)
      assert.are.equal("timeout", err.kind)
    end)
  end)

  describe("execute_batch", function()
    it("returns one entry per function, in input order, whatever each did",
      function()
        local results, elapsed = vrun(function()
          local t0 = sprun.now()
          local r = ex.execute_batch({
            function() sprun.sleep(40) return "a", nil, "c" end,
            function() sprun.sleep(30) return nil, "soft failure" end,
            function() sprun.sleep(20) error("hard failure", 0) end,
            function() sprun.sleep(5000) return "never" end,
            function() sprun.sleep(10) return false end,
            function() end,
          }, { timeout_ms = 100 })
          return r, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal(6, #results)
        assert.are.same({ ok = true, values = { "a", nil, "c" }, n = 3,
                          value = "a" }, results[1])
        assert.are.same({ ok = false, error = "soft failure" }, results[2])
        assert.is_false(results[3].ok)
        assert.are.equal("task_crashed", results[3].error.kind)
        assert.are.equal("hard failure", results[3].error.details.error)
        assert.is_false(results[4].ok)
        assert.are.equal("timeout", results[4].error.kind)
        assert.are.equal(100, results[4].error.details.timeout_ms)
        assert.are.same({ ok = true, values = { false }, n = 1, value = false },
                        results[5])
        assert.are.same({ ok = true, values = {}, n = 0 }, results[6])
        assert.are.equal(100, elapsed)
      end)

    it("keeps input order when later items finish first", function()
      local order = {}
      local results = vrun(function()
        local fns = {}
        for i = 1, 8 do
          fns[i] = function()
            sprun.sleep((9 - i) * 10)
            order[#order + 1] = i
            return i * i
          end
        end
        return ex.execute_batch(fns, { max_concurrency = 8 })
      end)
      assert_no_handles()
      assert.are.same({ 8, 7, 6, 5, 4, 3, 2, 1 }, order)
      for i = 1, 8 do
        assert.are.equal(i * i, results[i].value)
      end
    end)

    it("never runs more than max_concurrency at once, and reaches it",
      function()
        local running, max_running, started = 0, 0, {}
        local results, elapsed = vrun(function()
          local fns = {}
          local t0 = sprun.now()
          for i = 1, 10 do
            fns[i] = function()
              running = running + 1
              if running > max_running then max_running = running end
              started[i] = sprun.now() - t0
              sprun.sleep(100)
              running = running - 1
              return i
            end
          end
          local r = ex.execute_batch(fns, { max_concurrency = 4,
                                            timeout_ms = 1000 })
          return r, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal(4, max_running)
        assert.are.equal(0, running)
        -- 4, 4 then 2: three rounds of 100 ms.
        assert.are.same({ 0, 0, 0, 0, 100, 100, 100, 100, 200, 200 }, started)
        assert.are.equal(300, elapsed)
        for i = 1, 10 do
          assert.are.equal(i, results[i].value)
        end
      end)

    it("frees a slot when an item times out or raises", function()
      local running, max_running = 0, 0
      local results, elapsed = vrun(function()
        local fns = {}
        for i = 1, 6 do
          fns[i] = function()
            running = running + 1
            if running > max_running then max_running = running end
            local ok, e = pcall(sprun.sleep, i % 2 == 0 and 500 or 10)
            running = running - 1
            if not ok then error(e, 0) end
            if i == 3 then error("three", 0) end
            return i
          end
        end
        local t0 = sprun.now()
        local r = ex.execute_batch(fns, { max_concurrency = 2,
                                          timeout_ms = 50 })
        return r, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal(2, max_running)
      assert.are.equal(0, running)
      local kinds = {}
      for i = 1, 6 do
        kinds[i] = results[i].ok and results[i].value
                   or sprun.error_kind(results[i].error)
      end
      assert.are.same({ 1, "timeout", "task_crashed", "timeout", 5,
                        "timeout" }, kinds)
      -- Two slots: 1 (0-10) 3 (10-20, raises) 4 (20-70, timeout) on one,
      -- 2 (0-50, timeout) 5 (50-60) 6 (60-110, timeout) on the other.
      assert.are.equal(110, elapsed)
    end)

    it("runs all items at once by default", function()
      local running, max_running = 0, 0
      vrun(function()
        local fns = {}
        for i = 1, 25 do
          fns[i] = function()
            running = running + 1
            if running > max_running then max_running = running end
            sprun.sleep(10)
            running = running - 1
          end
        end
        return ex.execute_batch(fns)
      end)
      assert_no_handles()
      assert.are.equal(25, max_running)
    end)

    it("returns {} for an empty batch", function()
      local r = ex.execute_batch({})
      assert.are.same({}, r)
      assert.are.equal(0, #r)
      assert.are.same({}, vrun(function()
        return ex.execute_batch({}, { max_concurrency = 3 })
      end))
      assert_no_handles()
    end)

    it("runs 1,000 items", function()
      local running, max_running = 0, 0
      local results, elapsed = vrun(function()
        local fns = {}
        for i = 1, 1000 do
          fns[i] = function()
            running = running + 1
            if running > max_running then max_running = running end
            sprun.sleep(1)
            running = running - 1
            if i % 100 == 0 then return nil, "item " .. i end
            return i
          end
        end
        local t0 = sprun.now()
        local r = ex.execute_batch(fns, { max_concurrency = 50 })
        return r, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal(1000, #results)
      assert.are.equal(50, max_running)
      assert.are.equal(20, elapsed)
      local ok, failed = 0, 0
      for i = 1, 1000 do
        if i % 100 == 0 then
          assert.are.same({ ok = false, error = "item " .. i }, results[i])
          failed = failed + 1
        else
          assert.are.equal(i, results[i].value)
          ok = ok + 1
        end
      end
      assert.are.same({ 990, 10 }, { ok, failed })
    end)

    it("cancels its running items when the caller is cancelled", function()
      local finished = 0
      local _, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_timeout(function()
          local fns = {}
          for i = 1, 4 do
            fns[i] = function()
              sprun.sleep(1000)
              finished = finished + 1
            end
          end
          return ex.execute_batch(fns, { max_concurrency = 2 })
        end, { timeout_ms = 100 })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      assert.are.equal(0, finished)
      assert.are.equal(100, elapsed)
    end)
  end)

  describe("execute_with_protection", function()
    it("retries around the breaker: each attempt counts once in it",
      function()
        local cb = circuit_breaker.start_link { name = "svc",
          failure_threshold = 5, reset_timeout_ms = 1000 }
        local calls = 0
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_protection(cb, function()
            calls = calls + 1
            return nil, sprun.error("unavailable", "down")
          end, { max_attempts = 3, backoff_ms = { 100, 200 } })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal(3, calls)
        assert.are.equal(300, elapsed)
        assert.is_true(err.details.retries_exhausted)
        local s = cb:stats()
        assert.are.equal("closed", s.state)
        assert.are.equal(3, s.failure_count)
        assert.are.equal(3, s.total_failures)
      end)

    it("returns the success after failures and counts it in the breaker",
      function()
        local cb = circuit_breaker.start_link { name = "svc",
          failure_threshold = 5 }
        local calls = 0
        local res = pack(vrun(function()
          return ex.execute_with_protection(cb, function(x)
            calls = calls + 1
            if calls < 3 then return nil, "timeout" end
            return x, nil
          end, { backoff_ms = { 1 } }, "arg")
        end))
        assert_no_handles()
        assert.are.same({ n = 2, "arg", nil }, res)
        local s = cb:stats()
        assert.are.same({ 2, 1, 0 }, { s.total_failures, s.total_successes,
                                       s.failure_count })
      end)

    it("does not retry a circuit_open error by default", function()
      local cb = circuit_breaker.start_link { name = "svc",
        failure_threshold = 2, reset_timeout_ms = 60000 }
      local calls = 0
      local _, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_protection(cb, function()
          calls = calls + 1
          return nil, "timeout"
        end, { max_attempts = 5, backoff_ms = { 100, 200, 400 } })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      -- Two failures opened it; the third attempt was rejected and ended it.
      assert.are.equal(2, calls)
      assert.are.equal(300, elapsed)
      assert.are.equal("circuit_open", err.kind)
      assert.is_nil(err.details.retries_exhausted)
      assert.are.equal(1, cb:stats().rejected_count)
    end)

    it("retries circuit_open when asked, until the breaker lets a probe in",
      function()
        local cb = circuit_breaker.start_link { name = "svc",
          failure_threshold = 1, reset_timeout_ms = 250 }
        local calls, at = 0, {}
        local r, elapsed = vrun(function()
          local t0 = sprun.now()
          local a = ex.execute_with_protection(cb, function()
            calls = calls + 1
            at[calls] = sprun.now() - t0
            if calls == 1 then return nil, "timeout" end
            return "recovered"
          end, { max_attempts = 5, backoff_ms = { 100 },
                 retriable_errors = { "timeout", "circuit_open" } })
          return a, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("recovered", r)
        -- Rejected at 100 and 200; half-open at 250, admitted at 300.
        assert.are.same({ 0, 300 }, at)
        assert.are.equal(300, elapsed)
        assert.are.equal(2, cb:stats().rejected_count)
        assert.are.equal("closed", cb:state())
      end)

    it("leaves the breaker's rejection error unmarked when retries of it run "
       .. "out", function()
      local cb = circuit_breaker.start_link { name = "svc",
        failure_threshold = 1, reset_timeout_ms = 60000 }
      cb:record_failure()
      local _, err = ex.execute_with_protection(cb, function() return 1 end,
        { max_attempts = 2, backoff_ms = { 0 }, retriable_errors = "all" })
      assert_no_handles()
      assert.are.equal("circuit_open", err.kind)
      assert.is_true(err.details.retries_exhausted)
      local _, plain = cb:call(function() return 1 end)
      assert.are.equal("circuit_open", plain.kind)
      assert.is_nil(plain.details.retries_exhausted)
      assert.is_nil(plain.details.attempts)
    end)
  end)

  describe("execute_async", function()
    it("starts a task that await() finishes, inside a loop", function()
      local r = vrun(function()
        local t0 = sprun.now()
        local t = ex.execute_async(function(a, b)
          sprun.sleep(50)
          return a + b, nil, "x"
        end, 2, 3)
        local status = t:status()
        local res = pack(t:await())
        return { status = status, res = res, at = sprun.now() - t0,
                 after = t:status() }
      end)
      assert_no_handles()
      assert.are.equal("pending", r.status)
      assert.are.same({ n = 3, 5, nil, "x" }, r.res)
      assert.are.equal(50, r.at)
      assert.are.equal("done", r.after)
    end)

    it("runs tasks concurrently", function()
      local elapsed, values = vrun(function()
        local t0 = sprun.now()
        local tasks = {}
        for i = 1, 3 do
          tasks[i] = ex.execute_async(function()
            sprun.sleep(100 * i)
            return i
          end)
        end
        local v = {}
        for i = 3, 1, -1 do
          v[#v + 1] = tasks[i]:await()
        end
        return sprun.now() - t0, v
      end)
      assert_no_handles()
      assert.are.equal(300, elapsed)
      assert.are.same({ 3, 2, 1 }, values)
    end)

    it("await(timeout_ms) times out and cancels the task", function()
      local reached = false
      local r = vrun(function()
        local t0 = sprun.now()
        local t = ex.execute_async(function()
          sprun.sleep(1000)
          reached = true
        end)
        local a, err = t:await(100)
        return { a = a, kind = err.kind, status = t:status(),
                 at = sprun.now() - t0 }
      end)
      assert_no_handles()
      assert.are.same({ kind = "timeout", status = "cancelled", at = 100 }, r)
      assert.is_false(reached)
    end)

    it("gives task_crashed from await when the task raised", function()
      local _, err = vrun(function()
        return ex.execute_async(function() error("bad", 0) end):await()
      end)
      assert_no_handles()
      assert.are.equal("task_crashed", err.kind)
      assert.are.equal("bad", err.details.error)
    end)

    it("outside a loop, runs the task to completion and returns it",
      function()
        local t = ex.execute_async(function(x)
          sprun.sleep(5)
          return x, nil
        end, "v")
        assert_no_handles()
        assert.are.equal("done", t:status())
        assert.are.same({ n = 2, "v", nil }, pack(t:await()))
        local failed = ex.execute_async(function() error("no", 0) end)
        assert.are.equal("failed", failed:status())
        local _, err = failed:await()
        assert.are.equal("task_crashed", err.kind)
      end)
  end)

  describe("called outside any task", function()
    it("each function runs a loop to completion and returns", function()
      local t0 = sprun.hrtime()
      local calls = 0
      assert.are.equal("third", ex.execute_with_retry(function()
        calls = calls + 1
        if calls < 3 then return nil, "timeout" end
        return "third"
      end, { backoff_ms = { 20, 20 } }))
      local ms = (sprun.hrtime() - t0) / 1e6
      -- libuv keeps loop time in whole ms: each 20 ms sleep lasts > 19 ms.
      assert.is_true(ms >= 38, "slept " .. ms .. " ms")
      assert_no_handles()

      local cb = circuit_breaker.start_link { name = "out" }
      assert.are.equal("cb", ex.execute_with_circuit_breaker(cb, function()
        sprun.sleep(1)
        return "cb"
      end))
      assert_no_handles()

      assert.are.equal("in time", ex.execute_with_timeout(function()
        sprun.sleep(1)
        return "in time"
      end, { timeout_ms = 10000 }))
      assert_no_handles()
      local _, err = ex.execute_with_timeout(function() sprun.sleep(1000) end,
        { timeout_ms = 20 })
      assert.are.equal("timeout", err.kind)
      assert_no_handles()

      local results = ex.execute_batch({
        function() sprun.sleep(2) return 1 end,
        function() return 2 end,
      }, { max_concurrency = 1 })
      assert.are.same({ 1, 2 }, { results[1].value, results[2].value })
      assert_no_handles()

      assert.are.equal("protected", ex.execute_with_protection(cb, function()
        sprun.sleep(1)
        return "protected"
      end))
      assert_no_handles()
      assert.are.equal(2, cb:stats().total_successes)
    end)
  end)

  describe("misuse", function()
    local cb = circuit_breaker.start_link { name = "m" }
    local function f() end

    -- The message without the position, and checks that the position is
    -- the caller's line (this file), not the executor's.
    local function message(fn, ...)
      local ok, e = pcall(fn, ...)
      assert.is_false(ok)
      local where, msg = e:match("^([^:]+):%d+: (.*)$")
      assert.are.equal("executor_spec.lua", where and where:match("[^/]+$"),
                       "raised at " .. tostring(where) .. ": " .. e)
      return msg
    end

    it("names a fn that is not a function", function()
      assert.are.equal(
        "executor.execute_with_retry: fn must be a function, got 42",
        message(function() ex.execute_with_retry(42) end))
      assert.are.equal(
        'executor.execute_with_timeout: fn must be a function, got "f"',
        message(function() ex.execute_with_timeout("f", { timeout_ms = 1 })
        end))
      assert.are.equal(
        "executor.execute_with_circuit_breaker: fn must be a function, got nil",
        message(function() ex.execute_with_circuit_breaker(cb, nil) end))
      assert.are.equal(
        "executor.execute_with_protection: fn must be a function, got true",
        message(function() ex.execute_with_protection(cb, true) end))
      assert.are.equal(
        "executor.execute_async: fn must be a function, got nil",
        message(function() ex.execute_async() end))
    end)

    it("names a cb that is not a breaker", function()
      assert.are.equal("executor.execute_with_circuit_breaker: cb must be a "
        .. "circuit breaker, got table",
        message(function() ex.execute_with_circuit_breaker({}, f) end))
      assert.are.equal("executor.execute_with_protection: cb must be a "
        .. "circuit breaker, got nil",
        message(function() ex.execute_with_protection(nil, f) end))
    end)

    it("requires timeout_ms", function()
      assert.are.equal("executor.execute_with_timeout: option 'timeout_ms' "
        .. "must be a number >= 0, got nil",
        message(function() ex.execute_with_timeout(f, {}) end))
      assert.are.equal("executor.execute_with_timeout: options must be a "
        .. "table, got nil",
        message(function() ex.execute_with_timeout(f) end))
      assert.are.equal("executor.execute_with_timeout: option 'timeout_ms' "
        .. "must be a number >= 0, got -1",
        message(function() ex.execute_with_timeout(f, { timeout_ms = -1 })
        end))
    end)

    it("names the closest option to an unknown one", function()
      assert.are.equal("executor.execute_with_timeout: unknown option "
        .. "'timeout' (did you mean 'timeout_ms'?)",
        message(function() ex.execute_with_timeout(f, { timeout = 5 }) end))
      assert.are.equal("executor.execute_with_retry: unknown option "
        .. "'max_attemps' (did you mean 'max_attempts'?)",
        message(function() ex.execute_with_retry(f, { max_attemps = 3 }) end))
      assert.are.equal("executor.execute_batch: unknown option "
        .. "'max_concurency' (did you mean 'max_concurrency'?)",
        message(function() ex.execute_batch({}, { max_concurency = 2 }) end))
      assert.are.equal("executor.execute_with_protection: unknown option "
        .. "'backof_ms' (did you mean 'backoff_ms'?)",
        message(function()
          ex.execute_with_protection(cb, f, { backof_ms = { 1 } })
        end))
    end)

    it("checks option values", function()
      assert.are.equal("executor.execute_batch: option 'max_concurrency' "
        .. "must be an integer >= 1, got 0",
        message(function() ex.execute_batch({ f }, { max_concurrency = 0 })
        end))
      assert.are.equal("executor.execute_with_retry: option 'policy' must be "
        .. "a retry policy (retry_policy.new), got table",
        message(function() ex.execute_with_retry(f, { policy = {} }) end))
    end)

    it("refuses policy options beside a policy", function()
      local p = retry_policy.new {}
      assert.are.equal("executor.execute_with_retry: option 'max_attempts' "
        .. "cannot be given with 'policy' (set it in retry_policy.new)",
        message(function()
          ex.execute_with_retry(f, { policy = p, max_attempts = 5 })
        end))
      assert.are.equal("executor.execute_with_protection: option "
        .. "'backoff_ms' cannot be given with 'policy' (set it in "
        .. "retry_policy.new)",
        message(function()
          ex.execute_with_protection(cb, f, { policy = p, backoff_ms = { 1 },
                                              seed = 3 })
        end))
      -- operation and pool name the call, not the policy.
      assert.are.equal("ok", ex.execute_with_retry(function() return "ok" end,
        { policy = p, operation = "fetch", pool = "api" }))
      assert_no_handles()
    end)

    it("requires fns to be a list of functions", function()
      assert.are.equal('executor.execute_batch: fns must be a list of '
        .. 'functions, got "x"',
        message(function() ex.execute_batch("x") end))
      assert.are.equal("executor.execute_batch: fns must be a list of "
        .. "functions, got nil",
        message(function() ex.execute_batch() end))
      assert.are.equal("executor.execute_batch: fns[2] must be a function, "
        .. "got 1",
        message(function() ex.execute_batch({ f, 1 }) end))
      assert.are.equal('executor.execute_batch: fns must be a list of '
        .. 'functions, got key "x"',
        message(function() ex.execute_batch({ f, x = f }) end))
      assert.are.equal("executor.execute_batch: fns[2] must be a function, "
        .. "got nil",
        message(function() ex.execute_batch({ f, nil, f }) end))
    end)

    it("runs nothing when the arguments are wrong", function()
      local ran = false
      local function g() ran = true end
      pcall(ex.execute_batch, { g, 1 })
      pcall(ex.execute_with_retry, g, { max_attemps = 3 })
      pcall(ex.execute_with_timeout, g, {})
      pcall(ex.execute_with_protection, {}, g)
      assert.is_false(ran)
    end)
  end)

  describe("the breaker's half-open timer", function()
    it("turns an open breaker half-open on time with no call, in virtual "
       .. "time", function()
      local saved = circuit_breaker._on_transition
      local seen = {}
      local t0
      circuit_breaker._on_transition = function(b, what)
        seen[#seen + 1] = { b:name(), what, sched.now() - t0 }
      end
      local ok, err = pcall(vrun, function()
        t0 = sprun.now()
        local cb = circuit_breaker.start_link { name = "timer",
          failure_threshold = 2, reset_timeout_ms = 5000 }
        sprun.sleep(1000)
        cb:record_failure()
        cb:record_failure()       -- opens at 1000
        sprun.sleep(20000)        -- nothing calls it meanwhile
      end)
      circuit_breaker._on_transition = saved
      assert(ok, err)
      assert_no_handles()
      assert.are.same({
        { "timer", "opened", 1000 },
        { "timer", "half_open", 6000 },
      }, seen)
    end)

    it("re-arms when a failed probe re-opens it", function()
      local saved = circuit_breaker._on_transition
      local seen = {}
      local t0
      circuit_breaker._on_transition = function(_, what)
        seen[#seen + 1] = what .. "@" .. (sched.now() - t0)
      end
      local ok, err = pcall(vrun, function()
        t0 = sprun.now()
        local cb = circuit_breaker.start_link { name = "timer",
          failure_threshold = 1, reset_timeout_ms = 300 }
        cb:call(function() return nil, "x" end)   -- opens at 0
        sprun.sleep(400)
        cb:call(function() return nil, "x" end)   -- probe fails at 400
        sprun.sleep(400)
        cb:call(function() return "ok" end)       -- probe succeeds at 800
      end)
      circuit_breaker._on_transition = saved
      assert(ok, err)
      assert_no_handles()
      assert.are.same({ "opened@0", "half_open@300", "opened@400",
                        "half_open@700", "closed@800" }, seen)
    end)
  end)
end)
