-- Inline children (internal to sprun.sched): a child that is only
-- awaited (execute_with_timeout, a pipeline's timeout stage, the items of
-- execute_batch) first runs inline, in a pooled coroutine resumed by its
-- caller, with no task behind it. Most operations return without waiting,
-- and then cost a resume and nothing else.
--
-- The child becomes a task the moment anything asks for it
-- (kernel.current: to wait, to spawn, to own a process or a socket); if
-- it then waits, it is a task like any other from there on, and its
-- caller awaits it with the timeout, which keeps its place among equal
-- deadlines (see kernel.materialize). A batch's caller (group.lua) gets
-- the task instead, and awaits all its children at once.
--
-- The trap: the caller may be cancelled while its inline child runs (the
-- child cancels it, or something the child wakes does). The cancellation
-- is then raised in the caller as its await would have raised it, once
-- the child has returned; and a cancelled caller runs no child inline.

local kernel = require "sprun.sched.kernel"
local timer = require "sprun.sched.timer"
local coro = require "sprun.sched.coro"
local task_m = require "sprun.sched.task"
local errors = require "sprun.errors"
local clock = require "sprun.clock"

local co_resume = coroutine.resume
local error = error
local unpack = unpack

local state = kernel.state
local now = clock.now
local cap_deadline = kernel.cap_deadline
local materialize = kernel.materialize
local spawn_in = kernel.spawn_in
local t_reserve = timer.reserve
local finish = task_m.finish
local results = task_m.results
local await = task_m.await
local DONE = coro.DONE
local values_of = coro.values_of
local STATE = kernel.STATE
local CANCELLED = kernel.CANCELLED

local _M = {}

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
-- coro.lua hands them over (n, r1, r2, r3). Fixed positions, so that the
-- group's code compiles.
local PENDING = {}
local RETURNED = {}
_M.PENDING = PENDING

local function group_values(a, b)
  return RETURNED, 2, a, b
end

-- What the resume of inline run `d` returned (see task.lua's
-- after_resume). The run is over for its caller whatever happened; if
-- its job waits, its task goes on as a task, and the caller awaits it
-- (or, for a group, gets it).
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
    coro.put(co)
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
    local err = task_m.crash_error(mark, coro.traceback(co,
                                                        errors.message(mark)))
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
    return await(s.cur, task, ms, seq)
  end
  -- A coroutine.yield outside a sprun wait: the task fails (see
  -- task.fail_yielded).
  task.quiet = true
  task_m.fail_yielded(task)
  check_caller(s, d, saved)
  if group then
    return group_values(results(task))
  end
  return results(task)
end

-- Runs fn with the arguments (n, a1, a2, a3, args) (see coro.lua) as a
-- child of the current task, at once and inline. If it waits: with
-- `group`, returns PENDING, its task and a timer seq; else awaits it with
-- a timeout of `ms`. The caller must be in a task or an inline run
-- (kernel.in_context()).
local function run_inline(ms, group, fn, n, a1, a2, a3, args)
  local s = state()
  local d = s.idepth + 1
  local saved = s.cur
  if d > MAX_INLINE or (d == 1 and saved[CANCELLED])
     or (d > 1 and caller_cancelled(s, d, saved)) then
    -- A cancelled caller raises in its await, and the child runs as a
    -- task of its own, as any spawned child.
    local me = kernel.current()
    local seq = t_reserve(s)
    local task = spawn_in(s, me, fn, n, a1, a2, a3, args)
    task.quiet = true
    if ms then
      cap_deadline(task, now() + ms)
    end
    if group then
      return PENDING, task, seq
    end
    return await(me, task, ms, seq)
  end
  local co = coro.take()
  s.idepth = d
  s.ico[d] = co
  s.igroup[d] = group
  s.idl[d] = ms and now() + ms or false
  if d == 1 then
    s.ibase = saved
  end
  return after_inline(s, d, co, saved, ms, group,
                      co_resume(co, fn, n, a1, a2, a3, args))
end
_M.run_inline = run_inline

-- Runs fn with the arguments (n, a1, a2, a3, args) (see coro.lua) as a
-- child of the current task, and awaits it with a timeout of `ms`:
-- returns its values, or nil, err as Task:await does (kind "timeout", the
-- child cancelled; "task_crashed"; "cancelled"). The child runs inline
-- until it first waits, so one that never does costs a resume and no
-- task.
function _M.run_child(ms, fn, n, a1, a2, a3, args)
  return run_inline(ms, false, fn, n, a1, a2, a3, args)
end

return _M
