-- execute_batch's telemetry (internal): one sprun.batch.item per item,
-- as it finishes, with its 1-based index, the time it ran and its outcome
-- as the batch's result says it ("ok", or the error's kind: "timeout",
-- "task_crashed", "cancelled", the kind it returned).
--
-- executor.lua runs a batch through here only while the event has a
-- handler (one table lookup otherwise). Each item is wrapped: when it
-- starts it becomes a task (kernel.current), whose end, however it comes
-- (a return, a raise, the timeout's cancellation), is heard here as the
-- group hears it (a waiter of the task, sched/task.lua), before the
-- group does. Items that never started (the batch was cancelled first)
-- get their event once the group is done, with duration_ms 0.
--
-- The trap: a child past its timeout is cancelled, and its result is the
-- timeout whatever it does then; so is its event's outcome, told from a
-- cancellation of the item while the batch's own task was not.

local kernel = require "sprun.sched.kernel"
local task_m = require "sprun.sched.task"
local group = require "sprun.sched.group"
local telemetry = require "sprun.telemetry"
local clock = require "sprun.clock"
local errors = require "sprun.errors"

local pcall = pcall
local error = error
local setmetatable = setmetatable

local enabled = telemetry.enabled
local emit = telemetry.emit
local now = clock.now
local ticks_ns = clock.ticks_ns
local kind_of = errors.kind
local add_waiter = task_m.add_waiter
local is_cancelled = kernel.is_cancelled
local STATE, VALUES = kernel.STATE, kernel.VALUES

local ITEM_EVENT = "sprun.batch.item"

local _M = { EVENT = ITEM_EVENT }

local function item_event(b, i, duration_ms, outcome)
  b.reported[i] = true
  if enabled[ITEM_EVENT] then
    emit(ITEM_EVENT, { index = i, duration_ms = duration_ms, batch = b.id,
                       size = b.size },
         { outcome = outcome, pool = b.name })
  end
end

-- The outcome of item i, whose task finished, as its entry will say.
local function outcome_of(b, i, task)
  if is_cancelled(task) then
    if not is_cancelled(b.owner) and now() - b.start_ms[i] >= b.ms then
      return errors.TIMEOUT
    end
    return errors.CANCELLED
  end
  if task[STATE] == "done" then
    local v = task[VALUES]
    local a, err = v[1], v[2]
    if (a == nil or a == false) and err ~= nil then
      return kind_of(err)
    end
    return "ok"
  end
  return errors.TASK_CRASHED
end

-- A waiter of item i's task: hears of its end (see task.lua's
-- wake_waiter).
local Item = {}
Item.__index = Item

function Item:_child_done(task)
  local b, i = self.b, self.i
  if not b.reported[i] then
    item_event(b, i, (ticks_ns() - b.start_ns[i]) / 1e6,
               outcome_of(b, i, task))
  end
end

local function tracked(b, i, fn)
  return function()
    local task = kernel.current()
    b.start_ns[i], b.start_ms[i] = ticks_ns(), now()
    add_waiter(task, setmetatable({ b = b, i = i }, Item))
    return fn()
  end
end

-- The events of the items that have none once the group is done: those
-- that never started (outcome from `results` when the batch finished,
-- else "cancelled").
local function sweep(b, results)
  for i = 1, b.size do
    if not b.reported[i] and (results or not b.start_ns[i]) then
      local entry = results and results[i]
      local outcome = errors.CANCELLED
      if entry then
        outcome = entry.ok and "ok" or kind_of(entry.error)
      end
      local t0 = b.start_ns[i]
      item_event(b, i, t0 and (ticks_ns() - t0) / 1e6 or 0, outcome)
    end
  end
end

-- group.run(fns, ms, limit, entry) with an event per item; `id` is the
-- batch's number, `name` its pool label.
function _M.run(fns, ms, limit, entry, id, name)
  local n = #fns
  local b = {
    id = id, size = n, ms = ms, name = name, owner = kernel.current(),
    start_ns = {}, start_ms = {}, reported = {},
  }
  local wrapped = {}
  for i = 1, n do
    wrapped[i] = tracked(b, i, fns[i])
  end
  local ok, results = pcall(group.run, wrapped, ms, limit, entry)
  if not ok then
    -- Cancelled: the items running hear of it as they stop.
    sweep(b, nil)
    error(results, 0)
  end
  sweep(b, results)
  return results
end

return _M
