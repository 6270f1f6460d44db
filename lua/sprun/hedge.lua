-- Hedged calls (executor.execute_hedged and a pipeline's hedge stage):
-- when the first attempt has not finished after delay_ms, a second starts
-- beside it, then a third after as long again, up to max_hedges more; the
-- first success wins, and every other attempt still running is cancelled
-- for real (its child processes killed, its sockets and HTTP transfers
-- closed), and awaited, before the winner's values are returned. A
-- failure that hedge_on(err) says yes to (default: every failure) starts
-- the next hedge at once rather than after the delay; when every attempt
-- failed, the last failure is returned, marked details.hedges (how many
-- were started beyond the first).
--
-- Each attempt is a child task of the caller, so cancelling the caller
-- cancels them all. Hedges are extra load, so they draw on a retry
-- budget when one is given (a pipeline's, or one shared by the name of
-- the calls): a budget that refuses means no more hedges, never a wait.
--
-- The trap: an attempt runs its operation under pcall, and a loser's
-- cancellation raised inside it must not be taken for the attempt's
-- failure: it is handed back (kernel.reraise_cancel), so the task ends as
-- cancelled and its owner's bookkeeping sees nothing from it.

local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local inline = require "sprun.sched.inline"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local clock = require "sprun.clock"

local pcall = pcall
local unpack = unpack
local select = select
local now = clock.now
local enabled = telemetry.enabled
local observed = telemetry.observed
local emit = telemetry.emit

local HEDGE_EVENTS = "sprun.hedge"
local STARTED_EVENT = "sprun.hedge.started"
local WON_EVENT = "sprun.hedge.won"

-- `call` (the events' metadata) numbers a hedged call, the same in all
-- its events (a trace links them): counted only for calls that began with
-- a hedge event observed, nil in the others.
local calls = 0

local _M = {}

local function pack(...)
  return { n = select("#", ...), ... }
end

-- One attempt: the operation's outcome kept in h.done[i] (true and its
-- values, or false and the error), then the caller woken.
local function body(h, i, fn, n, args)
  local r = pack(pcall(fn, unpack(args, 1, n)))
  if not r[1] then
    kernel.reraise_cancel(r[2])
    r[2] = errors.raised(r[2])
  elseif not r[2] and r[3] ~= nil then
    r[1] = false
    r[2] = r[3]
  end
  h.done[i] = r
  h.ndone = h.ndone + 1
  kernel.wake(h)
end

local function start(h, me, i, fn, n, args)
  local t = kernel.spawn(me, body, h, i, fn, n, args)
  kernel.quiet(t)
  h.tasks[i] = t
  h.started = i
  h.next_at = now() + h.delay_ms
  if i > 1 and enabled[STARTED_EVENT] then
    emit(STARTED_EVENT, { attempt = i, after_ms = now() - h.t0 },
         { name = h.name, call = h.call or nil })
  end
end

-- Cancels every attempt still running but the winner `w`, and waits
-- until each has stopped (its processes reaped, its sockets closed).
local function cancel_losers(h, w)
  local cancelled = 0
  for i = 1, h.started do
    local t = h.tasks[i]
    if i ~= w and h.done[i] == nil and t:cancel() then
      cancelled = cancelled + 1
    end
  end
  for i = 1, h.started do
    if i ~= w and h.done[i] == nil then
      h.tasks[i]:await()
    end
  end
  return cancelled
end

-- Whether one more hedge may start now.
local function may_hedge(h, o, budget)
  return h.started <= o.max_hedges and (budget == nil or budget:withdraw())
end

-- Runs fn(unpack(args, 1, n)) hedged, in the calling task. o: {
-- delay_ms, max_hedges, hedge_on, name }; budget: a retry budget or nil.
function _M.run(o, budget, fn, n, args)
  local me = kernel.need_task("executor.execute_hedged")
  local hedge_on = o.hedge_on
  local h = { done = {}, ndone = 0, tasks = {}, started = 1, t0 = now(),
              name = o.name, delay_ms = o.delay_ms, next_at = false,
              call = false }
  h.next_at = h.t0 + h.delay_ms
  if observed[HEDGE_EVENTS] then
    calls = calls + 1
    h.call = calls
  end
  if budget then
    budget:deposit()
  end
  -- The first attempt runs inline, at once: one that returns without
  -- waiting costs no task and no timer (sched/inline.lua).
  local mark, task = inline.run_inline(nil, true, body, 5, h, 1, fn,
                                       { h, 1, fn, n, args })
  if mark == inline.PENDING then
    kernel.quiet(task)
    h.tasks[1] = task
  else
    h.tasks[1] = false
  end
  local seen, last, timer = 0, nil, false
  while true do
    local now_hedge = timer
    -- The attempts that finished since, in the order they started.
    for i = 1, h.started do
      local r = h.done[i]
      if r ~= nil and not r.seen then
        r.seen = true
        seen = seen + 1
        if r[1] then
          local losers = cancel_losers(h, i)
          if enabled[WON_EVENT] then
            emit(WON_EVENT, { attempt = i, cancelled = losers,
                              duration_ms = now() - h.t0 },
                 { name = h.name, call = h.call or nil })
          end
          return unpack(r, 2, r.n)
        end
        last = r[2]
        if hedge_on == nil or hedge_on(last) then
          now_hedge = true
        end
      end
    end
    if now_hedge and may_hedge(h, o, budget) then
      start(h, me, h.started + 1, fn, n, args)
    elseif seen == h.started then
      -- Every attempt failed, and no more may start.
      return nil, errors.with_details(last, "hedges", h.started - 1)
    elseif now_hedge then
      -- No more hedges: wait for those running.
      h.next_at = false
    end
    local armed = h.next_at and h.started <= o.max_hedges
    if armed then
      local left = h.next_at - now()
      kernel.arm(me, left > 0 and left or 0)
    end
    local ok, why = pcall(kernel.block, h, me)
    if armed then
      kernel.disarm(me)
    end
    if not ok then
      cancel_losers(h, nil)
      error(why, 0)
    end
    timer = why == kernel.WAKE_TIMER
  end
end

-- From plain code or a task: runs a loop if need be.
function _M.call(o, budget, fn, n, args)
  return sched.in_task(_M.run, o, budget, fn, n, args)
end

return _M
