-- The sp_breaker_t a circuit breaker is built on (internal to
-- sprun.circuit_breaker): its options, checked; the struct made from
-- them, with the C config; and stats(), read back from it.
--
-- A breaker counts consecutive failures unless given a rate window,
-- { type = "count", size } or { type = "time", size_ms, buckets }, whose
-- options (failure_rate, min_calls, slow_call_ms, slow_call_rate) mean
-- nothing without one: giving them alone is misuse, not a silent no-op.
--
-- The trap: a window owns memory in C (a ring or buckets), so only a
-- breaker with a window is closed by the collector (sp_breaker_close);
-- one without owns nothing to free.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local options = require "sprun.options"
local errors = require "sprun.errors"
local fleet_kind = require "sprun.fleet.kind"

local ffi = sp.ffi
local C = sp.C
local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local describe = check.describe
local expect_integer = check.expect_integer

local _M = {}

-- The window option: { type = "count", size = 100 } or
-- { type = "time", size_ms = 60000, buckets = 10 }. Returns what sprun.options
-- wants of a check: nil, or the expectation, the label and what was got.
local WINDOW_KEYS = {
  count = { type = true, size = true },
  time = { type = true, size_ms = true, buckets = true },
}
local WINDOW_VALID = { count = "type, size", time = "type, size_ms, buckets" }

local function check_window(w)
  if type(w) ~= "table" then
    return "must be a table"
  end
  local kind = w.type
  if kind ~= "count" and kind ~= "time" then
    return 'must be "count" or "time"', "window.type", describe(kind)
  end
  for k, v in each_key, w do
    if not WINDOW_KEYS[kind][k] then
      return "is not a key of a " .. kind .. " window (valid keys: "
             .. WINDOW_VALID[kind] .. ")", "window." .. tostring(k),
             describe(v)
    end
  end
  if kind == "count" then
    local size = w.size
    if size ~= nil then
      local e = expect_integer(size, 1, sp.SP_BREAKER_MAX_WINDOW_SIZE)
      if e then
        return e, "window.size", describe(size)
      end
    end
    return nil
  end
  local size_ms, buckets = w.size_ms, w.buckets
  if size_ms ~= nil then
    local e = expect_integer(size_ms, 1, check.MS_MAX)
    if e then
      return e, "window.size_ms", describe(size_ms)
    end
  end
  if buckets ~= nil then
    local e = expect_integer(buckets, 1, sp.SP_BREAKER_MAX_BUCKETS)
    if e then
      return e, "window.buckets", describe(buckets)
    end
  end
  size_ms, buckets = size_ms or 60000, buckets or 10
  if size_ms % buckets ~= 0 then
    return "must be a multiple of window.buckets (" .. buckets .. ")",
           "window.size_ms", describe(size_ms)
  end
  return nil
end

-- Options that only a rate window reads.
local RATE_OPTIONS = { "failure_rate", "min_calls", "slow_call_ms",
                       "slow_call_rate" }

-- Options that only a rate window reads, given without one: misuse.
local function check_rate_options(o)
  if o.window == nil then
    for _, k in ipairs(RATE_OPTIONS) do
      if o[k] ~= nil then
        return k, "is only read by a rate window (give option 'window')",
               describe(o[k])
      end
    end
  end
end

_M.parse_options = options.parser("circuit_breaker.start_link", {
  name = { "string", required = true },
  failure_threshold = { "integer", min = 1, limit = check.UINT32_MAX,
                        default = 5 },
  reset_timeout_ms = { "integer", min = 0, limit = check.MS_MAX,
                       default = 30000 },
  half_open_max_calls = { "integer", min = 0, limit = check.UINT32_MAX,
                          default = 1 },
  is_failure = { "function" },
  clock = { "function" },
  window = { check = check_window },
  fleet = { check = fleet_kind.check },
  -- No defaults here, so that giving one without `window` can be told
  -- apart; new() fills them in.
  failure_rate = { "number", min = 0, max = 1 },
  min_calls = { "integer", min = 1, limit = check.UINT32_MAX },
  slow_call_ms = { "integer", min = 1, limit = check.MS_MAX },
  slow_call_rate = { "number", min = 0, max = 1 },
}, check_rate_options)

-- Defaults of the rate-window options.
_M.WINDOW_DEFAULTS = {
  count_size = 100, time_size_ms = 60000, time_buckets = 10,
  failure_rate = 0.5, min_calls = 10, slow_call_rate = 1.0,
}
local WD = _M.WINDOW_DEFAULTS

-- The struct for checked options `o`, or nil and the error (no memory).
function _M.new(o)
  local w = o.window
  local b = ffi.new("sp_breaker_t")
  local config = ffi.new("sp_breaker_config_t", {
    failure_threshold = o.failure_threshold,
    half_open_max_calls = o.half_open_max_calls,
    reset_timeout_ms = o.reset_timeout_ms,
    window_type = sp.SP_WINDOW_CONSECUTIVE,
  })
  if w ~= nil then
    if w.type == "count" then
      config.window_type = sp.SP_WINDOW_COUNT
      config.window_size = w.size or WD.count_size
    else
      config.window_type = sp.SP_WINDOW_TIME
      config.window_ms = w.size_ms or WD.time_size_ms
      config.window_buckets = w.buckets or WD.time_buckets
    end
    config.failure_rate = o.failure_rate or WD.failure_rate
    config.min_calls = o.min_calls or WD.min_calls
    config.slow_call_rate = o.slow_call_rate or WD.slow_call_rate
    config.slow_call_ms = o.slow_call_ms or 0
  end
  local rc = C.sp_breaker_init(b, config)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end
  if w ~= nil then
    -- A rate window owns a ring or buckets, freed with the breaker.
    ffi.gc(b, C.sp_breaker_close)
  end
  return b
end

local STATE_NAMES = {
  [sp.SP_BREAKER_STATE_CLOSED] = "closed",
  [sp.SP_BREAKER_STATE_OPEN] = "open",
  [sp.SP_BREAKER_STATE_HALF_OPEN] = "half_open",
  [sp.SP_BREAKER_STATE_FORCED_OPEN] = "forced_open",
  [sp.SP_BREAKER_STATE_DISABLED] = "disabled",
  [sp.SP_BREAKER_STATE_ISOLATED] = "isolated",
}
_M.STATE_NAMES = STATE_NAMES

local OPEN_REASONS = {
  [sp.SP_OPEN_REASON_FAILURES] = "failures",
  [sp.SP_OPEN_REASON_FAILURE_RATE] = "failure_rate",
  [sp.SP_OPEN_REASON_SLOW_CALL_RATE] = "slow_call_rate",
  [sp.SP_OPEN_REASON_FLEET] = "fleet",
}
_M.OPEN_REASONS = OPEN_REASONS

-- What a breaker's stats() returns, read from its struct `b` (`window`:
-- "count", "time" or nil; `successes_reset`: the successes counted before
-- the last reset). The fields Snakepit has mean what they mean there:
-- failure_count counts every failure since the breaker last closed or was
-- reset, success_count every success ever, half_open_calls the probes
-- admitted since it went half-open. sprun's own counts have names of
-- their own: consecutive_failures (what failure_threshold is compared
-- with), consecutive_successes, half_open_in_flight.
function _M.stats(b, name, window, successes_reset)
  local s = {
    name = name,
    state = STATE_NAMES[b.state],
    failure_count = tonumber(b.failures_since_close),
    success_count = tonumber(b.total_successes) + (successes_reset or 0),
    failure_threshold = b.config.failure_threshold,
    half_open_calls = b.half_open_admitted,
    consecutive_failures = b.failure_count,
    consecutive_successes = b.success_count,
    half_open_in_flight = b.half_open_calls,
    reset_timeout_ms = tonumber(b.config.reset_timeout_ms),
    half_open_max_calls = b.config.half_open_max_calls,
    opened_at_ms = tonumber(b.opened_at_ms),
    rejected_count = tonumber(b.rejected_count),
    total_successes = tonumber(b.total_successes),
    total_failures = tonumber(b.total_failures),
    ignored_count = tonumber(b.ignored_count),
  }
  if window then
    local c = b.config
    local calls = tonumber(b.window_calls)
    local failures = tonumber(b.window_failures)
    local slow = tonumber(b.window_slow)
    s.window_type = window
    if window == "count" then
      s.window_size = c.window_size
    else
      s.window_size_ms = tonumber(c.window_ms)
      s.window_buckets = c.window_buckets
    end
    s.min_calls = c.min_calls
    s.failure_rate_threshold = c.failure_rate
    s.slow_call_rate_threshold = c.slow_call_rate
    s.slow_call_ms = c.slow_call_ms > 0 and tonumber(c.slow_call_ms) or nil
    s.window_calls = calls
    s.window_failures = failures
    s.window_slow_calls = slow
    s.failure_rate = calls > 0 and failures / calls or 0
    s.slow_call_rate = calls > 0 and slow / calls or 0
    s.open_reason = OPEN_REASONS[b.open_reason]
  end
  return s
end

return _M
