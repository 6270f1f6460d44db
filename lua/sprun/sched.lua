-- The scheduler: tasks are coroutines run on one libuv loop.
--
-- Every wait (a sleep, an await, a process or a socket) is one yield of the
-- task's coroutine; the loop reports completions through one dispatcher
-- (`dispatch`, called from C with a token), which puts the waiting task on
-- the ready queue. The scheduler resumes ready tasks in order, and only
-- polls the loop when none is ready, so a completion can never arrive while
-- a task runs: what arrives early is kept on the object it belongs to until
-- the task asks for it.
--
-- The trap: a task may be cancelled while it is queued to resume. Every
-- wait therefore checks the task's `cancelled` flag after the yield
-- returns, whatever woke it, and raises the cancellation there.

local core = require "sprun.core"
local errors = require "sprun.errors"
local check = require "sprun.check"

local co_create = coroutine.create
local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_running = coroutine.running
local co_status = coroutine.status
local traceback = debug.traceback
local select = select
local setmetatable = setmetatable
local type = type
local error = error
local tostring = tostring
local unpack = unpack
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local getmetatable = getmetatable
local format = string.format
local io_stderr = io.stderr

local EV_TIMER = core.EV_TIMER

local _M = {}

-- The running scheduler, or nil. One loop runs at a time in a Lua state.
local S = nil

local Task = {}
Task.__index = Task

-- Wake-up reasons a wait sees when its yield returns.
local WAKE_TIMER = 1
local WAKE_DONE = 2
local WAKE_IO = 3
local WAKE_START = 4
local WAKE_CANCEL = 5
_M.WAKE_TIMER, _M.WAKE_DONE, _M.WAKE_IO = WAKE_TIMER, WAKE_DONE, WAKE_IO

local FINISHED = { done = true, failed = true, cancelled = true }

local function pack(...)
  return { n = select("#", ...), ... }
end

-- Ready queue: a ring of (task, reason) pairs, in parallel arrays so that a
-- wake-up allocates nothing. A task is queued at most once: a second wake-up
-- before it runs would resume it later inside some other wait. When a timer
-- fires for a task already queued, the timer's reason replaces the queued
-- one (the wait checks what else happened; a lost timeout would never come
-- back); any other reason leaves the queued one alone.
local function enqueue(task, reason)
  local q = S
  if task.queued then
    if reason == WAKE_TIMER then
      q.q_why[task.q_index] = reason
    end
    return
  end
  local tail = q.q_tail + 1
  q.q_tail = tail
  q.q_task[tail] = task
  q.q_why[tail] = reason
  task.queued = true
  task.q_index = tail
end

-- The deadline of a timer `ms` from now. Waits of up to 2^53 ms are
-- allowed, but the loop's timers take deadlines below 2^53: a later one is
-- clamped (it is 285,000 years away either way).
local TIMER_MAX = check.MS_MAX - 1

local function deadline(loop, ms)
  local d = loop:now() + ms
  if d > TIMER_MAX then
    return TIMER_MAX
  end
  return d
end

-- Tokens name what C reports on: a task (its timers) or an I/O object.
local function new_token(sched, obj)
  local t = sched.next_token + 1
  sched.next_token = t
  sched.tokens[t] = obj
  return t
end

local function free_token(sched, t)
  sched.tokens[t] = nil
end

-- Called from C (runtime/lua/loop.c) for every completion.
local function dispatch(token, kind, a, b, data, handle)
  local obj = S.tokens[token]
  if obj == nil then
    return
  end
  if kind == EV_TIMER and obj.timer then
    -- A task's own timer: a sleep or an await's timeout.
    obj.timer = nil
    enqueue(obj, WAKE_TIMER)
    return
  end
  obj:_event(kind, a, b, data, handle)
end

local function new_sched(opts)
  local virtual = opts and opts.clock == "virtual" or false
  local sched = {
    virtual = virtual,
    tokens = {},
    next_token = 0,
    by_co = setmetatable({}, { __mode = "k" }),
    q_task = {}, q_why = {}, q_head = 1, q_tail = 0,
    live = 0,
    all = {},        -- every unfinished task, for cancel_all
    stop_signal = nil,
  }
  return sched
end

local function current_task()
  local co = co_running()
  if co == nil or S == nil then
    return nil
  end
  return S.by_co[co]
end
_M.current = current_task

-- Raises the cancellation inside the task that was cancelled.
local function raise_cancelled(task)
  error(task.cancel_error, 0)
end

-- Suspends the running task until something enqueues it. Returns why.
local function wait(task)
  if task.cancelled then
    raise_cancelled(task)
  end
  task.state = "waiting"
  local why = co_yield()
  task.state = "running"
  if task.cancelled then
    raise_cancelled(task)
  end
  return why
end
_M._wait = wait

-- An error value as text, as the sprun executable prints it. Never raises:
-- a __tostring that raises or returns something other than a string must
-- not turn one task's failure into a failure of the whole loop.
local function error_message(err)
  if type(err) == "string" or type(err) == "number" then
    return tostring(err)
  end
  local mt = getmetatable(err)
  if type(mt) == "table" and mt.__tostring then
    local ok, s = pcall(tostring, err)
    if ok and type(s) == "string" then
      return s
    end
  end
  return "(error object is a " .. type(err) .. " value)"
end
_M.error_message = error_message

-- tostring(v) for an error value of any kind, never raising (see above).
function _M.error_text(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then
    return s
  end
  return "(error object is a " .. type(v) .. " value)"
end

local function print_failure(task)
  io_stderr:write("sprun: task ", tostring(task.id), " failed: ",
                  task.traceback or error_message(task.error), "\n")
  io_stderr:flush()
end

local function finish(task, ok, ...)
  local sched = task.sched
  sched.live = sched.live - 1
  sched.all[task] = nil
  sched.by_co[task.co] = nil
  free_token(sched, task.token)
  if ok then
    task.state = "done"
    task.values = pack(...)
  else
    local err = ...
    if task.cancelled and err == task.cancel_error then
      task.state = "cancelled"
    else
      task.state = "failed"
      task.error = err
      task.traceback = traceback(task.co, error_message(err))
    end
  end
  task.co = nil
  task.fn, task.args = nil, nil
  if task.parent and task.parent.children then
    task.parent.children[task] = nil
  end
  local waiters = task.waiters
  if waiters then
    task.waiters = nil
    for i = 1, #waiters do
      local w = waiters[i]
      if w.waiting_for == task then
        w.waiting_for = nil
        if w.timer then
          sched.loop:timer_cancel(w.timer)
          w.timer = nil
        end
        enqueue(w, WAKE_DONE)
      end
    end
    task.observed = true
  elseif task.state == "failed" and not task.quiet then
    -- Nobody awaits it yet: its parent may still do so. The failure is
    -- printed when the parent finishes without having looked at it, or now
    -- if there is no parent left to look.
    local parent = task.parent
    if parent == nil or FINISHED[parent.state] or task.detached then
      print_failure(task)
    else
      local list = parent.unobserved
      if list == nil then
        list = {}
        parent.unobserved = list
      end
      list[#list + 1] = task
    end
  end
  local list = task.unobserved
  if list ~= nil then
    task.unobserved = nil
    for i = 1, #list do
      if not list[i].observed then
        print_failure(list[i])
      end
    end
  end
end

local function task_body(task)
  local args = task.args
  return task.fn(unpack(args, 1, args.n))
end

-- Stops what a task holds: its child tasks, resources and timer.
local function release(task)
  if task.children then
    for child in pairs(task.children) do
      child:cancel()
    end
  end
  if task.resources then
    for res in pairs(task.resources) do
      res:_abort()
    end
    task.resources = nil
  end
  if task.timer then
    task.sched.loop:timer_cancel(task.timer)
    task.timer = nil
  end
end

local function finish_or_yield(task, ok, ...)
  if co_status(task.co) == "dead" then
    finish(task, ok, ...)
  elseif task.state == "running" then
    -- The task called coroutine.yield itself, not through a sprun wait:
    -- nothing would ever resume it, and it could not even be cancelled
    -- (its awaiter would then wait forever). It fails at once instead.
    release(task)
    finish(task, false, format("task %d called coroutine.yield outside a "
      .. "sprun wait (use sprun.sleep, an await or an I/O call)", task.id))
  end
end

local function resume(task, why)
  task.queued = false
  if FINISHED[task.state] then
    return
  end
  task.state = "running"
  if why == WAKE_START then
    -- The first resume passes the task to task_body.
    finish_or_yield(task, co_resume(task.co, task))
  else
    finish_or_yield(task, co_resume(task.co, why))
  end
end

local next_id = 0

local function spawn_in(sched, parent, fn, args)
  next_id = next_id + 1
  local task = setmetatable({
    id = next_id,
    sched = sched,
    fn = fn,
    args = args,
    state = "pending",
    parent = parent,
    cancelled = false,
  }, Task)
  task.co = co_create(task_body)
  task.token = new_token(sched, task)
  sched.by_co[task.co] = task
  sched.live = sched.live + 1
  sched.all[task] = true
  if parent then
    local children = parent.children
    if children == nil then
      children = {}
      parent.children = children
    end
    children[task] = true
  end
  enqueue(task, WAKE_START)
  return task
end

--- Tasks ---------------------------------------------------------------

-- "pending" (not started yet), "running", "waiting", "done", "failed" or
-- "cancelled".
function Task:status()
  check.self(self, Task, "task.status", "a task")
  return self.state
end

-- The results of a finished task, as await returns them.
local function results(task)
  task.observed = true
  local st = task.state
  if st == "done" then
    local v = task.values
    return unpack(v, 1, v.n)
  elseif st == "failed" then
    return nil, errors.error(errors.TASK_CRASHED,
                             _M.error_text(task.error), {
      error = task.error, traceback = task.traceback,
    })
  end
  return nil, errors.error(errors.CANCELLED, "task " .. task.id
                           .. " was cancelled")
end

-- Milliseconds of loop time: a number from 0 to 2^53 (nil when optional).
local function valid_ms(ms)
  return type(ms) == "number" and ms >= 0 and ms <= check.MS_MAX
end

-- What is expected of an invalid ms: the range is stated to a value past
-- its top, as check.options states it.
local function expect_ms(ms)
  return check.expect_number(ms, 0, nil, check.MS_MAX)
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
  if FINISHED[self.state] then
    return results(self)
  end
  local me = current_task()
  if me == nil then
    if S ~= nil and S.running then
      error("task.await: called from a coroutine that is not a sprun task", 2)
    end
    error("task.await: the task's loop is not running", 2)
  end
  if me == self then
    error("task.await: a task cannot await itself", 2)
  end
  local waiters = self.waiters
  if waiters == nil then
    waiters = {}
    self.waiters = waiters
  end
  waiters[#waiters + 1] = me
  me.waiting_for = self
  if timeout_ms then
    me.timer = S.loop:timer_add(deadline(S.loop, timeout_ms), me.token)
  end
  local ok, why = pcall(wait, me)
  if not ok then
    -- Cancelled while waiting: stop waiting and pass the cancellation on.
    me.waiting_for = nil
    error(why, 0)
  end
  if why == WAKE_TIMER and not FINISHED[self.state] then
    -- Cancel it, and return once it has really stopped (its cleanups ran).
    me.waiting_for = nil
    self:cancel()
    if not FINISHED[self.state] then
      waiters = self.waiters or {}
      self.waiters = waiters
      waiters[#waiters + 1] = me
      me.waiting_for = self
      wait(me)
    end
    return nil, errors.error(errors.TIMEOUT, "did not finish within "
      .. timeout_ms .. " ms",
      { timeout_ms = timeout_ms })
  end
  return results(self)
end

-- Cancels the task: its wait ends at once, its timers stop, the processes
-- and sockets it owns are killed or closed, its child tasks are cancelled,
-- and the task sees a "cancelled" error at the point where it waits.
-- Returns true if the task was still unfinished.
function Task:cancel()
  check.self(self, Task, "task.cancel", "a task")
  if FINISHED[self.state] or self.cancelled then
    return false
  end
  self.cancelled = true
  self.cancel_error = errors.error(errors.CANCELLED, "task " .. self.id
                                   .. " was cancelled")
  release(self)
  if self.state == "pending" then
    -- Never started: it finishes now without running.
    finish(self, false, self.cancel_error)
  elseif self.state == "waiting" and not self.queued then
    enqueue(self, WAKE_CANCEL)
  end
  return true
end

-- Resources (processes, sockets, servers) belong to the task that made
-- them; cancelling the task aborts them.
function _M._own(task, res)
  if task == nil then
    return
  end
  local r = task.resources
  if r == nil then
    r = {}
    task.resources = r
  end
  r[res] = true
end

function _M._disown(task, res)
  if task and task.resources then
    task.resources[res] = nil
  end
end

--- The loop -------------------------------------------------------------

local function drain(sched)
  local q_task, q_why = sched.q_task, sched.q_why
  while sched.q_head <= sched.q_tail do
    local h = sched.q_head
    local task, why = q_task[h], q_why[h]
    q_task[h], q_why[h] = nil, nil
    sched.q_head = h + 1
    resume(task, why)
  end
  sched.q_head, sched.q_tail = 1, 0
end

local function cancel_all(sched)
  for t in pairs(sched.all) do
    t:cancel()
  end
end

local function run_loop(sched)
  local loop = sched.loop
  while true do
    drain(sched)
    if sched.live == 0 then
      return
    end
    if not loop:step(false) and sched.q_head > sched.q_tail then
      -- Tasks wait, but nothing is armed that could wake them.
      local n = sched.live
      cancel_all(sched)
      drain(sched)
      error(format("sprun: deadlock: %d task%s waiting with no timer "
                          .. "or I/O that could wake them", n,
                          n == 1 and " was" or "s were"), 0)
    end
  end
end

-- Lets the handles the tasks closed finish closing (a killed child is
-- reaped, a socket's close callback runs), so that last_run counts only
-- what they left open. A closing handle always completes.
local function settle(sched)
  local loop = sched.loop
  while loop:closing_count() > 0 and loop:step(false) do
    drain(sched)
  end
end

-- Runs `fn(...)` as the main task on a new loop until every task is done;
-- returns its values or raises its error. opts: { clock = "virtual" }.
local function run_main(opts, fn, args, on_signal)
  if S ~= nil then
    error("sprun.run: a loop is already running; use sprun.spawn inside it",
          3)
  end
  local sched = new_sched(opts)
  sched.loop = core.loop_new(sched.virtual, dispatch)
  S = sched
  sched.running = true
  local main = spawn_in(sched, nil, fn, args)
  main.quiet = true
  if on_signal then
    for _, name in ipairs { "SIGINT", "SIGTERM" } do
      local signum = core.signals[name]
      local tok = new_token(sched, {
        _event = function()
          if sched.stop_signal == nil then
            sched.stop_signal = signum
            cancel_all(sched)
          end
        end,
      })
      sched.loop:signal_watch(signum, tok)
    end
  end
  local ok, err = pcall(run_loop, sched)
  sched.running = false
  if not ok then
    cancel_all(sched)
    pcall(drain, sched)
  end
  pcall(settle, sched)
  -- What the tasks left open (the signal watchers aside), for leak checks:
  -- closing the loop closes it anyway.
  _M.last_run = {
    handles = sched.loop:handle_count() - (on_signal and 2 or 0),
  }
  sched.loop:close()
  S = nil
  if not ok then
    error(err, 0)
  end
  return main, sched.stop_signal
end

local parse_run_options = check.options("sprun.run", {
  clock = { "choice", values = { "real", "virtual" }, default = "real" },
})

function _M.run(fn, ...)
  local opts = nil
  local args
  if type(fn) == "table" then
    opts = fn
    fn = ...
    args = pack(select(2, ...))
    opts = parse_run_options(opts)
  else
    args = pack(...)
  end
  check.func("sprun.run", "fn", fn)
  local main = run_main(opts, fn, args, false)
  if main.state == "done" then
    local v = main.values
    return unpack(v, 1, v.n)
  end
  error(main.error, 0)
end

-- The entry point of the sprun executable: runs the loaded chunk as the
-- main task. Returns the exit status and, on failure, the message with its
-- traceback.
function _M.main(opts, chunk, ...)
  local main, signum = run_main(opts, chunk, pack(...), true)
  if signum then
    return 128 + signum
  end
  if main.state == "done" then
    local v = main.values[1]
    if type(v) == "number" then
      return v
    end
    return 0
  end
  if main.state == "cancelled" then
    return 1, "sprun: the main task was cancelled"
  end
  return 1, "sprun: " .. main.traceback
end

-- Raises, at the level of the caller of the API function that calls it,
-- when a loop is running but the caller is not one of its tasks (a
-- coroutine of its own inside a task): in_task would try to start a
-- second loop, and the error would name sprun.run, which nobody called.
function _M.check_caller(fname)
  if S ~= nil and current_task() == nil then
    error(fname .. ": called from a coroutine that is not a sprun task", 3)
  end
end

-- Runs fn as a task: inside a running loop it spawns a child of the current
-- task; outside, it runs a loop until fn is done. Used by everything that
-- must work from plain Lua code too.
function _M.in_task(fn, ...)
  if current_task() ~= nil then
    return fn(...)
  end
  return _M.run(fn, ...)
end

function _M.spawn(fn, ...)
  check.func("sprun.spawn", "fn", fn)
  if S == nil then
    error("sprun.spawn: no loop is running (start one with sprun.run)", 2)
  end
  return spawn_in(S, current_task(), fn, pack(...))
end

-- Sleeps `ms` milliseconds of loop time; other tasks run meanwhile.
function _M.sleep(ms)
  if not valid_ms(ms) then
    check.arg_error("sprun.sleep", "ms", expect_ms(ms), ms)
  end
  local task = current_task()
  if task == nil then
    if S ~= nil then
      error("sprun.sleep: called from a coroutine that is not a sprun task",
            2)
    end
    return _M.run(_M.sleep, ms)
  end
  local loop = S.loop
  task.timer = loop:timer_add(deadline(loop, ms), task.token)
  wait(task)
end

_M.now = require("sprun.clock").now

-- I/O objects keep the tasks waiting on them in `obj.waiters`, in the
-- order they started waiting (a reader and a task waiting for the exit may
-- wait on one process): _block waits as one of them (a cancellation passes
-- through), _wake ends the wait of them all; each checks again what it
-- waits for.
local function remove_waiter(obj, task)
  local ws = obj.waiters
  if ws ~= nil then
    for i = #ws, 1, -1 do
      if ws[i] == task then
        table.remove(ws, i)
        break
      end
    end
  end
end

function _M._block(obj, task)
  local ws = obj.waiters
  if ws == nil then
    ws = {}
    obj.waiters = ws
  end
  ws[#ws + 1] = task
  local ok, why = pcall(wait, task)
  -- Woken by something else (a timer, a cancellation): stop waiting here.
  remove_waiter(obj, task)
  if not ok then
    error(why, 0)
  end
  return why
end

function _M._wake(obj)
  local ws = obj.waiters
  if ws ~= nil and ws[1] ~= nil then
    obj.waiters = nil
    for i = 1, #ws do
      enqueue(ws[i], WAKE_IO)
    end
  end
end

-- Arms the task's own timer (one at a time); it wakes the task with
-- WAKE_TIMER unless disarmed first.
function _M._arm(task, ms)
  local loop = S.loop
  task.timer = loop:timer_add(deadline(loop, ms), task.token)
end

function _M._disarm(task)
  if task.timer then
    S.loop:timer_cancel(task.timer)
    task.timer = nil
  end
end

-- Background timers run fn(arg) on the running loop `ms` from now, for
-- the runtime's own upkeep (a breaker's half-open transition, a monitor's
-- cleanup). Unlike a sleeping task they never keep the loop alive. Returns
-- false when no loop is running.
local Background = {}
Background.__index = Background

function Background:_event()
  free_token(self.sched, self.token)
  self.fn(self.arg)
end

function _M.after(ms, fn, arg)
  local sched = S
  if sched == nil then
    return false
  end
  local b = setmetatable({ fn = fn, arg = arg, sched = sched }, Background)
  b.token = new_token(sched, b)
  sched.loop:timer_add(deadline(sched.loop, ms), b.token)
  return true
end

-- The running scheduler (an opaque value to compare), or nil.
function _M.running()
  return S
end

-- Code that runs user functions under pcall calls this with the error it
-- caught: a cancellation of the current task goes on up, never swallowed.
function _M.reraise_cancel(err)
  local task = current_task()
  if task ~= nil and task.cancelled and err == task.cancel_error then
    error(err, 0)
  end
end

function _M._spawn_in(sched, parent, fn, ...)
  return spawn_in(sched, parent, fn, pack(...))
end

-- The current task, for functions that can only run in one.
function _M.need_task(fname)
  local task = current_task()
  if task == nil then
    error(fname .. ": must be called from a task (inside sprun.run or a "
          .. "script run by sprun)", 3)
  end
  return task
end

-- Writes `data` through obj.handle and waits, as `task`, until the write
-- is done. Writes finish in order, so the waiting writers form a queue
-- (obj.writers) that _write_done pops. Returns 0 or a negative libuv code,
-- or nil, name, message if the write could not start.
function _M._write(obj, task, data)
  local ok, ename, emsg = obj.handle:write(data, obj.token)
  if not ok then
    return nil, ename, emsg
  end
  local w = { task = task }
  local writers = obj.writers
  writers[#writers + 1] = w
  while w.result == nil do
    wait(task)
  end
  return w.result
end

-- Called for each SP_EV_WRITE of obj's handle. A writer entry of false
-- stands for a write nobody waits for.
function _M._write_done(obj, code)
  local w = table.remove(obj.writers, 1)
  if w then
    w.result = code
    if not w.task.queued then
      enqueue(w.task, WAKE_IO)
    end
  end
end

-- Internal access for the I/O modules.
function _M._sched()
  return S
end
_M._enqueue = enqueue
_M._new_token = function(obj) return new_token(S, obj) end
_M._free_token = function(t) if S then free_token(S, t) end end
_M.Task = Task

return _M
