-- sprun.executor with a circuit breaker: execute_with_circuit_breaker (the
-- values, errors and rejections of cb:call), execute_with_protection
-- (retries around the breaker, each attempt counted once in it), and the
-- breaker's half-open timer, which fires on time with no call. Timing runs
-- in virtual time.
local sprun = require "sprun"
local sched = require "sprun.sched"
local circuit_breaker = require "sprun.circuit_breaker"
local h = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles, pack = h.vrun, h.assert_no_handles, h.pack

describe("executor", function()
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
        assert.are.same({ 2, 1, 0, 2 }, { s.total_failures,
          s.total_successes, s.consecutive_failures, s.failure_count })
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
