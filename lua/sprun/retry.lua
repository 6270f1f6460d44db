-- The retry loop: executor.execute_with_retry, execute_with_protection
-- and the retry stage of pipelines all run this one, with its telemetry
-- (the snakepit.retry.* events) and its retry budget.
--
-- An attempt is a function that returns what pcall would: true and the
-- operation's values, or false and the error it raised. A success (the
-- values are not nil/false followed by an error) ends the loop with those
-- values. A failure that the policy does not retry ends it with nil, err;
-- one past the last attempt with nil, err marked details.retries_exhausted;
-- one the budget refuses with nil, err marked details.budget_exhausted;
-- one whose backoff would end at or past the deadline of the code running
-- (sprun.deadline: a deadline_ms, a timeout around the retry) with nil,
-- err marked details.deadline_exceeded. Otherwise the loop sleeps the policy's backoff on the loop (a zero
-- backoff retries at once) and makes the next attempt. An error that says
-- when to come back (details.retry_after_ms: an HTTP Retry-After) makes
-- the backoff at least that long, but never longer than the policy's
-- max_backoff_ms.
--
-- The loop is two functions calling each other in tail position, its
-- state in their parameter lists, so that an attempt allocates nothing
-- and compiles into its caller's trace: an attempt function takes seven
-- values (x1 ... x7: the operation and its arguments, as the caller packs
-- them) rather than a table.
--
-- The trap: a raised error is a failure like any other, but a
-- cancellation of the calling task is not: it goes straight up
-- (kernel.reraise_cancel), never retried, never counted.

local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"

local floor = math.floor
local min = math.min
local type = type
local setmetatable = setmetatable
local ticks_ns = clock.ticks_ns
local now = clock.now
local deadline = kernel.deadline
local raised = errors.raised
local with_details = errors.with_details
local reraise_cancel = kernel.reraise_cancel
local check_caller = kernel.check_caller
local enabled = telemetry.enabled
local observed = telemetry.observed
local emit = telemetry.emit

local _M = {}

--- Events --------------------------------------------------------------------

-- Each costs one table lookup while nothing is attached. `started_ns` is
-- ticks_ns() when the first attempt began, or false when no retry event had
-- a handler then (the loop reads no clock): a handler attached since sees
-- a duration of 0. `pool` defaults to "default", as a health monitor's.
-- `call` (metadata) numbers the loop, the same in all its events (a
-- trace links them): counted only for loops that began with a retry event
-- observed, nil in the others.
local RETRY_EVENTS = "snakepit.retry"
local RETRY_ATTEMPT = "snakepit.retry.attempt"
local RETRY_BACKOFF = "snakepit.retry.backoff"
local RETRY_SUCCESS = "snakepit.retry.success"
local RETRY_EXHAUSTED = "snakepit.retry.exhausted"
local BUDGET_EXHAUSTED = "sprun.retry.budget_exhausted"

local function elapsed_ms(started_ns)
  if not started_ns then
    return 0
  end
  return (ticks_ns() - started_ns) / 1e6
end

-- The message of an attempt's error: an error object's own message, any
-- other value's text on one line.
local function error_message(err)
  if errors.is_error(err) then
    return err.message
  end
  return errors.one_line(err)
end

-- Attempt number `attempt` failed with `err`; the next one starts in
-- delay_ms.
function _M.emit_attempt(pool, operation, attempt, delay_ms, err, call)
  if enabled[RETRY_ATTEMPT] then
    emit(RETRY_ATTEMPT, { attempt = attempt, delay_ms = delay_ms },
         { pool = pool or "default", operation = operation, error = err,
           error_kind = err ~= nil and errors.kind(err) or nil,
           error_message = err ~= nil and error_message(err) or nil,
           call = call })
  end
  if enabled[RETRY_BACKOFF] then
    emit(RETRY_BACKOFF, { delay_ms = delay_ms },
         { pool = pool or "default", attempt = attempt, call = call })
  end
end
local emit_attempt = _M.emit_attempt

-- Attempt number `attempts` succeeded.
function _M.emit_success(pool, attempts, started_ns, call)
  if enabled[RETRY_SUCCESS] then
    emit(RETRY_SUCCESS, { attempts = attempts,
                          total_duration_ms = elapsed_ms(started_ns) },
         { pool = pool or "default", call = call })
  end
end
local emit_success = _M.emit_success

-- The attempts ran out; last_error is the error of the last one.
function _M.emit_exhausted(pool, attempts, started_ns, last_error, call)
  if enabled[RETRY_EXHAUSTED] then
    emit(RETRY_EXHAUSTED, { attempts = attempts,
                            total_duration_ms = elapsed_ms(started_ns) },
         { pool = pool or "default", last_error = last_error, call = call })
  end
end
local emit_exhausted = _M.emit_exhausted

-- A loop's `started` (see the loop below): false, or { ticks_ns() as its
-- first attempt began, its call number }.
local calls = 0

local function begin()
  calls = calls + 1
  return { ticks_ns(), calls }
end

local function ns_of(started)
  return started and started[1]
end

local function call_of(started)
  return started and started[2] or nil
end

--- Retry budget --------------------------------------------------------------

-- Finagle-style: over the last ttl_ms, retries may be at most
-- ratio * first attempts + min_retries_per_s * ttl_ms / 1000. Counted in
-- ten buckets of ttl_ms / 10, so an old burst leaves the window in steps.
local BUCKETS = 10

local Budget = {}
Budget.__index = Budget

-- Its options (pipelines' retry.budget, execute_hedged's budget).
_M.BUDGET_SPEC = {
  ratio = { "number", min = 0, limit = 1e9, default = 0.2 },
  min_retries_per_s = { "number", min = 0, limit = 1e9, default = 10 },
  ttl_ms = { "integer", min = 10, limit = 2 ^ 53, default = 10000 },
}

-- A budget from checked options { ratio, min_retries_per_s, ttl_ms }.
function _M.budget(o)
  local b = setmetatable({ calls = {}, retries = {}, epoch = {} }, Budget)
  for i = 1, BUCKETS do
    b.calls[i], b.retries[i], b.epoch[i] = 0, 0, -1
  end
  b:configure(o)
  return b
end

-- New settings; the counts stay.
function Budget:configure(o)
  self.ratio = o.ratio
  self.min_per_s = o.min_retries_per_s
  self.ttl_ms = o.ttl_ms
  self.width = o.ttl_ms / BUCKETS
  self.refused = self.refused or 0
  self.withdrawn = self.withdrawn or 0
  self.deposited = self.deposited or 0
end

-- The bucket of the current time, emptied if it held an older period.
function Budget:bucket()
  local period = floor(now() / self.width)
  local i = period % BUCKETS + 1
  if self.epoch[i] ~= period then
    self.epoch[i], self.calls[i], self.retries[i] = period, 0, 0
  end
  return i, period
end

-- A first attempt.
function Budget:deposit()
  local i = self:bucket()
  self.calls[i] = self.calls[i] + 1
  self.deposited = self.deposited + 1
end

-- A retry: true if the budget allows it (and counts it), else false.
function Budget:withdraw()
  local i, period = self:bucket()
  local calls, retries = 0, 0
  for j = 1, BUCKETS do
    if self.epoch[j] > period - BUCKETS then
      calls = calls + self.calls[j]
      retries = retries + self.retries[j]
    end
  end
  if retries + 1 > self.ratio * calls + self.min_per_s * self.ttl_ms / 1000
  then
    self.refused = self.refused + 1
    return false
  end
  self.retries[i] = self.retries[i] + 1
  self.withdrawn = self.withdrawn + 1
  return true
end

function Budget:stats()
  return { first_attempts = self.deposited, retries = self.withdrawn,
           refused = self.refused, ratio = self.ratio,
           min_retries_per_s = self.min_per_s, ttl_ms = self.ttl_ms }
end

--- The loop ------------------------------------------------------------

-- The state of the loop, in both parameter lists:
--   p              the retry policy
--   pool, op       names for the events (pool: the breaker, pipeline or
--                  the caller's `pool`; op: the caller's `operation`)
--   budget         a budget, or false
--   fname          the API function, named if a backoff is asked for
--                  outside a task
--   started        false, or (a retry event observed as the loop began)
--                  { ticks_ns() then, the loop's call }: see begin
--   k              the attempt being made, from 1
--   attempt, x1 ... x7   the attempt function and its arguments
local attempt_done

local function run_attempt(p, pool, op, budget, fname, started, k, attempt,
                           x1, x2, x3, x4, x5, x6, x7)
  return attempt_done(p, pool, op, budget, fname, started, k, attempt,
                      x1, x2, x3, x4, x5, x6, x7,
                      attempt(x1, x2, x3, x4, x5, x6, x7))
end

-- Whether a backoff of `delay` ms would end at or past the deadline of
-- the code running now (sprun.deadline): then the next attempt is not
-- made.
local function past_deadline(delay)
  local dl = deadline()
  return dl ~= nil and now() + delay >= dl
end

-- The wait before attempt k + 1 (emitted, slept on the loop; a zero
-- delay retries at once, without a trip through the loop), then that
-- attempt.
local function next_attempt(p, pool, op, budget, fname, started, k, attempt,
                            x1, x2, x3, x4, x5, x6, x7, delay, err)
  emit_attempt(pool, op, k, delay, err, call_of(started))
  if delay > 0 then
    check_caller(fname)
    sched.sleep(delay)
  end
  return run_attempt(p, pool, op, budget, fname, started, k + 1, attempt,
                     x1, x2, x3, x4, x5, x6, x7)
end

-- Whether the budget (or false) refuses the retry after attempt k.
local function refused(budget, pool, k, err)
  if budget and not budget:withdraw() then
    if enabled[BUDGET_EXHAUSTED] then
      emit(BUDGET_EXHAUSTED, { attempts = k },
           { pool = pool, last_error = err })
    end
    return true
  end
  return false
end

-- A success that the policy's retry_on_result wants retried: another
-- attempt after the backoff, or (attempts, budget or deadline spent)
-- these values.
local function retry_result(p, pool, op, budget, fname, started, k, attempt,
                            x1, x2, x3, x4, x5, x6, x7, ...)
  if not p:_more(k) then
    emit_exhausted(pool, k, ns_of(started), nil, call_of(started))
    return ...
  end
  if refused(budget, pool, k, nil) then
    return ...
  end
  local delay = p:_delay(k)
  if past_deadline(delay) then
    return ...
  end
  return next_attempt(p, pool, op, budget, fname, started, k, attempt,
                      x1, x2, x3, x4, x5, x6, x7, delay, nil)
end

attempt_done = function(p, pool, op, budget, fname, started, k, attempt,
                        x1, x2, x3, x4, x5, x6, x7, ok, ...)
  local err
  if ok then
    local r1, r2 = ...
    if r1 or r2 == nil then
      local again = p._retry_on_result
      if again ~= nil and again(...) then
        return retry_result(p, pool, op, budget, fname, started, k, attempt,
                            x1, x2, x3, x4, x5, x6, x7, ...)
      end
      if enabled[RETRY_SUCCESS] then
        emit_success(pool, k, ns_of(started), call_of(started))
      end
      return ...
    end
    err = r2
  else
    err = ...
    reraise_cancel(err)
    err = raised(err)
  end
  if not p:_retries(err) then
    return nil, err
  end
  if not p:_more(k) then
    emit_exhausted(pool, k, ns_of(started), err, call_of(started))
    return nil, with_details(err, "retries_exhausted", true, "attempts", k)
  end
  if refused(budget, pool, k, err) then
    return nil, with_details(err, "budget_exhausted", true, "attempts", k)
  end
  local delay = p:_delay(k)
  if type(err) == "table" then
    local d = err.details
    local after = type(d) == "table" and d.retry_after_ms
    if type(after) == "number" and after > delay then
      local o = p._options
      delay = o and min(after, o.max_backoff_ms) or after
    end
  end
  if past_deadline(delay) then
    return nil, with_details(err, "deadline_exceeded", true, "attempts", k)
  end
  return next_attempt(p, pool, op, budget, fname, started, k, attempt,
                      x1, x2, x3, x4, x5, x6, x7, delay, err)
end

-- The outcome of a child run with a deadline at `at` (loop ms): its own
-- timeout, once the deadline has come, is the deadline's and says so
-- (details.deadline_exceeded).
function _M.deadline_outcome(at, r1, r2, ...)
  if r1 == nil and errors.kind(r2) == "timeout" and now() >= at then
    return nil, with_details(r2, "deadline_exceeded", true)
  end
  return r1, r2, ...
end

-- Runs attempt(x1, ..., x7) under policy `p` until it succeeds, the error
-- is not retriable, the attempts run out or `budget` (or false) refuses a
-- retry; returns the outcome (see the top of this file). Must run in a
-- task or where its first attempt may run (a backoff needs a task).
function _M.run(p, pool, op, budget, fname, attempt, x1, x2, x3, x4, x5, x6,
                x7)
  local started = observed[RETRY_EVENTS] and begin() or false
  return run_attempt(p, pool, op, budget, fname, started, 1, attempt,
                     x1, x2, x3, x4, x5, x6, x7)
end

return _M
