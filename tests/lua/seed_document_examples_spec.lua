-- The examples of the seed "Crash Recovery" document, in Lua: the circuit
-- breaker, the health monitor, the retry policy and the executor. The
-- executor's examples run in virtual time, where their timing is exact.
local sprun = require "sprun"
local h = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles = h.vrun, h.assert_no_handles

describe("Crash Recovery examples", function()
  describe("circuit breaker, basic usage", function()
    -- The seed's three-way case on the result of CircuitBreaker.call.
    local function handle(cb, risky_operation)
      local result, err = cb:call(risky_operation)
      if err == nil then
        return "success: " .. tostring(result)
      elseif sprun.error_kind(err) == "circuit_open" then
        return "circuit open"
      else
        return "error: " .. sprun.error_kind(err)
      end
    end

    it("handles success, error and circuit open", function()
      local now = 0
      local cb = sprun.circuit_breaker.start_link {
        name = "python_pool",
        failure_threshold = 5,
        reset_timeout_ms = 30000,
        clock = function() return now end,
      }
      local function ok_op() return 42 end
      local function failing_op() return nil, "unavailable" end

      assert.are.equal("success: 42", handle(cb, ok_op))
      for _ = 1, 5 do
        assert.are.equal("error: unavailable", handle(cb, failing_op))
      end
      assert.are.equal("circuit open", handle(cb, ok_op))
      assert.are.equal("open", cb:state())
      now = 30000
      assert.are.equal("success: 42", handle(cb, ok_op))
      assert.are.equal("closed", cb:state())
    end)

    it("has the configuration defaults of the table", function()
      local s = sprun.circuit_breaker.start_link { name = "python_pool" }
        :stats()
      assert.are.same({ 5, 30000, 1 }, { s.failure_threshold,
        s.reset_timeout_ms, s.half_open_max_calls })
    end)

    it("has the three states", function()
      local now = 0
      local cb = sprun.circuit_breaker.start_link { name = "p",
        failure_threshold = 1, reset_timeout_ms = 10,
        clock = function() return now end }
      local seen = { cb:state() }
      cb:record_failure()
      seen[2] = cb:state()
      now = 10
      seen[3] = cb:state()
      assert.are.same({ "closed", "open", "half_open" }, seen)
    end)
  end)

  describe("health monitor", function()
    it("records crashes, checks health and gives stats", function()
      local now = 0
      local hm = sprun.health_monitor.start_link {
        name = "pool_health",
        pool = "default",
        crash_window_ms = 60000,
        max_crashes = 10,
        clock = function() return now end,
      }

      hm:record_crash("worker_1", { reason = "segfault" })

      local action
      if hm:is_healthy() then
        action = "pool is healthy"
      else
        action = "too many crashes, consider action"
      end
      assert.are.equal("pool is healthy", action)

      -- Five crashes in all, two of them more than a window ago.
      now = 1000
      hm:record_crash("worker_2", { reason = "timeout" })
      now = 61500
      hm:record_crash("worker_1", { reason = "segfault" })
      hm:record_crash("worker_3")
      hm:record_crash("worker_1")

      local stats = hm:stats()
      assert.are.same({ total_crashes = 5, crashes_in_window = 3,
        is_healthy = true }, { total_crashes = stats.total_crashes,
        crashes_in_window = stats.crashes_in_window,
        is_healthy = stats.is_healthy })
      assert.are.same({ "pool_health", "default", 2 },
                      { stats.name, stats.pool, stats.workers_with_crashes })
    end)
  end)

  describe("retry policy", function()
    it("retries with backoff while should_retry allows", function()
      local policy = sprun.retry_policy.new {
        max_attempts = 5,
        backoff_ms = { 100, 200, 400, 800 },
        jitter = true,
        retriable_errors = { "timeout", "unavailable" },
        seed = 7,
      }
      local slept, calls = {}, 0
      local function operation()
        calls = calls + 1
        return nil, "timeout"
      end

      local attempt = 1
      local result, err = operation()
      while err ~= nil and policy:retry_for_error(err)
        and policy:should_retry(attempt) do
        local delay = policy:backoff_for_attempt(attempt)
        slept[#slept + 1] = delay -- Process.sleep(delay)
        attempt = attempt + 1
        result, err = operation()
      end

      assert.are.same({ nil, "timeout", 5, 5 },
                      { result, err, calls, attempt })
      assert.are.equal(4, #slept)
      for i, base in ipairs { 100, 200, 400, 800 } do
        assert.is_true(slept[i] >= base * 0.75 and slept[i] <= base * 1.25,
                       ("delay %d: %d"):format(i, slept[i]))
      end
      assert.is_false(policy:retry_for_error("worker_crash"))
    end)
  end)

  describe("executor", function()
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
end)
