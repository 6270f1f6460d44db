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
