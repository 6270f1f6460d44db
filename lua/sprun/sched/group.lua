-- A group: children that one task awaits all at once (internal to
-- sprun.sched; executor.execute_batch runs its items as one).
--
-- The children start in order, at most `limit` at a time, each with the
-- same timeout, and each runs inline until it waits (inline.lua). The
-- caller then waits for all of them at once: one wake-up for every child
-- that finished meanwhile, and one timer for every timeout, since
-- children started in order with the same timeout have their deadlines
-- in that order too (a queue, not a heap). A child past its deadline is
-- cancelled, and its slot is free once it stopped.
--
-- The trap: a child past its deadline may take a while to stop (its
-- cleanups run first); it keeps its slot until then, and its result is
-- the timeout, whatever it returns meanwhile.

local kernel = require "sprun.sched.kernel"
local coro = require "sprun.sched.coro"
local timer = require "sprun.sched.timer"
local task_m = require "sprun.sched.task"
local inline = require "sprun.sched.inline"

local setmetatable = setmetatable
local error = error
local unpack = unpack

local state = kernel.state
local t_add = timer.add
local t_cancel = timer.cancel
local t_reserve = timer.reserve
local wait_or_cancel = kernel.wait_or_cancel
local enqueue = kernel.enqueue
local add_waiter = task_m.add_waiter
local cancel = task_m.cancel
local results = task_m.results
local run_inline = inline.run_inline
local PENDING = inline.PENDING
local FINISHED = kernel.FINISHED
local STATE, TIMER, TOKEN = kernel.STATE, kernel.TIMER, kernel.TOKEN
local VALUES, SLOT = kernel.VALUES, kernel.SLOT
local WAKE_TIMER, WAKE_DONE = kernel.WAKE_TIMER, kernel.WAKE_DONE

local _M = {}

-- The group is the waiter of its children, and keeps the ones that
-- finished for its owner (task.lua calls _child_done).
local Group = {}
Group.__index = Group

function Group:_child_done(task)
  local k = self.ndone + 1
  self.ndone = k
  self.done[k] = task
  local owner = self.owner
  if owner.waiting_for == self then
    owner.waiting_for = nil
    enqueue(owner, WAKE_DONE)
  end
end

-- Values (n, r1, r2, r3) as a new list for an entry (see coro.lua).
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
  g.q_deadline[t] = timer.deadline(state(), g.ms)
  g.q_seq[t] = g.seq
  return 1
end

-- The entry of a child of the group that finished.
local function group_result(g, task)
  local i = task[SLOT]
  if g.expired[task] then
    g.expired[task] = nil
    g.results[i] = g.entry(2, { nil, task_m.timeout_error(g.ms) })
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
-- have returned (n values, in a new list), in input order.
function _M.run(fns, ms, limit, entry)
  local me = kernel.current()
  local s = state()
  local loop = s.loop
  local n = #fns
  local g = setmetatable({
    owner = me, done = {}, ndone = 0, results = {}, entry = entry,
    expired = {}, ms = ms,
    q_task = {}, q_deadline = {}, q_seq = {}, head = 1, tail = 0, seq = 0,
  }, Group)
  local q_task, q_deadline, q_seq = g.q_task, g.q_deadline, g.q_seq
  local done = g.done
  local bulk = n >= coro.BULK_SPAWNS
  if bulk then
    coro.bulk_begin()
  end
  -- The deadline and seq me's timer is armed for (false: not armed).
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
        coro.bulk_end()
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
    while h <= g.tail and q_deadline[h] <= now do
      local task = q_task[h]
      if not FINISHED[task[STATE]] and not g.expired[task] then
        g.expired[task] = true
        cancel(task)
      end
      h = h + 1
    end
  end
  if me[TIMER] then
    t_cancel(s, me[TIMER])
    me[TIMER] = false
  end
  if bulk then
    coro.bulk_end()
  end
  return g.results
end

return _M
