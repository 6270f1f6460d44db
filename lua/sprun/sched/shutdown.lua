-- How a run that answers signals ends (internal, for sched/init.lua):
-- SIGINT, SIGTERM and SIGHUP, os.exit, and the grace period.
--
-- The rule: the first signal (or os.exit from a task) cancels every task
-- and gives them the grace period to end; a second one, or the end of
-- the grace period while a task still runs, kills what the tasks left
-- (every child's group) and exits at once.
--
-- The trap: os.exit is replaced for the run, so the original is kept
-- here, taken when this file is first loaded.

local core = require "sprun.core"
local kernel = require "sprun.sched.kernel"
local task_m = require "sprun.sched.task"

local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local tonumber = tonumber
local error = error
local format = string.format
local io_stderr = io.stderr
local state = kernel.state
local current = kernel.current
local cancel = task_m.cancel

local _M = {}

function _M.cancel_all(s)
  for t in each_key, kernel.live_tasks(s) do
    cancel(t)
  end
end
local cancel_all = _M.cancel_all

-- The signals a run that asks for them (sprun.main, sprun.run{ signals =
-- true }) answers. The first cancels every task and gives them the grace
-- period to end; a second one, or the end of the grace period, kills what
-- the tasks left (every child's group) and exits at once. SIGHUP reloads
-- instead, where the run was given a way to (`on_sighup`: sprun --policy).
local STOP_SIGNALS = { "SIGINT", "SIGTERM", "SIGHUP" }
_M.STOP_SIGNALS = STOP_SIGNALS

-- Exits the process now, from inside the loop, with the status of the
-- shutdown under way: the children's groups are killed, stdout flushed.
local exit = os.exit
_M.exit = exit

local function hard_exit(s, why)
  io_stderr:write("sprun: ", why, "; killing what is left and exiting\n")
  io_stderr:flush()
  s.loop:kill_children()
  io.stdout:flush()
  exit(s.stop_status)
end

-- Begins the shutdown: every task is cancelled and has grace_ms to end,
-- after which hard_exit. The run then ends with `status`.
local function begin_stop(s, status, name, grace_ms)
  s.stop_status, s.stop_name = status, name
  cancel_all(s)
  kernel.after(grace_ms, function()
    -- Every task may have ended already, the run settling its closing
    -- handles (a killed child being reaped), which in virtual time lets
    -- the clock jump here: then the run ends as it is.
    if s.live > 0 then
      hard_exit(s, format("tasks still running %d ms after %s", grace_ms,
                          name))
    end
  end)
end

function _M.watch_signals(s, grace_ms, on_sighup)
  for _, name in ipairs(STOP_SIGNALS) do
    local signum = core.signals[name]
    kernel.on_signal(signum, function()
      if signum == core.signals.SIGHUP and on_sighup then
        return on_sighup()
      end
      if not s.stop_status then
        begin_stop(s, 128 + signum, name, grace_ms)
      else
        hard_exit(s, format("%s after %s", name, s.stop_name))
      end
    end)
  end
end

-- The status os.exit(code) exits with, as LuaJIT's: true or nothing 0,
-- false 1, a number as it is (the system keeps its low 8 bits).
local function os_exit_status(code)
  if code == nil or code == true then
    return 0
  elseif code == false then
    return 1
  end
  return tonumber(code) or 1
end

-- os.exit in a run that answers signals (the sprun executable): called
-- from a task, it shuts the run down as a signal does (every task
-- cancelled, their cleanup run within the grace period, the children
-- killed) and the run ends with its status; the calling task is
-- cancelled at once. Called from anywhere else (a handler the loop runs)
-- it exits at once, the children's groups killed on the way out.
function _M.intercept_exit(s, grace_ms)
  os.exit = function(code, close)
    local task = current()
    if task == nil or state() ~= s or not s.running then
      io.stdout:flush()
      return exit(code, close)
    end
    if not s.stop_status then
      begin_stop(s, os_exit_status(code), "os.exit", grace_ms)
    end
    cancel(task)
    error(task[kernel.CANCELLED], 0)
  end
end

return _M
