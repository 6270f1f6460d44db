-- sprun.health_monitor: the sliding window, workers, reasons, eviction.
local health_monitor = require "sprun.health_monitor"

-- A monitor driven by a clock the test sets: t.now.
local function monitor(opts)
  local t = { now = 0 }
  opts = opts or {}
  opts.clock = function() return t.now end
  return health_monitor.start_link(opts), t
end

describe("health_monitor", function()
  describe("start_link", function()
    it("starts healthy with the documented defaults", function()
      local hm = health_monitor.start_link()
      assert.are.same({
        pool = "default", name = "default", total_crashes = 0,
        crashes_in_window = 0, workers_with_crashes = 0, max_crashes = 10,
        crash_window_ms = 60000, is_healthy = true,
      }, hm:stats())
      assert.is_true(hm:is_healthy())
      assert.are.equal("default", hm:name())
    end)

    it("names the monitor after its pool unless given a name", function()
      local a = health_monitor.start_link { pool = "python" }
      local b = health_monitor.start_link { pool = "python",
                                            name = "pool_health" }
      assert.are.same({ "python", "python" }, { a:stats().pool, a:name() })
      assert.are.same({ "python", "pool_health" },
                      { b:stats().pool, b:stats().name })
    end)
  end)

  describe("health", function()
    it("turns unhealthy at max_crashes crashes in the window", function()
      local hm = monitor { max_crashes = 3 }
      assert.is_true(hm:record_crash("w1"))
      hm:record_crash("w2")
      assert.is_true(hm:is_healthy())
      hm:record_crash("w1")
      assert.is_false(hm:is_healthy())
      assert.is_false(hm:healthy())
      local s = hm:stats()
      assert.are.same({ 3, 3, 2, false }, { s.total_crashes,
        s.crashes_in_window, s.workers_with_crashes, s.is_healthy })
    end)

    it("counts a crash exactly crash_window_ms old, not one ms older",
      function()
        local hm, t = monitor { max_crashes = 3, crash_window_ms = 100 }
        for _, at in ipairs { 0, 10, 20 } do
          t.now = at
          hm:record_crash("w")
        end
        t.now = 100
        assert.is_false(hm:is_healthy())
        assert.are.equal(3, hm:stats().crashes_in_window)
        t.now = 101
        assert.is_true(hm:is_healthy())
        assert.are.equal(2, hm:stats().crashes_in_window)
        t.now = 120
        assert.are.equal(1, hm:stats().crashes_in_window)
        t.now = 121
        local s = hm:stats()
        assert.are.same({ 0, 0, 3, true }, { s.crashes_in_window,
          s.workers_with_crashes, s.total_crashes, s.is_healthy })
      end)

    it("recovers when old crashes leave the window", function()
      local hm, t = monitor { max_crashes = 2, crash_window_ms = 1000 }
      hm:record_crash("a")
      hm:record_crash("b")
      assert.is_false(hm:is_healthy())
      t.now = 1001
      assert.is_true(hm:is_healthy())
      hm:record_crash("a")
      assert.is_true(hm:is_healthy())
    end)

    it("keeps the window frozen when the clock steps back", function()
      local hm, t = monitor { max_crashes = 1, crash_window_ms = 10 }
      t.now = 100
      hm:record_crash("w")
      t.now = 50
      assert.is_false(hm:is_healthy())
      t.now = 111
      assert.is_true(hm:is_healthy())
    end)
  end)

  describe("worker_health", function()
    it("is healthy with no crash for a worker that never crashed, as in "
       .. "Snakepit", function()
      local hm = monitor {}
      assert.are.same({ healthy = true, crash_count = 0,
        crashes_in_window = 0, reasons = {} }, hm:worker_health("nobody"))
    end)

    it("gives the crashes of one worker in the window and in total",
      function()
        local hm, t = monitor { max_crashes = 2, crash_window_ms = 100 }
        hm:record_crash("w2")
        t.now = 5
        hm:record_crash("w1", { reason = "segfault" })
        t.now = 50
        hm:record_crash("w1", { reason = "oom" })
        assert.are.same({ healthy = false, crashes_in_window = 2,
          last_crash_ms = 50, crash_count = 2,
          reasons = { "segfault", "oom" } }, hm:worker_health("w1"))
        t.now = 106
        -- crash_count is Snakepit's: every crash since the worker was
        -- first seen; the window is crashes_in_window.
        assert.are.same({ healthy = true, crashes_in_window = 1,
          last_crash_ms = 50, crash_count = 2,
          reasons = { "segfault", "oom" } }, hm:worker_health("w1"))
      end)

    it("counts only the latest max_crashes crashes of the pool", function()
      -- Once max_crashes crashes are in the window older ones cannot
      -- change the decision, so the monitor keeps no more than that.
      local hm, t = monitor { max_crashes = 2, crash_window_ms = 100 }
      hm:record_crash("w2")
      t.now = 5
      hm:record_crash("w1")
      hm:record_crash("w1")
      assert.are.same({ healthy = true, crashes_in_window = 0,
        last_crash_ms = 0, crash_count = 1, reasons = {} },
        hm:worker_health("w2"))
      local s = hm:stats()
      assert.are.same({ 3, 2, 1 }, { s.total_crashes, s.crashes_in_window,
                                     s.workers_with_crashes })
    end)

    it("keeps the last 4 reasons, oldest first", function()
      local hm = monitor {}
      for i = 1, 6 do
        hm:record_crash("w", { reason = "r" .. i })
      end
      hm:record_crash("w")
      hm:record_crash("w", {})
      local w = hm:worker_health("w")
      assert.are.same({ "r3", "r4", "r5", "r6" }, w.reasons)
      assert.are.equal(8, w.crash_count)
    end)

    it("keeps reasons of any type", function()
      local hm = monitor {}
      local e = { kind = "exit", code = 139 }
      hm:record_crash("w", { reason = e })
      hm:record_crash("w", { reason = 11 })
      local reasons = hm:worker_health("w").reasons
      assert.are.equal(e, reasons[1])
      assert.are.equal(11, reasons[2])
    end)

    it("tells a number id from the same string", function()
      local hm = monitor {}
      hm:record_crash(1)
      hm:record_crash(1)
      hm:record_crash("1")
      assert.are.equal(2, hm:worker_health(1).crash_count)
      assert.are.equal(1, hm:worker_health("1").crash_count)
      assert.are.equal(2, hm:stats().workers_with_crashes)
    end)
  end)

  describe("memory", function()
    it("forgets the worker idle longest when every slot is taken",
      function()
        local hm, t = monitor { max_crashes = 1, max_workers = 2,
                                crash_window_ms = 10 }
        hm:record_crash("w1", { reason = "first" })
        t.now = 20
        hm:record_crash("w2")
        t.now = 40
        hm:record_crash("w3")
        assert.are.equal(0, hm:worker_health("w1").crash_count)
        assert.are.same({ 0, 1 }, { hm:worker_health("w2").crashes_in_window,
                                    hm:worker_health("w2").crash_count })
        assert.are.equal(1, hm:worker_health("w3").crashes_in_window)
        -- w1 comes back as a new worker, with no memory of its reasons.
        t.now = 60
        hm:record_crash("w1")
        assert.are.same({ healthy = false, crashes_in_window = 1,
          last_crash_ms = 60, crash_count = 1, reasons = {} },
          hm:worker_health("w1"))
        assert.are.equal(0, hm:worker_health("w2").crash_count)
        assert.are.equal(4, hm:stats().total_crashes)
      end)

    it("never forgets a worker with a crash in the window", function()
      local hm = monitor { max_crashes = 3, max_workers = 1 }
      hm:record_crash("a")
      hm:record_crash("b")
      hm:record_crash("c")
      hm:record_crash("d")
      for _, id in ipairs { "b", "c", "d" } do
        assert.are.equal(1, hm:worker_health(id).crashes_in_window)
      end
      assert.are.equal(3, hm:stats().crashes_in_window)
    end)
  end)

  describe("methods", function()
    it("are callable as functions of the module", function()
      local hm = monitor { max_crashes = 1 }
      assert.is_true(health_monitor.record_crash(hm, "w", { reason = "x" }))
      assert.is_false(health_monitor.is_healthy(hm))
      assert.is_false(health_monitor.healthy(hm))
      assert.are.equal(1, health_monitor.worker_health(hm, "w").crash_count)
      assert.are.equal(1, health_monitor.stats(hm).total_crashes)
      assert.are.equal("default", health_monitor.name(hm))
    end)
  end)
end)
