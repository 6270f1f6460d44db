-- Time as sprun reads it (internal). now() is monotonic whole ms and
-- hrtime() nanoseconds, both read in runtime/lua/module.c; update_time()
-- moves the loop's time on. Breakers and
-- monitors read time through reader(), which gives either now() or the
-- user's `clock` option, checked at every read.

local sp = require "sprun.ffi"
local check = require "sprun.check"

local C = sp.C
local tonumber = tonumber
local type = type
local error = error
local format = string.format
local describe = check.describe
local expect_number = check.expect_number

local _M = {}

-- Neither ends in a tail call: a function whose root trace would end in a
-- tail call to C cannot be compiled on its own, gets blacklisted, and then
-- aborts every trace that calls it.
-- Where the newest open loop keeps its time (see runtime/lua/loop.h): a
-- load instead of a call on the hot paths that read the time.
local loop_clock = C.sp_loop_clock()

-- The running loop's time (virtual under a virtual clock), else the
-- monotonic clock.
function _M.now()
  local p = loop_clock.now_ms
  if p ~= nil then
    return tonumber(p[0])
  end
  local ms = C.sp_loop_now_ms()
  return ms
end

-- Brings the running loop's time up to the real clock (libuv's
-- uv_update_time): now() is the time at the start of the loop's turn and
-- does not move while Lua runs without yielding. A virtual clock, or no
-- loop, is left as it is.
function _M.update_time()
  C.sp_loop_update_time()
end

function _M.hrtime()
  local ns = C.sp_clock_ns()
  return ns
end

-- Whether the running loop's clock is virtual (sched/kernel.lua sets it
-- when a run begins and ends).
local virtual = false

function _M.set_virtual(v)
  virtual = v
end

-- The clock telemetry measures durations with, in ns: the monotonic clock
-- (hrtime), or the loop's time under a virtual clock, so that a virtual
-- run's durations are the virtual time its calls took (a 300 ms sleep
-- measures 300 ms) and its trace and report are the same on every run.
function _M.ticks_ns()
  if virtual then
    return _M.now() * 1e6
  end
  local ns = C.sp_clock_ns()
  return ns
end

-- The function that gives the time in ms for `owner` ("circuit_breaker"):
-- `clock` when the user gave one, else now(). A user clock must return a
-- number >= 0; the error names the option, since that is what to fix.
function _M.reader(owner, clock)
  if clock == nil then
    return _M.now
  end
  return function()
    local t = clock()
    if type(t) ~= "number" or not (t >= 0 and t <= check.MS_MAX) then
      local expectation = expect_number(t, 0) or ""
      error(format("%s: option 'clock' %s, got %s", owner,
                   expectation:gsub("^must be", "must return"), describe(t)),
            3)
    end
    return t
  end
end

return _M
