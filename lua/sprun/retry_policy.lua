-- Retry policy: how many times to call, how long to wait between calls,
-- and which errors are worth another try.
--
-- The delays are sp_retry_t of runtime/core: a list of delays (the last one
-- repeats) or an exponential curve, capped by max_backoff_ms, with optional
-- jitter drawn from a per-policy generator seeded by `seed`, so the same
-- seed gives the same delays. This module checks the options, fills the C
-- config and decides retry_for_error in Lua.
--
-- The trap: `attempt` counts the attempts already made, from 1.
-- should_retry(1) asks whether a second call may follow the first.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local options = require "sprun.options"
local errors = require "sprun.errors"

local ffi = sp.ffi
local C = sp.C
local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local format = string.format
local setmetatable = setmetatable
local getmetatable = getmetatable
local error_kind = errors.kind
local describe = check.describe
local expect_number = check.expect_number
local check_self = check.self
local check_integer = check.integer
local UINT32_MAX = check.UINT32_MAX

local MAX_BACKOFF = sp.SP_RETRY_MAX_BACKOFF
local WHAT = "a retry policy"

local BACKOFFS = {
  list = sp.SP_BACKOFF_LIST,
  exponential = sp.SP_BACKOFF_EXPONENTIAL,
}

local JITTERS = {
  [false] = sp.SP_JITTER_NONE,
  [true] = sp.SP_JITTER_PROPORTIONAL,
  full = sp.SP_JITTER_FULL,
  equal = sp.SP_JITTER_EQUAL,
  decorrelated = sp.SP_JITTER_DECORRELATED,
}

local _M = {}

local mt = { __index = _M }

-- The number of items of t if it is a list (keys 1..n only), else nil.
local function list_length(t)
  local n = 0
  for _ in each_key, t do
    n = n + 1
  end
  if n ~= #t then
    return nil
  end
  return n
end

local function copy(list)
  local out = {}
  for i = 1, #list do
    out[i] = list[i]
  end
  return out
end

local BACKOFF_LIST = format("must be a list of 1 to %d numbers >= 0",
                            MAX_BACKOFF)

local function check_backoff_list(v)
  if type(v) ~= "table" then
    return BACKOFF_LIST
  end
  local n = list_length(v)
  if n == nil then
    return BACKOFF_LIST, nil, "a table that is not a list"
  end
  if n < 1 or n > MAX_BACKOFF then
    return BACKOFF_LIST, nil, n .. " items"
  end
  for i = 1, n do
    local expectation = expect_number(v[i], 0)
    if expectation ~= nil then
      return expectation, format("backoff_ms[%d]", i), describe(v[i])
    end
  end
end

local RETRIABLE = 'must be a list of error kinds, "all" or a function'

local function check_retriable(v)
  if v == "all" or type(v) == "function" then
    return nil
  end
  if type(v) ~= "table" then
    return RETRIABLE
  end
  if list_length(v) == nil then
    return RETRIABLE, nil, "a table that is not a list"
  end
  for i = 1, #v do
    if type(v[i]) ~= "string" or v[i] == "" then
      return "must be a non-empty string", format("retriable_errors[%d]", i),
             describe(v[i])
    end
  end
  for i = 1, #v do
    errors.check_kind_name("retriable_errors", v[i])
  end
end

-- The options of a policy; other functions that take retry options (the
-- executor) check them with the same rules under their own name.
local SPEC = {
  max_attempts = { "integer", min = 1, limit = UINT32_MAX, default = 3 },
  backoff = { "choice", values = { "list", "exponential" }, default = "list" },
  backoff_ms = { check = check_backoff_list,
                 default = { 100, 200, 400, 800, 1600 } },
  base_backoff_ms = { "number", min = 0, default = 100 },
  multiplier = { "number", min = 1, default = 2 },
  max_backoff_ms = { "number", min = 0, default = 30000 },
  jitter = { "choice",
             values = { false, true, "full", "equal", "decorrelated" },
             default = false },
  jitter_factor = { "number", min = 0, max = 1, default = 0.25 },
  retriable_errors = { check = check_retriable,
                       default = { "timeout", "unavailable",
                                   "connection_refused", "worker_crash" } },
  seed = { "integer", min = 0, limit = check.MS_MAX },
  -- fn(values...) -> true to retry a success (an HTTP 503 result).
  retry_on_result = { "function" },
}

-- A parser (sprun.options) of the policy's options plus `extra`, with
-- `validate` (for other modules that take retry options).
function _M._options_parser(fname, extra, validate)
  local spec = {}
  for k, v in each_key, SPEC do
    spec[k] = v
  end
  for k, v in each_key, extra or {} do
    spec[k] = v
  end
  return options.parser(fname, spec, validate)
end

local parse_options = _M._options_parser("retry_policy.new")

-- Two policies made in the same millisecond must not share a seed.
local seeds_made = 0

local function fresh_seed()
  seeds_made = seeds_made + 1
  return C.sp_clock_ns() % 2 ^ 43 * 1024 + seeds_made % 1024
end

-- A policy from options already checked by a parser of _options_parser
-- (keys other than the policy's are ignored).
function _M._from_options(parsed)
  local o = {}
  for k in each_key, SPEC do
    o[k] = parsed[k]
  end
  o.seed = o.seed or fresh_seed()
  o.backoff_ms = copy(o.backoff_ms)

  local config = ffi.new("sp_retry_config_t")
  config.max_attempts = o.max_attempts
  config.backoff_count = #o.backoff_ms
  for i = 1, #o.backoff_ms do
    config.backoff_ms[i - 1] = o.backoff_ms[i]
  end
  config.backoff = BACKOFFS[o.backoff]
  config.base_backoff_ms = o.base_backoff_ms
  config.multiplier = o.multiplier
  config.max_backoff_ms = o.max_backoff_ms
  config.jitter = JITTERS[o.jitter]
  config.jitter_factor = o.jitter_factor
  config.seed = o.seed

  local r = ffi.new("sp_retry_t")
  local rc = C.sp_retry_init(r, config)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end

  local retriable = o.retriable_errors
  if type(retriable) == "table" then
    o.retriable_errors = copy(retriable)
    retriable = {}
    for i = 1, #o.retriable_errors do
      retriable[o.retriable_errors[i]] = true
    end
  end
  return setmetatable({ _r = r, _options = o, _retriable = retriable,
                         _retry_on_result = o.retry_on_result }, mt)
end

function _M.new(opts)
  return _M._from_options(parse_options(opts))
end

-- Back to the start of its random sequence (the seed it was made with).
function _M._reseed(self)
  C.sp_retry_seed(self._r, self._options.seed)
end

function _M.is_policy(v)
  return getmetatable(v) == mt
end

-- attempt: the attempts made so far, from 1. True while another is allowed.
function _M.should_retry(self, attempt)
  check_self(self, mt, "retry_policy.should_retry", WHAT)
  check_integer("retry_policy.should_retry", "attempt", attempt, 1,
                UINT32_MAX)
  return C.sp_retry_should_retry(self._r, attempt) == 1
end

-- The delay in ms to wait after attempt number `attempt` failed.
function _M.backoff_for_attempt(self, attempt)
  check_self(self, mt, "retry_policy.backoff_for_attempt", WHAT)
  check_integer("retry_policy.backoff_for_attempt", "attempt", attempt, 1,
                UINT32_MAX)
  local ms = C.sp_retry_backoff(self._r, attempt) -- no tail call: see clock
  return ms
end

-- For the retry loop (retry.lua), on a policy it knows is one: whether
-- attempt k may be followed by another, the delay after it, and whether
-- err is retried, with no argument checks.
function _M._more(self, k)
  return k < self._r.config.max_attempts
end

function _M._delay(self, k)
  local ms = C.sp_retry_backoff(self._r, k) -- no tail call: see clock
  return ms
end

function _M._retries(self, err)
  local retriable = self._retriable
  if retriable == "all" then
    return true
  elseif type(retriable) == "function" then
    return not not retriable(err)
  end
  return retriable[error_kind(err)] == true
end

-- Is an operation that failed with `err` worth another try?
function _M.retry_for_error(self, err)
  check_self(self, mt, "retry_policy.retry_for_error", WHAT)
  local retriable = self._retriable
  if retriable == "all" then
    return true
  elseif type(retriable) == "function" then
    return not not retriable(err)
  end
  return retriable[error_kind(err)] == true
end

-- The options in effect (defaults filled in, the seed chosen), as a new
-- table that can be given back to new().
function _M.config(self)
  check_self(self, mt, "retry_policy.config", WHAT)
  local o, out = self._options, {}
  for k, v in each_key, o do
    out[k] = v
  end
  out.backoff_ms = copy(o.backoff_ms)
  if type(o.retriable_errors) == "table" then
    out.retriable_errors = copy(o.retriable_errors)
  end
  return out
end

return _M
