-- The running loop's timers as the scheduler uses them (internal to
-- sprun.sched): calls through the FFI into runtime/lua, which run no Lua
-- and no loop and so compile into the caller's trace. `s` is the running
-- scheduler's state (kernel.state()); s.h is its loop for these calls.
--
-- A timer fires once, as an EV_TIMER for its token carrying its id;
-- timers of equal deadlines fire in the order they were armed, or in the
-- order of the place reserved for them (reserve) when one was. Deadlines
-- are whole ms of loop time; the clamp of a deadline that would pass the
-- last one a timer takes is C's (sp_lua_timer_deadline), the one rule for
-- Lua and C alike.
--
-- The trap: a timer that cannot be armed (no memory) raises; a wait whose
-- timer silently failed would never end.

local core = require "sprun.core"
local C = require("sprun.ffi").C

local error = error
local tostring = tostring

local _M = {}

-- `id`, a timer's id or deadline, unless it is a negative libuv code.
local function checked(id)
  if id < 0 then
    error("sprun: cannot arm a timer: " .. tostring(core.uv_err_name(id)),
          0)
  end
  return id
end

-- A timer `ms` from now for `token`; its place among equal deadlines is
-- that of `seq` (from reserve) if given. Returns its id.
function _M.after(s, ms, token, seq)
  return checked(C.sp_lua_timer_after(s.h, ms, token, seq or -1))
end

-- A timer at the absolute deadline `deadline` (see deadline).
function _M.add(s, deadline, token, seq)
  return checked(C.sp_lua_timer_add(s.h, deadline, token, seq or -1))
end

-- Disarms timer `id`: true if it was armed.
function _M.cancel(s, id)
  return C.sp_lua_timer_cancel(s.h, id) == 0
end

-- A place among equal deadlines, taken now, for a timer armed later.
function _M.reserve(s)
  return C.sp_lua_timer_reserve(s.h)
end

-- The deadline a timer armed `ms` from now gets.
function _M.deadline(s, ms)
  return checked(C.sp_lua_timer_deadline(s.h, ms))
end

return _M
