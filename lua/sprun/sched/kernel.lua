-- The scheduler's kernel: tasks as coroutines on one libuv loop, and the
-- small API every module that waits is built on (internal to sprun).
--
-- Every wait (a sleep, an await, a process, a socket, a bulkhead's queue)
-- is one yield of the task's coroutine. The loop reports completions
-- through one dispatcher (`dispatch`, called from C with a token), which
-- puts the waiting task on the ready queue; the scheduler (sched/init.lua)
-- resumes ready tasks in order and polls the loop only when none is
-- ready, so a completion never arrives while a task runs: what arrives
-- early is kept on the object it belongs to until a task asks for it.
--
-- What the rest of sprun may use is the API at the end of this file
-- (current, need_task, block/wake, arm/disarm, tokens, own/disown, after,
-- on_signal, ...): no module outside sched/ touches a task's fields or
-- the running scheduler itself.
--
-- The trap: a task may be cancelled while it is queued to resume. Every
-- wait therefore checks the task's cancellation after the yield returns,
-- whatever woke it, and raises it there. And the task running now is
-- `S.cur` only while its own coroutine runs: code that runs a coroutine
-- of its own is not that task (current() compares).

local errors = require "sprun.errors"
local coro = require "sprun.sched.coro"
local timer = require "sprun.sched.timer"
local set_virtual = require("sprun.clock").set_virtual

local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_running = coroutine.running
local setmetatable = setmetatable
local select = select
local error = error

local take_co = coro.take
local t_after = timer.after
local t_cancel = timer.cancel
local t_reserve = timer.reserve
local BULK_SPAWNS = coro.BULK_SPAWNS

local _M = {}

--- Tasks ---------------------------------------------------------------

local Task = {}
Task.__index = Task
_M.Task = Task

-- A task is a table whose array part holds the fields every task has, at
-- these indexes: 200 bytes in all (fourteen named fields would take a
-- hash part of 448, and a set of children one more table). Rarer fields
-- are named: `quiet`, `detached`, `resources`, `waiting_for`, `error`,
-- `traceback`, `unobserved`, `observed`. Only sched/ reads or writes
-- either kind.
local ID = 1       -- a number, in spawn order
local CO = 2       -- its coroutine, until it finishes
local STATE = 3    -- "pending", "running", "waiting", "done", "failed",
                   -- "cancelled"
local PARENT = 4   -- the task that spawned it, or false
local TIMER = 5    -- the id of its armed timer, or false
local Q = 6        -- its index in the ready queue, or false
local VALUES = 7   -- what it returned, once done (coro.values_of)
local WAITERS = 8  -- who awaits it: a task, a group or a list, or false
local TOKEN = 9    -- its token, while it is unfinished
local SLOT = 10    -- its place in the group that runs it (group.lua)
-- Its unfinished children, a list linked through the children (newest
-- first): no table to make, no hashing, whatever the churn.
local CHILD = 11   -- its newest unfinished child, or false
local NEXT = 12    -- its next older sibling, or false
local PREV = 13    -- its next newer sibling, or false
local CANCELLED = 14 -- the cancellation error once cancelled, else false
_M.ID, _M.CO, _M.STATE, _M.PARENT, _M.TIMER = ID, CO, STATE, PARENT, TIMER
_M.Q, _M.VALUES, _M.WAITERS, _M.TOKEN, _M.SLOT = Q, VALUES, WAITERS, TOKEN,
                                                SLOT
_M.CHILD, _M.NEXT, _M.PREV, _M.CANCELLED = CHILD, NEXT, PREV, CANCELLED

-- States a task never leaves.
local FINISHED = { done = true, failed = true, cancelled = true }
_M.FINISHED = FINISHED

-- Why a wait's yield returned: its timer fired, a task it awaits finished,
-- the I/O object it waits on changed, it starts, it was cancelled.
local WAKE_TIMER, WAKE_DONE, WAKE_IO, WAKE_START, WAKE_CANCEL = 1, 2, 3, 4, 5
_M.WAKE_TIMER, _M.WAKE_DONE, _M.WAKE_IO = WAKE_TIMER, WAKE_DONE, WAKE_IO
_M.WAKE_CANCEL = WAKE_CANCEL

--- The running scheduler -------------------------------------------------

-- One loop runs at a time in a Lua state; S is its state, or nil.
local S = nil

-- The running scheduler's state (sched/ only), or nil.
function _M.state()
  return S
end

-- Tokens name what C reports on: a task (its timers) or an I/O object.
-- A task's token is a small integer, reused once the task finished, so
-- that S.tokens keeps its tasks in its array part: no hashing, 8 bytes a
-- task, and the unfinished tasks are those found there (see tasks()). A
-- timer event carries the id of the timer, and only the timer a task has
-- armed now wakes it: a stale one never wakes the token's next owner.
-- Other tokens (processes, sockets, background timers, signals) are never
-- reused: they count up from IO_TOKEN0, far above any task token, and
-- live in S.io_tokens (a hash part only: a table with both parts, looked
-- up by either kind of key, keeps the JIT off the event path).
local IO_TOKEN0 = 2 ^ 52
_M.IO_TOKEN0 = IO_TOKEN0

local function task_token(s, task)
  local n = s.nfree
  local t
  if n > 0 then
    t = s.free[n]
    s.nfree = n - 1
  else
    t = s.ntokens + 1
    s.ntokens = t
  end
  s.tokens[t] = task
  return t
end

function _M.free_task_token(s, t)
  s.tokens[t] = false
  local n = s.nfree + 1
  s.nfree = n
  s.free[n] = t
end

-- Ready queue: a ring of (task, reason) pairs, in parallel arrays so that
-- a wake-up allocates nothing. A task is queued at most once (task[Q] is
-- its index, false when it is not queued): a second wake-up before it
-- runs would resume it later inside some other wait. When a timer fires
-- for a task already queued, the timer's reason replaces the queued one
-- (the wait checks what else happened; a lost timeout would never come
-- back); any other reason leaves the queued one alone.
local function enqueue(task, reason)
  local s = S
  local qi = task[Q]
  if qi then
    if reason == WAKE_TIMER then
      s.q_why[qi] = reason
    end
    return
  end
  local tail = s.q_tail + 1
  s.q_tail = tail
  s.q_task[tail] = task
  s.q_why[tail] = reason
  task[Q] = tail
end
_M.enqueue = enqueue

local function new_token(s, obj)
  local t = s.next_token + 1
  s.next_token = t
  s.io_tokens[t] = obj
  return t
end

-- The unfinished tasks, as a set, made when asked for (cancelling them
-- all, tasks()): the scheduler itself finds a task through its token.
local function live_tasks(s)
  local set = {}
  local tokens = s.tokens
  for t = 1, s.ntokens do
    local task = tokens[t]
    if task then
      set[task] = true
    end
  end
  return set
end
_M.live_tasks = live_tasks

-- sprun.trace's hook, or false (see set_trace_hook): each run's state
-- holds it in s.trace_hook.
local trace_hook = false

-- Makes `s` (sched/init.lua makes it) the running scheduler; leave()
-- ends its run.
function _M.enter(s)
  S = s
  s.trace_hook = trace_hook
  set_virtual(s.virtual)
end

function _M.leave()
  S = nil
  set_virtual(false)
end

--- Task bodies ------------------------------------------------------------

local next_id = 0

-- A new task on coroutine `co`, a child of `parent` (or of none).
local function new_task(s, co, parent, state)
  local id = next_id + 1
  next_id = id
  local task = setmetatable({ id, co, state, parent or false, false, false,
                              false, false, 0, false, false, false, false,
                              false }, Task)
  task[TOKEN] = task_token(s, task)
  s.live = s.live + 1
  if parent then
    -- A deadline (loop ms) is inherited: see sched/deadline.lua.
    local dl = parent.deadline
    if dl then
      task.deadline = dl
    end
    local first = parent[CHILD]
    if first then
      first[PREV] = task
      task[NEXT] = first
    end
    parent[CHILD] = task
  end
  if s.trace_hook then
    s.trace_hook(id, parent and parent[ID] or false)
  end
  return task
end

local function new_cancel_error(task)
  return errors.error(errors.CANCELLED, "task " .. task[ID]
                      .. " was cancelled")
end
_M.new_cancel_error = new_cancel_error

-- The task of inline run `d` (inline.lua), made now: its parent is the
-- task of the run that started it (made too if need be), or for the
-- outermost run the task that started it. A child of a task cancelled
-- meanwhile is born cancelled.
local function materialize(s, d)
  local parent
  if d > 1 then
    parent = s.itask[d - 1] or materialize(s, d - 1)
  else
    parent = s.ibase
  end
  local task = new_task(s, s.ico[d], parent, "running")
  s.itask[d] = task
  local dl = s.idl[d]
  if dl and not (task.deadline and task.deadline <= dl) then
    task.deadline = dl
  end
  -- The caller arms its timeout only if the child waits, but the timeout
  -- keeps the place among equal deadlines it had when the child started:
  -- before any timer the child arms. (A group reserves one place for all
  -- the children it starts at once: see group.lua.)
  if not s.igroup[d] then
    s.iseq[d] = t_reserve(s)
  end
  if d == s.idepth then
    s.cur = task
  end
  if parent[CANCELLED] then
    task[CANCELLED] = new_cancel_error(task)
  end
  return task
end
_M.materialize = materialize

-- The task whose code runs now, or nil: a coroutine that is not a task's
-- (one the task runs itself) is not that task. An inline run gets its
-- task here, the first time one is asked for.
local function current()
  local s = S
  if s == nil then
    return nil
  end
  local co = co_running()
  local t = s.cur
  if t and t[CO] == co then
    return t
  end
  local d = s.idepth
  if d > 0 and s.ico[d] == co then
    return s.itask[d] or materialize(s, d)
  end
  return nil
end
_M.current = current

-- True when the code running now is a task's, or an inline run's,
-- without making it a task.
local function in_context()
  local s = S
  if s == nil then
    return false
  end
  local co = co_running()
  local t = s.cur
  if t and t[CO] == co then
    return true
  end
  local d = s.idepth
  return d > 0 and s.ico[d] == co
end
_M.in_context = in_context

-- The current task if it exists already (an inline run has none yet).
local function existing_task()
  local s = S
  if s == nil then
    return nil
  end
  local t = s.cur
  if t and t[CO] == co_running() then
    return t
  end
  return nil
end

--- Waits ----------------------------------------------------------------

-- Raises the cancellation inside the task that was cancelled.
local function raise_cancelled(task)
  error(task[CANCELLED], 0)
end

-- A cancelled task that starts a wait again has caught the cancellation
-- (a pcall around a wait): it is raised again, but from the second time
-- on only after a turn of the loop (a timer of 0 ms), so that a task that
-- keeps catching it can neither spin the CPU without the loop turning nor
-- hold off the signals and timers that end a shutdown; and once it has
-- done so SPIN_WARN times, a line on stderr names it.
local SPIN_WARN = 1000

local function cancelled_again(task)
  local n = (task.cancel_waits or 0) + 1
  task.cancel_waits = n
  if n < 2 then
    return
  end
  if n == SPIN_WARN then
    io.stderr:write("sprun: task ", task[ID], " was cancelled but keeps "
                    .. "waiting (", SPIN_WARN, " waits since): something "
                    .. "catches the cancellation (a pcall around a wait?)\n")
    io.stderr:flush()
  end
  if task[TIMER] then
    t_cancel(S, task[TIMER])
  end
  task[TIMER] = t_after(S, 0, task[TOKEN])
  task[STATE] = "waiting"
  co_yield()
  task[STATE] = "running"
  if task[TIMER] then
    t_cancel(S, task[TIMER])
    task[TIMER] = false
  end
end

-- Suspends the running task until something enqueues it. Returns why.
local function wait(task)
  if task[CANCELLED] then
    cancelled_again(task)
    raise_cancelled(task)
  end
  task[STATE] = "waiting"
  local why = co_yield()
  task[STATE] = "running"
  if task[CANCELLED] then
    raise_cancelled(task)
  end
  return why
end
_M.wait = wait

-- wait(), returning false and the cancellation where wait raises it: for
-- a caller with something to undo first, without a pcall (the JIT cannot
-- follow a resumed coroutine back out through one).
local function wait_or_cancel(task)
  local c = task[CANCELLED]
  if c then
    cancelled_again(task)
    return false, c
  end
  task[STATE] = "waiting"
  local why = co_yield()
  task[STATE] = "running"
  c = task[CANCELLED]
  if c then
    return false, c
  end
  return true, why
end
_M.wait_or_cancel = wait_or_cancel

-- wait() for a sleep of `ms`, returning nothing: tail-called from
-- sprun.sleep, so that a sleeping task holds one small frame here.
function _M.sleep_task(task, ms)
  if task[CANCELLED] then
    cancelled_again(task)
    raise_cancelled(task)
  end
  task[TIMER] = t_after(S, ms, task[TOKEN])
  task[STATE] = "waiting"
  co_yield()
  task[STATE] = "running"
  if task[CANCELLED] then
    raise_cancelled(task)
  end
end

--- Spawning -------------------------------------------------------------

-- A new task running fn with the arguments (n, a1, a2, a3, args) (see
-- coro.lua), a child of `parent`, queued to start.
local function spawn_in(s, parent, fn, n, a1, a2, a3, args)
  local co = take_co()
  co_resume(co, fn, n, a1, a2, a3, args, true)
  local task = new_task(s, co, parent, "pending")
  enqueue(task, WAKE_START)
  -- Spawns since the running task last yielded (see bulk_begin).
  local k = s.spawns + 1
  s.spawns = k
  if k == BULK_SPAWNS then
    coro.bulk_begin()
  end
  return task
end
_M.spawn_in = spawn_in

--- The API for the rest of sprun -----------------------------------------

-- The running run, an opaque value to compare (a monitor's upkeep timer
-- belongs to one run), or nil.
function _M.running()
  local s = S
  return s and s.run_id
end

-- The running loop's C object (sprun.core's loop: spawn, tcp_connect,
-- tcp_listen, ...), for the I/O modules. Only with a loop running.
function _M.loop()
  return S.loop
end

-- The current task, for functions that can only run in one: raises under
-- the name `fname`, at the level of the caller of the function that
-- calls this, if there is none.
function _M.need_task(fname)
  local task = current()
  if task == nil then
    error(fname .. ": must be called from a task (inside sprun.run or a "
          .. "script run by sprun)", 3)
  end
  return task
end

-- Raises, at the level of the caller of the API function that calls it,
-- when a loop is running but the caller is not one of its tasks (a
-- coroutine of its own inside a task): sched.in_task would try to start
-- a second loop, and the error would name sprun.run, which nobody called.
function _M.check_caller(fname)
  if S ~= nil and not in_context() then
    error(fname .. ": called from a coroutine that is not a sprun task", 3)
  end
end

-- Code that runs user functions under pcall calls this with the error it
-- caught: a cancellation of the current task goes on up, never
-- swallowed. (An inline run without a task has no cancellation of its
-- own.)
function _M.reraise_cancel(err)
  local task = existing_task()
  if task ~= nil and task[CANCELLED] and err == task[CANCELLED] then
    error(err, 0)
  end
end

-- Whether `task` was cancelled (its waits raise the cancellation).
function _M.is_cancelled(task)
  return task[CANCELLED] ~= false
end

-- Wakes `task` from its wait (the wait sees WAKE_IO and checks again what
-- it waits for).
function _M.wake_task(task)
  enqueue(task, WAKE_IO)
end

-- A failure of a quiet task that nobody awaits is never printed: its
-- owner reports it another way (the main task of a run, a helper task).
function _M.quiet(task)
  task.quiet = true
end

-- A failure of a detached task that nobody awaits is printed as soon as
-- it happens, not when its parent ends (a connection handler: its server
-- never awaits it).
function _M.detach(task)
  task.detached = true
end

-- A new task running fn(...) as a child of `parent` (nil: of none).
function _M.spawn(parent, fn, ...)
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return spawn_in(S, parent, fn, n, a1, a2, a3, n > 3 and { ... })
end

-- I/O objects. A token names an object for the loop's events, which
-- arrive as obj:_event(kind, a, b, data, handle) (sprun.core's EV_*).
function _M.new_token(obj)
  return new_token(S, obj)
end

-- After the object's last event (its EV_CLOSED).
function _M.free_token(t)
  if S then
    if t >= IO_TOKEN0 then
      S.io_tokens[t] = nil
    else
      S.tokens[t] = nil
    end
  end
end

-- Resources (processes, sockets, servers) belong to the task that made
-- them: cancelling the task calls res:_abort().
function _M.own(task, res)
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

function _M.disown(task, res)
  if task and task.resources then
    task.resources[res] = nil
  end
end

-- Arms the task's own timer (one at a time) `ms` from now: it wakes the
-- task's wait with WAKE_TIMER unless disarmed first.
function _M.arm(task, ms)
  task[TIMER] = t_after(S, ms, task[TOKEN])
end

function _M.disarm(task)
  if task[TIMER] then
    t_cancel(S, task[TIMER])
    task[TIMER] = false
  end
end

-- The unfinished tasks of the running loop, as a set ({} with none).
function _M.tasks()
  if S == nil then
    return {}
  end
  return live_tasks(S)
end

-- sprun.trace's hook: fn(id, parent_id) as a task is made (spawned, or
-- an inline run made a task) and fn(id, parent_id, state) as it finishes
-- (task.lua), parent_id false for a task without a parent; false: none.
-- With none, a spawn and a finish cost one field check (s.trace_hook).
function _M.set_trace_hook(fn)
  trace_hook = fn or false
  if S then
    S.trace_hook = trace_hook
  end
end

-- The id of the newest task made (0 before the first): a tracer records
-- only the tasks made after it started.
function _M.last_task_id()
  return next_id
end

-- at_turn_end, run_turn_end, after and on_signal: see sched/upkeep.lua.
require("sprun.sched.upkeep").install(_M, function() return S end,
                                      new_token, t_after)
-- block, has_waiters and wake: see sched/waiters.lua.
require("sprun.sched.waiters").install(_M)
-- deadline, capped and cap_deadline: see sched/deadline.lua.
require("sprun.sched.deadline").install(_M, function() return S end)

return _M
