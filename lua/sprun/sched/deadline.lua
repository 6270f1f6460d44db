-- Deadlines (internal), part of sched/kernel.lua's API: kernel.deadline,
-- capped and cap_deadline. A task keeps its deadline in its `deadline`
-- field (inherited at spawn, see kernel.new_task), an inline run in the
-- state's idl list (sched/inline.lua). Installed into the kernel table
-- when it loads (requiring the kernel from here would be a cycle).

local clock_now = require("sprun.clock").now

local _M = {}

function _M.install(K, get_state)
  -- The deadline (loop ms) of the code running now, or nil: a task's own
  -- (inherited from its parent, set by a timeout or a deadline_ms), or for
  -- an inline run without a task the nearest of its timeout's and those
  -- below it. sprun.deadline() is what is left of it. Inline runs nest on
  -- the C stack, so while run d is the deepest, the code running is its own
  -- (or a coroutine it runs): no coroutine.running, which the JIT does not
  -- compile, on a retry's path.
  local function deadline()
    local s = get_state()
    if s == nil then
      return nil
    end
    local d = s.idepth
    if d == 0 then
      local t = s.cur
      return t and t.deadline or nil
    end
    local dl = nil
    for j = d, 1, -1 do
      local x = s.idl[j]
      if x and not (dl and dl <= x) then
        dl = x
      end
      local tj = s.itask[j]
      if tj then
        x = tj.deadline
        return x and dl and (x < dl and x or dl) or x or dl
      end
    end
    local x = s.ibase.deadline
    return x and dl and (x < dl and x or dl) or x or dl
  end
  K.deadline = deadline

  -- A timeout of `ms` (nil: none) for I/O made now, capped by what is left
  -- of the deadline of the code running now (process.run, tcp.connect,
  -- http, pool calls): never below min_ms (http's 1), nil when neither.
  function K.capped(ms, min_ms)
    local dl = deadline()
    if dl == nil then
      return ms
    end
    local left = dl - clock_now()
    if min_ms and left < min_ms then
      left = min_ms
    elseif left < 0 then
      left = 0
    end
    if ms == nil or left < ms then
      return left
    end
    return ms
  end

  -- Sets the deadline of task `task` to `at` (loop ms) unless it has an
  -- earlier one.
  function K.cap_deadline(task, at)
    local dl = task.deadline
    if not (dl and dl <= at) then
      task.deadline = at
    end
  end
end

return _M
