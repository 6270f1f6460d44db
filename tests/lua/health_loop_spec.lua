-- The health monitor on the loop: old crashes are dropped every
-- check_interval_ms by a background timer that never keeps the loop alive.
local sprun = require "sprun"
local sched = require "sprun.sched"

describe("health monitor cleanup timer", function()
  it("drops crashes older than the window every check_interval_ms", function()
    local seen = {}
    sprun.run({ clock = "virtual" }, function()
      local hm = sprun.health_monitor.start_link {
        pool = "p", crash_window_ms = 500, max_crashes = 3,
        check_interval_ms = 1000,
      }
      hm:record_crash("w1", { reason = "segfault" })
      hm:record_crash("w2", { reason = "segfault" })
      -- Read the C counters directly: a query would expire old crashes
      -- itself and hide whether the timer ran.
      seen[1] = hm._h.crashes_in_window
      sprun.sleep(900)  -- the window has passed, the timer has not fired
      seen[2] = hm._h.crashes_in_window
      sprun.sleep(200)  -- t = 1100: the timer fired at 1000
      seen[3] = hm._h.crashes_in_window
      seen[4] = hm._h.workers_with_crashes
    end)
    assert.are.same({ 2, 2, 0, 0 }, seen)
    assert.are.equal(0, sched.last_run.handles)
  end)

  it("does not keep the loop alive", function()
    local t0 = sprun.hrtime()
    local t_virtual
    sprun.run(function()
      local hm = sprun.health_monitor.start_link { check_interval_ms = 60000 }
      hm:record_crash("w1")
    end)
    assert.is_true((sprun.hrtime() - t0) / 1e6 < 10000)
    sprun.run({ clock = "virtual" }, function()
      local hm = sprun.health_monitor.start_link { check_interval_ms = 5000 }
      local start = sprun.now()
      hm:record_crash("w1")
      sprun.sleep(1)
      t_virtual = sprun.now() - start
    end)
    -- The run ends with its last task, not at the timer's 5000 ms.
    assert.are.equal(1, t_virtual)
    assert.are.equal(0, sched.last_run.handles)
  end)
end)
