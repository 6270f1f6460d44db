-- The executor: retry, circuit breaker, timeout and bounded batches around
-- an operation (a Lua function).
--
-- An operation fails when it raises, or returns nil/false followed by a
-- non-nil error; anything else is a success. Each function here runs inside
-- the scheduler: called from a task it waits by yielding; called from plain
-- Lua code it runs a loop until it is done and returns.
--
-- The trap: user code runs under pcall here, and a cancellation of the
-- calling task is raised through that code. A pcall that swallowed it would
-- retry (or report) an operation that was meant to stop, so every pcall
-- hands a cancellation straight back (kernel.reraise_cancel).

local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local inline = require "sprun.sched.inline"
local group = require "sprun.sched.group"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local retry_policy = require "sprun.retry_policy"
local circuit_breaker = require "sprun.circuit_breaker"
local tables = require "sprun.tables"
local retry_run = require("sprun.retry").run
local deadline_outcome = require("sprun.retry").deadline_outcome
local clock = require "sprun.clock"

local type = type
local pcall = pcall
local each_key = next -- never `pairs` in a loop: see tables.lua
local select = select
local unpack = unpack
local error = error
local format = string.format
local min = math.min

local _M = {}

--- execute_with_retry ----------------------------------------------------

-- With `policy = p`, a policy option beside it would be silently
-- ignored, so it is misuse. `operation` and `pool` name the call, not the
-- policy.
local NOT_POLICY = { policy = true, operation = true, pool = true,
                     deadline_ms = true }

local function policy_alone(o, opts)
  if o.policy ~= nil then
    local keys = tables.keys_in_order(opts)
    for i = 1, #keys do
      if not NOT_POLICY[keys[i]] then
        return keys[i], "cannot be given with 'policy' (set it in "
                        .. "retry_policy.new)"
      end
    end
  end
end

-- Retry options (or policy = p), checked under the name of the function
-- the user called.
local function retry_parser(fname)
  return retry_policy._options_parser(fname, {
    policy = { check = function(v)
      if not retry_policy.is_policy(v) then
        return "must be a retry policy (retry_policy.new)"
      end
    end },
    operation = { "string" },
    pool = { "string" },
    -- One deadline for every attempt and backoff together.
    deadline_ms = { "number", min = 0, limit = check.MS_MAX },
  }, policy_alone)
end

local parse_retry = retry_parser("executor.execute_with_retry")
local parse_protection = retry_parser("executor.execute_with_protection")

-- The seed's call form writes its options as a table literal at every
-- call: the policy made from one is kept (options.memo) for the next
-- table holding the same. A kept policy with a seed of its own is
-- reseeded at each use, so that its delays are those a new one would
-- give; one without continues its random sequence, as good as a fresh
-- seed.
local memo_get, memo_put = options.memo_get, options.memo_put
local retry_memo = options.memo(8)
local protection_memo = options.memo(8)

-- What options `o` (checked by a parser) make: { policy, pool,
-- operation, seeded }, stored for `opts` when they can be kept.
local function retry_entry(memo, opts, o)
  local entry = { o.policy or retry_policy._from_options(o), o.pool,
                  o.operation, o.policy == nil and o.seed ~= nil,
                  o.deadline_ms }
  if o.policy == nil then
    memo_put(memo, opts, entry)
  end
  return entry
end

-- The policy, pool, operation and deadline_ms of a kept entry.
local function retry_setup(entry)
  local policy = entry[1]
  if entry[4] then
    retry_policy._reseed(policy)
  end
  return policy, entry[2], entry[3], entry[5]
end

-- The outcome of one attempt: ok (a success), or false and the error.
local function attempt_outcome(ok, a, b)
  if not ok then
    kernel.reraise_cancel(a)
    return false, errors.raised(a)
  end
  if (a == nil or a == false) and b ~= nil then
    return false, b
  end
  return true
end

-- One attempt of execute_with_retry (cb nil) or execute_with_protection
-- (one cb:call(fn, ...)), as retry.run takes it: the operation, the
-- breaker, and the arguments (their count, the first three, and all of
-- them packed when there are more than three, or more than one with a
-- breaker), so that the common arities travel as values.
local cb_pcall = circuit_breaker._pcall

local function call_attempt(fn, cb, n, a1, a2, a3, args)
  if cb ~= nil then
    if n == 0 then
      return cb_pcall(cb, fn)
    elseif n == 1 then
      return cb_pcall(cb, fn, a1)
    end
    return cb_pcall(cb, fn, unpack(args, 1, n))
  end
  if n == 0 then
    return pcall(fn)
  elseif n == 1 then
    return pcall(fn, a1)
  elseif n == 2 then
    return pcall(fn, a1, a2)
  elseif n == 3 then
    return pcall(fn, a1, a2, a3)
  end
  return pcall(fn, unpack(args, 1, n))
end

-- The retry loop as a child whose deadline is deadline_ms from now: a
-- backoff that would end past it is not taken, and an attempt still
-- running at it is cancelled.
local function within_deadline(deadline_ms, policy, pool, operation, fname,
                               fn, cb, n, a1, a2, a3, args)
  local at = clock.now() + deadline_ms
  return deadline_outcome(at, inline.run_child(deadline_ms, retry_run, 13,
    nil, nil, nil, { policy, pool, operation, false, fname, call_attempt, fn,
                     cb, n, a1, a2, a3, args }))
end

-- The retry loop of a call from plain Lua code, as the main task of a run
-- of its own: its arguments travel in one table, refilled by each such
-- call (none can start while another runs: inside the run, a loop is
-- running) and emptied as soon as they are taken.
local OUTSIDE = {}

local function retry_outside(o)
  local policy, pool, operation, fname, fn, cb = o[1], o[2], o[3], o[4],
                                                 o[5], o[6]
  local n, a1, a2, a3, args = o[7], o[8], o[9], o[10], o[11]
  for i = 1, 11 do
    o[i] = false
  end
  return retry_run(policy, pool, operation, false, fname, call_attempt, fn,
                   cb, n, a1, a2, a3, args)
end

-- Runs the loop: in the calling task, or, called from plain Lua code with
-- no loop running, in a loop of its own. Inside a running loop the first
-- attempt runs where it is called; a wait before the next one needs a task.
local function retry(policy, fn, cb, pool, operation, deadline_ms, ...)
  local n = select("#", ...)
  local a1, a2, a3 = ...
  local args = false
  if n > 3 or (cb ~= nil and n > 1) then
    args = { ... }
  end
  local fname = cb and "executor.execute_with_protection"
                or "executor.execute_with_retry"
  if deadline_ms then
    return sched.in_task(within_deadline, deadline_ms, policy, pool,
                         operation, fname, fn, cb, n, a1, a2, a3, args)
  end
  if kernel.running() == nil then
    local o = OUTSIDE
    o[1], o[2], o[3], o[4], o[5], o[6] = policy, pool, operation, fname, fn, cb
    o[7], o[8], o[9], o[10], o[11] = n, a1, a2, a3, args
    return sched.in_task(retry_outside, o)
  end
  return retry_run(policy, pool, operation, false, fname, call_attempt, fn,
                   cb, n, a1, a2, a3, args)
end

-- Calls fn(...) until it succeeds, the error is not retriable, or
-- max_attempts calls were made; sleeps the policy's backoff in between
-- (yielding to other tasks; a zero backoff retries at once). Returns the
-- first success's values or the last `nil, err`
-- (details.retries_exhausted = true when attempts ran out).
-- opts: a retry policy, retry_policy options, or { policy = p }.
function _M.execute_with_retry(fn, opts, ...)
  if type(fn) ~= "function" then
    check.func("executor.execute_with_retry", "fn", fn)
  end
  if retry_policy.is_policy(opts) then
    return retry(opts, fn, nil, nil, nil, nil, ...)
  end
  local entry = memo_get(retry_memo, opts)
  if entry == nil then
    entry = retry_entry(retry_memo, opts, parse_retry(opts))
  end
  local policy, pool, operation, deadline_ms = retry_setup(entry)
  return retry(policy, fn, nil, pool, operation, deadline_ms, ...)
end

--- execute_with_circuit_breaker ---------------------------------------------

-- cb:call(fn, ...), inside a task.
function _M.execute_with_circuit_breaker(cb, fn, ...)
  if not circuit_breaker.is_breaker(cb) then
    check.arg_error("executor.execute_with_circuit_breaker", "cb",
                    "must be a circuit breaker", cb)
  end
  check.func("executor.execute_with_circuit_breaker", "fn", fn)
  kernel.check_caller("executor.execute_with_circuit_breaker")
  return sched.in_task(cb.call, cb, fn, ...)
end

--- execute_with_timeout --------------------------------------------------

local parse_timeout = options.parser("executor.execute_with_timeout", {
  timeout_ms = { "number", min = 0, limit = check.MS_MAX, required = true },
})

local MS_MAX = check.MS_MAX
local next = next

local function timeout_in_task(fn, ms, n, a1, a2, a3, args)
  return inline.run_child(ms, fn, n, a1, a2, a3, args)
end

-- execute_with_timeout once its arguments are taken apart (a tail call
-- from it, so that errors raised here at level 3 still name the user's
-- line, and the JIT never has to return into the vararg function).
local function timeout_args(fn, opts, n, a1, a2, a3, args)
  local in_context = kernel.in_context()
  if not in_context then
    kernel.check_caller("executor.execute_with_timeout")
  end
  local ms = type(opts) == "table" and opts.timeout_ms
  if type(ms) ~= "number" or not (ms >= 0 and ms <= MS_MAX)
     or next(opts) ~= "timeout_ms" or next(opts, "timeout_ms") ~= nil then
    ms = parse_timeout(opts).timeout_ms
  end
  if in_context then
    return inline.run_child(ms, fn, n, a1, a2, a3, args)
  end
  return sched.in_task(timeout_in_task, fn, ms, n, a1, a2, a3, args)
end

-- Runs fn(...) as a child task. If it is not done within timeout_ms it is
-- cancelled for real (timers stopped, processes killed, sockets closed) and
-- the caller gets nil, err (kind "timeout"). A raised error gives kind
-- "task_crashed" with the error and its traceback in details. The child
-- runs inline until it first waits (inline.run_child): an operation that
-- returns at once costs no task and no timer. Options made of a valid
-- timeout_ms alone are taken without the full parser.
function _M.execute_with_timeout(fn, opts, ...)
  check.func("executor.execute_with_timeout", "fn", fn)
  -- The arguments as run_child takes them: no table for up to three.
  local n = select("#", ...)
  local a1, a2, a3 = ...
  return timeout_args(fn, opts, n, a1, a2, a3, n > 3 and { ... })
end

--- execute_batch -----------------------------------------------------------

local parse_batch = options.parser("executor.execute_batch", {
  timeout_ms = { "number", min = 0, limit = check.MS_MAX, default = 30000 },
  max_concurrency = { "integer", min = 1, limit = check.UINT32_MAX },
})

-- An item's entry in the result list, from the n values awaiting it
-- returned (a new list).
local function batch_entry(n, values)
  local ok, err = attempt_outcome(true, values[1], values[2])
  if not ok then
    return { ok = false, error = err }
  end
  return { ok = true, values = values, n = n, value = values[1] }
end

-- sprun.batch.item, one per item (executor/batch.lua, loaded when a
-- handler is first attached to it). Each call is numbered (`batch` in the
-- event), handler or not.
local enabled = require("sprun.telemetry").enabled
local BATCH_EVENT = "sprun.batch.item"
local batches = 0

-- The items run as children of the calling task, at most max_concurrency
-- at a time, each inline until it waits and with its own timeout
-- (sched/group.lua).
local function batch_in_task(fns, o, id)
  local n = #fns
  local limit = min(o.max_concurrency or n, n)
  if enabled[BATCH_EVENT] then
    return require("sprun.executor.batch").run(fns, o.timeout_ms, limit,
                                               batch_entry, id, "default")
  end
  return group.run(fns, o.timeout_ms, limit, batch_entry)
end

-- Raises at the level of execute_batch's caller (3: this function, then
-- execute_batch, then its caller). A hole ({ f, nil, g }) is named as the
-- missing item, not left for the batch to trip over.
local function check_fns(fns)
  local fname = "executor.execute_batch"
  if type(fns) ~= "table" then
    error(format("%s: fns must be a list of functions, got %s", fname,
                 check.describe(fns)), 3)
  end
  local n = #fns
  for k in each_key, fns do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      error(format("%s: fns must be a list of functions, got key %s", fname,
                   check.describe(k)), 3)
    end
  end
  for i = 1, n do
    local v = fns[i]
    if type(v) ~= "function" then
      error(format("%s: fns[%d] must be a function, got %s", fname, i,
                   check.describe(v)), 3)
    end
  end
end

-- Runs the functions as tasks, at most max_concurrency at a time (default:
-- all), each with its own timeout. Returns a list in input order; item i is
-- { ok = true, values = {...}, n = count, value = first } or
-- { ok = false, error = err }.
function _M.execute_batch(fns, opts)
  check_fns(fns)
  local o = parse_batch(opts)
  kernel.check_caller("executor.execute_batch")
  batches = batches + 1
  if #fns == 0 then
    return {}
  end
  return sched.in_task(batch_in_task, fns, o, batches)
end

--- execute_with_protection ------------------------------------------------

-- Retry around the breaker: each attempt is one cb:call(fn, ...).
function _M.execute_with_protection(cb, fn, opts, ...)
  if not circuit_breaker.is_breaker(cb) then
    check.arg_error("executor.execute_with_protection", "cb",
                    "must be a circuit breaker", cb)
  end
  check.func("executor.execute_with_protection", "fn", fn)
  if retry_policy.is_policy(opts) then
    return retry(opts, fn, cb, cb:name(), nil, nil, ...)
  end
  local entry = memo_get(protection_memo, opts)
  if entry == nil then
    entry = retry_entry(protection_memo, opts, parse_protection(opts))
  end
  local policy, pool, operation, deadline_ms = retry_setup(entry)
  return retry(policy, fn, cb, pool or cb:name(), operation, deadline_ms,
               ...)
end

--- execute_with_fallback ------------------------------------------------

local parse_fallback = options.parser("executor.execute_with_fallback", {
  fallback_on = { "function" },
})

-- fn's values, or, when it failed (a raise is an error of kind "error"),
-- what fallback(err, ...) returns; a failure that fallback_on(err) says
-- is none of the fallback's goes back as it is.
local function fallback_outcome(fb, on, n, args, ok, r1, r2, ...)
  if not ok then
    kernel.reraise_cancel(r1)
    r1, r2 = nil, errors.raised(r1)
  elseif r1 or r2 == nil then
    return r1, r2, ...
  end
  if on ~= nil and not on(r2) then
    return nil, r2
  end
  return fb(r2, unpack(args, 1, n))
end

-- Calls fn(...); on a failure returns fallback(err, ...) instead.
-- opts: { fallback_on = function(err) -> boolean } (default: every
-- failure). A cancellation is never handed to the fallback.
function _M.execute_with_fallback(fn, fallback, opts, ...)
  check.func("executor.execute_with_fallback", "fn", fn)
  check.func("executor.execute_with_fallback", "fallback", fallback)
  local on = nil
  if opts ~= nil then
    on = parse_fallback(opts).fallback_on
  end
  local n = select("#", ...)
  local args = { ... }
  return fallback_outcome(fallback, on, n, args,
                          pcall(fn, unpack(args, 1, n)))
end

--- execute_hedged --------------------------------------------------------

local hedge = require "sprun.hedge"
local retry_m = require "sprun.retry"

local parse_hedge_budget = options.parser("executor.execute_hedged.budget",
                                          retry_m.BUDGET_SPEC)
local parse_hedged = options.parser("executor.execute_hedged", {
  delay_ms = { "number", min = 0, limit = check.MS_MAX, required = true },
  max_hedges = { "integer", min = 1, limit = 64, default = 1 },
  hedge_on = { "function" },
  name = { "string", default = "hedge" },
  budget = { check = function(v)
    if type(v) ~= "table" then
      return "must be a table of retry budget options (ratio, "
             .. "min_retries_per_s, ttl_ms)"
    end
  end },
})

-- The budgets of hedged calls, one per name: every call of that name
-- draws on it.
local hedge_budgets = {}

-- Calls fn(...) hedged (see sprun/hedge.lua): opts { delay_ms,
-- max_hedges = 1, hedge_on = function(err), name = "hedge", budget = {
-- ratio, min_retries_per_s, ttl_ms } }. Returns the first success's
-- values, or the last failure (details.hedges).
function _M.execute_hedged(fn, opts, ...)
  check.func("executor.execute_hedged", "fn", fn)
  local o = parse_hedged(opts)
  local budget = nil
  if o.budget ~= nil then
    local bo = parse_hedge_budget(o.budget)
    budget = hedge_budgets[o.name]
    if budget == nil then
      budget = retry_m.budget(bo)
      hedge_budgets[o.name] = budget
    else
      budget:configure(bo)
    end
  end
  kernel.check_caller("executor.execute_hedged")
  return hedge.call(o, budget, fn, select("#", ...), { ... })
end

--- execute_async -------------------------------------------------------------

-- Starts fn(...) as a task and returns it (task:await([timeout_ms])).
-- Outside a running loop, runs the task to completion first.
function _M.execute_async(fn, ...)
  check.func("executor.execute_async", "fn", fn)
  if kernel.running() ~= nil then
    return sched.spawn(fn, ...)
  end
  local args = tables.pack(...)
  return sched.run(function()
    local t = sched.spawn(fn, unpack(args, 1, args.n))
    t.quiet = true
    while t:status() ~= "done" and t:status() ~= "failed"
          and t:status() ~= "cancelled" do
      t:await()
    end
    return t
  end)
end

return _M
