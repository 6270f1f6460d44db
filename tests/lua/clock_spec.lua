-- sprun.clock.now reads the newest open loop's time through a pointer
-- (sp_loop_clock) instead of calling sp_loop_now_ms: both must always agree,
-- with no loop, with a real-time loop and with a virtual one, and after a
-- loop is closed.
local sprun = require "sprun"
local clock = require "sprun.clock"
local C = require("sprun.ffi").C

local function agree()
  -- The monotonic clock may tick between the two reads: read around it.
  local before = C.sp_loop_now_ms()
  local now = clock.now()
  local after = C.sp_loop_now_ms()
  assert.is_true(before <= now and now <= after,
                 ("%s <= %s <= %s"):format(before, now, after))
  return now
end

describe("clock.now", function()
  it("is the monotonic clock in whole ms with no loop open", function()
    assert.is_true(C.sp_loop_clock().now_ms == nil)
    local now = agree()
    assert.are.equal(0, now % 1)
  end)

  it("is the loop's time in a real-time loop", function()
    sprun.run(function()
      assert.is_false(C.sp_loop_clock().now_ms == nil)
      agree()
      sprun.sleep(3)
      agree()
    end)
    assert.is_true(C.sp_loop_clock().now_ms == nil)
    agree()
  end)

  it("is the virtual time in a virtual-time loop", function()
    local t0, t1 = sprun.run({ clock = "virtual" }, function()
      local a = agree()
      sprun.sleep(3600000)
      return a, agree()
    end)
    assert.are.equal(3600000, t1 - t0)
    assert.is_true(C.sp_loop_clock().now_ms == nil)
  end)
end)

-- Spins the CPU without yielding until the real clock has moved `ms`.
local function busy(ms)
  local t0 = sprun.hrtime()
  while sprun.hrtime() - t0 < ms * 1e6 do end
end

describe("sprun.now and sprun.update_time", function()
  it("now is the time at the start of the loop's turn: it does not move "
     .. "during CPU-bound work; update_time brings it up to the clock",
     function()
    sprun.run(function()
      local t0 = sprun.now()
      busy(50)
      assert.are.equal(t0, sprun.now())
      sprun.update_time()
      -- libuv's coarse clock may lag the fine one by a few ms.
      assert.is_true(sprun.now() - t0 >= 40, sprun.now() - t0)
      agree()
    end)
  end)

  it("a breaker whose reset timeout passed during a CPU-bound turn is "
     .. "half_open after update_time", function()
    sprun.run(function()
      local cb = sprun.circuit_breaker.start_link { name = "db",
        failure_threshold = 1, reset_timeout_ms = 20 }
      cb:call(function() return nil, "down" end)
      busy(50)
      assert.are.equal("open", cb:state())
      sprun.update_time()
      assert.are.equal("half_open", cb:state())
    end)
  end)

  it("and on the first turn of the loop after, without update_time",
    function()
    local seen = {}
    sprun.run(function()
      local cb = sprun.circuit_breaker.start_link { name = "db",
        failure_threshold = 1, reset_timeout_ms = 20 }
      cb:call(function() return nil, "down" end)
      busy(50)
      seen[1] = cb:state()
      sprun.sleep(0)
      seen[2] = cb:state()
    end)
    assert.are.same({ "open", "half_open" }, seen)
  end)

  it("the breaker's half_open event fires on the first turn after a "
     .. "CPU-bound turn", function()
    local seen = {}
    sprun.telemetry.attach("half-open-watch",
      { "snakepit", "circuit_breaker", "half_open" },
      function() seen[#seen + 1] = "half_open" end)
    sprun.run(function()
      local cb = sprun.circuit_breaker.start_link { name = "db",
        failure_threshold = 1, reset_timeout_ms = 20 }
      cb:call(function() return nil, "down" end)
      busy(50)
      seen[#seen + 1] = "turn ends"
      sprun.sleep(0)
      seen[#seen + 1] = "next turn"
    end)
    sprun.telemetry.detach("half-open-watch")
    assert.are.same({ "turn ends", "half_open", "next turn" }, seen)
  end)

  it("leaves a virtual clock where it is, and is harmless with no loop",
    function()
    local moved = sprun.run({ clock = "virtual" }, function()
      local t0 = sprun.now()
      busy(20)
      sprun.update_time()
      return sprun.now() - t0
    end)
    assert.are.equal(0, moved)
    sprun.update_time()
    agree()
  end)
end)
