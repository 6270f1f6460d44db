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
--
-- In consecutive mode the two commonest cases make no C call at all: a
-- closed breaker admitting a call that succeeds, and an open breaker whose
-- reset timeout has not run out rejecting one. Both are a few loads and
-- stores on the sp_breaker_t, doing exactly what sp_breaker_acquire and
-- sp_breaker_record would (see fast_finish and call); everything else, and
-- every transition, goes through the C state machine. The struct, its
-- options and its stats are circuit_breaker/struct.lua's.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local clock = require "sprun.clock"
local kernel = require "sprun.sched.kernel"
local errors = require "sprun.errors"
local CANCELLED = errors.CANCELLED
local telemetry = require "sprun.telemetry"
local registry = require "sprun.telemetry.registry"
local struct = require "sprun.circuit_breaker.struct"

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
local ticks_ns = clock.ticks_ns
local enabled = telemetry.enabled
local observed = telemetry.observed
local emit = telemetry.emit

local type = type
local now_ms = clock.now
local OPENED = sp.SP_BREAKER_OPENED
local FORCED_OPENED = sp.SP_BREAKER_FORCED_OPENED
local DISABLED = sp.SP_BREAKER_DISABLED
local ISOLATED = sp.SP_BREAKER_ISOLATED
local HALF_OPENED = sp.SP_BREAKER_HALF_OPENED
local CLOSED = sp.SP_BREAKER_CLOSED
local STATE_CLOSED = sp.SP_BREAKER_STATE_CLOSED
local STATE_OPEN = sp.SP_BREAKER_STATE_OPEN
local U32_MAX = 0xffffffff
local U64_MAX = 0xffffffffffffffffULL
local U64 = ffi.typeof("uint64_t")
local SUCCESS = sp.SP_OUTCOME_SUCCESS
local FAILURE = sp.SP_OUTCOME_FAILURE
local NEUTRAL = sp.SP_OUTCOME_NEUTRAL
local FLEET_REASON = sp.SP_OPEN_REASON_FLEET

local STATE_NAMES = struct.STATE_NAMES
local OPEN_REASONS = struct.OPEN_REASONS
local parse_options = struct.parse_options

local WHAT = "a circuit breaker"

local OPENED_EVENT = "snakepit.circuit_breaker.opened"
local CLOSED_EVENT = "snakepit.circuit_breaker.closed"
local HALF_OPEN_EVENT = "snakepit.circuit_breaker.half_open"
local FORCED_OPEN_EVENT = "snakepit.circuit_breaker.forced_open"
local DISABLED_EVENT = "snakepit.circuit_breaker.disabled"
local ISOLATED_EVENT = "snakepit.circuit_breaker.isolated"
local CALL_EVENTS = "snakepit.circuit_breaker.call"
local CALL_ALLOWED = "snakepit.circuit_breaker.call.allowed"
local CALL_REJECTED = "snakepit.circuit_breaker.call.rejected"
local CALL_SUCCESS = "snakepit.circuit_breaker.call.success"
local CALL_FAILURE = "snakepit.circuit_breaker.call.failure"

local _M = {
  -- An observer for tests, called as
  -- _on_transition(breaker, "opened" | "half_open" | "closed" |
  -- "forced_open" | "disabled" | "isolated", failure_count)
  -- for every transition, in the order they happened, before the
  -- transition's telemetry event.
  _on_transition = nil,
}

local mt = { __index = _M }

function _M.start_link(opts)
  local o = parse_options(opts)
  local w = o.window
  local b, err = struct.new(o)
  if b == nil then
    return nil, err
  end
  local cb = setmetatable({
    -- call() is found on the breaker itself: a method looked up through
    -- the metatable costs a search of the breaker's own keys first.
    call = _M.call,
    _class = mt,
    _b = b,
    _name = o.name,
    _clock = clock.reader("circuit_breaker", o.clock),
    _loop_clock = o.clock == nil,
    _reset_timeout_ms = o.reset_timeout_ms,
    _is_failure = o.is_failure,
    _window = w and w.type or nil,
    -- Consecutive mode: call() takes its fast paths.
    _fast = w == nil,
    -- Calls are timed only when slow calls are counted.
    _timed = o.slow_call_ms ~= nil and w ~= nil,
    _user_clock = o.clock ~= nil,
    -- Successes counted before the last reset() (see stats).
    _successes_reset = 0,
    _open_error = errors.error(errors.CIRCUIT_OPEN,
                               "circuit breaker '" .. o.name .. "' is open",
                               { name = o.name }),
  }, mt)
  registry.add_breaker(cb)
  if o.fleet ~= nil then
    cb._fleet = o.fleet
    o.fleet:_join("b", o.name, cb)
  end
  return cb
end

-- Reports the transitions of a mask returned by the C breaker, in the order
-- they happened. Every C call that can change the breaker ends here.
local function transitions(self, mask)
  if band(mask, OPENED) ~= 0 and self._loop_clock then
    -- Turn half-open on time even if no call comes to notice.
    kernel.after(self._reset_timeout_ms, _M.state, self)
  end
  local hook = _M._on_transition
  -- Snakepit's failure_count: every failure since it last closed.
  local failures = tonumber(self._b.failures_since_close)
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
      local reason = OPEN_REASONS[self._b.open_reason] or "failures"
      emit(OPENED_EVENT, { failure_count = failures },
           { pool = self._name, reason = reason })
    end
  end
  -- The manual transitions come alone, each from its own method.
  if band(mask, FORCED_OPENED + DISABLED + ISOLATED) ~= 0 then
    local name, event = "forced_open", FORCED_OPEN_EVENT
    if band(mask, DISABLED) ~= 0 then
      name, event = "disabled", DISABLED_EVENT
    elseif band(mask, ISOLATED) ~= 0 then
      name, event = "isolated", ISOLATED_EVENT
    end
    if hook then
      hook(self, name, failures)
    end
    if enabled[event] then
      emit(event, {}, { pool = self._name })
    end
  end
  -- A probe's outcome is the fleet's news: it syncs at once.
  local fleet = self._fleet
  if fleet ~= nil and band(mask, CLOSED + OPENED) ~= 0 then
    fleet:_settled(self)
  end
end

-- How the breaker counts a failure with error value err: as a failure unless
-- it is a cancellation or is_failure says it is none. A predicate that raises counts the failure,
-- since the call's permit must be given back whatever happens.
local function failure_outcome(self, err)
  -- A call cancelled (its caller gave up on it: a hedge that lost, a
  -- caller's own timeout) has no outcome: its permit goes back uncounted,
  -- as Polly's breaker leaves OperationCanceledException alone.
  if type(err) == "table" and err.kind == CANCELLED then
    return NEUTRAL
  end
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

-- record() for a timed call (slow_call_ms given): `started` is from
-- start_time().
local function timed_record(self, generation, outcome, started)
  local now = self._clock()
  local ms
  if self._user_clock then
    ms = now - started[1]
  else
    -- The loop's time (virtual under a virtual clock) only moves when the
    -- call yields; the monotonic clock catches a call that never does.
    ms = now - started[1]
    local real = (hrtime() - started[2]) / 1e6
    if real > ms then
      ms = real
    end
  end
  if ms < 0 then
    ms = 0
  end
  local mask = C.sp_breaker_record(self._b, generation, outcome, now, ms)
  if mask > 0 then
    transitions(self, mask)
  end
end

local function start_time(self)
  if self._user_clock then
    return { self._clock() }
  end
  return { now_ms(), hrtime() }
end

-- finish() for a timed call.
local function timed_finish(self, generation, started, ok, ...)
  if not ok then
    local err = ...
    timed_record(self, generation, failure_outcome(self, err), started)
    error(err, 0)
  end
  local r1, r2 = ...
  if not r1 and r2 ~= nil then
    timed_record(self, generation, failure_outcome(self, r2), started)
  else
    timed_record(self, generation, SUCCESS, started)
  end
  return ...
end

-- Records the outcome of an admitted call given what pcall(fn, ...)
-- returned (its first values).
local function settle(self, generation, ok, r1, r2)
  if not ok then
    record(self, generation, failure_outcome(self, r1))
  elseif not r1 and r2 ~= nil then
    record(self, generation, failure_outcome(self, r2))
  else
    record(self, generation, SUCCESS)
  end
end

-- Ends an admitted call given what pcall(fn, ...) returned.
local function finish(self, generation, ok, ...)
  settle(self, generation, ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

-- finish() for a call observed by telemetry: the outcome's event is
-- emitted with the call's duration before the outcome is recorded, so that
-- a failure comes before the transition it causes.
local function observed_finish(self, generation, state, started, timed, ok,
                                ...)
  local ms = (ticks_ns() - started) / 1e6
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
  if timed then
    return timed_finish(self, generation, timed, ok, ...)
  end
  return finish(self, generation, ok, ...)
end

-- The fast path's success: a call admitted by a closed breaker in
-- consecutive mode succeeded under the same generation (so the breaker is
-- still closed). This is what breaker_count does for it in C: a saturating
-- total, the consecutive failures reset, the consecutive successes counted.
local function fast_success(b, generation, r1, r2)
  if not (r1 or r2 == nil) or b.generation ~= generation
      or b.state ~= STATE_CLOSED then
    return false
  end
  local total = b.total_successes
  if total ~= U64_MAX then
    b.total_successes = total + 1
  end
  b.failure_count = 0
  local successes = U64(b.success_count)
  if successes ~= U32_MAX then
    b.success_count = successes + 1
  end
  return true
end

-- finish() on the fast path: anything but a success takes finish().
local function fast_finish(self, b, generation, ok, ...)
  if ok and fast_success(b, generation, ...) then
    return ...
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
  local timed = self._timed and start_time(self) or false
  return observed_finish(self, generation, state, ticks_ns(), timed,
                         pcall(fn, ...))
end

local function rejected(self)
  emit(CALL_REJECTED, {}, { pool = self._name,
                            state = STATE_NAMES[self._b.state] })
end

function _M.call(self, fn, ...)
  -- A breaker carries its class in _class: a load by a constant key, where
  -- getmetatable would search the metatable for __metatable.
  if type(self) ~= "table" or self._class ~= mt then
    check_self(self, mt, "circuit_breaker.call", WHAT)
  end
  check_func("circuit_breaker.call", "fn", fn)
  local b = self._b
  if self._fast and not observed[CALL_EVENTS] then
    local state = b.state
    if state == STATE_CLOSED then
      if self._user_clock then
        -- Not needed here, but read as on every other path, so that a
        -- clock that returns garbage is reported at the call that used it.
        self._clock()
      end
      return fast_finish(self, b, b.generation, pcall(fn, ...))
    end
    if state == STATE_OPEN then
      -- sp_breaker_acquire on an open breaker: a rejection unless the reset
      -- timeout has run out (or the clock went back before the opening).
      -- Whole ms: with opened_at and the timeout integers, a fractional
      -- `now` decides as the truncated one C gets would.
      local now = self._clock()
      local opened = tonumber(b.opened_at_ms)
      if now < opened or now - opened < self._reset_timeout_ms then
        local rejections = b.rejected_count
        if rejections ~= U64_MAX then
          b.rejected_count = rejections + 1
        end
        if enabled[CALL_REJECTED] then
          rejected(self)
        end
        return nil, self._open_error
      end
    end
  end
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
  if self._timed then
    return timed_finish(self, b.generation, start_time(self), pcall(fn, ...))
  end
  return finish(self, b.generation, pcall(fn, ...))
end

-- For callers that run the call themselves and want its outcome as a
-- value (pipelines, and _pcall below): _fast_admit gives the generation to
-- pass on when call() would take its fast path (the call is then
-- admitted), else nil; _finish records what pcall returned for a call so
-- admitted, and returns it.
function _M._fast_admit(self)
  local b = self._b
  if self._fast and b.state == STATE_CLOSED and not self._user_clock
      and not observed[CALL_EVENTS] then
    return b.generation
  end
  return nil
end

function _M._finish(self, generation, ok, ...)
  if not (ok and fast_success(self._b, generation, ...)) then
    settle(self, generation, ok, ...)
  end
  return ok, ...
end

-- pcall(call, self, fn, ...) for the executor, which wants the outcome as
-- a value. It is not that pcall: LuaJIT cannot compile a return from
-- call's fast path straight into a pcall frame (a vararg function
-- tail-called under pcall is a NYI of LuaJIT 2.1), which would keep every
-- caller out of its traces. Takes the fast path of a closed breaker in
-- consecutive mode; everything else is that pcall.
function _M._pcall(self, fn, ...)
  local generation = _M._fast_admit(self)
  if generation ~= nil then
    return _M._finish(self, generation, pcall(fn, ...))
  end
  return pcall(_M.call, self, fn, ...)
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
  return struct.stats(b, self._name, self._window, self._successes_reset)
end

function _M.reset(self)
  check_self(self, mt, "circuit_breaker.reset", WHAT)
  -- success_count is never reset (as in Snakepit); the C totals are.
  self._successes_reset = self._successes_reset
                          + tonumber(self._b.total_successes)
  local mask = C.sp_breaker_reset(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

-- Manual states. force_open: rejects every call until reset (no
-- half-open). disable: admits every call and counts it, never changes state
-- on its own. isolate: rejects like force_open but counts nothing (no
-- rejected_count, manual records ignored). reset() leaves any of them.
function _M.force_open(self)
  check_self(self, mt, "circuit_breaker.force_open", WHAT)
  local mask = C.sp_breaker_force_open(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M.disable(self)
  check_self(self, mt, "circuit_breaker.disable", WHAT)
  local mask = C.sp_breaker_disable(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M.isolate(self)
  check_self(self, mt, "circuit_breaker.isolate", WHAT)
  local mask = C.sp_breaker_isolate(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

-- For sprun.fleet (fleet/members.lua): opens the breaker on the fleet's
-- evidence, or closes it because a probe elsewhere succeeded.
function _M._fleet_trip(self)
  local mask = C.sp_breaker_trip(self._b, self._clock(), FLEET_REASON)
  if mask > 0 then
    transitions(self, mask)
  end
end

function _M._fleet_recover(self)
  local mask = C.sp_breaker_recover(self._b)
  if mask > 0 then
    transitions(self, mask)
  end
end

-- The fleet the breaker is in, or nil.
function _M.fleet(self)
  check_self(self, mt, "circuit_breaker.fleet", WHAT)
  return self._fleet
end

function _M.is_breaker(v)
  return getmetatable(v) == mt
end

function _M.name(self)
  check_self(self, mt, "circuit_breaker.name", WHAT)
  return self._name
end

return _M
