-- Bad-input cases (see bad_input_spec.lua) of the objects: the options and
-- methods of circuit_breaker, health_monitor and retry_policy, and the
-- arguments of sprun.error.
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local cbm = sprun.circuit_breaker
local hmm = sprun.health_monitor
local rpm = sprun.retry_policy
local noop, MS_RANGE = fx.noop, fx.MS_RANGE
local cb, hm, rp, old_task = fx.cb, fx.hm, fx.rp, fx.old_task
local lookalike, callable = fx.lookalike, fx.callable

-- The list of valid options a constructor names after an unknown one, as
-- it names it today (options get added; the cases below check that an
-- object given as options is named by its first field, then this list).
local function valid_options(fn, opts)
  local _, err = pcall(fn, opts)
  return assert(err:match("%(valid options: (.*)%)$"), err)
end
local CB_OPTIONS = valid_options(cbm.start_link, { name = "x", zzzz = 1 })
local RP_OPTIONS = valid_options(rpm.new, { zzzz = 1 })

return {
  -- circuit_breaker -------------------------------------------------------
  { id = "breaker: reset_timeout_ms nan",
    call = function() return cbm.start_link, { name = "x",
      reset_timeout_ms = 0 / 0 } end,
    raises = "circuit_breaker.start_link: option 'reset_timeout_ms' must be "
      .. "an integer >= 0, got nan" },
  { id = "breaker: failure_threshold -inf",
    call = function() return cbm.start_link, { name = "x",
      failure_threshold = -math.huge } end,
    raises = "circuit_breaker.start_link: option 'failure_threshold' must "
      .. "be an integer >= 1, got -inf" },
  { id = "breaker: half_open_max_calls 2^32",
    call = function() return cbm.start_link, { name = "x",
      half_open_max_calls = 2 ^ 32 } end,
    raises = "circuit_breaker.start_link: option 'half_open_max_calls' must "
      .. "be an integer between 0 and 4294967295, got 4294967296" },
  { id = "breaker: name a table",
    call = function() return cbm.start_link, { name = {} } end,
    raises = "circuit_breaker.start_link: option 'name' must be a non-empty "
      .. "string, got table" },
  { id = "breaker: is_failure a string",
    call = function() return cbm.start_link, { name = "x",
      is_failure = "yes" } end,
    raises = "circuit_breaker.start_link: option 'is_failure' must be a "
      .. 'function, got "yes"' },
  { id = "breaker: a retry policy as its options",
    call = function() return cbm.start_link, rp end,
    raises = "circuit_breaker.start_link: unknown option '_options' "
      .. "(valid options: " .. CB_OPTIONS .. ")" },
  { id = "breaker: failure_threshold -3", also = "validation_spec",
    call = function() return cbm.start_link, { name = "x",
      failure_threshold = -3 } end,
    raises = "circuit_breaker.start_link: option 'failure_threshold' must "
      .. "be an integer >= 1, got -3" },
  { id = "breaker.call: a breaker as the operation",
    call = function() return cbm.call, cb, cb end,
    raises = "circuit_breaker.call: fn must be a function, got table" },
  { id = "breaker.call: a callable table as the operation",
    call = function() return cbm.call, cb, callable end,
    raises = "circuit_breaker.call: fn must be a function, got table" },
  { id = "breaker.call: a retry policy as self",
    call = function() return cbm.call, rp, noop end,
    raises = "circuit_breaker.call: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.call: a table that looks like a breaker",
    call = function() return cbm.call, lookalike, noop end,
    raises = "circuit_breaker.call: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.stats: a health monitor as self",
    call = function() return cbm.stats, hm end,
    raises = "circuit_breaker.stats: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.reset: a finished task as self",
    call = function() return cbm.reset, old_task end,
    raises = "circuit_breaker.reset: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker: reset_timeout_ms 2^53 opens inside a loop", task = true,
    call = function()
      local b = cbm.start_link { name = "far", failure_threshold = 1,
                                 reset_timeout_ms = 2 ^ 53 }
      return function()
        local _, err = b:call(function() return nil, "down" end)
        return err, b:state()
      end
    end,
    returns = { "down", "open" } },

  -- health_monitor ---------------------------------------------------------
  { id = "monitor: max_crashes 1.5",
    call = function() return hmm.start_link, { max_crashes = 1.5 } end,
    raises = "health_monitor.start_link: option 'max_crashes' must be an "
      .. "integer >= 1, got 1.5" },
  { id = "monitor: crash_window_ms 0",
    call = function() return hmm.start_link, { crash_window_ms = 0 } end,
    raises = "health_monitor.start_link: option 'crash_window_ms' must be "
      .. "an integer >= 1, got 0" },
  { id = "monitor: crash_window_ms nan",
    call = function() return hmm.start_link, { crash_window_ms = 0 / 0 } end,
    raises = "health_monitor.start_link: option 'crash_window_ms' must be "
      .. "an integer >= 1, got nan" },
  { id = "monitor: max_workers 0",
    call = function() return hmm.start_link, { max_workers = 0 } end,
    raises = "health_monitor.start_link: option 'max_workers' must be an "
      .. "integer >= 1, got 0" },
  { id = "monitor: clock a string",
    call = function() return hmm.start_link, { clock = "now" } end,
    raises = "health_monitor.start_link: option 'clock' must be a function, "
      .. 'got "now"' },
  { id = "monitor: pool empty",
    call = function() return hmm.start_link, { pool = "" } end,
    raises = "health_monitor.start_link: option 'pool' must be a non-empty "
      .. 'string, got ""' },
  { id = "monitor: max_crashes 0", also = "validation_spec",
    call = function() return hmm.start_link, { max_crashes = 0 } end,
    raises = "health_monitor.start_link: option 'max_crashes' must be an "
      .. "integer >= 1, got 0" },
  { id = "monitor.stats: a breaker as self",
    call = function() return hmm.stats, cb end,
    raises = "health_monitor.stats: self must be a health monitor, got "
      .. "table" },
  { id = "monitor.record_crash: a retry policy as self",
    call = function() return hmm.record_crash, rp, "w" end,
    raises = "health_monitor.record_crash: self must be a health monitor, "
      .. "got table" },
  { id = "monitor.record_crash: a function as worker id",
    call = function() return hmm.record_crash, hm, noop end,
    raises = "health_monitor.record_crash: worker_id must be a string or a "
      .. "number, got function" },
  { id = "monitor.record_crash: info true",
    call = function() return hmm.record_crash, hm, "w", true end,
    raises = "health_monitor.record_crash: info must be a table or nil, got "
      .. "true" },
  { id = "monitor.worker_health: no worker id",
    call = function() return hmm.worker_health, hm end,
    raises = "health_monitor.worker_health: worker_id must be a string or a "
      .. "number, got nil" },
  { id = "monitor: check_interval_ms 2^53 inside a loop", task = true,
    call = function()
      local m = hmm.start_link { check_interval_ms = 2 ^ 53 }
      return function()
        return m:record_crash("w"), m:stats().total_crashes
      end
    end,
    returns = { true, 1 } },

  -- retry_policy -----------------------------------------------------------
  { id = "policy: max_attempts nan",
    call = function() return rpm.new, { max_attempts = 0 / 0 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer >= "
      .. "1, got nan" },
  { id = "policy: max_attempts 2^32",
    call = function() return rpm.new, { max_attempts = 2 ^ 32 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer "
      .. "between 1 and 4294967295, got 4294967296" },
  { id = "policy: a nan delay",
    call = function() return rpm.new, { backoff_ms = { 0 / 0 } } end,
    raises = "retry_policy.new: option 'backoff_ms[1]' must be a number >= "
      .. "0, got nan" },
  { id = "policy: an infinite delay",
    call = function() return rpm.new, { backoff_ms = { 1, math.huge } } end,
    raises = "retry_policy.new: option 'backoff_ms[2]' " .. MS_RANGE
      .. ", got inf" },
  { id = "policy: multiplier nan",
    call = function() return rpm.new, { multiplier = 0 / 0 } end,
    raises = "retry_policy.new: option 'multiplier' must be a number >= 1, "
      .. "got nan" },
  { id = "policy: an empty error kind",
    call = function() return rpm.new, { retriable_errors = { "" } } end,
    raises = "retry_policy.new: option 'retriable_errors[1]' must be a "
      .. 'non-empty string, got ""' },
  { id = "policy: seed past 2^53",
    call = function() return rpm.new, { seed = 2 ^ 53 + 2 } end,
    raises = "retry_policy.new: option 'seed' must be an integer between 0 "
      .. "and 9007199254740992, got 9007199254740994" },
  { id = "policy: jitter \"none\"",
    call = function() return rpm.new, { jitter = "none" } end,
    raises = "retry_policy.new: option 'jitter' must be false, true, "
      .. '"full", "equal" or "decorrelated", got "none"' },
  { id = "policy: a policy as its options",
    call = function() return rpm.new, rp end,
    raises = "retry_policy.new: unknown option '_options' (valid options: "
      .. RP_OPTIONS .. ")" },
  { id = "policy: max_attempts 0", also = "validation_spec",
    call = function() return rpm.new, { max_attempts = 0 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer >= "
      .. "1, got 0" },
  { id = "policy.should_retry: attempt nan",
    call = function() return rpm.should_retry, rp, 0 / 0 end,
    raises = "retry_policy.should_retry: attempt must be an integer >= 1, "
      .. "got nan" },
  { id = "policy.backoff_for_attempt: attempt -1",
    call = function() return rpm.backoff_for_attempt, rp, -1 end,
    raises = "retry_policy.backoff_for_attempt: attempt must be an integer "
      .. ">= 1, got -1" },
  { id = "policy.should_retry: a breaker as self",
    call = function() return rpm.should_retry, cb, 1 end,
    raises = "retry_policy.should_retry: self must be a retry policy, got "
      .. "table" },
  { id = "policy.retry_for_error: a monitor as self",
    call = function() return rpm.retry_for_error, hm, "timeout" end,
    raises = "retry_policy.retry_for_error: self must be a retry policy, "
      .. "got table" },

  -- errors -------------------------------------------------------------------
  { id = "errors: an empty kind",
    call = function() return sprun.error, "" end,
    raises = 'errors.error: kind must be a non-empty string, got ""' },
  { id = "errors: a number as kind",
    call = function() return sprun.error, 5 end,
    raises = "errors.error: kind must be a non-empty string, got 5" },
  { id = "errors: a table as message",
    call = function() return sprun.error, "k", {} end,
    raises = "errors.error: message must be a string or nil, got table" },
}
