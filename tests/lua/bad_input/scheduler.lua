-- Bad-input cases (see bad_input_spec.lua) of the scheduler and tasks:
-- sprun.sleep, sprun.spawn and sprun.run, and the methods of a task, one
-- from a run that is over included.
local sprun = require "sprun"
local sched = require "sprun.sched"
local fx = require "bad_input.fixtures"

local noop, MS_RANGE = fx.noop, fx.MS_RANGE
local cb, old_task = fx.cb, fx.old_task

return {
  { id = "sleep: nan",
    call = function() return sprun.sleep, 0 / 0 end,
    raises = "sprun.sleep: ms must be a number >= 0, got nan" },
  { id = "sleep: a string",
    call = function() return sprun.sleep, "10" end,
    raises = 'sprun.sleep: ms must be a number >= 0, got "10"' },
  { id = "sleep: inf",
    call = function() return sprun.sleep, math.huge end,
    raises = "sprun.sleep: ms " .. MS_RANGE .. ", got inf" },
  { id = "sleep: 2^53 + 2 in a task", task = true,
    call = function() return sprun.sleep, 2 ^ 53 + 2 end,
    raises = "sprun.sleep: ms " .. MS_RANGE .. ", got 9007199254740994" },
  { id = "sleep: -1", also = "sched_spec",
    call = function() return sprun.sleep, -1 end,
    raises = "sprun.sleep: ms must be a number >= 0, got -1" },
  { id = "sleep: from a coroutine of a task's own", task = true,
    call = function()
      return function()
        return coroutine.resume(coroutine.create(function()
          return pcall(sprun.sleep, 1)
        end))
      end
    end,
    returns = { true, false, "sprun.sleep: called from a coroutine that is "
      .. "not a sprun task" } },
  { id = "spawn: no function",
    call = function() return sprun.spawn, nil end,
    raises = "sprun.spawn: fn must be a function, got nil" },
  { id = "spawn: outside a loop",
    call = function() return sprun.spawn, noop end,
    raises = "sprun.spawn: no loop is running (start one with sprun.run)" },
  { id = "run: a number",
    call = function() return sprun.run, 5 end,
    raises = "sprun.run: fn must be a function, got 5" },
  { id = "run: clock \"fake\"",
    call = function() return sprun.run, { clock = "fake" }, noop end,
    raises = 'sprun.run: option \'clock\' must be "real" or "virtual", got '
      .. '"fake"' },
  { id = "run: option clok",
    call = function() return sprun.run, { clok = "virtual" }, noop end,
    raises = "sprun.run: unknown option 'clok' (did you mean 'clock'?)" },
  { id = "run: options but no function",
    call = function() return sprun.run, { clock = "virtual" } end,
    raises = "sprun.run: fn must be a function, got nil" },
  { id = "run: a virtual clock inside a running real loop", task = true,
    call = function() return sprun.run, { clock = "virtual" }, noop end,
    raises = "sprun.run: option 'clock' cannot be \"virtual\" inside a "
      .. "running loop whose clock is real" },
  { id = "run: signals inside a running loop", task = true,
    call = function() return sprun.run, { signals = true }, noop end,
    raises = "sprun.run: option 'signals' applies only to a run of its own, "
      .. "not inside a running loop (set it on the outer run)" },
  { id = "task.await: nil as self",
    call = function() return sched.Task.await, nil end,
    raises = "task.await: self must be a task, got nil (did you mean "
      .. "task:await(...)?)" },
  { id = "task.await: timeout -1",
    call = function() return old_task.await, old_task, -1 end,
    raises = "task.await: timeout_ms must be a number >= 0, got -1" },
  { id = "task.await: timeout a string",
    call = function() return old_task.await, old_task, "5" end,
    raises = 'task.await: timeout_ms must be a number >= 0, got "5"' },
  { id = "task.await: itself", task = true,
    call = function() local me = sched.current(); return me.await, me end,
    raises = "task.await: a task cannot await itself" },
  { id = "task.status: a breaker as self",
    call = function() return sched.Task.status, cb end,
    raises = "task.status: self must be a task, got table" },
  { id = "task.cancel: a table as self",
    call = function() return sched.Task.cancel, {} end,
    raises = "task.cancel: self must be a task, got table" },
  { id = "task from a finished run: await gives its values",
    call = function() return old_task.await, old_task end,
    returns = { "old", 2 } },
  { id = "task from a finished run: await inside another run", task = true,
    call = function() return old_task.await, old_task, 5 end,
    returns = { "old", 2 } },
  { id = "task from a finished run: cancel is refused",
    call = function() return old_task.cancel, old_task end,
    returns = { false } },
}
