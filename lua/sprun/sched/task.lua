-- A task's life after its birth in the kernel (internal to sprun.sched):
-- resuming it, ending it, cancelling it, and awaiting it.
--
-- A task ends once: with its values ("done"), with the error it raised
-- ("failed", its traceback kept), or by its own cancellation
-- ("cancelled"). Ending wakes whoever awaits it (a task, a group, or a
-- list of them), unlinks it from its parent, and gives its token back. A
-- failure nobody looks at is not lost: it is printed when the parent
-- finishes without having awaited it, or at once if there is no parent
-- left to look.
--
-- The trap: cancelling a task stops what it holds first (its children,
-- its processes and sockets, its timer) and only then lets it see the
-- cancellation where it waits; a task cancelled before it started ends
-- at once without running, and one waiting is queued to raise it.

local kernel = require "sprun.sched.kernel"
local timer = require "sprun.sched.timer"
local coro = require "sprun.sched.coro"
local errors = require "sprun.errors"

local co_resume = coroutine.resume
local getmetatable = getmetatable
local error = error
local each_key = next -- never `pairs` in a loop: see tables.lua
local unpack = unpack
local tostring = tostring
local format = string.format
local io_stderr = io.stderr

local state = kernel.state
local enqueue = kernel.enqueue
local t_after = timer.after
local t_cancel = timer.cancel
local wait = kernel.wait
local wait_or_cancel = kernel.wait_or_cancel
local values_of = coro.values_of
local put_co = coro.put
local DONE = coro.DONE
local Task = kernel.Task
local FINISHED = kernel.FINISHED
local ID, CO, STATE, PARENT = kernel.ID, kernel.CO, kernel.STATE, kernel.PARENT
local TIMER, Q, VALUES = kernel.TIMER, kernel.Q, kernel.VALUES
local WAITERS, TOKEN = kernel.WAITERS, kernel.TOKEN
local CHILD, NEXT, PREV = kernel.CHILD, kernel.NEXT, kernel.PREV
local CANCELLED = kernel.CANCELLED
local WAKE_DONE, WAKE_CANCEL = kernel.WAKE_DONE, kernel.WAKE_CANCEL
local BULK_SPAWNS = coro.BULK_SPAWNS

local _M = {}

-- The error an awaiter gets for a task that raised `err`.
local function crash_error(err, tb)
  return errors.error(errors.TASK_CRASHED, errors.text(err), {
    error = err, traceback = tb,
  })
end
_M.crash_error = crash_error

local function print_failure(task)
  io_stderr:write("sprun: task ", tostring(task[ID]), " failed: ",
                  task.traceback or errors.message(task.error), "\n")
  io_stderr:flush()
end

-- A waiter that is no task (a group, group.lua) hears of each child that
-- finished through w:_child_done(task); a task is woken if it still
-- waits for this one.
local function wake_waiter(w, task)
  if getmetatable(w) ~= Task then
    w:_child_done(task)
  elseif w.waiting_for == task then
    w.waiting_for = nil
    if w[TIMER] then
      t_cancel(state(), w[TIMER])
      w[TIMER] = false
    end
    enqueue(w, WAKE_DONE)
  end
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
_M.add_waiter = add_waiter

-- Ends a task: true and its values (a table for unpack(v, 1, v.n)), or
-- false and the error it raised.
local function finish(task, ok, v)
  local s = state()
  s.live = s.live - 1
  if task[TIMER] then
    t_cancel(s, task[TIMER])
    task[TIMER] = false
  end
  kernel.free_task_token(s, task[TOKEN])
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
      task.traceback = coro.traceback(task[CO], errors.message(err))
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
  if s.trace_hook then
    s.trace_hook(task[ID], parent and parent[ID] or false, task[STATE])
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
_M.finish = finish

local cancel

-- Stops what a task holds: its child tasks, resources and timer.
local function release(task)
  local child = task[CHILD]
  while child do
    -- A child that had not started finishes (and leaves the list) now.
    local older = child[NEXT]
    cancel(child)
    child = older
  end
  if task.resources then
    for res in each_key, task.resources do
      res:_abort()
    end
    task.resources = nil
  end
  if task[TIMER] then
    t_cancel(state(), task[TIMER])
    task[TIMER] = false
  end
end

-- Cancels the task (see the trap above). Returns true if it was still
-- unfinished.
cancel = function(task)
  if FINISHED[task[STATE]] or task[CANCELLED] then
    return false
  end
  task[CANCELLED] = kernel.new_cancel_error(task)
  release(task)
  if task[STATE] == "pending" then
    -- Never started: it finishes now without running (its coroutine,
    -- parked before the job, is dropped).
    finish(task, false, task[CANCELLED])
  elseif task[STATE] == "waiting" and not task[Q] then
    enqueue(task, WAKE_CANCEL)
  end
  return true
end
_M.cancel = cancel

-- The failure of a task that called coroutine.yield itself.
local function yield_error(task)
  return format("task %d called coroutine.yield outside a sprun wait "
                .. "(use sprun.sleep, an await or an I/O call)", task[TOKEN])
end

-- Fails a task, left suspended by a coroutine.yield of its own: nothing
-- would ever resume it, and it could not even be cancelled (its awaiter
-- would then wait forever). Its coroutine, suspended in the job, is
-- dropped.
function _M.fail_yielded(task)
  release(task)
  finish(task, false, yield_error(task))
end
local fail_yielded = _M.fail_yielded

-- What a resume of the task's coroutine returned: its job is done (DONE
-- and the values, see coro.lua), it raised, or it yielded (in a sprun
-- wait, or by calling coroutine.yield itself).
local function after_resume(task, ok, mark, n, r1, r2, r3)
  if ok then
    if mark == DONE then
      local co = task[CO]
      finish(task, true, values_of(n, r1, r2, r3))
      put_co(co)
    elseif task[STATE] == "running" then
      fail_yielded(task)
    end
    return
  end
  finish(task, false, mark)
end

-- Resumes a task taken off the ready queue, with the reason it was woken.
function _M.resume(task, why)
  task[Q] = false
  if FINISHED[task[STATE]] then
    return
  end
  task[STATE] = "running"
  local s = state()
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
  return nil, kernel.new_cancel_error(task)
end
_M.results = results

local function timeout_error(ms)
  return errors.error(errors.TIMEOUT, "did not finish within " .. ms
                      .. " ms", { timeout_ms = ms })
end
_M.timeout_error = timeout_error

-- `me` waits for `task` to finish, and returns what Task:await does.
-- `seq`, from timer.reserve, ranks the timeout among equal deadlines
-- as of when it was taken.
function _M.await(me, task, timeout_ms, seq)
  add_waiter(task, me)
  me.waiting_for = task
  if timeout_ms then
    me[TIMER] = t_after(state(), timeout_ms, me[TOKEN], seq)
  end
  local ok, why = wait_or_cancel(me)
  if not ok then
    -- Cancelled while waiting: stop waiting and pass the cancellation on.
    me.waiting_for = nil
    error(why, 0)
  end
  if why == kernel.WAKE_TIMER and not FINISHED[task[STATE]] then
    -- Cancel it, and return once it has really stopped (its cleanups ran).
    me.waiting_for = nil
    cancel(task)
    if not FINISHED[task[STATE]] then
      add_waiter(task, me)
      me.waiting_for = task
      wait(me)
    end
    return nil, timeout_error(timeout_ms)
  end
  return results(task)
end

return _M
