-- The examples of the "Crash Recovery" document, in Lua.
local sprun = require "sprun"

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
end)
