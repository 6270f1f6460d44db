-- sprun.executor.execute_with_retry: the backoff between attempts (exact,
-- in virtual time), max_attempts, which errors are retried and how the
-- last one is marked, the values and arguments of the attempts, a retry
-- policy in place of the options, and cancellation during a backoff.
local sprun = require "sprun"
local errors = require "sprun.errors"
local circuit_breaker = require "sprun.circuit_breaker"
local retry_policy = require "sprun.retry_policy"
local h = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles, pack = h.vrun, h.assert_no_handles, h.pack

describe("executor", function()
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
          local t = sprun.spawn(function()
            return ex.execute_with_retry(function()
              calls = calls + 1
              return nil, "timeout"
            end, { max_attempts = 10, backoff_ms = { 100 } })
          end)
          sprun.sleep(250)
          t:cancel()
          local a, b = t:await()
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.is_nil(r)
        assert.are.equal(3, calls)  -- at 0, 100 and 200
        assert.are.equal("cancelled", err.kind)
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
end)

describe("execute_with_retry's options as a table literal at each call",
  function()
  local function count_attempts(opts)
    local n = 0
    ex.execute_with_retry(function()
      n = n + 1
      return nil, sprun.error("unavailable", "down")
    end, opts)
    return n
  end

  it("sees a table changed between calls, and a new one alike", function()
    vrun(function()
      local o = { max_attempts = 4, backoff_ms = { 0 } }
      assert.are.equal(4, count_attempts(o))
      assert.are.equal(4, count_attempts(o))
      o.max_attempts = 2
      assert.are.equal(2, count_attempts(o))
      o.backoff_ms[1] = 5
      o.max_attempts = 3
      local t0 = sprun.now()
      assert.are.equal(3, count_attempts(o))
      assert.are.equal(10, sprun.now() - t0)
      o.retriable_errors = { "timeout" }
      assert.are.equal(1, count_attempts(o))
      o.retriable_errors = nil
      assert.are.equal(3, count_attempts(o))
      -- Literals: the same text, then one more list item.
      for _ = 1, 3 do
        assert.are.equal(2, count_attempts { max_attempts = 2,
                                             backoff_ms = { 0 } })
      end
      t0 = sprun.now()
      assert.are.equal(3, count_attempts { max_attempts = 3,
                                           backoff_ms = { 0, 7 } })
      assert.are.equal(7, sprun.now() - t0)
    end)
  end)

  it("still raises each bad option's message after the same keys worked",
    function()
    vrun(function()
      for _ = 1, 3 do
        count_attempts { max_attempts = 2, backoff_ms = { 1 } }
      end
      local ok, err = pcall(count_attempts, { max_attempts = 0,
                                              backoff_ms = { 1 } })
      assert.is_false(ok)
      assert.matches("executor.execute_with_retry: option 'max_attempts' "
                     .. "must be an integer >= 1, got 0", err, 1, true)
      -- A list with a hole matches no list it starts like.
      ok, err = pcall(count_attempts, { max_attempts = 2,
                                        backoff_ms = { 1, nil, 3 } })
      assert.is_false(ok)
      assert.matches("option 'backoff_ms'", err, 1, true)
      ok, err = pcall(count_attempts, { max_attempts = 2,
                                        backoff_ms = { 1 }, extra = true })
      assert.is_false(ok)
      assert.matches("unknown option 'extra'", err, 1, true)
    end)
  end)

  it("gives a seeded policy's delays from the start at every call", function()
    local o = { max_attempts = 4, backoff = "exponential",
                base_backoff_ms = 100, jitter = "full", seed = 42 }
    local p = retry_policy.new(o)
    local want = { p:backoff_for_attempt(1), p:backoff_for_attempt(2),
                   p:backoff_for_attempt(3) }
    vrun(function()
      for _ = 1, 3 do
        local at, t0 = {}, sprun.now()
        ex.execute_with_retry(function()
          at[#at + 1] = sprun.now() - t0
          return nil, sprun.error("unavailable", "down")
        end, { max_attempts = 4, backoff = "exponential",
               base_backoff_ms = 100, jitter = "full", seed = 42 })
        assert.are.same({ 0, want[1], want[1] + want[2],
                          want[1] + want[2] + want[3] }, at)
      end
    end)
  end)
end)

describe("retry_on_result", function()
  it("retries a success the predicate refuses, after the backoff, and "
     .. "returns the first it accepts", function()
    local seen, at = {}, {}
    local v, n = vrun(function()
      local calls, t0 = 0, sprun.now()
      return ex.execute_with_retry(function()
        calls = calls + 1
        at[#at + 1] = sprun.now() - t0
        return { status = calls < 3 and 503 or 200 }, calls
      end, { max_attempts = 5, backoff_ms = { 10, 20 },
             retry_on_result = function(r, c)
               seen[#seen + 1] = c
               return r.status == 503
             end })
    end)
    assert.are.same({ 200, 3 }, { v.status, n })
    assert.are.same({ 1, 2, 3 }, seen)
    assert.are.same({ 0, 10, 30 }, at)
  end)

  it("returns the last values as they are when the attempts run out",
    function()
    local events = {}
    sprun.telemetry.attach("ror", { "snakepit", "retry", "exhausted" },
      function(_, m) events[#events + 1] = m.attempts end)
    local r = h.pack(vrun(function()
      return ex.execute_with_retry(function() return 503, nil, "x" end,
        { max_attempts = 3, backoff_ms = { 0 },
          retry_on_result = function(code) return code == 503 end })
    end))
    sprun.telemetry.detach("ror")
    assert.are.same({ n = 3, 503, nil, "x" }, r)
    assert.are.same({ 3 }, events)
  end)

  it("never sees failures: those go by retriable_errors", function()
    local calls = 0
    local r, err = vrun(function()
      return ex.execute_with_retry(function()
        calls = calls + 1
        return nil, sprun.error("bad_input", "no")
      end, { max_attempts = 3, backoff_ms = { 0 },
             retry_on_result = function() error("not called") end })
    end)
    assert.is_nil(r)
    assert.are.same({ 1, "bad_input" }, { calls, sprun.error_kind(err) })
  end)

  it("must be a function", function()
    local ok, err = pcall(sprun.retry_policy.new, { retry_on_result = 1 })
    assert.is_false(ok)
    assert.matches("retry_policy.new: option 'retry_on_result' must be a "
                   .. "function, got 1", err, 1, true)
  end)
end)
