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
-- Coroutines are reused. Each one runs `worker`, a loop of jobs: resumed
-- with a function and its arguments, it calls it, yields DONE with its
-- values, and waits for the next job. A task's coroutine goes back to a
-- pool when its function returned; one that raised is dead, and one left
-- suspended in the middle of a job (a task cancelled before it started, or
-- one that called coroutine.yield itself) is never reused.
--
-- A child that is only awaited (execute_with_timeout: `run_child`; the
-- items of execute_batch: `run_group`) first runs inline, in a pooled
-- coroutine resumed by its caller, with no task behind it. Most operations
-- return without waiting, and then cost a resume and nothing else. The
-- child becomes a task the moment anything asks for it (`current_task`:
-- to wait, to spawn, to own a process or a socket); if it then waits, it
-- is a task like any other from there on, and its caller awaits it with
-- the timeout (which keeps its place among equal deadlines: see
-- materialize). A batch's caller awaits all its children at once, with
-- one timer for all their timeouts.
--
-- Everything a task costs is counted: a task is one table of 200 bytes
-- (its fields in the array part) and a coroutine of 472; its token indexes
-- a dense array; its children are linked through them; the C side gathers
-- the timer events of a step into one call. Bulk work (thousands of spawns
-- without a yield, a large batch) raises the collector's pause while it
-- lasts.
--
-- The trap: a task may be cancelled while it is queued to resume. Every
-- wait therefore checks the task's `cancelled` flag after the yield
-- returns, whatever woke it, and raises the cancellation there. And the
-- task running now is `S.cur` only while its own coroutine runs: code that
-- runs a coroutine of its own is not that task (current_task compares).

local core = require "sprun.core"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local ffi = require "ffi"
local C = require("sprun.ffi").C

-- The scheduler's timer calls go through the FFI (declared in
-- sprun.ffi, defined in runtime/lua/loop.c): they run no Lua and no loop,
-- and compile into the caller's trace.

local co_create = coroutine.create
local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_running = coroutine.running
local traceback = debug.traceback
local getfenv = getfenv
local setfenv = setfenv
local select = select
local setmetatable = setmetatable
local type = type
local error = error
local tostring = tostring
local unpack = unpack
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local collectgarbage = collectgarbage
local xpcall = xpcall
local getmetatable = getmetatable
local format = string.format
local ceil = math.ceil
local io_stderr = io.stderr

local EV_TIMER = core.EV_TIMER
local EV_TIMERS = core.EV_TIMERS
local MS_MAX = check.MS_MAX

local _M = {}

-- The running scheduler, or nil. One loop runs at a time in a Lua state.
local S = nil

local Task = {}
Task.__index = Task

-- A task is a table whose array part holds the fields every task has, at
-- these indexes: 200 bytes in all (fourteen named fields would take a
-- hash part of 448, and a set of children one more table). Rarer fields
-- are named: `quiet` and `detached` (set by other modules), `resources`,
-- `waiting_for`, `error`, `traceback`, `unobserved`, `observed`.
local ID = 1       -- a number, in spawn order
local CO = 2       -- its coroutine, until it finishes
local STATE = 3    -- see Task:status
local PARENT = 4   -- the task that spawned it, or false
local TIMER = 5    -- the id of its armed timer, or false
local Q = 6        -- its index in the ready queue, or false
local VALUES = 7   -- what it returned, once done (see values_of)
local WAITERS = 8  -- who awaits it: a task, a group or a list, or false
local TOKEN = 9    -- its token, while it is unfinished
local SLOT = 10    -- its place in the group that runs it (run_group)
-- Its unfinished children, a list linked through the children (newest
-- first): no table to make, no hashing, whatever the churn.
local CHILD = 11   -- its newest unfinished child, or false
local NEXT = 12    -- its next older sibling, or false
local PREV = 13    -- its next newer sibling, or false
-- The cancellation error once it was cancelled, else false. (Also the
-- named field `cancelled`, for other modules: set with it, never read
-- here, where a missing named field would cost a metatable lookup.)
local CANCELLED = 14

-- Wake-up reasons a wait sees when its yield returns.
local WAKE_TIMER = 1
local WAKE_DONE = 2
local WAKE_IO = 3
local WAKE_START = 4
local WAKE_CANCEL = 5
_M.WAKE_TIMER, _M.WAKE_DONE, _M.WAKE_IO = WAKE_TIMER, WAKE_DONE, WAKE_IO

local FINISHED = { done = true, failed = true, cancelled = true }

-- The values of a task that returned none (shared, never written).
local NO_VALUES = { n = 0 }

local function pack(...)
  return { n = select("#", ...), ... }
end

--- Coroutines ------------------------------------------------------------

-- What a coroutine yields when its job has returned (a private value: no
-- user code can yield it).
local DONE = {}

-- Hands a job's values over to whoever resumed the coroutine: DONE, their
-- count, and the first three, or all of them in a table when there are
-- more. Fixed positions, so that the code that takes them (after_resume,
-- after_inline) has a fixed arity and compiles. Returns the next job.
local function hand_over(...)
  local n = select("#", ...)
  if n <= 3 then
    return co_yield(DONE, n, ...)
  end
  return co_yield(DONE, n, { ... })
end

-- The values (n, r1, r2, r3) of hand_over as a table for unpack(t, 1, t.n).
local function values_of(n, r1, r2, r3)
  if n == 0 then
    return NO_VALUES
  elseif n > 3 then
    r1.n = n
    return r1
  end
  return { n = n, r1, r2, r3 }
end

local function id(f)
  return f
end

-- The body of every coroutine (boot starts it). A job is resumed in as
-- (fn, n, a1, a2, a3, args, park): the function, its argument count, the
-- first three arguments, and all of them in `args` when there are more (a
-- fixed arity, so that no table is made for the common calls and the JIT
-- never meets a vararg here). With `park`, the job parks at once, its
-- function and arguments kept on the coroutine's stack, until the
-- scheduler first resumes its task. The job's values are handed over
-- (hand_over), and the resume that ends that yield brings the next job:
-- tail calls all round, so a coroutine never grows its stack. `env`,
-- passed along from boot, is the environment the coroutine was made with:
-- a job that replaced it (setfenv(0, t)) does not pass it on.
--
-- The job itself is called from a small frame of its own (run0 ... runn),
-- not from worker's, which its eight arguments make large: a coroutine
-- starts with a stack of 40 slots, and a task asleep in its function
-- called from worker's frame would double it (400 more bytes a task;
-- from run0 it grows by 96 at most). It is called through id() so
-- that its frame has no name in a traceback (a task's function is not
-- "fn"), and that small frame, the last one, is cut from the tracebacks
-- of tasks (task_traceback).
local worker

local function run0(env, fn)
  return worker(env, hand_over(id(fn)()))
end

local function run1(env, fn, a1)
  return worker(env, hand_over(id(fn)(a1)))
end

local function run2(env, fn, a1, a2)
  return worker(env, hand_over(id(fn)(a1, a2)))
end

local function run3(env, fn, a1, a2, a3)
  return worker(env, hand_over(id(fn)(a1, a2, a3)))
end

local function runn(env, fn, n, args)
  return worker(env, hand_over(id(fn)(unpack(args, 1, n))))
end

worker = function(env, fn, n, a1, a2, a3, args, park)
  if getfenv(0) ~= env then
    setfenv(0, env)
  end
  if park then
    co_yield()
  end
  if n == 0 then
    return run0(env, fn)
  elseif n == 1 then
    return run1(env, fn, a1)
  elseif n == 2 then
    return run2(env, fn, a1, a2)
  elseif n == 3 then
    return run3(env, fn, a1, a2, a3)
  end
  return runn(env, fn, n, args)
end

local function boot(...)
  return worker(getfenv(0), ...)
end

-- Finished coroutines waiting for a job, parked in hand_over's yield.
-- Shared by every loop (a coroutine belongs to no loop); bounded, and
-- trimmed when a loop ends.
local pool = {}
local npool = 0
local POOL_MAX = 1024
local POOL_KEEP = 32

local function take_co()
  local n = npool
  if n > 0 then
    local co = pool[n]
    pool[n] = false
    npool = n - 1
    return co
  end
  return co_create(boot)
end

local function put_co(co)
  local n = npool
  if n < POOL_MAX then
    n = n + 1
    pool[n] = co
    npool = n
  end
end

local function trim_pool()
  for i = POOL_KEEP + 1, npool do
    pool[i] = false
  end
  if npool > POOL_KEEP then
    npool = POOL_KEEP
  end
end

-- The frames a job is called from, as a traceback names them.
local JOB_FRAMES = {}
for _, f in ipairs { run0, run1, run2, run3, runn } do
  local info = debug.getinfo(f, "S")
  JOB_FRAMES[info.short_src .. ":" .. info.linedefined] = true
end

-- The traceback of a task's coroutine: what the task's function ran, as if
-- the function had been the coroutine's own.
local function task_traceback(co, msg)
  local tb = traceback(co, msg)
  local last = tb:match("\n\t[^\n]*: in function <([^\n]*)>$")
  if last and JOB_FRAMES[last] then
    return (tb:gsub("\n[^\n]*$", ""))
  end
  return tb
end

--- Ready queue and tokens -----------------------------------------------

-- Ready queue: a ring of (task, reason) pairs, in parallel arrays so that a
-- wake-up allocates nothing. A task is queued at most once (task[Q] is
-- its index, false when it is not queued): a second wake-up before it runs
-- would resume it later inside some other wait. When a timer fires for a
-- task already queued, the timer's reason replaces the queued one (the
-- wait checks what else happened; a lost timeout would never come back);
-- any other reason leaves the queued one alone.
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

-- Tokens name what C reports on: a task (its timers) or an I/O object.
-- A task's token is a small integer, reused once the task finished, so
-- that sched.tokens keeps its tasks in its array part: no hashing, 8
-- bytes a task, and the unfinished tasks are those found there (see
-- live_tasks). A timer event carries the id of the timer, and only the
-- timer a task has armed now wakes it: a stale one never wakes the
-- token's next owner. Other tokens (processes, sockets, background timers,
-- signals) are never reused: they count up from IO_TOKEN0, far above any
-- task token.
local IO_TOKEN0 = 2 ^ 52

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

local function free_task_token(s, t)
  s.tokens[t] = false
  local n = s.nfree + 1
  s.nfree = n
  s.free[n] = t
end

-- Timers of the running loop: a deadline `ms` from now (with the place
-- among equal deadlines of `seq`, from t_reserve, if given), at an
-- absolute deadline, a cancel (true if it was armed). A timer that cannot
-- be armed (no memory) raises.
local function timer_failed(code)
  error("sprun: cannot arm a timer: " .. tostring(core.uv_err_name(code)),
        0)
end

local function t_after(s, ms, token, seq)
  local id = C.sp_lua_timer_after(s.h, ms, token, seq or -1)
  if id < 0 then
    timer_failed(id)
  end
  return id
end

local function t_add(s, deadline, token, seq)
  local id = C.sp_lua_timer_add(s.h, deadline, token, seq or -1)
  if id < 0 then
    timer_failed(id)
  end
  return id
end

local function t_cancel(s, id)
  return C.sp_lua_timer_cancel(s.h, id) == 0
end

local function t_reserve(s)
  return C.sp_lua_timer_reserve(s.h)
end

-- The unfinished tasks, as a set (for cancel_all and sched.all).
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

local function new_token(s, obj)
  local t = s.next_token + 1
  s.next_token = t
  s.tokens[t] = obj
  return t
end

local function free_token(s, t)
  s.tokens[t] = nil
end

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

-- A timer of a task (a sleep, an await's timeout, an I/O timeout) wakes
-- it if it is still the one armed: `id` is the id of the timer that fired.
-- Other objects get the event themselves.
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
  return traceback(error_message(err), 2)
end

-- The timer events of one step, in the order they fired (see
-- runtime/lua/loop.c): list[2i - 1] is the token, list[2i] the id. A
-- handler that raises is reported as the dispatcher's errors are, and the
-- other timers still fire.
local function fire_timers(list, n)
  local tokens = S.tokens
  for i = 1, 2 * n, 2 do
    local obj = tokens[list[i]]
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

-- Called from C (runtime/lua/loop.c) for every completion.
local function dispatch(token, kind, a, b, data, handle)
  if kind == EV_TIMERS then
    return fire_timers(handle, a)
  end
  local obj = S.tokens[token]
  if not obj then
    return
  end
  if kind == EV_TIMER and timer_fired(obj, b) then
    return
  end
  obj:_event(kind, a, b, data, handle)
end

-- `sched.all`, the set of unfinished tasks, is made when asked for (the
-- specs' cleanup walks it); the scheduler itself reads its fields only
-- where they are set, never through this.
local Sched = {
  __index = function(sched, k)
    if k == "all" then
      return live_tasks(sched)
    end
  end,
}

local function new_sched(opts)
  local virtual = opts and opts.clock == "virtual" or false
  local sched = {
    virtual = virtual,
    tokens = {},
    ntokens = 0,     -- task tokens handed out so far
    free = {},       -- task tokens free again (a stack)
    nfree = 0,
    next_token = IO_TOKEN0,
    q_task = {}, q_why = {}, q_head = 1, q_tail = 0,
    live = 0,
    spawns = 0,      -- spawned since the last resume returned (bulk_begin)
    bursts = 0,      -- bursts of spawns over, to end when the queue is empty
    stop_signal = nil,
    cur = false,     -- the task whose coroutine runs now (see current_task)
    -- The inline runs in progress (run_inline), innermost last: each one's
    -- coroutine, its task once it has one (else false; entries above
    -- idepth are stale) with the timer seq reserved for its caller's
    -- timeout, whether it is a group's child, and the task that started
    -- the outermost one.
    idepth = 0,
    ico = {}, itask = {}, iseq = {}, igroup = {}, ibase = false,
    loop = false,
    h = false,       -- the loop for the sp_lua_timer_* functions
    running = false,
  }
  return setmetatable(sched, Sched)
end

--- Tasks ---------------------------------------------------------------

local next_id = 0

-- A new task on coroutine `co`.
local function new_task(s, co, parent, state)
  local id = next_id + 1
  next_id = id
  local task = setmetatable({ id, co, state, parent or false, false, false,
                              false, false, 0, false, false, false, false,
                              false }, Task)
  task[TOKEN] = task_token(s, task)
  s.live = s.live + 1
  if parent then
    local first = parent[CHILD]
    if first then
      first[PREV] = task
      task[NEXT] = first
    end
    parent[CHILD] = task
  end
  return task
end

local function new_cancel_error(task)
  return errors.error(errors.CANCELLED, "task " .. task[ID]
                      .. " was cancelled")
end

-- The task of inline run `d`, made now: its parent is the task of the run
-- that started it (made too if need be), or for the outermost run the task
-- that started it. A child of a task cancelled meanwhile is born cancelled.
local function materialize(s, d)
  local parent
  if d > 1 then
    parent = s.itask[d - 1] or materialize(s, d - 1)
  else
    parent = s.ibase
  end
  local task = new_task(s, s.ico[d], parent, "running")
  s.itask[d] = task
  -- The caller arms its timeout only if the child waits, but the timeout
  -- keeps the place among equal deadlines it had when the child started:
  -- before any timer the child arms. (A group reserves one place for all
  -- the children it starts at once: see run_group.)
  if not s.igroup[d] then
    s.iseq[d] = t_reserve(s)
  end
  if d == s.idepth then
    s.cur = task
  end
  if parent[CANCELLED] then
    task[CANCELLED] = new_cancel_error(task)
    task.cancelled = task[CANCELLED]
  end
  return task
end

-- The task whose code runs now, or nil: a coroutine that is not a task's
-- (one the task runs itself) is not that task. An inline run gets its task
-- here, the first time one is asked for.
local function current_task()
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
_M.current = current_task

-- True when the code running now is a task's, or an inline run's, without
-- making it a task.
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
  local co = co_running()
  local t = s.cur
  if t and t[CO] == co then
    return t
  end
  return nil
end

-- Raises the cancellation inside the task that was cancelled.
local function raise_cancelled(task)
  error(task[CANCELLED], 0)
end

-- Suspends the running task until something enqueues it. Returns why.
local function wait(task)
  if task[CANCELLED] then
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
_M._wait = wait

-- wait(), returning false and the cancellation where wait raises it: for
-- a caller with something to undo first, without a pcall (the JIT cannot
-- follow a resumed coroutine back out through one).
local function wait_or_cancel(task)
  local c = task[CANCELLED]
  if c then
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

-- wait() for a sleep, tail-called from it so that a sleeping task holds
-- one small frame here (see worker), and returning nothing.
local function sleep_wait(task)
  if task[CANCELLED] then
    raise_cancelled(task)
  end
  task[STATE] = "waiting"
  co_yield()
  task[STATE] = "running"
  if task[CANCELLED] then
    raise_cancelled(task)
  end
end


-- tostring(v) for an error value of any kind, never raising (see above).
function _M.error_text(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then
    return s
  end
  return "(error object is a " .. type(v) .. " value)"
end

local function crash_error(err, tb)
  return errors.error(errors.TASK_CRASHED, _M.error_text(err), {
    error = err, traceback = tb,
  })
end

local function print_failure(task)
  io_stderr:write("sprun: task ", tostring(task[ID]), " failed: ",
                  task.traceback or error_message(task.error), "\n")
  io_stderr:flush()
end

-- A group of children that one task awaits all at once (run_group): it is
-- their waiter, and keeps the ones that finished for its owner.
local Group = {}

local function wake_waiter(w, task)
  if getmetatable(w) == Group then
    local k = w.ndone + 1
    w.ndone = k
    w.done[k] = task
    local owner = w.owner
    if owner.waiting_for == w then
      owner.waiting_for = nil
      enqueue(owner, WAKE_DONE)
    end
  elseif w.waiting_for == task then
    w.waiting_for = nil
    if w[TIMER] then
      t_cancel(S, w[TIMER])
      w[TIMER] = false
    end
    enqueue(w, WAKE_DONE)
  end
end

-- Ends a task: true and its values (a table for unpack(v, 1, v.n)), or
-- false and the error it raised.
local function finish(task, ok, v)
  local s = S
  s.live = s.live - 1
  if task[TIMER] then
    t_cancel(s, task[TIMER])
    task[TIMER] = false
  end
  free_task_token(s, task[TOKEN])
  if ok then
    task[STATE] = "done"
    task[VALUES] = v
  else
    local err = v
    local cancelled = task[CANCELLED]
    if cancelled and err == cancelled then
      task[STATE] = "cancelled"
    else
      task[STATE] = "failed"
      task.error = err
      task.traceback = task_traceback(task[CO], error_message(err))
    end
  end
  task[CO] = nil
  local parent = task[PARENT]
  if parent then
    local prev, nxt = task[PREV], task[NEXT]
    if prev then
      prev[NEXT] = nxt
    else
      parent[CHILD] = nxt
    end
    if nxt then
      nxt[PREV] = prev
    end
    task[PREV], task[NEXT] = false, false
  end
  -- One waiter is kept as itself, more as a list.
  local waiters = task[WAITERS]
  if waiters then
    task[WAITERS] = false
    if getmetatable(waiters) ~= nil then
      wake_waiter(waiters, task)
    else
      for i = 1, #waiters do
        wake_waiter(waiters[i], task)
      end
    end
    -- Awaited: its failure is the awaiter's (only failures are printed).
    if task[STATE] == "failed" then
      task.observed = true
    end
  elseif task[STATE] == "failed" and not task.quiet then
    -- Nobody awaits it yet: its parent may still do so. The failure is
    -- printed when the parent finishes without having looked at it, or now
    -- if there is no parent left to look.
    if not parent or FINISHED[parent[STATE]] or task.detached then
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

-- Stops what a task holds: its child tasks, resources and timer.
local function release(task)
  local child = task[CHILD]
  while child do
    -- A child that had not started finishes (and leaves the list) now.
    local older = child[NEXT]
    child:cancel()
    child = older
  end
  if task.resources then
    for res in pairs(task.resources) do
      res:_abort()
    end
    task.resources = nil
  end
  if task[TIMER] then
    t_cancel(S, task[TIMER])
    task[TIMER] = false
  end
end

local function yield_error(task)
  return format("task %d called coroutine.yield outside a sprun wait "
                .. "(use sprun.sleep, an await or an I/O call)", task[TOKEN])
end

-- What a resume of the task's coroutine returned: its job is done (DONE
-- and the values, see hand_over), it raised, or it yielded (in a sprun
-- wait, or by calling coroutine.yield itself).
local function after_resume(task, ok, mark, n, r1, r2, r3)
  if ok then
    if mark == DONE then
      local co = task[CO]
      finish(task, true, values_of(n, r1, r2, r3))
      put_co(co)
    elseif task[STATE] == "running" then
      -- The task called coroutine.yield itself, not through a sprun wait:
      -- nothing would ever resume it, and it could not even be cancelled
      -- (its awaiter would then wait forever). It fails at once instead.
      release(task)
      finish(task, false, yield_error(task))
    end
    return
  end
  finish(task, false, mark)
end

--- Garbage collection during bulk work ----------------------------------

-- A task that spawns thousands of tasks without yielding, or a group that
-- runs thousands of children, makes mostly objects that stay alive (the
-- tasks, their coroutines, the results), and the collector, paced by what
-- is allocated, would mark them over and over for little garbage. While
-- such bulk work lasts, the collector's pause is raised (it starts a cycle
-- when the heap has grown BULK_PAUSE percent, not the usual 200): fewer,
-- equally complete cycles. The pause is set back once the tasks of a burst
-- have all had their first run (the ready queue is empty), when the group
-- is done, and when the loop ends, whatever happened: never left raised.
local BULK_SPAWNS = 4096
local BULK_PAUSE = 1000
local bulk_depth = 0
local saved_pause = nil

local function bulk_begin()
  bulk_depth = bulk_depth + 1
  if bulk_depth == 1 then
    local p = collectgarbage("setpause", BULK_PAUSE)
    saved_pause = p
    if p > BULK_PAUSE then
      collectgarbage("setpause", p)
    end
  end
end

local function bulk_end()
  if bulk_depth > 0 then
    bulk_depth = bulk_depth - 1
    if bulk_depth == 0 then
      collectgarbage("setpause", saved_pause)
    end
  end
end

local function resume(task, why)
  task[Q] = false
  if FINISHED[task[STATE]] then
    return
  end
  task[STATE] = "running"
  local s = S
  s.cur = task
  after_resume(task, co_resume(task[CO], why))
  s.cur = false
  if s.spawns >= BULK_SPAWNS then
    -- The burst is over, but the tasks it made still have their first
    -- run ahead (each grows its stack): the pause stays up until the
    -- ready queue is empty.
    s.bursts = s.bursts + 1
  end
  s.spawns = 0
end

-- A new task running fn with the arguments (n, a1, a2, a3, args) (see
-- worker), queued to start.
local function spawn_in(s, parent, fn, n, a1, a2, a3, args)
  local co = take_co()
  co_resume(co, fn, n, a1, a2, a3, args, true)
  local task = new_task(s, co, parent, "pending")
  enqueue(task, WAKE_START)
  -- Spawns since the running task last yielded (see bulk_begin).
  local k = s.spawns + 1
  s.spawns = k
  if k == BULK_SPAWNS then
    bulk_begin()
  end
  return task
end

-- "pending" (not started yet), "running", "waiting", "done", "failed" or
-- "cancelled".
function Task:status()
  check.self(self, Task, "task.status", "a task")
  return self[STATE]
end

-- The results of a finished task, as await returns them.
local function results(task)
  local st = task[STATE]
  if st == "done" then
    -- unpack is not compiled: the usual counts are spelled out.
    local v = task[VALUES]
    local n = v.n
    if n == 1 then
      return v[1]
    elseif n == 0 then
      return
    elseif n == 2 then
      return v[1], v[2]
    end
    return unpack(v, 1, n)
  elseif st == "failed" then
    task.observed = true
    return nil, crash_error(task.error, task.traceback)
  end
  return nil, new_cancel_error(task)
end

-- Milliseconds of loop time: a number from 0 to 2^53 (nil when optional).
local function valid_ms(ms)
  return type(ms) == "number" and ms >= 0 and ms <= MS_MAX
end

-- What is expected of an invalid ms: the range is stated to a value past
-- its top, as check.options states it.
local function expect_ms(ms)
  return check.expect_number(ms, 0, nil, MS_MAX)
end

-- One waiter (a task or a group) is kept as itself, more in a list.
local function add_waiter(task, w)
  local ws = task[WAITERS]
  if not ws then
    task[WAITERS] = w
  elseif getmetatable(ws) ~= nil then
    task[WAITERS] = { ws, w }
  else
    ws[#ws + 1] = w
  end
end

-- `me` waits for `task` to finish (see Task:await). `seq`, from
-- timer_reserve, ranks the timeout among equal deadlines as of when it
-- was taken.
local function await_task(me, task, timeout_ms, seq)
  add_waiter(task, me)
  me.waiting_for = task
  if timeout_ms then
    me[TIMER] = t_after(S, timeout_ms, me[TOKEN], seq)
  end
  local ok, why = wait_or_cancel(me)
  if not ok then
    -- Cancelled while waiting: stop waiting and pass the cancellation on.
    me.waiting_for = nil
    error(why, 0)
  end
  if why == WAKE_TIMER and not FINISHED[task[STATE]] then
    -- Cancel it, and return once it has really stopped (its cleanups ran).
    me.waiting_for = nil
    task:cancel()
    if not FINISHED[task[STATE]] then
      add_waiter(task, me)
      me.waiting_for = task
      wait(me)
    end
    return nil, errors.error(errors.TIMEOUT, "did not finish within "
      .. timeout_ms .. " ms", { timeout_ms = timeout_ms })
  end
  return results(task)
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
  return await_task(me, self, timeout_ms)
end

-- Cancels the task: its wait ends at once, its timers stop, the processes
-- and sockets it owns are killed or closed, its child tasks are cancelled,
-- and the task sees a "cancelled" error at the point where it waits.
-- Returns true if the task was still unfinished.
function Task:cancel()
  check.self(self, Task, "task.cancel", "a task")
  if FINISHED[self[STATE]] or self[CANCELLED] then
    return false
  end
  self[CANCELLED] = new_cancel_error(self)
  self.cancelled = self[CANCELLED]
  release(self)
  if self[STATE] == "pending" then
    -- Never started: it finishes now without running (its coroutine,
    -- parked before the job, is dropped).
    finish(self, false, self[CANCELLED])
  elseif self[STATE] == "waiting" and not self[Q] then
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

--- Inline children -------------------------------------------------------

-- Deeper inline runs than this spawn a task instead: each level nests a
-- coroutine resume on the C stack.
local MAX_INLINE = 16

-- Whether the caller of inline run `d` (the run below it, else the task
-- that started the outermost run) is cancelled. A run with no task has
-- the cancellation of the nearest one below it that has.
local function caller_cancelled(s, d, saved)
  for j = d - 1, 1, -1 do
    local t = s.itask[j]
    if t then
      return t[CANCELLED]
    end
  end
  if d > 1 then
    saved = s.ibase
  end
  return saved[CANCELLED]
end

-- Once inline run `d` has returned to its caller: a cancellation of the
-- caller that happened meanwhile is raised in the caller, as its await
-- would have raised it.
local function check_caller(s, d, saved)
  if caller_cancelled(s, d, saved) then
    local c = saved
    if d > 1 then
      c = s.itask[d - 1] or materialize(s, d - 1)
    end
    error(c[CANCELLED], 0)
  end
end

-- What run_inline returns for a child of a group: PENDING, its task and
-- the seq for its timeout if it waits, else RETURNED and its values as
-- hand_over gives them (n, r1, r2, r3). Fixed positions, as for
-- after_resume, so that the group's code compiles.
local PENDING = {}
local RETURNED = {}

local function group_values(a, b)
  return RETURNED, 2, a, b
end

-- What the resume of inline run `d` returned (see after_resume). The run
-- is over for its caller whatever happened; if its job waits, its task
-- goes on as a task, and the caller awaits it (or, for a group, gets it).
local function after_inline(s, d, co, saved, ms, group, ok, mark, n, r1, r2,
                            r3)
  local task = s.itask[d]
  if not task and ok and mark ~= DONE then
    -- It yielded without asking for its task: coroutine.yield itself.
    task = materialize(s, d)
  end
  s.idepth = d - 1
  if task then
    s.itask[d] = false
    s.cur = d > 1 and s.itask[d - 1] or saved
  end
  if ok and mark == DONE then
    if task then
      task.quiet = true
      -- The task keeps a copy: values_of marks a list with its count.
      finish(task, true, values_of(n, n > 3 and { unpack(r1, 1, n) } or r1,
                                   r2, r3))
    end
    local k = npool
    if k < POOL_MAX then
      k = k + 1
      pool[k] = co
      npool = k
    end
    if d > 1 or saved[CANCELLED] then
      check_caller(s, d, saved)
    end
    if group then
      return RETURNED, n, r1, r2, r3
    elseif n == 1 then
      return r1
    elseif n == 0 then
      return
    elseif n == 2 then
      return r1, r2
    elseif n == 3 then
      return r1, r2, r3
    end
    return unpack(r1, 1, n)
  end
  if not ok then
    if task then
      task.quiet = true
      finish(task, false, mark)
      check_caller(s, d, saved)
      if group then
        return group_values(results(task))
      end
      return results(task)
    end
    check_caller(s, d, saved)
    local err = crash_error(mark, task_traceback(co, error_message(mark)))
    if group then
      return group_values(nil, err)
    end
    return nil, err
  end
  if task[STATE] == "waiting" then
    local seq = s.iseq[d]
    if group then
      return PENDING, task, seq
    end
    return await_task(s.cur, task, ms, seq)
  end
  -- A coroutine.yield outside a sprun wait: the task fails (see
  -- after_resume), and its coroutine, suspended in the job, is dropped.
  release(task)
  task.quiet = true
  finish(task, false, yield_error(task))
  check_caller(s, d, saved)
  if group then
    return group_values(results(task))
  end
  return results(task)
end

-- Runs fn with the arguments (n, a1, a2, a3, args) (see worker) as a child
-- of the current task, at once and inline (see the top of this file). If
-- it waits: with `group`, returns PENDING, its task and a timer seq;
-- else awaits it with a timeout of `ms`. The caller must be in a task or
-- an inline run (in_context()).
local function run_inline(ms, group, fn, n, a1, a2, a3, args)
  local s = S
  local d = s.idepth + 1
  local saved = s.cur
  if d > MAX_INLINE or (d == 1 and saved[CANCELLED])
     or (d > 1 and caller_cancelled(s, d, saved)) then
    -- A cancelled caller raises in its await, and the child runs as a
    -- task of its own, as any spawned child.
    local me = current_task()
    local seq = t_reserve(s)
    local task = spawn_in(s, me, fn, n, a1, a2, a3, args)
    task.quiet = true
    if group then
      return PENDING, task, seq
    end
    return await_task(me, task, ms, seq)
  end
  local co = take_co()
  s.idepth = d
  s.ico[d] = co
  s.igroup[d] = group
  if d == 1 then
    s.ibase = saved
  end
  return after_inline(s, d, co, saved, ms, group,
                      co_resume(co, fn, n, a1, a2, a3, args))
end

-- Runs fn with the arguments (n, a1, a2, a3, args) (see worker) as a child
-- of the current task, and awaits it with a timeout of `ms`: returns its
-- values, or nil, err as Task:await does (kind "timeout", the child
-- cancelled; "task_crashed"; "cancelled"). The child runs inline until it
-- first waits, so one that never does costs a resume and no task.
function _M.run_child(ms, fn, n, a1, a2, a3, args)
  return run_inline(ms, false, fn, n, a1, a2, a3, args)
end

--- Groups ---------------------------------------------------------------

local function timeout_error(ms)
  return errors.error(errors.TIMEOUT, "did not finish within " .. ms
                      .. " ms", { timeout_ms = ms })
end

-- The deadline `ms` from `now`, as loop:timer_after computes it.
local TIMER_MAX = MS_MAX - 1

local function deadline_after(now, ms)
  local d = now + ms
  if d > TIMER_MAX then
    d = TIMER_MAX
  end
  local c = ceil(d)
  return c
end

-- Values (n, r1, r2, r3) as a new list for an entry (see hand_over).
local function value_list(n, r1, r2, r3)
  if n == 1 then
    return { r1 }
  elseif n == 0 then
    return {}
  elseif n == 2 then
    return { r1, r2 }
  elseif n == 3 then
    return { r1, r2, r3 }
  end
  return r1
end

-- Takes what run_inline returned for child `i`: its entry, or its task.
local function group_take(g, i, kind, a, b, c, d)
  if kind ~= PENDING then
    g.results[i] = g.entry(a, value_list(a, b, c, d))
    return 0
  end
  add_waiter(a, g)
  a[SLOT] = i
  local t = g.tail + 1
  g.tail = t
  g.q_task[t] = a
  g.q_deadline[t] = deadline_after(g.now, g.ms)
  g.q_seq[t] = g.seq
  return 1
end

-- The entry of a child of the group that finished.
local function group_result(g, task)
  local i = task[SLOT]
  if g.expired[task] then
    g.expired[task] = nil
    g.results[i] = g.entry(2, { nil, timeout_error(g.ms) })
  elseif task[STATE] == "done" then
    local v = task[VALUES]
    local n = v.n
    g.results[i] = g.entry(n, n == 0 and {} or { unpack(v, 1, n) })
  else
    local a, b = results(task)
    g.results[i] = g.entry(2, { a, b })
  end
end

-- Runs fns[1], ..., fns[n] (functions of no argument) as children of the
-- current task, at most `limit` at a time, each with a timeout of `ms`,
-- and returns the list of entry(n, values) of what each one's await would
-- have returned (n values, in a new list), in input order (execute_batch). Each child runs inline until
-- it waits (run_inline). The caller then waits for all of them at once:
-- one wake-up for every child that finished meanwhile, and one timer for
-- every timeout, since children start in order with the same timeout and
-- their deadlines come in that order too (a queue, not a heap). A child
-- past its deadline is cancelled, and its slot is free once it stopped.
function _M.run_group(fns, ms, limit, entry)
  local me = current_task()
  local s = S
  local loop = s.loop
  local n = #fns
  local g = setmetatable({
    owner = me, done = {}, ndone = 0, results = {}, entry = entry,
    expired = {}, ms = ms, now = loop:now(),
    q_task = {}, q_deadline = {}, q_seq = {}, head = 1, tail = 0, seq = 0,
  }, Group)
  local q_task, q_deadline, q_seq = g.q_task, g.q_deadline, g.q_seq
  local done = g.done
  local bulk = n >= BULK_SPAWNS
  if bulk then
    bulk_begin()
  end
  -- The deadline and seq me.timer is armed for (false: not armed).
  local armed, armed_seq = false, false
  local running, next_i = 0, 1
  while true do
    if running < limit and next_i <= n then
      -- The children started now share a deadline, and their timeouts
      -- rank before any timer they arm.
      g.seq = t_reserve(s)
    end
    while running < limit and next_i <= n do
      local i = next_i
      next_i = i + 1
      running = running + group_take(g, i, run_inline(ms, true, fns[i], 0))
    end
    if running == 0 then
      break
    end
    -- The queue's head: the first child still running (or already
    -- cancelled and stopping), with the earliest deadline.
    local h = g.head
    while h <= g.tail and (FINISHED[q_task[h][STATE]] or g.expired[q_task[h]])
    do
      q_task[h] = nil
      h = h + 1
    end
    g.head = h
    if h <= g.tail and (armed ~= q_deadline[h] or armed_seq ~= q_seq[h]) then
      if me[TIMER] then
        t_cancel(s, me[TIMER])
      end
      me[TIMER] = t_add(s, q_deadline[h], me[TOKEN], q_seq[h])
      armed, armed_seq = q_deadline[h], q_seq[h]
    end
    me.waiting_for = g
    local ok, why = wait_or_cancel(me)
    me.waiting_for = nil
    if not ok then
      -- Cancelled: so are the children (release); the caller goes.
      if bulk then
        bulk_end()
      end
      error(why, 0)
    end
    if why == WAKE_TIMER then
      armed = false
    end
    for k = 1, g.ndone do
      local task = done[k]
      done[k] = nil
      running = running - 1
      group_result(g, task)
    end
    g.ndone = 0
    local now = loop:now()
    g.now = now
    while h <= g.tail and q_deadline[h] <= now do
      local task = q_task[h]
      if not FINISHED[task[STATE]] and not g.expired[task] then
        g.expired[task] = true
        task:cancel()
      end
      h = h + 1
    end
  end
  if me[TIMER] then
    t_cancel(s, me[TIMER])
    me[TIMER] = false
  end
  if bulk then
    bulk_end()
  end
  return g.results
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
  for t in pairs(live_tasks(sched)) do
    t:cancel()
  end
end

-- One loop for both the ready tasks and the poll (a loop nested in
-- another would keep the JIT from compiling either).
local function run_loop(sched)
  local loop = sched.loop
  local q_task, q_why = sched.q_task, sched.q_why
  while true do
    local h = sched.q_head
    if h <= sched.q_tail then
      local task, why = q_task[h], q_why[h]
      q_task[h], q_why[h] = nil, nil
      sched.q_head = h + 1
      resume(task, why)
    else
      sched.q_head, sched.q_tail = 1, 0
      while sched.bursts > 0 do
        sched.bursts = sched.bursts - 1
        bulk_end()
      end
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
  sched.loop = core.loop_new(sched.virtual, dispatch, true)
  sched.h = ffi.cast("void *", sched.loop:handle())
  S = sched
  sched.running = true
  local main = spawn_in(sched, nil, fn, args.n, args[1], args[2], args[3],
                        args)
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
  trim_pool()
  -- Bulk work cut short by an error ends with the loop.
  while bulk_depth > 0 do
    bulk_end()
  end
  if not ok then
    error(err, 0)
  end
  return main, sched.stop_signal
end

local parse_run_options = options.parser("sprun.run", {
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
  if main[STATE] == "done" then
    local v = main[VALUES]
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
  if main[STATE] == "done" then
    local v = main[VALUES][1]
    if type(v) == "number" then
      return v
    end
    return 0
  end
  if main[STATE] == "cancelled" then
    return 1, "sprun: the main task was cancelled"
  end
  return 1, "sprun: " .. main.traceback
end

-- Raises, at the level of the caller of the API function that calls it,
-- when a loop is running but the caller is not one of its tasks (a
-- coroutine of its own inside a task): in_task would try to start a
-- second loop, and the error would name sprun.run, which nobody called.
function _M.check_caller(fname)
  if S ~= nil and not in_context() then
    error(fname .. ": called from a coroutine that is not a sprun task", 3)
  end
end

-- Runs fn as a task: inside a running loop it spawns a child of the current
-- task; outside, it runs a loop until fn is done. Used by everything that
-- must work from plain Lua code too.
function _M.in_task(fn, ...)
  if in_context() then
    return fn(...)
  end
  return _M.run(fn, ...)
end

-- The body of sprun.spawn once its arguments are taken apart (a tail call
-- from it: the JIT cannot return into a vararg function from the trace
-- that follows the coroutine calls made here).
local function spawn_args(fn, n, a1, a2, a3, args)
  if S == nil then
    error("sprun.spawn: no loop is running (start one with sprun.run)", 2)
  end
  return spawn_in(S, current_task(), fn, n, a1, a2, a3, args)
end

function _M.spawn(fn, ...)
  check.func("sprun.spawn", "fn", fn)
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return spawn_args(fn, n, a1, a2, a3, n > 3 and { ... })
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
  if task[CANCELLED] then
    raise_cancelled(task)
  end
  task[TIMER] = t_after(S, ms, task[TOKEN])
  return sleep_wait(task)
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
  local ok, why = wait_or_cancel(task)
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
  task[TIMER] = t_after(S, ms, task[TOKEN])
end

function _M._disarm(task)
  if task[TIMER] then
    t_cancel(S, task[TIMER])
    task[TIMER] = false
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
  t_after(sched, ms, b.token)
  return true
end

-- The running scheduler (an opaque value to compare), or nil.
function _M.running()
  return S
end

-- Code that runs user functions under pcall calls this with the error it
-- caught: a cancellation of the current task goes on up, never swallowed.
-- (An inline run without a task has no cancellation of its own.)
function _M.reraise_cancel(err)
  local task = existing_task()
  if task ~= nil and task[CANCELLED] and err == task[CANCELLED] then
    error(err, 0)
  end
end

function _M._spawn_in(sched, parent, fn, ...)
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return spawn_in(sched, parent, fn, n, a1, a2, a3, n > 3 and { ... })
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
    enqueue(w.task, WAKE_IO)
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
