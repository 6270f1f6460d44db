-- sprun.executor.execute_async (a task that await() finishes, inside a loop
-- or out of one), and every executor function called outside any task,
-- where each runs a loop of its own to completion.
local sprun = require "sprun"
local circuit_breaker = require "sprun.circuit_breaker"
local h = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles, pack = h.vrun, h.assert_no_handles, h.pack

describe("executor", function()
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
end)
