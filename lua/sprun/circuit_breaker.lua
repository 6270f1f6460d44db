-- Circuit breaker: stops calling an operation that keeps failing.
--
-- The state machine is sp_breaker_t of runtime/core (closed -> open after
-- failure_threshold consecutive failures, open -> half-open after
-- reset_timeout_ms from the moment it opened, half-open -> closed after
-- half_open_max_calls successful probes). This module admits calls, runs
-- them, classifies their outcome and reports transitions.
--
-- The trap: a call must be recorded with the generation it was admitted
-- under, read right after sp_breaker_acquire, so that a result arriving
-- after the breaker moved on is ignored instead of closing or opening a
-- breaker it was not admitted by.
--
-- call() is a hot path and stays JIT-compiled: no closure, table or string
-- is made per call, and a rejection returns one error object made when the
-- breaker was. Telemetry costs it one table lookup while no handler is
-- attached to the per-call events; with one attached, calls take
-- observed_call, which times them.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local clock = require "sprun.clock"
local sched = require "sprun.sched"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"

local ffi = sp.ffi
local C = sp.C
local band = require("bit").band
local error = error
local pcall = pcall
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local check_self = check.self
local check_func = check.func
local hrtime = clock.hrtime
local enabled = telemetry.enabled
local observed = telemetry.observed
local emit = telemetry.emit

local OPENED = sp.SP_BREAKER_OPENED
local HALF_OPENED = sp.SP_BREAKER_HALF_OPENED
local CLOSED = sp.SP_BREAKER_CLOSED
local SUCCESS = sp.SP_OUTCOME_SUCCESS
local FAILURE = sp.SP_OUTCOME_FAILURE
local NEUTRAL = sp.SP_OUTCOME_NEUTRAL

local STATE_NAMES = {
  [sp.SP_BREAKER_STATE_CLOSED] = "closed",
  [sp.SP_BREAKER_STATE_OPEN] = "open",
  [sp.SP_BREAKER_STATE_HALF_OPEN] = "half_open",
}

local WHAT = "a circuit breaker"

local OPENED_EVENT = "snakepit.circuit_breaker.opened"
local CLOSED_EVENT = "snakepit.circuit_breaker.closed"
local HALF_OPEN_EVENT = "snakepit.circuit_breaker.half_open"
local CALL_EVENTS = "snakepit.circuit_breaker.call"
local CALL_ALLOWED = "snakepit.circuit_breaker.call.allowed"
local CALL_REJECTED = "snakepit.circuit_breaker.call.rejected"
local CALL_SUCCESS = "snakepit.circuit_breaker.call.success"
local CALL_FAILURE = "snakepit.circuit_breaker.call.failure"

local _M = {
  -- An observer for tests, called as
  -- _on_transition(breaker, "opened" | "half_open" | "closed", failure_count)
  -- for every transition, in the order they happened, before the
  -- transition's telemetry event.
  _on_transition = nil,
}

local mt = { __index = _M }

local parse_options = check.options("circuit_breaker.start_link", {
  name = { "string", required = true },
  failure_threshold = { "integer", min = 1, limit = check.UINT32_MAX,
                        default = 5 },
  reset_timeout_ms = { "integer", min = 0, limit = check.MS_MAX,
                       default = 30000 },
  half_open_max_calls = { "integer", min = 0, limit = check.UINT32_MAX,
                          default = 1 },
  is_failure = { "function" },
  clock = { "function" },
})

function _M.start_link(opts)
  local o = parse_options(opts)
  local b = ffi.new("sp_breaker_t")
  local config = ffi.new("sp_breaker_config_t", {
    failure_threshold = o.failure_threshold,
    half_open_max_calls = o.half_open_max_calls,
    reset_timeout_ms = o.reset_timeout_ms,
    window_type = sp.SP_WINDOW_CONSECUTIVE,
  })
  local rc = C.sp_breaker_init(b, config)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end
  local cb = setmetatable({
    _b = b,
    _name = o.name,
    _clock = clock.reader("circuit_breaker", o.clock),
    _loop_clock = o.clock == nil,
    _reset_timeout_ms = o.reset_timeout_ms,
    _is_failure = o.is_failure,
    _open_error = errors.error(errors.CIRCUIT_OPEN,
                               "circuit breaker '" .. o.name .. "' is open",
                               { name = o.name }),
  }, mt)
  telemetry._register_breaker(cb)
  return cb
end

-- Reports the transitions of a mask returned by the C breaker, in the order
-- they happened. Every C call that can change the breaker ends here.
local function transitions(self, mask)
  if band(mask, OPENED) ~= 0 and self._loop_clock then
    -- Turn half-open on time even if no call comes to notice.
    sched.after(self._reset_timeout_ms, _M.state, self)
  end
  local hook = _M._on_transition
  local failures = self._b.failure_count
  if band(mask, HALF_OPENED) ~= 0 then
    if hook then
      hook(self, "half_open", failures)
    end
    if enabled[HALF_OPEN_EVENT] then
      emit(HALF_OPEN_EVENT, {}, { pool = self._name })
    end
  end
  -- CLOSED before OPENED: with both set, the breaker closed first (a
  -- half-open with no probe allowed closes at once) and a failure then
  -- opened it again (see sprun.h).
  if band(mask, CLOSED) ~= 0 then
    if hook then
      hook(self, "closed", failures)
    end
    if enabled[CLOSED_EVENT] then
      emit(CLOSED_EVENT, {}, { pool = self._name })
    end
  end
  if band(mask, OPENED) ~= 0 then
    if hook then
      hook(self, "opened", failures)
    end
    if enabled[OPENED_EVENT] then
      emit(OPENED_EVENT, { failure_count = failures },
           { pool = self._name, reason = "failures" })
    end
  end
end

-- How the breaker counts a failure with error value err: as a failure unless
-- is_failure says it is none. A predicate that raises counts the failure,
-- since the call's permit must be given back whatever happens.
local function failure_outcome(self, err)
  local is_failure = self._is_failure
  if is_failure == nil then
    return FAILURE
  end
  local ok, counts = pcall(is_failure, err)
  if ok and not counts then
    return NEUTRAL
  end
  return FAILURE
end

local function record(self, generation, outcome)
  local mask = C.sp_breaker_record(self._b, generation, outcome,
                                   self._clock(), 0)
  if mask > 0 then
    transitions(self, mask)
  end
end

-- Ends an admitted call given what pcall(fn, ...) returned.
local function finish(self, generation, ok, ...)
  if not ok then
    local err = ...
    record(self, generation, failure_outcome(self, err))
    error(err, 0)
  end
  local r1, r2 = ...
  if not r1 and r2 ~= nil then
    record(self, generation, failure_outcome(self, r2))
  else
    record(self, generation, SUCCESS)
  end
  return ...
end

-- finish() for a call observed by telemetry: the outcome's event is
-- emitted with the call's duration before the outcome is recorded, so that
-- a failure comes before the transition it causes.
local function observed_finish(self, generation, state, started, ok, ...)
  local ms = (hrtime() - started) / 1e6
  local err
  if not ok then
    err = ...
  else
    local r1, r2 = ...
    if not r1 and r2 ~= nil then
      err = r2
    end
  end
  if err == nil then
    if enabled[CALL_SUCCESS] then
      emit(CALL_SUCCESS, { duration_ms = ms },
           { pool = self._name, state = state })
    end
  elseif enabled[CALL_FAILURE] then
    emit(CALL_FAILURE, { duration_ms = ms },
         { pool = self._name, state = state, error = err })
  end
  return finish(self, generation, ok, ...)
end

local function observed_call(self, fn, ...)
  local b = self._b
  -- Read before the event: a handler that calls the breaker may move it
  -- on, and this call must then be ignored as late.
  local generation = b.generation
  local state = STATE_NAMES[b.state]
  if enabled[CALL_ALLOWED] then
    emit(CALL_ALLOWED, {}, { pool = self._name, state = state })
  end
  return observed_finish(self, generation, state, hrtime(), pcall(fn, ...))
end

local function rejected(self)
  emit(CALL_REJECTED, {}, { pool = self._name,
                            state = STATE_NAMES[self._b.state] })
end

function _M.call(self, fn, ...)
  check_self(self, mt, "circuit_breaker.call", WHAT)
  check_func("circuit_breaker.call", "fn", fn)
  local b = self._b
  local rc = C.sp_breaker_acquire(b, self._clock())
  if rc < 0 then
    if enabled[CALL_REJECTED] then
      rejected(self)
    end
    return nil, self._open_error
  end
  if rc > 0 then
    transitions(self, rc)
  end
  if observed[CALL_EVENTS] then
    return observed_call(self, fn, ...)
  end
  return finish(self, b.generation, pcall(fn, ...))
end

-- The seed's allow_call?: would a call be admitted now? Reserves nothing.
function _M.allow(self)
  check_self(self, mt, "circuit_breaker.allow", WHAT)
  local b = self._b
  local mask = C.sp_breaker_tick(b, self._clock())
  if mask > 0 then
    transitions(self, mask)
  end
  return C.sp_breaker_would_admit(b) == 1
end

function _M.state(self)
  check_self(self, mt, "circuit_breaker.state", WHAT)
  local b = self._b
  local mask = C.sp_breaker_tick(b, self._clock())
  if mask > 0 then
    transitions(self, mask)
  end
  return STATE_NAMES[b.state]
end

function _M.record_success(self)
  check_self(self, mt, "circuit_breaker.record_success", WHAT)
  local mask = C.sp_breaker_record_success(self._b, self._clock())
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M.record_failure(self)
  check_self(self, mt, "circuit_breaker.record_failure", WHAT)
  local mask = C.sp_breaker_record_failure(self._b, self._clock())
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M.stats(self)
  check_self(self, mt, "circuit_breaker.stats", WHAT)
  local b = self._b
  local mask = C.sp_breaker_tick(b, self._clock())
  if mask > 0 then
    transitions(self, mask)
  end
  return {
    name = self._name,
    state = STATE_NAMES[b.state],
    failure_count = b.failure_count,
    success_count = b.success_count,
    failure_threshold = b.config.failure_threshold,
    half_open_calls = b.half_open_calls,
    reset_timeout_ms = tonumber(b.config.reset_timeout_ms),
    half_open_max_calls = b.config.half_open_max_calls,
    opened_at_ms = tonumber(b.opened_at_ms),
    rejected_count = tonumber(b.rejected_count),
    total_successes = tonumber(b.total_successes),
    total_failures = tonumber(b.total_failures),
    ignored_count = tonumber(b.ignored_count),
  }
end

function _M.reset(self)
  check_self(self, mt, "circuit_breaker.reset", WHAT)
  local mask = C.sp_breaker_reset(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M.is_breaker(v)
  return getmetatable(v) == mt
end

function _M.name(self)
  check_self(self, mt, "circuit_breaker.name", WHAT)
  return self._name
end

return _M
