-- The state of a run (internal): what sched/init.lua opens for each run
-- (the fields sched/ works on) and closes at its end, and the loop and
-- state a run leaves for the next one.
--
--   state.open(opts, dispatch) -> s    the running state (kernel.enter)
--   state.close(s, signals) -> n       the handles the run left; parks or
--                                      closes its loop
--
-- The trap: a call from plain Lua code (executor.execute_with_retry
-- outside any loop) runs a whole run of its own; what it costs is mostly
-- making a loop and a state and freeing them, so both are kept between
-- real-time runs when the run left nothing in them.

local core = require "sprun.core"
local ffi = require "ffi"
local kernel = require "sprun.sched.kernel"

local each_key = next -- never `pairs` in a loop: see tables.lua

local _M = {}

-- A real-time loop that the last run left with nothing in it, kept
-- (parked) for the next run: making a loop and freeing it are most of
-- what a call from plain Lua code (executor.execute_with_retry outside
-- any loop) would cost. Closed by the collector, or by the next run that
-- cannot use it.
local spare, spare_h = false, false
-- The state of the run that left the spare loop, when nothing of that run
-- is in it any more (no task, no I/O token, no inline run): what open()
-- would make is most of what remains of such a call's cost, so the next
-- run on the spare loop takes it back with its per-run fields reset.
-- Task tokens and I/O tokens go on counting where they were, so that a
-- stale one from the earlier run never names a new task or object; the
-- queues, the turn-end lists and the inline stacks are empty (or stale
-- above their counts) at a run's end, as at its start.
-- The trap: a field that sched/ adds to the state during a run must be
-- reset here too, or a reused state would carry it into the next run.
local spare_s = false
-- Each run's identity (kernel.running), never reused.
local runs = 0

local function reuse(s)
  s.virtual = false
  s.q_head, s.q_tail = 1, 0
  s.live, s.spawns, s.bursts, s.nturn = 0, 0, 0, 0
  s.stop_status, s.stop_name = false, false
  s.cur = false
  s.idepth, s.ibase = 0, false
  s.running = true
  s.main, s.main_failed = false, false
  return s
end

-- Opens a loop and makes it the running one: its state, with the fields
-- sched/ works on. opts: { clock = "real" | "virtual" }; dispatch: what
-- the loop calls with its events.
function _M.open(opts, dispatch)
  local virtual = opts ~= nil and opts.clock == "virtual" or false
  runs = runs + 1
  if not virtual and spare_s then
    local s = reuse(spare_s)
    spare_s = false
    s.loop, s.h, spare = spare, spare_h, false
    s.loop:unpark()
    s.run_id = runs
    kernel.enter(s)
    return s
  end
  local s = {
    run_id = runs,   -- this run's identity (kernel.running)
    virtual = virtual,
    tokens = {},
    io_tokens = {},  -- processes, sockets, background timers, signals
    ntokens = 0,     -- task tokens handed out so far
    free = {},       -- task tokens free again (a stack)
    nfree = 0,
    next_token = kernel.IO_TOKEN0,
    q_task = {}, q_why = {}, q_head = 1, q_tail = 0,
    live = 0,        -- unfinished tasks
    spawns = 0,      -- spawned since the last resume returned (bulk_begin)
    bursts = 0,      -- bursts of spawns over, to end when the queue is empty
    -- Work to do once the ready tasks have run, before the loop polls
    -- (kernel.at_turn_end): fn[i](arg[i]) for i = 1, nturn.
    nturn = 0, turn_fn = {}, turn_arg = {},
    run_end = {},    -- { fn, arg } to call when the run ends (at_run_end)
    -- Every field is set here, none added later (a key added to a table
    -- whose fields were set to nil makes it rehash: a reused state would
    -- be rebuilt at every run).
    stop_status = false, -- the exit status once a shutdown began
                         -- (signal, os.exit)
    stop_name = false,   -- what began it: "SIGINT", ..., "os.exit"
    main = false,        -- the main task
    main_failed = false, -- the main task raised and the rest is cancelled
    cur = false,     -- the task whose coroutine runs now (see current)
    -- The inline runs in progress (inline.lua), innermost last: each
    -- one's coroutine, its task once it has one (else false; entries
    -- above idepth are stale) with the timer seq reserved for its
    -- caller's timeout, whether it is a group's child, and the task that
    -- started the outermost one.
    idepth = 0,
    ico = {}, itask = {}, iseq = {}, igroup = {}, ibase = false,
    idl = {},        -- each inline run's deadline (loop ms), or false
    loop = false,
    h = false,       -- the loop for the sp_lua_timer_* functions
    running = true,
    trace_hook = false, -- sprun.trace's hook (kernel.set_trace_hook)
  }
  if not virtual and spare then
    s.loop, s.h, spare = spare, spare_h, false
    s.loop:unpark()
  else
    s.loop = core.loop_new(virtual, dispatch, true)
    s.h = ffi.cast("void *", s.loop:handle())
  end
  kernel.enter(s)
  return s
end

-- Ends the run of `s` (its tasks done, its handles settled): returns the
-- handles left in its loop, parked for the next run when it holds none
-- (and its state kept when nothing of the run is in it), else closed.
function _M.close(s, signals)
  -- A loop that can be parked holds no handle (loop:park checks).
  local parked = not (s.virtual or signals or spare) and s.loop:park()
  if not parked then
    local n = s.loop:handle_count()
    s.loop:close()
    return n
  end
  spare, spare_h = s.loop, s.h
  if s.live == 0 and s.idepth == 0 and s.nturn == 0
     and s.run_end[1] == nil and each_key(s.io_tokens) == nil then
    spare_s = s
  end
  return 0
end

return _M
