-- sprun.executor.execute_batch: one result per function in input order,
-- max_concurrency (never more, and reached), a per-item timeout that frees
-- its slot, 1,000 items, and the cancellation of a batch's running items.
-- Timing runs in virtual time.
local sprun = require "sprun"
local h = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles = h.vrun, h.assert_no_handles

describe("executor", function()
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
end)
