-- The loop's upkeep (internal), part of sched/kernel.lua's API:
-- kernel.at_turn_end / run_turn_end (work gathered over one turn, done
-- once before the loop polls), kernel.after (background timers),
-- kernel.at_run_end / run_end and kernel.on_signal. Installed into the
-- kernel table when it loads, with the kernel's own state and token
-- functions (requiring the kernel from here would be a cycle).

local setmetatable = setmetatable
local pcall = pcall

local _M = {}

function _M.install(K, get_state, new_token, t_after)
  -- Runs fn(arg) once the tasks ready now have run, before the loop next
  -- polls: what several tasks add to in one turn (the requests a pool
  -- writes to a worker) goes out in one piece. fn must not wait.
  function K.at_turn_end(fn, arg)
    local s = get_state()
    local n = s.nturn + 1
    s.nturn = n
    s.turn_fn[n], s.turn_arg[n] = fn, arg
  end

  function K.run_turn_end(s)
    local fns, args = s.turn_fn, s.turn_arg
    local i = 1
    -- A function may add more: they run in this turn too.
    while i <= s.nturn do
      local fn, arg = fns[i], args[i]
      fns[i], args[i] = nil, nil
      fn(arg)
      i = i + 1
    end
    s.nturn = 0
  end

  -- Background timers run fn(arg) on the running loop `ms` from now, for
  -- the runtime's own upkeep (a breaker's half-open transition, a monitor's
  -- cleanup). Unlike a sleeping task they never keep the loop alive.
  -- Returns false when no loop is running.
  local Background = {}
  Background.__index = Background

  function Background:_event()
    self.sched.io_tokens[self.token] = nil
    self.fn(self.arg)
  end

  function K.after(ms, fn, arg)
    local s = get_state()
    if s == nil then
      return false
    end
    local b = setmetatable({ fn = fn, arg = arg, sched = s }, Background)
    b.token = new_token(s, b)
    t_after(s, ms, b.token)
    return true
  end

  -- Runs fn(arg) once when the running loop's run ends (its tasks are
  -- done), before its handles settle and the loop closes: what lives
  -- across tasks without keeping the run alive (a fleet's connection)
  -- closes there. Returns false when no loop is running.
  function K.at_run_end(fn, arg)
    local s = get_state()
    if s == nil then
      return false
    end
    local list = s.run_end
    list[#list + 1] = { fn, arg }
    return true
  end

  function K.run_end(s)
    local list = s.run_end
    if list[1] == nil then
      return
    end
    s.run_end = {}
    for i = 1, #list do
      pcall(list[i][1], list[i][2])
    end
  end

  -- Calls fn() whenever signal `signum` arrives while the loop runs; the
  -- watcher never keeps the loop alive.
  function K.on_signal(signum, fn)
    local token = new_token(get_state(), { _event = function() fn() end })
    return get_state().loop:signal_watch(signum, token)
  end
end

return _M
