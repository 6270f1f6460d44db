-- The scheduler: tasks are coroutines run on one libuv loop.
--
--   sprun.run(fn, ...)        runs fn as the main task until every task is
--                             done, and returns its values
--   sprun.spawn(fn, ...)      a new task: task:await([ms]), :cancel(),
--                             :status()
--   sprun.sleep(ms)           loop time passes; other tasks run meanwhile
--
-- This file is the scheduler's public face and its run loop. The rest of
-- sched/ does the work: kernel.lua (tokens, the ready queue, timers,
-- waits, dispatch, and the API the I/O modules use), coro.lua (the pooled
-- coroutines), task.lua (a task's end, cancellation and await),
-- inline.lua (children that run inline until they wait) and group.lua
-- (execute_batch's children, awaited at once).
--
-- Everything a task costs is counted: a task is one table of 200 bytes
-- (its fields in the array part) and a coroutine of 472; its token indexes
-- a dense array; its children are linked through them; the C side gathers
-- the timer events of a step into one call. Bulk work (thousands of spawns
-- without a yield, a large batch) raises the collector's pause while it
-- lasts.
--
-- The trap: the run loop resumes ready tasks and polls the loop in one
-- loop (a loop nested in another would keep the JIT from compiling
-- either), and a loop with tasks waiting but nothing armed that could
-- wake them is a deadlock, reported, never a hang.

local core = require "sprun.core"
local errors = require "sprun.errors"
local kernel = require "sprun.sched.kernel"
local IO_TOKEN0 = kernel.IO_TOKEN0
local task_m = require "sprun.sched.task"
local shutdown = require "sprun.sched.shutdown"
-- os.exit as it was before a run replaced it.
local exit = shutdown.exit
local coro = require "sprun.sched.coro"
local check = require "sprun.check"
local options = require "sprun.options"
local tables = require "sprun.tables"
local clock = require "sprun.clock"
local state_m = require "sprun.sched.state"

local select = select
local type = type
local tonumber = tonumber
local error = error
local unpack = unpack
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local pcall = pcall
local format = string.format
local getmetatable = getmetatable
local xpcall = xpcall
local traceback = debug.traceback
local io_stderr = io.stderr

local state = kernel.state
local current = kernel.current
local spawn_in = kernel.spawn_in
local resume = task_m.resume
local cancel = task_m.cancel
local results = task_m.results
local MS_MAX = check.MS_MAX
local Task = kernel.Task
local FINISHED = kernel.FINISHED
local STATE, VALUES, TIMER = kernel.STATE, kernel.VALUES, kernel.TIMER
local WAKE_TIMER = kernel.WAKE_TIMER
local enqueue = kernel.enqueue
local EV_TIMER = core.EV_TIMER
local EV_TIMERS = core.EV_TIMERS

local _M = {
  Task = Task,
  now = clock.now,
  current = current,
  running = kernel.running,
  -- After each sprun.run: { handles = the handles its tasks left open }
  -- (the signal watchers of the executable aside), for leak checks.
  last_run = nil,
}

--- Task methods ----------------------------------------------------------

-- "pending" (not started yet), "running", "waiting", "done", "failed" or
-- "cancelled".
function Task:status()
  check.self(self, Task, "task.status", "a task")
  return self[STATE]
end

-- Milliseconds of loop time: a number from 0 to 2^53 (nil when optional).
local function valid_ms(ms)
  return type(ms) == "number" and ms >= 0 and ms <= MS_MAX
end

-- What is expected of an invalid ms: the range is stated to a value past
-- its top, as an option's limit is.
local function expect_ms(ms)
  return check.expect_number(ms, 0, nil, MS_MAX)
end

-- Waits for the task to finish and returns its values; `nil, err` if it
-- raised (kind "task_crashed", with the error and traceback in details),
-- was cancelled (kind "cancelled") or did not finish within timeout_ms
-- (kind "timeout"; the task is then cancelled).
function Task:await(timeout_ms)
  check.self(self, Task, "task.await", "a task")
  if timeout_ms ~= nil and not valid_ms(timeout_ms) then
    check.arg_error("task.await", "timeout_ms", expect_ms(timeout_ms),
                    timeout_ms)
  end
  if FINISHED[self[STATE]] then
    return results(self)
  end
  local me = current()
  if me == nil then
    local s = state()
    if s ~= nil and s.running then
      error("task.await: called from a coroutine that is not a sprun task", 2)
    end
    error("task.await: the task's loop is not running", 2)
  end
  if me == self then
    error("task.await: a task cannot await itself", 2)
  end
  return task_m.await(me, self, timeout_ms)
end

-- Cancels the task: its wait ends at once, its timers stop, the processes
-- and sockets it owns are killed or closed, its child tasks are cancelled,
-- and the task sees a "cancelled" error at the point where it waits.
-- Returns true if the task was still unfinished.
function Task:cancel()
  check.self(self, Task, "task.cancel", "a task")
  return cancel(self)
end

--- Dispatch --------------------------------------------------------------

-- A timer of a task (a sleep, an await's timeout, an I/O timeout) wakes
-- it if it is still the one armed: `id` is the id of the timer that
-- fired. Other objects get the event themselves.
local function timer_fired(obj, id)
  if getmetatable(obj) == Task then
    if obj[TIMER] == id then
      obj[TIMER] = false
      enqueue(obj, WAKE_TIMER)
    end
    return true
  end
  return false
end

local function dispatch_traceback(err)
  return traceback(errors.message(err), 2)
end

-- The timer events of one step, in the order they fired (see
-- runtime/lua): list[2i - 1] is the token, list[2i] the id. A handler
-- that raises is reported as the dispatcher's errors are, and the other
-- timers still fire.
local function fire_timers(list, n)
  local s = state()
  local tokens, io_tokens = s.tokens, s.io_tokens
  for i = 1, 2 * n, 2 do
    local t = list[i]
    local obj
    if t >= IO_TOKEN0 then
      obj = io_tokens[t]
    else
      obj = tokens[t]
    end
    if obj and not timer_fired(obj, list[i + 1]) then
      local ok, err = xpcall(obj._event, dispatch_traceback, obj, EV_TIMER,
                             nil, list[i + 1])
      if not ok then
        io_stderr:write("sprun: error in event dispatch: ", err, "\n")
        io_stderr:flush()
      end
    end
  end
end

-- Called from C (runtime/lua) for every completion.
local function dispatch(token, kind, a, b, data, handle)
  if kind == EV_TIMERS then
    return fire_timers(handle, a)
  end
  local s = state()
  local obj
  if token >= IO_TOKEN0 then
    obj = s.io_tokens[token]
  else
    obj = s.tokens[token]
  end
  if not obj then
    return
  end
  if kind == EV_TIMER and timer_fired(obj, b) then
    return
  end
  obj:_event(kind, a, b, data, handle)
end

-- Opens a loop and makes it the running one (sched/state.lua).
local function open(opts)
  return state_m.open(opts, dispatch)
end

--- The loop -------------------------------------------------------------

local function drain(s)
  local q_task, q_why = s.q_task, s.q_why
  while s.q_head <= s.q_tail do
    local h = s.q_head
    local task, why = q_task[h], q_why[h]
    q_task[h], q_why[h] = nil, nil
    s.q_head = h + 1
    resume(task, why)
  end
  s.q_head, s.q_tail = 1, 0
end

local cancel_all = shutdown.cancel_all

-- One loop for both the ready tasks and the poll (see the trap above).
local function run_loop(s)
  local loop = s.loop
  local q_task, q_why = s.q_task, s.q_why
  while true do
    local h = s.q_head
    if h <= s.q_tail then
      local task, why = q_task[h], q_why[h]
      q_task[h], q_why[h] = nil, nil
      s.q_head = h + 1
      resume(task, why)
    else
      s.q_head, s.q_tail = 1, 0
      while s.bursts > 0 do
        s.bursts = s.bursts - 1
        coro.bulk_end()
      end
      if s.nturn > 0 then
        kernel.run_turn_end(s)
      end
      if s.live == 0 then
        return
      end
      -- The main task raised: the run's outcome is known, and the tasks it
      -- left are cancelled rather than waited for.
      if s.main[STATE] == "failed" and not s.main_failed then
        s.main_failed = true
        cancel_all(s)
      elseif not loop:step(false) and s.q_head > s.q_tail then
        -- Tasks wait, but nothing is armed that could wake them.
        local n = s.live
        cancel_all(s)
        drain(s)
        error(format("sprun: deadlock: %d task%s waiting with no timer "
                     .. "or I/O that could wake them", n,
                     n == 1 and " was" or "s were"), 0)
      end
    end
  end
end

-- Lets the handles the tasks closed finish closing (a killed child is
-- reaped, a socket's close callback runs), so that last_run counts only
-- what they left open. A closing handle always completes.
local function settle(s)
  local loop = s.loop
  while loop:closing_count() > 0 and loop:step(false) do
    drain(s)
  end
end

-- Runs `fn(...)` as the main task on a new loop until every task is done
-- (the arguments as spawn_in takes them: n, the first three, and all of
-- them in a list when there are more than three);
-- returns the main task and the signal that stopped the run, or raises
-- the error that broke the loop. opts: { clock, signals, shutdown_grace_ms,
-- on_sighup }.
local function run_main(opts, fn, n, a1, a2, a3, args)
  local s = open(opts)
  local main = spawn_in(s, nil, fn, n, a1, a2, a3, args)
  kernel.quiet(main)
  s.main = main
  local signals = opts ~= nil and opts.signals
  if signals then
    shutdown.watch_signals(s, opts.shutdown_grace_ms or 5000, opts.on_sighup)
    shutdown.intercept_exit(s, opts.shutdown_grace_ms or 5000)
  end
  local ok, err = pcall(run_loop, s)
  s.running = false
  if signals then
    os.exit = exit
  end
  if not ok then
    cancel_all(s)
    pcall(drain, s)
  end
  kernel.run_end(s)
  if s.q_head <= s.q_tail then
    pcall(drain, s)
  end
  pcall(settle, s)
  _M.last_run = {
    handles = state_m.close(s, signals)
              - (signals and #shutdown.STOP_SIGNALS or 0),
  }
  kernel.leave()
  coro.trim()
  -- Bulk work cut short by an error ends with the loop.
  coro.bulk_end_all()
  if not ok then
    error(err, 0)
  end
  return main, s.stop_status, s.stop_name
end

local parse_run_options = options.parser("sprun.run", {
  clock = { "choice", values = { "real", "virtual" } },
  signals = { "choice", values = { true, false }, default = false },
  shutdown_grace_ms = { "integer", min = 0, limit = MS_MAX },
})

-- The option of sprun.run that cannot apply inside a running loop, if
-- one was given: its key and the rule it breaks.
local function nested_misuse(s, raw, o)
  local clock = s.virtual and "virtual" or "real"
  if o.clock ~= nil and o.clock ~= clock then
    return "clock", "cannot be " .. check.describe(o.clock)
                    .. " inside a running loop whose clock is " .. clock
  end
  for _, k in ipairs { "signals", "shutdown_grace_ms" } do
    if raw[k] ~= nil then
      return k, "applies only to a run of its own, not inside a running "
                .. "loop (set it on the outer run)"
    end
  end
end

-- sprun.run inside a running loop: fn runs as a child task of the caller,
-- which waits for it; its values are returned and its error raised, as a
-- run of its own would.
local function run_nested(s, fn, args)
  local me = current()
  local task = spawn_in(s, me, fn, args.n, args[1], args[2], args[3], args)
  kernel.quiet(task)
  task_m.await(me, task)
  if task[STATE] == "done" then
    local v = task[VALUES]
    return unpack(v, 1, v.n)
  elseif task[STATE] == "failed" then
    error(task.error, 0)
  end
  error(kernel.new_cancel_error(task), 0)
end

-- Runs fn(...) as the main task of a new loop until every task is done,
-- and returns its values (or raises its error). Inside a running loop,
-- fn runs as a child task of the caller instead. opts: { clock = "real" |
-- "virtual", signals = false, shutdown_grace_ms = 5000 }.
local main_outcome

function _M.run(fn, ...)
  local opts, raw = nil, nil
  local args
  if type(fn) == "table" then
    raw = fn
    fn = ...
    args = tables.pack(select(2, ...))
    opts = parse_run_options(raw)
  else
    args = tables.pack(...)
  end
  check.func("sprun.run", "fn", fn)
  local s = state()
  if s ~= nil then
    kernel.check_caller("sprun.run")
    if opts then
      local key, rule = nested_misuse(s, raw, opts)
      if key then
        options.fail("sprun.run", key, rule)
      end
    end
    return run_nested(s, fn, args)
  end
  return main_outcome(run_main(opts, fn, args.n, args[1], args[2], args[3],
                               args))
end

-- What sprun.run returns once its run is over: the main task's values,
-- or its error raised.
main_outcome = function(main, stop_status)
  if stop_status then
    -- A signal or os.exit shut the run down (signals = true): exit as the
    -- sprun executable does, now that the tasks are done and the loop is
    -- closed.
    io.stdout:flush()
    exit(stop_status)
  end
  if main[STATE] == "done" then
    local v = main[VALUES]
    return unpack(v, 1, v.n)
  elseif main[STATE] == "cancelled" then
    error(main[kernel.CANCELLED], 0)
  end
  error(main.error, 0)
end

-- The exit status of a script that returned `v` (and `err`): a whole
-- number from 0 to 255 as it is, true or nothing 0, false or nil with an
-- error 1 (the error printed). Anything else is misuse: 2.
local function exit_status(v, err)
  local t = type(v)
  if t == "number" then
    if v % 1 == 0 and v >= 0 and v <= 255 then
      return v
    end
    return 2, format("sprun: the script returned %s: an exit status must be "
                     .. "a whole number from 0 to 255", check.describe(v))
  elseif v == nil and err == nil or v == true then
    return 0
  elseif (v == nil or v == false) then
    if err ~= nil then
      return 1, "sprun: " .. errors.message(err)
    end
    return 1
  end
  return 2, format("sprun: the script returned %s: return a number from 0 "
                   .. "to 255, true, false or nil, err", check.describe(v))
end

-- Runs a script's chunk as the sprun executable does (sprun.cli): as the
-- main task, with signals answered (see sched/shutdown.lua). Returns the exit
-- status and, on failure, the message with its traceback. opts: those of
-- sprun.run, and on_sighup.
function _M.main(opts, chunk, ...)
  local o = {}
  for k, v in each_key, opts do
    o[k] = v
  end
  o.signals = true
  local args = tables.pack(...)
  local main, stop_status = run_main(o, chunk, args.n, args[1], args[2],
                                     args[3], args)
  if stop_status then
    return stop_status
  end
  if main[STATE] == "done" then
    local v = main[VALUES]
    return exit_status(v[1], v[2])
  end
  if main[STATE] == "cancelled" then
    return 1, "sprun: the main task was cancelled"
  end
  return 1, "sprun: " .. main.traceback
end

-- Runs fn(...) as a task: inside a running loop it calls it (the caller
-- is a task already); outside, it runs a loop until fn is done. What
-- every function that must work from plain Lua code too is built on.
local function in_task_args(fn, n, a1, a2, a3, args)
  return main_outcome(run_main(nil, fn, n, a1, a2, a3, args))
end

function _M.in_task(fn, ...)
  if kernel.in_context() then
    return fn(...)
  end
  if state() ~= nil then
    return _M.run(fn, ...) -- raises: not called from a task
  end
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return in_task_args(fn, n, a1, a2, a3, n > 3 and tables.pack(...))
end

-- The body of sprun.spawn once its arguments are taken apart (a tail call
-- from it: the JIT cannot return into a vararg function from the trace
-- that follows the coroutine calls made here).
local function spawn_args(fn, n, a1, a2, a3, args)
  local s = state()
  if s == nil then
    error("sprun.spawn: no loop is running (start one with sprun.run)", 2)
  end
  return spawn_in(s, current(), fn, n, a1, a2, a3, args)
end

function _M.spawn(fn, ...)
  check.func("sprun.spawn", "fn", fn)
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return spawn_args(fn, n, a1, a2, a3, n > 3 and { ... })
end

-- The ms left before the deadline of the code running now (a timeout
-- around it, a deadline_ms, one inherited from the task that spawned
-- it): 0 once it has passed, nil with none, or outside a task.
function _M.deadline()
  local dl = kernel.deadline()
  if dl == nil then
    return nil
  end
  local left = dl - clock.now()
  return left > 0 and left or 0
end

-- Sleeps `ms` milliseconds of loop time; other tasks run meanwhile.
function _M.sleep(ms)
  if not valid_ms(ms) then
    check.arg_error("sprun.sleep", "ms", expect_ms(ms), ms)
  end
  local task = current()
  if task == nil then
    if state() ~= nil then
      error("sprun.sleep: called from a coroutine that is not a sprun task",
            2)
    end
    return _M.run(_M.sleep, ms)
  end
  return kernel.sleep_task(task, ms)
end

return _M
