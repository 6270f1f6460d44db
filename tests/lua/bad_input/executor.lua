-- Bad-input cases (see bad_input_spec.lua) of sprun.executor: the function,
-- breaker, list and options each executor function is given.
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local ex = sprun.executor
local noop, MS_RANGE = fx.noop, fx.MS_RANGE
local cb, hm, rp = fx.cb, fx.hm, fx.rp
local old_task, old_cb = fx.old_task, fx.old_cb
local lookalike, callable = fx.lookalike, fx.callable
local closed_conn, exited_proc = fx.closed_conn, fx.exited_proc

return {
  { id = "execute_with_retry: no function", call = function()
      return ex.execute_with_retry, nil end,
    raises = "executor.execute_with_retry: fn must be a function, got nil" },
  { id = "execute_with_retry: options a number", call = function()
      return ex.execute_with_retry, noop, 5 end,
    raises = "executor.execute_with_retry: options must be a table, got 5" },
  { id = "execute_with_retry: a breaker as policy", call = function()
      return ex.execute_with_retry, noop, { policy = cb } end,
    raises = "executor.execute_with_retry: option 'policy' must be a retry "
      .. "policy (retry_policy.new), got table" },
  { id = "execute_with_retry: a table as policy", call = function()
      return ex.execute_with_retry, noop, { policy = {} } end,
    raises = "executor.execute_with_retry: option 'policy' must be a retry "
      .. "policy (retry_policy.new), got table" },
  { id = "execute_with_retry: policy and max_attempts", call = function()
      return ex.execute_with_retry, noop, { policy = rp, max_attempts = 2 }
    end,
    raises = "executor.execute_with_retry: option 'max_attempts' cannot be "
      .. "given with 'policy' (set it in retry_policy.new)" },
  { id = "execute_with_retry: option max_attempt", call = function()
      return ex.execute_with_retry, noop, { max_attempt = 2 } end,
    raises = "executor.execute_with_retry: unknown option 'max_attempt' "
      .. "(did you mean 'max_attempts'?)" },
  { id = "execute_with_circuit_breaker: a retry policy as breaker",
    call = function() return ex.execute_with_circuit_breaker, rp, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a breaker look-alike",
    call = function()
      return ex.execute_with_circuit_breaker, lookalike, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a finished task as breaker",
    call = function()
      return ex.execute_with_circuit_breaker, old_task, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a string as operation",
    call = function() return ex.execute_with_circuit_breaker, cb, "f" end,
    raises = "executor.execute_with_circuit_breaker: fn must be a function, "
      .. 'got "f"' },
  { id = "execute_with_circuit_breaker: a breaker from an earlier run",
    task = true,
    call = function() return ex.execute_with_circuit_breaker, old_cb,
      function() return "still works" end end,
    returns = { "still works" } },
  { id = "execute_with_timeout: no options", call = function()
      return ex.execute_with_timeout, noop end,
    raises = "executor.execute_with_timeout: options must be a table, got "
      .. "nil" },
  { id = "execute_with_timeout: no timeout_ms", call = function()
      return ex.execute_with_timeout, noop, {} end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' must be a "
      .. "number >= 0, got nil" },
  { id = "execute_with_timeout: timeout_ms nan", call = function()
      return ex.execute_with_timeout, noop, { timeout_ms = 0 / 0 } end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' must be a "
      .. "number >= 0, got nan" },
  { id = "execute_with_timeout: timeout_ms past 2^53", call = function()
      return ex.execute_with_timeout, noop, { timeout_ms = 2 ^ 53 + 2 } end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' "
      .. MS_RANGE .. ", got 9007199254740994" },
  { id = "execute_with_timeout: option timeout", call = function()
      return ex.execute_with_timeout, noop, { timeout = 5 } end,
    raises = "executor.execute_with_timeout: unknown option 'timeout' (did "
      .. "you mean 'timeout_ms'?)" },
  { id = "execute_with_timeout: a closed connection as operation",
    task = true, call = function()
      return ex.execute_with_timeout, closed_conn(), { timeout_ms = 5 } end,
    raises = "executor.execute_with_timeout: fn must be a function, got "
      .. "table" },
  { id = "execute_with_timeout: from a coroutine of a task's own",
    task = true,
    call = function()
      return function()
        return coroutine.resume(coroutine.create(function()
          return pcall(ex.execute_with_timeout, noop, { timeout_ms = 5 })
        end))
      end
    end,
    returns = { true, false, "executor.execute_with_timeout: called from a "
      .. "coroutine that is not a sprun task" } },
  { id = "execute_with_timeout: timeout_ms 2^53 in a task", task = true,
    call = function() return ex.execute_with_timeout,
      function() return "in time" end, { timeout_ms = 2 ^ 53 } end,
    returns = { "in time" } },
  { id = "execute_batch: no list", call = function()
      return ex.execute_batch, nil end,
    raises = "executor.execute_batch: fns must be a list of functions, got "
      .. "nil" },
  { id = "execute_batch: a number in the list", call = function()
      return ex.execute_batch, { noop, 5 } end,
    raises = "executor.execute_batch: fns[2] must be a function, got 5" },
  { id = "execute_batch: a hole in the list", call = function()
      return ex.execute_batch, { noop, nil, noop } end,
    raises = "executor.execute_batch: fns[2] must be a function, got nil" },
  { id = "execute_batch: a map, not a list", call = function()
      return ex.execute_batch, { a = noop } end,
    raises = 'executor.execute_batch: fns must be a list of functions, got '
      .. 'key "a"' },
  { id = "execute_batch: an exited process in the list", task = true,
    call = function() return ex.execute_batch, { exited_proc() } end,
    raises = "executor.execute_batch: fns[1] must be a function, got table" },
  { id = "execute_batch: max_concurrency 0", call = function()
      return ex.execute_batch, { noop }, { max_concurrency = 0 } end,
    raises = "executor.execute_batch: option 'max_concurrency' must be an "
      .. "integer >= 1, got 0" },
  { id = "execute_batch: max_concurrency 1.5", call = function()
      return ex.execute_batch, { noop }, { max_concurrency = 1.5 } end,
    raises = "executor.execute_batch: option 'max_concurrency' must be an "
      .. "integer >= 1, got 1.5" },
  { id = "execute_batch: timeout_ms -1", call = function()
      return ex.execute_batch, { noop }, { timeout_ms = -1 } end,
    raises = "executor.execute_batch: option 'timeout_ms' must be a number "
      .. ">= 0, got -1" },
  { id = "execute_batch: option max_concurency", call = function()
      return ex.execute_batch, { noop }, { max_concurency = 2 } end,
    raises = "executor.execute_batch: unknown option 'max_concurency' (did "
      .. "you mean 'max_concurrency'?)" },
  { id = "execute_with_protection: a retry policy as breaker",
    call = function() return ex.execute_with_protection, rp, noop end,
    raises = "executor.execute_with_protection: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_protection: a monitor as breaker",
    call = function() return ex.execute_with_protection, hm, noop end,
    raises = "executor.execute_with_protection: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_protection: a breaker as policy",
    call = function() return ex.execute_with_protection, cb, noop,
      { policy = cb } end,
    raises = "executor.execute_with_protection: option 'policy' must be a "
      .. "retry policy (retry_policy.new), got table" },
  { id = "execute_with_protection: operation a number",
    call = function() return ex.execute_with_protection, cb, noop,
      { operation = 5 } end,
    raises = "executor.execute_with_protection: option 'operation' must be "
      .. "a non-empty string, got 5" },
  { id = "execute_with_protection: a callable table as operation",
    call = function() return ex.execute_with_protection, cb, callable end,
    raises = "executor.execute_with_protection: fn must be a function, got "
      .. "table" },
  { id = "execute_async: no function",
    call = function() return ex.execute_async, nil end,
    raises = "executor.execute_async: fn must be a function, got nil" },
}
