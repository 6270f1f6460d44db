-- Adaptive concurrency limit: at most `limit` calls at once, the limit
-- moved by what the calls measure (runtime/core/adaptive.c: "aimd" backs
-- off on drops, "gradient2" on RTTs growing past their long-term average).
-- A call past the limit is refused at once with kind "limit_exceeded";
-- nothing waits.
--
-- acquire() gives a permit, release(permit, outcome, rtt_ms) gives it back
-- with the call's outcome; call(fn, ...) does both around fn. C keeps the
-- limit and the count in flight; this module checks the options, keeps
-- the permits and measures RTTs on the loop clock.
--
-- The trap: a permit released twice must not count twice, nor give back
-- a permit acquired since by another call. A permit is a number naming a
-- slot and the slot's generation, so a second release (or a release of a
-- permit whose slot was reused) is recognised and refused, and acquire
-- allocates nothing.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local clock = require "sprun.clock"
local options = require "sprun.options"
local errors = require "sprun.errors"

local ffi = sp.ffi
local C = sp.C
local type = type
local error = error
local pcall = pcall
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local floor = math.floor
local format = string.format
local describe = check.describe
local check_self = check.self
local check_func = check.func
local error_kind = errors.kind
local now = clock.now

local WHAT = "an adaptive limit"
local KIND = "limit_exceeded"
local MAX_LIMIT = sp.SP_ADAPTIVE_MAX_LIMIT
-- permit = generation * SLOTS + slot: slots never outnumber MAX_LIMIT
-- (no more calls are ever in flight), and a double keeps 2^33
-- generations per slot exact.
local SLOTS = 2 ^ 20

local SUCCESS = sp.SP_ADAPTIVE_SUCCESS
local DROPPED = sp.SP_ADAPTIVE_DROPPED
local IGNORED = sp.SP_ADAPTIVE_IGNORED
local OUTCOMES = { success = SUCCESS, dropped = DROPPED, ignored = IGNORED }

-- What call() counts as a drop: fn returned nil (or false) and an error of
-- one of these kinds. Any other return is a success; a raised error is
-- ignored (no sample) and raised again.
local DROP_KINDS = { timeout = true, unavailable = true, overloaded = true }

local _M = {}

local mt = { __index = _M }

local function between_0_and_1(v)
  if type(v) == "number" and v > 0 and v < 1 then
    return nil
  end
  return "must be a number > 0 and < 1"
end

local function smoothing_rule(v)
  if type(v) == "number" and v > 0 and v <= 1 then
    return nil
  end
  return "must be a number > 0 and <= 1"
end

local function positive(v)
  if type(v) == "number" and v > 0 and v <= check.MS_MAX then
    return nil
  end
  return "must be a number > 0"
end

local function queue_rule(v)
  if v == "sqrt" or type(v) == "function"
      or (type(v) == "number" and v >= 0 and v <= check.MS_MAX) then
    return nil
  end
  return 'must be a number >= 0, "sqrt" or a function'
end

local LIMIT = { "integer", min = 1, limit = MAX_LIMIT }

local SPEC = {
  name = { "string", default = "adaptive_limit" },
  algorithm = { "choice", values = { "aimd", "gradient2" },
                default = "aimd" },
  min_limit = { "integer", min = 1, limit = MAX_LIMIT, default = 1 },
  max_limit = { "integer", min = 1, limit = MAX_LIMIT, default = 200 },
  initial_limit = LIMIT,
  window_ms = { "integer", min = 0, limit = check.MS_MAX, default = 0 },
  window_min_samples = { "integer", min = 1, limit = check.UINT32_MAX,
                         default = 10 },
  -- aimd
  backoff_ratio = { check = between_0_and_1, default = 0.9 },
  timeout_ms = { check = positive },
  -- gradient2
  long_window = { "integer", min = 1, limit = check.UINT32_MAX,
                  default = 600 },
  rtt_tolerance = { "number", min = 1, default = 1.5 },
  smoothing = { check = smoothing_rule, default = 0.2 },
  queue_size = { check = queue_rule, default = 4 },
}

-- The options each algorithm reads; given to the other one, an option is
-- a mistake worth saying.
local OWN = {
  backoff_ratio = "aimd", timeout_ms = "aimd",
  long_window = "gradient2", rtt_tolerance = "gradient2",
  smoothing = "gradient2", queue_size = "gradient2",
}
local OWN_KEYS = { "backoff_ratio", "long_window", "queue_size",
                   "rtt_tolerance", "smoothing", "timeout_ms" }

local function validate(o, given)
  for i = 1, #OWN_KEYS do
    local k = OWN_KEYS[i]
    if given[k] ~= nil and OWN[k] ~= o.algorithm then
      return k, format('is read only by algorithm "%s" (algorithm is "%s")',
                       OWN[k], o.algorithm), describe(given[k])
    end
  end
  if o.max_limit < o.min_limit then
    return "max_limit", format("must be >= min_limit (%d)", o.min_limit),
           describe(o.max_limit)
  end
  local initial = o.initial_limit
  if initial ~= nil and (initial < o.min_limit or initial > o.max_limit) then
    return "initial_limit", format("must be between min_limit (%d) and "
                                   .. "max_limit (%d)", o.min_limit,
                                   o.max_limit), describe(initial)
  end
end

local parse_options = options.parser("adaptive_limit.new", SPEC, validate)

function _M.new(opts)
  local o = parse_options(opts)
  -- Not given: 20 (Netflix's), brought into [min_limit, max_limit].
  if o.initial_limit == nil then
    o.initial_limit = math.max(o.min_limit, math.min(o.max_limit, 20))
  end
  local g2 = o.algorithm == "gradient2"

  local c = ffi.new("sp_adaptive_config_t")
  c.algorithm = g2 and sp.SP_ADAPTIVE_GRADIENT2 or sp.SP_ADAPTIVE_AIMD
  c.min_limit = o.min_limit
  c.max_limit = o.max_limit
  c.initial_limit = o.initial_limit
  c.window_ms = o.window_ms
  c.window_min_samples = o.window_min_samples
  c.backoff_ratio = o.backoff_ratio
  c.timeout_ms = o.timeout_ms or 0
  c.long_window = o.long_window
  c.rtt_tolerance = o.rtt_tolerance
  c.smoothing = o.smoothing
  local queue_fn = nil
  if o.queue_size == "sqrt" then
    -- Netflix's square root: max(4, floor(sqrt(limit))).
    c.queue_mode = sp.SP_ADAPTIVE_QUEUE_SQRT
    c.queue_size = 4
  elseif type(o.queue_size) == "function" then
    c.queue_mode = sp.SP_ADAPTIVE_QUEUE_FIXED
    queue_fn = g2 and o.queue_size or nil
  else
    c.queue_mode = sp.SP_ADAPTIVE_QUEUE_FIXED
    c.queue_size = o.queue_size
  end

  local a = ffi.new("sp_adaptive_t")
  local rc = C.sp_adaptive_init(a, c)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end
  return setmetatable({
    _class = mt,
    _a = a,
    _name = o.name,
    _algorithm = o.algorithm,
    _queue_fn = queue_fn,
    _gen = {},      -- slot -> generation in use (> 0), or minus the last one
    _t0 = {},       -- slot -> when its permit was acquired (loop ms)
    _free = {},     -- slots free for reuse, a stack
    _free_n = 0,
    _slots = 0,     -- slots made so far
    _err = nil,     -- the last rejection's error, and what it said
    _err_limit = -1,
    _err_in_flight = -1,
  }, mt)
end

function _M.is_adaptive_limit(v)
  return getmetatable(v) == mt
end

-- The limit_exceeded error for the current counts: the last one again
-- while they have not changed (a burst of rejections allocates once).
local function rejection(self)
  local a = self._a
  local limit, in_flight = C.sp_adaptive_limit(a), a.in_flight
  if limit ~= self._err_limit or in_flight ~= self._err_in_flight then
    self._err = errors.error(KIND, format(
      "adaptive limit '%s' reached: limit %d, %d in flight",
      self._name, limit, in_flight),
      { name = self._name, limit = limit, in_flight = in_flight })
    self._err_limit, self._err_in_flight = limit, in_flight
  end
  return self._err
end

local function take(self)
  if C.sp_adaptive_acquire(self._a) ~= 0 then
    return nil, rejection(self)
  end
  local n, slot = self._free_n, nil
  if n > 0 then
    slot = self._free[n]
    self._free_n = n - 1
  else
    slot = self._slots + 1
    self._slots = slot
  end
  local gen = self._gen
  local g = -(gen[slot] or 0) + 1
  gen[slot] = g
  self._t0[slot] = now()
  return g * SLOTS + slot
end

-- A permit for one call, or nil and the limit_exceeded error.
function _M.acquire(self)
  if type(self) ~= "table" or self._class ~= mt then
    check_self(self, mt, "adaptive_limit.acquire", WHAT)
  end
  local permit, err = take(self)
  return permit, err
end

-- The slot of a permit in use; raises (at the level of the caller of the
-- API function) for anything else.
local function permit_slot(self, fname, permit)
  if type(permit) == "number" then
    local slot = permit % SLOTS
    local g = (permit - slot) / SLOTS
    local cur = self._gen[slot]
    if g >= 1 and cur == g then
      return slot
    end
    if g >= 1 and g % 1 == 0 and cur ~= nil and (cur == -g or cur > g
                                                  or -cur > g) then
      error(format("%s: permit %s was already released", fname,
                   describe(permit)), 3)
    end
  end
  error(format("%s: permit must be a permit that acquire() of this limit "
               .. "gave, got %s", fname, describe(permit)), 3)
end

-- The queue_size function's value, or nil and the message to raise.
local function queue_value(self)
  local ok, q = pcall(self._queue_fn, C.sp_adaptive_limit(self._a))
  if not ok then
    return nil, q
  end
  if type(q) ~= "number" or not (q >= 0 and q <= check.MS_MAX) then
    return nil, "adaptive_limit: option 'queue_size' function must return "
                .. "a number >= 0, got " .. describe(q)
  end
  return q
end

-- Gives the permit in `slot` back with `code` and `rtt` (nil: measured).
-- The permit is spent before anything can raise.
local function give_back(self, slot, code, rtt)
  local t = now()
  if rtt == nil then
    rtt = t - self._t0[slot]
    if rtt < 0 then
      rtt = 0
    end
  end
  local gen = self._gen
  gen[slot] = -gen[slot]
  local n = self._free_n + 1
  self._free[n] = slot
  self._free_n = n
  local a = self._a
  if self._queue_fn ~= nil and code ~= IGNORED then
    local q, why = queue_value(self)
    if q == nil then
      C.sp_adaptive_release(a, IGNORED, 0, t)
      error(why, 0)
    end
    a.config.queue_size = q
  end
  C.sp_adaptive_release(a, code, rtt, t)
end

local OUTCOME_RULE = 'must be "success", "dropped" or "ignored"'

-- Ends the call of `permit`: outcome "success", "dropped" (it says the
-- dependency is overloaded: a timeout, a shed request) or "ignored" (no
-- sample: the call says nothing of the dependency). rtt_ms: its round
-- trip in ms, or nil for the time since acquire on the loop clock.
function _M.release(self, permit, outcome, rtt_ms)
  if type(self) ~= "table" or self._class ~= mt then
    check_self(self, mt, "adaptive_limit.release", WHAT)
  end
  local slot = permit_slot(self, "adaptive_limit.release", permit)
  local code = OUTCOMES[outcome]
  if code == nil then
    check.arg_error("adaptive_limit.release", "outcome", OUTCOME_RULE,
                    outcome)
  end
  if rtt_ms ~= nil and (type(rtt_ms) ~= "number"
                        or not (rtt_ms >= 0 and rtt_ms <= check.MS_MAX)) then
    check.arg_error("adaptive_limit.release", "rtt_ms",
                    "must be a number >= 0 or nil", rtt_ms)
  end
  give_back(self, slot, code, rtt_ms)
  return true
end

local function finish(self, permit, ok, ...)
  local slot = permit % SLOTS
  if not ok then
    give_back(self, slot, IGNORED, 0)
    error((...), 0)
  end
  local r1, r2 = ...
  if not r1 and r2 ~= nil and DROP_KINDS[error_kind(r2)] then
    give_back(self, slot, DROPPED, nil)
  else
    give_back(self, slot, SUCCESS, nil)
  end
  return ...
end

-- For pipelines, which run the call themselves: _take (a permit, or nil
-- and the limit_exceeded error), then _settle with the call's outcome as
-- pcall gives it, which it hands back (a raise is ignored, not raised).
_M._take = take

function _M._settle(self, permit, ok, ...)
  local slot = permit % SLOTS
  if not ok then
    give_back(self, slot, IGNORED, 0)
    return ok, ...
  end
  local r1, r2 = ...
  if not r1 and r2 ~= nil and DROP_KINDS[error_kind(r2)] then
    give_back(self, slot, DROPPED, nil)
  else
    give_back(self, slot, SUCCESS, nil)
  end
  return ok, ...
end

-- fn(...) under a permit: its values, or nil and the limit_exceeded error
-- (fn not called). fn returning nil (or false) and an error of kind
-- timeout, unavailable or overloaded is a drop; any other return a
-- success; an error fn raises is ignored (no sample) and raised again.
-- The RTT is the time fn took on the loop clock.
function _M.call(self, fn, ...)
  if type(self) ~= "table" or self._class ~= mt then
    check_self(self, mt, "adaptive_limit.call", WHAT)
  end
  if type(fn) ~= "function" then
    check_func("adaptive_limit.call", "fn", fn)
  end
  local permit, err = take(self)
  if permit == nil then
    return nil, err
  end
  return finish(self, permit, pcall(fn, ...))
end

-- The limit now (calls admitted at once), without a table.
function _M.limit(self)
  if type(self) ~= "table" or self._class ~= mt then
    check_self(self, mt, "adaptive_limit.limit", WHAT)
  end
  local n = C.sp_adaptive_limit(self._a)
  return n
end

-- A new table of the limit's state and running totals.
function _M.stats(self)
  check_self(self, mt, "adaptive_limit.stats", WHAT)
  local a = self._a
  local s = {
    name = self._name,
    algorithm = self._algorithm,
    limit = C.sp_adaptive_limit(a),
    estimated_limit = a.limit,
    in_flight = a.in_flight,
    max_in_flight = a.max_in_flight,
    acquired = tonumber(a.acquired),
    rejected = tonumber(a.rejected),
    successes = tonumber(a.successes),
    dropped = tonumber(a.dropped),
    ignored = tonumber(a.ignored),
    updates = tonumber(a.updates),
  }
  if self._algorithm == "gradient2" then
    s.long_rtt_ms = a.long_rtt
    s.short_rtt_ms = a.short_rtt
    s.gradient = a.gradient
  end
  return s
end

return _M
