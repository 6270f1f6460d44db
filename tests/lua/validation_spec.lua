-- Misuse raises one error, at the caller's level, that names the function,
-- the option or argument, what is allowed and what was given.
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"
local retry_policy = require "sprun.retry_policy"
local errors = require "sprun.errors"

local cb = circuit_breaker.start_link { name = "cb" }
local hm = health_monitor.start_link {}
local rp = retry_policy.new {}
local function noop() end

local CB_OPTIONS = "clock, failure_rate, failure_threshold, fleet, "
  .. "half_open_max_calls, is_failure, min_calls, name, reset_timeout_ms, "
  .. "slow_call_ms, slow_call_rate, window"

local function start(opts)
  opts.name = opts.name or "x"
  return opts
end

local function with_clock(value)
  return circuit_breaker.start_link { name = "c",
                                      clock = function() return value end }
end

local list65 = {}
for i = 1, 65 do list65[i] = i end

-- { expected message, function, arguments... }
local cases = {
  -- circuit_breaker.start_link
  { "circuit_breaker.start_link: options must be a table, got nil",
    circuit_breaker.start_link },
  { 'circuit_breaker.start_link: options must be a table, got "x"',
    circuit_breaker.start_link, "x" },
  { "circuit_breaker.start_link: option 'name' must be a non-empty string, "
    .. "got nil", circuit_breaker.start_link, {} },
  { "circuit_breaker.start_link: option 'name' must be a non-empty string, "
    .. "got 5", circuit_breaker.start_link, { name = 5 } },
  { "circuit_breaker.start_link: option 'name' must be a non-empty string, "
    .. 'got ""', circuit_breaker.start_link, { name = "" } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer >= 1, got -3",
    circuit_breaker.start_link, start { failure_threshold = -3 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer >= 1, got 0",
    circuit_breaker.start_link, start { failure_threshold = 0 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer >= 1, got 1.5",
    circuit_breaker.start_link, start { failure_threshold = 1.5 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer between 1 and 4294967295, got 5e+12",
    circuit_breaker.start_link, start { failure_threshold = 5e12 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer between 1 and 4294967295, got 4294967296",
    circuit_breaker.start_link, start { failure_threshold = 2 ^ 32 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer >= 1, got nan",
    circuit_breaker.start_link, start { failure_threshold = 0 / 0 } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer between 1 and 4294967295, got inf",
    circuit_breaker.start_link, start { failure_threshold = math.huge } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. 'integer >= 1, got "5"',
    circuit_breaker.start_link, start { failure_threshold = "5" } },
  { "circuit_breaker.start_link: option 'failure_threshold' must be an "
    .. "integer >= 1, got true",
    circuit_breaker.start_link, start { failure_threshold = true } },
  { "circuit_breaker.start_link: option 'reset_timeout_ms' must be an "
    .. "integer >= 0, got -1",
    circuit_breaker.start_link, start { reset_timeout_ms = -1 } },
  { "circuit_breaker.start_link: option 'reset_timeout_ms' must be an "
    .. "integer between 0 and 9007199254740992, got 9007199254740994",
    circuit_breaker.start_link, start { reset_timeout_ms = 2 ^ 53 + 2 } },
  { "circuit_breaker.start_link: option 'half_open_max_calls' must be an "
    .. "integer >= 0, got -1",
    circuit_breaker.start_link, start { half_open_max_calls = -1 } },
  { "circuit_breaker.start_link: option 'is_failure' must be a function, "
    .. "got table",
    circuit_breaker.start_link, start { is_failure = {} } },
  { "circuit_breaker.start_link: option 'clock' must be a function, got 5",
    circuit_breaker.start_link, start { clock = 5 } },
  { "circuit_breaker.start_link: unknown option 'failure_treshold' "
    .. "(did you mean 'failure_threshold'?)",
    circuit_breaker.start_link, start { failure_treshold = 3 } },
  { "circuit_breaker.start_link: unknown option 'reset_timeout' "
    .. "(did you mean 'reset_timeout_ms'?)",
    circuit_breaker.start_link, start { reset_timeout = 3 } },
  { "circuit_breaker.start_link: unknown option 'nmae' "
    .. "(did you mean 'name'?)", circuit_breaker.start_link, { nmae = "x" } },
  { "circuit_breaker.start_link: unknown option 'retries' (valid options: "
    .. CB_OPTIONS .. ")", circuit_breaker.start_link, start { retries = 3 } },
  { "circuit_breaker.start_link: unknown option [1] (valid options: "
    .. CB_OPTIONS .. ")", circuit_breaker.start_link, start { "x" } },

  -- circuit breaker methods
  { "circuit_breaker.call: self must be a circuit breaker, got nil "
    .. "(did you mean cb:call(...)?)",
    circuit_breaker.call, nil, noop },
  { "circuit_breaker.call: self must be a circuit breaker, got function "
    .. "(did you mean cb:call(...)?)",
    cb.call, noop },
  { "circuit_breaker.call: self must be a circuit breaker, got table",
    circuit_breaker.call, hm, noop },
  { "circuit_breaker.call: fn must be a function, got 5",
    circuit_breaker.call, cb, 5 },
  { "circuit_breaker.call: fn must be a function, got nil",
    circuit_breaker.call, cb },
  { 'circuit_breaker.call: fn must be a function, got "noop"',
    circuit_breaker.call, cb, "noop" },
  { "circuit_breaker.allow: self must be a circuit breaker, got 42",
    circuit_breaker.allow, 42 },
  { "circuit_breaker.state: self must be a circuit breaker, got table",
    circuit_breaker.state, {} },
  { "circuit_breaker.record_success: self must be a circuit breaker, "
    .. "got nil (did you mean cb:record_success(...)?)",
    circuit_breaker.record_success },
  { "circuit_breaker.record_failure: self must be a circuit breaker, "
    .. "got false", circuit_breaker.record_failure, false },
  { "circuit_breaker.stats: self must be a circuit breaker, got \"cb\"",
    circuit_breaker.stats, "cb" },
  { "circuit_breaker.reset: self must be a circuit breaker, got nil "
    .. "(did you mean cb:reset(...)?)",
    circuit_breaker.reset },
  { "circuit_breaker.name: self must be a circuit breaker, got nil "
    .. "(did you mean cb:name(...)?)",
    circuit_breaker.name },
  { "circuit_breaker: option 'clock' must return a number >= 0, got nil",
    circuit_breaker.state, with_clock(nil) },
  { "circuit_breaker: option 'clock' must return a number >= 0, got -5",
    circuit_breaker.call, with_clock(-5), noop },
  { 'circuit_breaker: option \'clock\' must return a number >= 0, got "1"',
    circuit_breaker.allow, with_clock("1") },
  { "circuit_breaker: option 'clock' must return a number between 0 and "
    .. "9007199254740992, got inf", circuit_breaker.stats,
    with_clock(math.huge) },

  -- health_monitor.start_link
  { 'health_monitor.start_link: options must be a table, got "x"',
    health_monitor.start_link, "x" },
  { "health_monitor.start_link: option 'max_crashes' must be an integer "
    .. ">= 1, got 0", health_monitor.start_link, { max_crashes = 0 } },
  -- Found by the fuzz_options target: the C monitor takes at most
  -- UINT32_MAX - 2, so a larger value must be refused here, not by init.
  { "health_monitor.start_link: option 'max_crashes' must be an integer "
    .. "between 1 and 4294967293, got 4294967295", health_monitor.start_link,
    { max_crashes = 4294967295 } },
  { "health_monitor.start_link: option 'crash_window_ms' must be an "
    .. "integer >= 1, got -1",
    health_monitor.start_link, { crash_window_ms = -1 } },
  { "health_monitor.start_link: option 'check_interval_ms' must be an "
    .. 'integer >= 1, got "1s"',
    health_monitor.start_link, { check_interval_ms = "1s" } },
  { "health_monitor.start_link: option 'max_workers' must be an integer "
    .. "between 1 and 4294967295, got 4294967296",
    health_monitor.start_link, { max_workers = 2 ^ 32 } },
  { "health_monitor.start_link: option 'pool' must be a non-empty string, "
    .. "got 5", health_monitor.start_link, { pool = 5 } },
  { "health_monitor.start_link: option 'name' must be a non-empty string, "
    .. "got false", health_monitor.start_link, { name = false } },
  { "health_monitor.start_link: unknown option 'max_crash' "
    .. "(did you mean 'max_crashes'?)",
    health_monitor.start_link, { max_crash = 3 } },
  { "health_monitor.start_link: unknown option 'window' (valid options: "
    .. "check_interval_ms, clock, crash_window_ms, fleet, max_crashes, "
    .. "max_workers, name, pool)", health_monitor.start_link, { window = 1 } },

  -- health monitor methods
  { "health_monitor.record_crash: self must be a health monitor, got nil "
    .. "(did you mean hm:record_crash(...)?)",
    health_monitor.record_crash, nil, "w" },
  { "health_monitor.record_crash: self must be a health monitor, got "
    .. '"w"', hm.record_crash, "w" },
  { "health_monitor.record_crash: worker_id must be a string or a number, "
    .. "got nil", health_monitor.record_crash, hm },
  { "health_monitor.record_crash: worker_id must be a string or a number, "
    .. "got table", health_monitor.record_crash, hm, {} },
  { "health_monitor.record_crash: worker_id must be a string or a number, "
    .. "got nan", health_monitor.record_crash, hm, 0 / 0 },
  { "health_monitor.record_crash: info must be a table or nil, got "
    .. '"segfault"', health_monitor.record_crash, hm, "w", "segfault" },
  { "health_monitor.worker_health: worker_id must be a string or a number, "
    .. "got true", health_monitor.worker_health, hm, true },
  { "health_monitor.is_healthy: self must be a health monitor, got nil "
    .. "(did you mean hm:is_healthy(...)?)",
    health_monitor.is_healthy },
  { "health_monitor.healthy: self must be a health monitor, got table",
    health_monitor.healthy, cb },
  { "health_monitor.stats: self must be a health monitor, got nil "
    .. "(did you mean hm:stats(...)?)",
    health_monitor.stats },

  -- retry_policy.new
  { "retry_policy.new: options must be a table, got 5", retry_policy.new, 5 },
  { "retry_policy.new: option 'max_attempts' must be an integer >= 1, "
    .. "got 0", retry_policy.new, { max_attempts = 0 } },
  { "retry_policy.new: option 'max_attempts' must be an integer >= 1, "
    .. "got 2.5", retry_policy.new, { max_attempts = 2.5 } },
  { "retry_policy.new: option 'backoff_ms' must be a list of 1 to 64 "
    .. 'numbers >= 0, got "100"', retry_policy.new, { backoff_ms = "100" } },
  { "retry_policy.new: option 'backoff_ms' must be a list of 1 to 64 "
    .. "numbers >= 0, got 0 items", retry_policy.new, { backoff_ms = {} } },
  { "retry_policy.new: option 'backoff_ms' must be a list of 1 to 64 "
    .. "numbers >= 0, got 65 items",
    retry_policy.new, { backoff_ms = list65 } },
  { "retry_policy.new: option 'backoff_ms' must be a list of 1 to 64 "
    .. "numbers >= 0, got a table that is not a list",
    retry_policy.new, { backoff_ms = { 100, x = 1 } } },
  { "retry_policy.new: option 'backoff_ms[2]' must be a number >= 0, "
    .. "got -1", retry_policy.new, { backoff_ms = { 100, -1 } } },
  { "retry_policy.new: option 'backoff_ms[3]' must be a number >= 0, "
    .. 'got "x"', retry_policy.new, { backoff_ms = { 1, 2, "x" } } },
  { "retry_policy.new: option 'jitter' must be false, true, \"full\", "
    .. '"equal" or "decorrelated", got "fuill"',
    retry_policy.new, { jitter = "fuill" } },
  { "retry_policy.new: option 'jitter' must be false, true, \"full\", "
    .. '"equal" or "decorrelated", got 1', retry_policy.new, { jitter = 1 } },
  { "retry_policy.new: option 'jitter_factor' must be a number between 0 "
    .. "and 1, got 1.5", retry_policy.new, { jitter_factor = 1.5 } },
  { "retry_policy.new: option 'jitter_factor' must be a number between 0 "
    .. "and 1, got -0.1", retry_policy.new, { jitter_factor = -0.1 } },
  { "retry_policy.new: option 'max_backoff_ms' must be a number >= 0, "
    .. "got -1", retry_policy.new, { max_backoff_ms = -1 } },
  { "retry_policy.new: option 'max_backoff_ms' must be a number between 0 "
    .. "and 9007199254740992, got inf",
    retry_policy.new, { max_backoff_ms = math.huge } },
  { "retry_policy.new: option 'base_backoff_ms' must be a number >= 0, "
    .. "got nan", retry_policy.new, { base_backoff_ms = 0 / 0 } },
  { "retry_policy.new: option 'multiplier' must be a number >= 1, got 0.5",
    retry_policy.new, { multiplier = 0.5 } },
  { "retry_policy.new: option 'backoff' must be \"list\" or "
    .. '"exponential", got "linear"', retry_policy.new, { backoff = "linear" } },
  { "retry_policy.new: option 'retriable_errors' must be a list of error "
    .. 'kinds, "all" or a function, got "some"',
    retry_policy.new, { retriable_errors = "some" } },
  { "retry_policy.new: option 'retriable_errors[2]' must be a non-empty "
    .. "string, got 5",
    retry_policy.new, { retriable_errors = { "timeout", 5 } } },
  { "retry_policy.new: option 'seed' must be an integer >= 0, got -1",
    retry_policy.new, { seed = -1 } },
  { "retry_policy.new: option 'seed' must be an integer >= 0, got 1.5",
    retry_policy.new, { seed = 1.5 } },
  { "retry_policy.new: unknown option 'max_attempt' "
    .. "(did you mean 'max_attempts'?)",
    retry_policy.new, { max_attempt = 3 } },
  { "retry_policy.new: unknown option 'jiter' (did you mean 'jitter'?)",
    retry_policy.new, { jiter = true } },

  -- retry policy methods
  { "retry_policy.should_retry: self must be a retry policy, got nil "
    .. "(did you mean policy:should_retry(...)?)",
    retry_policy.should_retry, nil, 1 },
  { "retry_policy.should_retry: attempt must be an integer >= 1, got 0",
    retry_policy.should_retry, rp, 0 },
  { "retry_policy.should_retry: attempt must be an integer >= 1, got 1.5",
    retry_policy.should_retry, rp, 1.5 },
  { "retry_policy.should_retry: attempt must be an integer >= 1, got nil",
    retry_policy.should_retry, rp },
  { "retry_policy.backoff_for_attempt: attempt must be an integer >= 1, "
    .. 'got "2"', retry_policy.backoff_for_attempt, rp, "2" },
  { "retry_policy.backoff_for_attempt: attempt must be an integer between "
    .. "1 and 4294967295, got 5e+12",
    retry_policy.backoff_for_attempt, rp, 5e12 },
  { "retry_policy.retry_for_error: self must be a retry policy, got "
    .. '"timeout"', rp.retry_for_error, "timeout" },
  { "retry_policy.config: self must be a retry policy, got 5",
    retry_policy.config, 5 },

  -- errors
  { "errors.error: kind must be a non-empty string, got nil", errors.error },
  { "errors.error: message must be a string or nil, got 5",
    errors.error, "x", 5 },
}

describe("misuse", function()
  it("has at least 40 distinct cases", function()
    local seen = {}
    for _, case in ipairs(cases) do
      assert.is_nil(seen[case[1]], case[1])
      seen[case[1]] = true
    end
    assert.is_true(#cases >= 40, #cases .. " cases")
  end)

  for i, case in ipairs(cases) do
    it("raises: " .. case[1], function()
      -- Called straight from pcall, a C function: an error raised at the
      -- right level carries no position, one raised too low would name a
      -- line of sprun and one too high a line of this file.
      local ok, err = pcall(case[2], unpack(case, 3, table.maxn(case)))
      assert.is_false(ok, "case " .. i .. " raised nothing")
      assert.are.equal(case[1], err)
    end)
  end

  it("points at the caller's line", function()
    local src = debug.getinfo(1, "S").short_src
    local line, err
    local ok = pcall(function()
      line = debug.getinfo(1, "l").currentline; cb:call(42)
    end)
    assert.is_false(ok)
    ok, err = pcall(function()
      line = debug.getinfo(1, "l").currentline; cb:call(42)
    end)
    assert.are.equal(("%s:%d: circuit_breaker.call: fn must be a "
      .. "function, got 42"):format(src, line), err)
    ok, err = pcall(function()
      line = debug.getinfo(1, "l").currentline
      local _ = retry_policy.new { jitter_factor = 2 }
    end)
    assert.are.equal(("%s:%d: retry_policy.new: option 'jitter_factor' "
      .. "must be a number between 0 and 1, got 2"):format(src, line + 1),
      err)
    ok, err = pcall(function()
      line = debug.getinfo(1, "l").currentline; hm:record_crash(nil)
    end)
    assert.are.equal(("%s:%d: health_monitor.record_crash: worker_id must "
      .. "be a string or a number, got nil"):format(src, line), err)
  end)

  it("leaves the objects usable after a misuse", function()
    assert.is_false(pcall(cb.call, cb, 5))
    assert.are.equal("ok", cb:call(function() return "ok" end))
    assert.are.same({ "closed", 0 }, { cb:state(), cb:stats().failure_count })
  end)
end)

describe("near misses", function()
  local h = require "helpers"

  local function stderr_of(code)
    local r = h.sprun_run { "-e", "local sprun = require 'sprun'\n" .. code }
    assert.are.same({ 0, "" }, { r.code, r.stdout })
    return r.stderr
  end

  it("retriable_errors naming a kind one or two letters from sprun's gets "
     .. "one warning line naming it", function()
    assert.are.equal('sprun: warning: retriable_errors: "timeot" is not an '
      .. 'error kind sprun produces (did you mean "timeout"?)\n'
      .. 'sprun: warning: retriable_errors: "circiut_opne" is not an error '
      .. 'kind sprun produces (did you mean "circuit_open"?)\n',
      stderr_of [[
for _ = 1, 3 do       -- once per name, however often it is given
  sprun.retry_policy.new { retriable_errors = { "timeot", "unavailable",
                                                "circiut_opne" } }
end]])
  end)

  it("the same check holds in the executor's and a pipeline's retry "
     .. "options", function()
    assert.are.equal('sprun: warning: retriable_errors: "worker_crahs" is '
      .. 'not an error kind sprun produces (did you mean "worker_crash"?)\n'
      .. 'sprun: warning: retriable_errors: "unavailble" is not an error '
      .. 'kind sprun produces (did you mean "unavailable"?)\n',
      stderr_of [[
sprun.executor.execute_with_retry(function() return 1 end,
  { retriable_errors = { "worker_crahs" } })
sprun.pipeline.new { retry = { retriable_errors = { "unavailble" } } }]])
  end)

  it("kinds of the user's own and sprun's own kinds stay silent", function()
    assert.are.equal("", stderr_of [[
local kinds = { "rate_limited", "db_locked", "my_timeout_kind", "flaky" }
for _, k in ipairs(require("sprun.errors").KINDS) do kinds[#kinds + 1] = k end
sprun.retry_policy.new { retriable_errors = kinds }]])
  end)

  it("telemetry.attach of an event one or two letters from one sprun "
     .. "emits gets one warning line naming it", function()
    assert.are.equal('sprun: warning: telemetry.attach: '
      .. '"snakepit.circuit_breaker.openned" is not an event sprun emits '
      .. '(did you mean "snakepit.circuit_breaker.opened"?)\n'
      .. 'sprun: warning: telemetry.attach_many: "snakepit.retry.sucess" is '
      .. 'not an event sprun emits (did you mean "snakepit.retry.success"?)\n',
      stderr_of [[
local t, f = sprun.telemetry, function() end
t.attach("a", { "snakepit", "circuit_breaker", "openned" }, f)
t.detach("a")
t.attach("a", { "snakepit", "circuit_breaker", "openned" }, f)
t.attach_many("b", { { "snakepit", "retry", "attempt" },
                     { "snakepit", "retry", "sucess" } }, f)]])
  end)

  it("events of the user's own and sprun's own events stay silent",
    function()
    assert.are.equal("", stderr_of [[
local t, f = sprun.telemetry, function() end
t.attach("a", { "myapp", "cache", "miss" }, f)
t.attach("b", { "snakepit", "pool", "checkout" }, f)
for i, e in ipairs(t.EVENTS) do t.attach("e" .. i, e.event, f) end]])
  end)
end)
