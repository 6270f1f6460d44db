-- Runs generated sequences against the real, C-backed objects and the
-- reference models side by side, compares them after every step, and
-- shrinks a failing sequence to the shortest one it can find.
--
-- driver.check(kind, seed, count, virtual, mode) runs `count` sequences
-- (of a breaker: in `mode`, see gen.breaker) with the seeds seed, seed + 1,
-- ... and raises, on the first mismatch, an error that shows the shrunk
-- sequence and how to replay it. It returns the number of steps run.
--
-- Breaker transitions are observed through the breaker's test hook
-- (circuit_breaker._on_transition) when it exists, and through the
-- telemetry events when sprun.telemetry exists; with both, both streams
-- are checked. wire() sets them up and returns the function that restores
-- what was there before. In the sequences with seq.observe, the per-call
-- events (snakepit.circuit_breaker.call.*) are observed too, which sends
-- the breaker's calls down its observed path, and checked in order among
-- the transitions.

local sprun = require "sprun"
local sched = require "sprun.sched"
local errors = require "sprun.errors"
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"
local retry_policy = require "sprun.retry_policy"
local gen = require "model.gen"
local breaker_model = require "model.breaker"
local health_model = require "model.health"
local retry_model = require "model.retry"

local format = string.format
local pcall = pcall
local error = error
local type = type
local tostring = tostring
local co_create = coroutine.create
local co_resume = coroutine.resume
local co_status = coroutine.status
local co_yield = coroutine.yield

local _M = {}

--- Coverage ---------------------------------------------------------------

-- How often the sequences reached what the models are about, so that a
-- generator that stops reaching it is noticed (the spec checks them).
local counts = {}
_M.counts = counts

local function count(what)
  counts[what] = (counts[what] or 0) + 1
end

function _M.reset_counts()
  for k in pairs(counts) do
    counts[k] = nil
  end
end

--- Reporting ----------------------------------------------------------------

local MISMATCH = {}

local function show(v)
  if type(v) == "string" then
    return format("%q", v)
  elseif errors.is_error(v) then
    return "error object " .. tostring(v)
  end
  return tostring(v)
end
_M.show = show

-- Ends the sequence being run with a mismatch at step i.
local function mismatch(i, what, model, real)
  error(setmetatable({ step = i, text = format("%s: model %s, real %s",
    what, show(model), show(real)) }, MISMATCH), 0)
end

-- How retry_for_error's arguments print (filled in below).
local RETRY_ERROR_NAMES = {}

local CALL_STEPS = {
  allow = "allow()", state = "state()", stats = "stats()",
  rs = "record_success()", rf = "record_failure()", reset = "reset()",
  force_open = "force_open()", disable = "disable()",
  isolate = "isolate()", healthy = "healthy()", is_healthy = "is_healthy()",
}

local OUTCOME_TEXT = {
  ok = 'returns "v"', ok_nil = "returns nil", ok_false = "returns false, nil",
  fail = 'returns nil, "boom"', fail_false = 'returns false, "boom"',
  raise = 'raises "boom"', raise_obj = 'raises an error object "boom"',
  ignored = 'returns nil, "ignored"', ignored_raise = 'raises "ignored"',
  explode = 'returns nil, "explode"',
}

-- One step as the user would write it; t is the time before it (ms from
-- the start). Returns the text and the time after it.
local function describe_step(step, t)
  local op, x, y = step[1], step[2], step[3]
  local at = format("[t=%d] ", t)
  if op == "adv" then
    return format("%sadvance the clock %d ms", at, x), t + x
  elseif op == "back" then
    local t2 = t - x < 0 and 0 or t - x
    return format("%sset the clock back %d ms (to %d)", at, x, t2), t2
  elseif op == "call" then
    if y == nil or y == 0 then
      return format("%scall(fn), fn %s", at, OUTCOME_TEXT[x]), t
    end
    -- the times shown after it take it as admitted
    local t2 = t + y < 0 and 0 or t + y
    return format("%scall(fn), fn %s the clock %d ms (to %d) if it runs, "
                  .. "then %s", at, y > 0 and "advances" or "sets back",
                  y > 0 and y or -y, t2, OUTCOME_TEXT[x]), t2
  elseif op == "start" then
    return format("%scall #%d starts (fn stays in flight)", at, x), t
  elseif op == "finish" then
    return format("%scall #%d ends: fn %s", at, x, OUTCOME_TEXT[y]), t
  elseif op == "crash" then
    local info = type(y) == "string" and format("{ reason = %q }", y)
                 or (y and "{}" or "nil")
    return format("%srecord_crash(%s, %s)", at, show(gen.WORKER_IDS[x]),
                  info), t
  elseif op == "wh" then
    return format("%sworker_health(%s)", at, show(gen.WORKER_IDS[x])), t
  elseif op == "wh_all" then
    return at .. "worker_health(id) for every id", t
  elseif op == "sr" then
    return format("should_retry(%d)", x), t
  elseif op == "bo" then
    return format("backoff_for_attempt(%d)", x), t
  elseif op == "rfe" then
    return format("retry_for_error(%s)", RETRY_ERROR_NAMES[x]), t
  end
  return at .. (CALL_STEPS[op] or op), t
end

local function describe_seq(seq)
  local head
  if seq.kind == "breaker" then
    local window = ""
    if seq.window == "count" then
      window = format(', window = { type = "count"%s }',
        seq.size and ", size = " .. seq.size or "")
    elseif seq.window == "time" then
      window = format(', window = { type = "time"%s }', seq.size_ms
        and format(", size_ms = %d, buckets = %d", seq.size_ms, seq.buckets)
        or "")
    end
    for _, k in ipairs { "min_calls", "failure_rate", "slow_call_ms",
                         "slow_call_rate" } do
      local v = seq[k]
      if v ~= nil then
        -- the shortest text that reads back as the same double
        local text = format("%.15g", v)
        if tonumber(text) ~= v then
          text = format("%.17g", v)
        end
        window = window .. format(", %s = %s", k, text)
      end
    end
    head = format("circuit_breaker { failure_threshold = %d, "
      .. "half_open_max_calls = %d, reset_timeout_ms = %d%s%s } (%s, "
      .. "compared through %s%s)", seq.threshold, seq.max_calls,
      seq.timeout, window,
      seq.is_failure and ', is_failure = <"ignored" is none, "explode" '
                         .. 'raises>' or "",
      seq.virtual and (seq.phase and format("virtual time, from %d ms "
        .. "into a bucket", seq.phase) or "virtual time") or "literal time",
      seq.compare == "peek" and "the C struct" or "stats()",
      seq.observe and ", call events observed" or "")
  elseif seq.kind == "health" then
    head = format("health_monitor { max_crashes = %d, max_workers = %d, "
      .. "crash_window_ms = %d, check_interval_ms = %d } (%s time)",
      seq.max_crashes, seq.max_workers, seq.window, seq.check_interval,
      seq.virtual and "virtual" or "literal")
  else
    local parts = {}
    local keys = {}
    for k in pairs(seq.opts) do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = seq.opts[k]
      if type(v) == "table" then
        v = "{ " .. table.concat(v, ", ") .. " }"
      elseif k == "retriable_errors" and v == "function" then
        v = "<a function: true for 42 and error objects of kind boom>"
      else
        v = show(v)
      end
      parts[#parts + 1] = k .. " = " .. v
    end
    head = "retry_policy { " .. table.concat(parts, ", ") .. " }"
  end
  local lines = { head }
  local t, text = 0, nil
  for i, step in ipairs(seq.steps) do
    text, t = describe_step(step, t)
    lines[#lines + 1] = format("  %3d. %s", i, text)
  end
  return table.concat(lines, "\n")
end
_M.describe_seq = describe_seq

--- Transition events -------------------------------------------------------

-- The breaker whose events are being collected, and its name.
local current_cb, current_name = nil, nil
-- hook[i], hook_fc[i]: what the hook reported; tele[i], tele_fc[i],
-- tele_a[i], tele_b[i]: what the telemetry events reported (a and b: the
-- reason of an opening, the state and error of a call event).
local hook, hook_fc, nhook = {}, {}, 0
local tele, tele_fc, tele_a, tele_b, ntele = {}, {}, {}, {}, 0
local use_hook, use_tele, use_crash_tele = false, false, false
-- crash events of the health monitor (telemetry only)
local crash_events, ncrash = {}, 0
local current_pool = nil

local PREFIX = "snakepit.circuit_breaker."
local TRANSITION_EVENTS = { "opened", "half_open", "closed", "forced_open",
                            "disabled", "isolated" }
-- The per-call events, observed in the sequences with seq.observe.
local CALL_EVENTS = { "call.allowed", "call.rejected", "call.success",
                      "call.failure" }

local function on_transition(b, name, failure_count)
  if b == current_cb then
    nhook = nhook + 1
    hook[nhook] = name
    hook_fc[nhook] = failure_count
  end
end

local PREFIX_LEN = #PREFIX

local function on_event(event, measurements, metadata)
  local name = table.concat(event, ".")
  if name == "snakepit.worker.crash" then
    if metadata.pool == current_pool then
      ncrash = ncrash + 1
      crash_events[ncrash] = metadata
    end
    return
  end
  if metadata.pool == current_name then
    ntele = ntele + 1
    if name:sub(1, PREFIX_LEN) == PREFIX then
      name = name:sub(PREFIX_LEN + 1)
    end
    tele[ntele] = name
    tele_fc[ntele] = measurements.failure_count
    if name == "opened" then
      tele_a[ntele], tele_b[ntele] = metadata.reason, nil
    else
      tele_a[ntele], tele_b[ntele] = metadata.state, metadata.error
    end
  end
end

local TELEMETRY_ID = "sprun-model-spec"
local CALLS_ID = "sprun-model-spec-calls"
local telemetry

local function split(name)
  local list = {}
  for part in name:gmatch("[^.]+") do
    list[#list + 1] = part
  end
  return list
end

function _M.wire()
  -- Telemetry, if there is any.
  local ok
  ok, telemetry = pcall(require, "sprun.telemetry")
  ok = ok and type(telemetry) == "table"
       and type(telemetry.attach_many) == "function"
       and type(telemetry.detach) == "function"
  if ok then
    -- left by a run that did not restore
    telemetry.detach(TELEMETRY_ID)
    telemetry.detach(CALLS_ID)
  else
    telemetry = nil
  end
  local events = { { "snakepit", "worker", "crash" } }
  for _, name in ipairs(TRANSITION_EVENTS) do
    events[#events + 1] = split(PREFIX .. name)
  end
  local attached = ok and telemetry.attach_many(TELEMETRY_ID, events,
                                                on_event)
  -- One transition and one crash show which of the two report them.
  local old_hook = circuit_breaker._on_transition
  local fired = false
  circuit_breaker._on_transition = function() fired = true end
  local probe = circuit_breaker.start_link { name = "model-probe",
    failure_threshold = 1, clock = function() return 0 end }
  current_name, ntele = "model-probe", 0
  probe:record_failure()
  use_hook, use_tele = fired, attached and ntele == 1
  current_pool, ncrash = "model-probe", 0
  health_monitor.start_link { pool = "model-probe",
    clock = function() return 0 end }:record_crash(1)
  use_crash_tele = attached and ncrash == 1
  current_name, current_pool, ntele, ncrash = nil, nil, 0, 0
  if use_hook then
    circuit_breaker._on_transition = on_transition
  else
    circuit_breaker._on_transition = old_hook
  end
  if not use_hook and not use_tele then
    error("neither circuit_breaker._on_transition nor sprun.telemetry "
          .. "reports breaker transitions")
  end
  return function()
    circuit_breaker._on_transition = old_hook
    if attached then
      telemetry.detach(TELEMETRY_ID)
      telemetry.detach(CALLS_ID)
    end
  end
end

-- Per-call events on (for one sequence) or off.
local CALL_EVENT_LISTS = {}
for i, name in ipairs(CALL_EVENTS) do
  CALL_EVENT_LISTS[i] = split(PREFIX .. name)
end

local function observe_calls(on)
  if on then
    telemetry.attach_many(CALLS_ID, CALL_EVENT_LISTS, on_event)
  else
    telemetry.detach(CALLS_ID)
  end
end

function _M.observers()
  local list = {}
  if use_hook then
    list[#list + 1] = "circuit_breaker._on_transition"
  end
  if use_tele then
    list[#list + 1] = "sprun.telemetry"
  end
  return "transitions checked via " .. table.concat(list, " and ")
    .. (use_crash_tele and "; crash events via sprun.telemetry" or "")
end

-- Compares one stream of reported events with the model's: the hook
-- reports transitions only, telemetry also the model's notes (per-call
-- events).
local function compare_events(i, m, via, names, counts, a, b, n)
  local notes = via == "telemetry"
  local j = 0
  for k = 1, m.nevents do
    if notes or not m.ev_notes[k] then
      j = j + 1
      local want, got = m.ev_names[k], names[j]
      if want ~= got then
        mismatch(i, format("event %d (via %s)", j, via), want, got)
      end
      if m.ev_notes[k] then
        if m.ev_a[k] ~= a[j] then
          mismatch(i, format("state of %s event %d", want, j), m.ev_a[k],
                   a[j])
        end
        if m.ev_b[k] ~= b[j] then
          mismatch(i, format("error of %s event %d", want, j), m.ev_b[k],
                   b[j])
        end
      elseif want == "opened" then
        -- the failure count an opening reports is the one that opened it
        if m.ev_counts[k] ~= counts[j] then
          mismatch(i, format("failure_count of opening %d (via %s)", j,
                             via), m.ev_counts[k], counts[j])
        end
        if a and m.ev_reasons[k] ~= a[j] then
          mismatch(i, format("reason of opening %d", j),
                   m.ev_reasons[k], a[j])
        end
      end
    end
  end
  if n > j then
    mismatch(i, format("event %d (via %s)", j + 1, via), nil, names[j + 1])
  end
end

local function check_events(i, m)
  local n = m.nevents
  if n > 0 then
    local transitions = 0
    for j = 1, n do
      if not m.ev_notes[j] then
        transitions = transitions + 1
        local name = m.ev_names[j]
        count("breaker transitions to " .. name)
        if name == "opened" then
          count("breaker openings by " .. m.ev_reasons[j])
        end
      end
    end
    if transitions == 3 then
      count("breaker steps with three transitions")
    end
  end
  if use_hook then
    compare_events(i, m, "hook", hook, hook_fc, nil, nil, nhook)
    nhook = 0
  end
  if use_tele then
    compare_events(i, m, "telemetry", tele, tele_fc, tele_a, tele_b, ntele)
    ntele = 0
  end
  m:clear_events()
end

--- The breaker --------------------------------------------------------------

-- The literal clock of every breaker and monitor driven outside a loop.
local NOW = 0
local function clock()
  return NOW
end

local BOOM_OBJ = errors.error("boom", "the model's error object")
local STARTED = {}

local OPS = {
  ok = function() return "v" end,
  ok_nil = function() return nil end,
  ok_false = function() return false, nil end,
  fail = function() return nil, "boom" end,
  fail_false = function() return false, "boom" end,
  raise = function() error("boom", 0) end,
  raise_obj = function() error(BOOM_OBJ, 0) end,
  ignored = function() return nil, "ignored" end,
  ignored_raise = function() error("ignored", 0) end,
  explode = function() return nil, "explode" end,
}

-- What call() gives back for each outcome: raised?, first, second value.
local EXPECT = {
  ok = { false, "v", nil },
  ok_nil = { false, nil, nil },
  ok_false = { false, false, nil },
  fail = { false, nil, "boom" },
  fail_false = { false, false, "boom" },
  raise = { true, "boom" },
  raise_obj = { true, BOOM_OBJ },
  ignored = { false, nil, "ignored" },
  ignored_raise = { true, "ignored" },
  explode = { false, nil, "explode" },
}

-- How the breaker counts each outcome, with and without is_failure.
local CLASS = {
  ok = "success", ok_nil = "success", ok_false = "success",
  fail = "failure", fail_false = "failure", raise = "failure",
  raise_obj = "failure", ignored = "failure", ignored_raise = "failure",
  explode = "failure",
}
local CLASS_PRED = setmetatable({ ignored = "neutral",
                                  ignored_raise = "neutral" },
                                { __index = CLASS })

-- The error value a call.failure event carries for each failing outcome.
local ERROR_OF = {
  fail = "boom", fail_false = "boom", raise = "boom", raise_obj = BOOM_OBJ,
  ignored = "ignored", ignored_raise = "ignored", explode = "explode",
}

local function is_failure(err)
  if err == "explode" then
    error("is_failure raised", 0)
  end
  return err ~= "ignored"
end

-- The fn of a "call" step: it takes `ms` ms (moves the clock on, or back
-- when negative) and then ends with `outcome`.
local function literal_op(outcome, ms)
  if ms ~= 0 then
    NOW = NOW + ms
    if NOW < 0 then
      NOW = 0
    end
  end
  return OPS[outcome]()
end

local function virtual_op(outcome, ms)
  if ms > 0 then
    sprun.sleep(ms)
  end
  return OPS[outcome]()
end

local function inflight_op()
  local outcome = co_yield(STARTED)
  return OPS[outcome]()
end

local function inflight_body(cb)
  return cb:call(inflight_op)
end

-- Checks what call() returned: pcall's ok, then its values.
local function check_result(i, outcome, ok, r1, r2)
  local e = EXPECT[outcome]
  if e[1] then
    if ok then
      mismatch(i, "call raised", true, false)
    end
    if r1 ~= e[2] then
      mismatch(i, "error raised by call", e[2], r1)
    end
  else
    if not ok then
      mismatch(i, "call raised", false, r1)
    end
    if r1 ~= e[2] then
      mismatch(i, "first value of call", e[2], r1)
    end
    if r2 ~= e[3] then
      mismatch(i, "second value of call", e[3], r2)
    end
  end
end

local function check_rejected(i, admitted, ok, r1, r2)
  local rejected = ok and r1 == nil and errors.is_error(r2)
                   and r2.kind == "circuit_open"
  if admitted == rejected then
    mismatch(i, "call admitted", admitted, not rejected)
  end
end

local STATE_NAMES = { [0] = "closed", [1] = "open", [2] = "half_open",
                      [3] = "forced_open", [4] = "disabled", [5] = "isolated" }
local OPEN_REASONS = { [1] = "failures", [2] = "failure_rate",
                       [3] = "slow_call_rate" }

-- The defaults of the rate-window options (README, sprun.circuit_breaker).
local WINDOW_DEFAULTS = {
  size = 100, size_ms = 60000, buckets = 10, min_calls = 10,
  failure_rate = 0.5, slow_call_rate = 1.0,
}

-- The model's configuration of a sequence: its options, defaults filled in.
local function model_config(seq)
  local cfg = { threshold = seq.threshold, max_calls = seq.max_calls,
                timeout = seq.timeout, window = seq.window }
  if seq.window then
    for k, v in pairs(WINDOW_DEFAULTS) do
      cfg[k] = seq[k] == nil and v or seq[k]
    end
    cfg.slow_call_ms = seq.slow_call_ms or 0
  end
  return cfg
end

-- The start_link options of a sequence.
local function breaker_options(seq, name)
  local opts = {
    name = name,
    failure_threshold = seq.threshold,
    half_open_max_calls = seq.max_calls,
    reset_timeout_ms = seq.timeout,
    is_failure = seq.is_failure and is_failure or nil,
    clock = (not seq.virtual) and clock or nil,
  }
  if seq.window == "count" then
    opts.window = { type = "count", size = seq.size }
  elseif seq.window == "time" then
    opts.window = { type = "time", size_ms = seq.size_ms,
                    buckets = seq.buckets }
  end
  if seq.window then
    opts.min_calls = seq.min_calls
    opts.failure_rate = seq.failure_rate
    opts.slow_call_ms = seq.slow_call_ms
    opts.slow_call_rate = seq.slow_call_rate
  end
  return opts
end

local function compare_stats(i, m, s)
  if s.state ~= m.state then
    mismatch(i, "stats().state", m.state, s.state)
  end
  if s.consecutive_failures ~= m.failure_count then
    mismatch(i, "stats().consecutive_failures", m.failure_count,
             s.consecutive_failures)
  end
  if s.consecutive_successes ~= m.success_count then
    mismatch(i, "stats().consecutive_successes", m.success_count,
             s.consecutive_successes)
  end
  if s.half_open_in_flight ~= m.half_open_calls then
    mismatch(i, "stats().half_open_in_flight", m.half_open_calls,
             s.half_open_in_flight)
  end
  -- Snakepit's names, with Snakepit's meanings.
  if s.failure_count ~= m.since_close then
    mismatch(i, "stats().failure_count", m.since_close, s.failure_count)
  end
  if s.success_count ~= m.lifetime then
    mismatch(i, "stats().success_count", m.lifetime, s.success_count)
  end
  if s.half_open_calls ~= m.admitted then
    mismatch(i, "stats().half_open_calls", m.admitted, s.half_open_calls)
  end
  if s.opened_at_ms ~= m.opened_at then
    mismatch(i, "stats().opened_at_ms", m.opened_at, s.opened_at_ms)
  end
  if s.rejected_count ~= m.rejected then
    mismatch(i, "stats().rejected_count", m.rejected, s.rejected_count)
  end
  if s.total_successes ~= m.successes then
    mismatch(i, "stats().total_successes", m.successes, s.total_successes)
  end
  if s.total_failures ~= m.failures then
    mismatch(i, "stats().total_failures", m.failures, s.total_failures)
  end
  if s.ignored_count ~= m.ignored then
    mismatch(i, "stats().ignored_count", m.ignored, s.ignored_count)
  end
  if m.window == nil then
    if s.window_calls ~= nil or s.open_reason ~= nil then
      mismatch(i, "stats() window fields in consecutive mode", nil,
               s.window_calls or s.open_reason)
    end
    return
  end
  local calls, failures, slow = m:window_counts()
  if s.window_calls ~= calls then
    mismatch(i, "stats().window_calls", calls, s.window_calls)
  end
  if s.window_failures ~= failures then
    mismatch(i, "stats().window_failures", failures, s.window_failures)
  end
  if s.window_slow_calls ~= slow then
    mismatch(i, "stats().window_slow_calls", slow, s.window_slow_calls)
  end
  local rate = calls > 0 and failures / calls or 0
  if s.failure_rate ~= rate then
    mismatch(i, "stats().failure_rate", rate, s.failure_rate)
  end
  rate = calls > 0 and slow / calls or 0
  if s.slow_call_rate ~= rate then
    mismatch(i, "stats().slow_call_rate", rate, s.slow_call_rate)
  end
  if s.open_reason ~= m.open_reason then
    mismatch(i, "stats().open_reason", m.open_reason, s.open_reason)
  end
end

-- The configuration stats() reports (checked by the "stats" steps).
local function compare_config(i, m, s, name)
  local slow = m.slow_call_ms and m.slow_call_ms > 0 and m.slow_call_ms
               or nil
  local want = { name, m.threshold, m.max_calls, m.timeout, m.window,
    m.window == "count" and m.size or nil,
    m.window == "time" and m.size_ms or nil,
    m.window == "time" and m.buckets or nil, m.window and m.min_calls,
    m.window and m.failure_rate, m.window and m.slow_call_rate, slow }
  local got = { s.name, s.failure_threshold, s.half_open_max_calls,
    s.reset_timeout_ms, s.window_type, s.window_size, s.window_size_ms,
    s.window_buckets, s.min_calls, s.failure_rate_threshold,
    s.slow_call_rate_threshold, s.slow_call_ms }
  for k = 1, 12 do
    if want[k] ~= got[k] then
      local w, g = {}, {}
      for j = 1, 12 do
        w[j], g[j] = show(want[j]), show(got[j])
      end
      mismatch(i, "stats() configuration (name, failure_threshold, "
        .. "half_open_max_calls, reset_timeout_ms, window_type, "
        .. "window_size, window_size_ms, window_buckets, min_calls, "
        .. "failure_rate_threshold, slow_call_rate_threshold, "
        .. "slow_call_ms)", table.concat(w, " "), table.concat(g, " "))
    end
  end
end

-- The C struct as it is, without a look at the clock.
local function compare_peek(i, m, b)
  local st = STATE_NAMES[b.state]
  if st ~= m.state then
    mismatch(i, "state (peek)", m.state, st)
  end
  if b.failure_count ~= m.failure_count then
    mismatch(i, "failure_count (peek)", m.failure_count, b.failure_count)
  end
  if b.failures_since_close ~= m.since_close then
    mismatch(i, "failures_since_close (peek)", m.since_close,
             tonumber(b.failures_since_close))
  end
  if b.half_open_admitted ~= m.admitted then
    mismatch(i, "half_open_admitted (peek)", m.admitted,
             b.half_open_admitted)
  end
  if b.success_count ~= m.success_count then
    mismatch(i, "success_count (peek)", m.success_count, b.success_count)
  end
  if b.half_open_calls ~= m.half_open_calls then
    mismatch(i, "half_open_calls (peek)", m.half_open_calls,
             b.half_open_calls)
  end
  if b.opened_at_ms ~= m.opened_at then
    mismatch(i, "opened_at_ms (peek)", m.opened_at,
             tonumber(b.opened_at_ms))
  end
  if b.rejected_count ~= m.rejected or b.total_successes ~= m.successes
     or b.total_failures ~= m.failures or b.ignored_count ~= m.ignored then
    mismatch(i, "rejected/successes/failures/ignored (peek)",
      format("%d %d %d %d", m.rejected, m.successes, m.failures, m.ignored),
      format("%d %d %d %d", tonumber(b.rejected_count),
        tonumber(b.total_successes), tonumber(b.total_failures),
        tonumber(b.ignored_count)))
  end
  local reason = OPEN_REASONS[b.open_reason]
  if reason ~= m.open_reason then
    mismatch(i, "open_reason (peek)", m.open_reason, reason)
  end
  local calls, failures, slow = 0, 0, 0
  if m.window then
    calls, failures, slow = m:window_counts()
  end
  if b.window_calls ~= calls or b.window_failures ~= failures
     or b.window_slow ~= slow then
    mismatch(i, "window calls/failures/slow (peek)",
      format("%d %d %d", calls, failures, slow),
      format("%d %d %d", tonumber(b.window_calls),
        tonumber(b.window_failures), tonumber(b.window_slow)))
  end
end

-- Under virtual time a timed call is also slow when it took slow_call_ms
-- of real time, which no sequence decides: the thresholds there are
-- seconds, and a call that took that long ends the run as an error of its
-- own rather than as a disagreement with the model.
local function check_real_time(i, slow_ms, ms, started)
  local real = (sprun.hrtime() - started) / 1e6
  if real >= slow_ms and ms < slow_ms then
    error(format("step %d: the call took %.0f ms of real time (the "
      .. "breaker counts it as slow, slow_call_ms = %d): the machine is "
      .. "too slow for this check, not a disagreement", i, real, slow_ms), 0)
  end
end

local MANUAL = { force_open = "forced_open", disable = "disabled",
                 isolate = "isolated" }
local REJECTED_IN = {
  open = "breaker calls rejected", half_open = "breaker calls rejected",
  forced_open = "breaker calls rejected while forced open",
  isolated = "breaker calls rejected while isolated",
}

local breaker_count = 0
local observing = false

local function run_breaker(seq)
  local virtual = seq.virtual
  local now
  if virtual then
    now = sprun.now()
    if seq.phase then
      local width = (seq.size_ms or 60000) / (seq.buckets or 10)
      local wait = (seq.phase - now % width) % width
      if wait > 0 then
        sprun.sleep(wait)
        now = sprun.now()
      end
    end
  else
    NOW = 0
    now = 0
  end
  breaker_count = breaker_count + 1
  local name = "model-" .. breaker_count
  local cb = circuit_breaker.start_link(breaker_options(seq, name))
  current_cb, current_name = cb, name
  nhook, ntele = 0, 0
  observing = seq.observe and use_tele
  if observing then
    observe_calls(true)
  end
  local m = breaker_model.new(model_config(seq))
  if virtual then
    m.timers = {}
  end
  local class = seq.is_failure and CLASS_PRED or CLASS
  local peek = seq.compare == "peek" and cb._b
  local call_op = virtual and virtual_op or literal_op
  -- the real time of calls is looked at only where it could count
  local timed = virtual and seq.slow_call_ms
  local inflight = {}
  local steps = seq.steps
  for i = 1, #steps do
    local step = steps[i]
    local op = step[1]
    local time_step = false
    if op == "call" then
      local outcome, ms = step[2], step[3] or 0
      local epoch = m:acquire(now)
      local state = m.state
      if epoch == nil then
        count(REJECTED_IN[state])
        if observing then
          m:note("call.rejected", state)
        end
        local ok, r1, r2 = pcall(cb.call, cb, call_op, outcome, ms)
        check_rejected(i, false, ok, r1, r2)
      else
        if state == "disabled" then
          count("breaker calls admitted while disabled")
        end
        if observing then
          m:note("call.allowed", state)
        end
        local started = timed and sprun.hrtime()
        local ok, r1, r2 = pcall(cb.call, cb, call_op, outcome, ms)
        local t = now + ms
        if t < 0 then
          t = 0
        end
        ms = t - now
        if ms < 0 then
          ms = 0
        end
        now = t
        if virtual then
          if sprun.now() ~= now then
            mismatch(i, "virtual time after the call", now, sprun.now())
          end
          m:advance(now)
          if timed then
            check_real_time(i, seq.slow_call_ms, ms, started)
          end
        end
        check_result(i, outcome, ok, r1, r2)
        if observing then
          m:note(ERROR_OF[outcome] and "call.failure" or "call.success",
                 state, ERROR_OF[outcome])
        end
        m:record(epoch, class[outcome], now, ms)
      end
    elseif op == "start" then
      local epoch = m:acquire(now)
      local state = m.state
      if observing then
        m:note(epoch and "call.allowed" or "call.rejected", state)
      end
      local started = timed and sprun.hrtime()
      local co = co_create(inflight_body)
      local ok, r1, r2 = co_resume(co, cb)
      if ok and r1 == STARTED and co_status(co) == "suspended" then
        if epoch == nil then
          mismatch(i, "call admitted", false, true)
        end
        inflight[step[2]] = { co, epoch, now, state, started }
      else
        if not ok then
          mismatch(i, "call raised", false, r1)
        end
        check_rejected(i, epoch ~= nil, ok, r1, r2)
        count(REJECTED_IN[state])
      end
    elseif op == "finish" then
      local call = inflight[step[2]]
      if call ~= nil then
        inflight[step[2]] = nil
        if call[2] ~= m.epoch then
          count("breaker late results ignored")
        elseif m.state == "half_open" then
          count("breaker half-open probes finished")
        end
        for other in pairs(inflight) do
          if other < step[2] then
            count("breaker calls finished out of order")
            break
          end
        end
        local outcome = step[3]
        local ms = now - call[3]
        if ms < 0 then
          ms = 0
        end
        if observing then
          m:note(ERROR_OF[outcome] and "call.failure" or "call.success",
                 call[4], ERROR_OF[outcome])
        end
        local ok, r1, r2 = co_resume(call[1], outcome)
        if timed then
          check_real_time(i, seq.slow_call_ms, ms, call[5])
        end
        check_result(i, outcome, ok, r1, r2)
        m:record(call[2], class[outcome], now, ms)
      end
    elseif op == "allow" then
      local want, got = m:allow(now), cb:allow()
      if want ~= got then
        mismatch(i, "allow()", want, got)
      end
    elseif op == "state" then
      m:tick(now)
      local got = cb:state()
      if m.state ~= got then
        mismatch(i, "state()", m.state, got)
      end
    elseif op == "stats" then
      m:tick(now)
      local s = cb:stats()
      compare_stats(i, m, s)
      compare_config(i, m, s, name)
    elseif op == "rs" then
      m:record_success(now)
      cb:record_success()
    elseif op == "rf" then
      m:record_failure(now)
      cb:record_failure()
    elseif op == "reset" then
      m:reset()
      cb:reset()
    elseif MANUAL[op] then
      m:manual(MANUAL[op])
      cb[op](cb)
    elseif op == "adv" then
      time_step = true
      now = now + step[2]
      if virtual then
        sprun.sleep(step[2])
        if sprun.now() ~= now then
          mismatch(i, "virtual time after the sleep", now, sprun.now())
        end
        m:advance(now)
        if m.nevents > 0 then
          count("breaker transitions made by the loop's timer")
        end
      else
        NOW = now
      end
    elseif op == "back" then
      time_step = true
      now = now - step[2]
      if now < 0 then
        now = 0
      end
      NOW = now
    end
    if peek then
      compare_peek(i, m, peek)
    elseif not time_step or virtual then
      m:tick(now)
      compare_stats(i, m, cb:stats())
    end
    check_events(i, m)
  end
  if observing then
    observing = false
    observe_calls(false)
    count("breaker sequences with per-call events checked")
  end
  if m.window then
    counts["breaker window calls evicted (count)"] =
      (counts["breaker window calls evicted (count)"] or 0) + m.evicted
    counts["breaker window calls expired (time)"] =
      (counts["breaker window calls expired (time)"] or 0) + m.expired
    counts["breaker slow calls in the window"] =
      (counts["breaker slow calls in the window"] or 0) + m.slow_added
    counts["breaker openings at a rate exactly the threshold"] =
      (counts["breaker openings at a rate exactly the threshold"] or 0)
      + m.ties
  end
  current_cb = nil
  return #steps
end

--- The health monitor ------------------------------------------------------

local function compare_worker(i, m, hm, id, now)
  local w, count = m:worker_health(id, now)
  local r = hm:worker_health(id)
  local what = "worker_health(" .. show(id) .. ")."
  if w == nil then
    -- Unknown: healthy with no crash, as in Snakepit.
    if not (r.healthy == true and r.crash_count == 0
            and r.crashes_in_window == 0 and r.last_crash_ms == nil
            and #r.reasons == 0) then
      mismatch(i, what .. " of an unknown worker", "healthy, no crash",
               show(r))
    end
    return
  end
  if r.crashes_in_window ~= count then
    mismatch(i, what .. "crashes_in_window", count, r.crashes_in_window)
  end
  if r.healthy ~= (count < m.max_crashes) then
    mismatch(i, what .. "healthy", count < m.max_crashes, r.healthy)
  end
  if r.last_crash_ms ~= w.last_ms then
    mismatch(i, what .. "last_crash_ms", w.last_ms, r.last_crash_ms)
  end
  if r.crash_count ~= w.total then
    mismatch(i, what .. "crash_count", w.total, r.crash_count)
  end
  local reasons = r.reasons
  if #reasons ~= #w.reasons then
    mismatch(i, what .. "#reasons", #w.reasons, #reasons)
  end
  for j = 1, #reasons do
    if reasons[j] ~= w.reasons[j] then
      mismatch(i, what .. "reasons[" .. j .. "]", w.reasons[j], reasons[j])
    end
  end
end

local function compare_health_stats(i, m, hm, now, pool)
  local in_window, workers = m:stats(now)
  if m:on_boundary(m.latest) then
    count("health crashes exactly crash_window_ms old")
  end
  if in_window >= m.max_crashes then
    count("health unhealthy steps")
  end
  local s = hm:stats()
  if s.crashes_in_window ~= in_window then
    mismatch(i, "stats().crashes_in_window", in_window, s.crashes_in_window)
  end
  if s.workers_with_crashes ~= workers then
    mismatch(i, "stats().workers_with_crashes", workers,
             s.workers_with_crashes)
  end
  if s.total_crashes ~= m.total then
    mismatch(i, "stats().total_crashes", m.total, s.total_crashes)
  end
  if s.is_healthy ~= (in_window < m.max_crashes) then
    mismatch(i, "stats().is_healthy", in_window < m.max_crashes,
             s.is_healthy)
  end
  if s.max_crashes ~= m.max_crashes or s.crash_window_ms ~= m.window
     or s.pool ~= pool then
    mismatch(i, "stats() configuration", format("%d %d %s", m.max_crashes,
      m.window, pool), format("%s %s %s", s.max_crashes, s.crash_window_ms,
      s.pool))
  end
end

local monitor_count = 0
local INFO_NONE = {}

local function run_health(seq)
  local virtual = seq.virtual
  local now
  if virtual then
    now = sprun.now()
  else
    NOW = 0
    now = 0
  end
  monitor_count = monitor_count + 1
  local pool = "model-pool-" .. monitor_count
  local hm = health_monitor.start_link {
    pool = pool,
    max_crashes = seq.max_crashes,
    max_workers = seq.max_workers,
    crash_window_ms = seq.window,
    check_interval_ms = seq.check_interval,
    clock = (not virtual) and clock or nil,
  }
  current_pool = pool
  ncrash = 0
  local m = health_model.new(seq.max_crashes, seq.max_workers, seq.window)
  local ids = gen.WORKER_IDS
  local steps = seq.steps
  for i = 1, #steps do
    local step = steps[i]
    local op = step[1]
    local timed = false
    if op == "crash" then
      local id, info = ids[step[2]], step[3]
      local reason
      if type(info) == "string" then
        reason = info
        info = { reason = reason }
      elseif info then
        info = INFO_NONE
      else
        info = nil
      end
      if now < m.latest then
        count("health crashes at a time before the latest")
      end
      local evicted = m:record_crash(id, reason, now)
      if evicted ~= nil then
        count("health workers forgotten")
      end
      local r = hm:record_crash(id, info)
      if r ~= true then
        mismatch(i, "record_crash returned", true, r)
      end
      compare_worker(i, m, hm, id, now)
      if evicted ~= nil then
        compare_worker(i, m, hm, evicted, now)
      end
      if use_crash_tele then
        local e = crash_events[ncrash]
        if ncrash ~= 1 or e.worker_id ~= id or e.reason ~= reason then
          mismatch(i, "snakepit.worker.crash events (count, worker_id, "
            .. "reason)", format("1 %s %s", show(id), show(reason)),
            format("%d %s %s", ncrash, show(e and e.worker_id),
                   show(e and e.reason)))
        end
        ncrash = 0
      end
    elseif op == "healthy" or op == "is_healthy" then
      local want = m:is_healthy(now)
      local got
      if op == "healthy" then
        got = hm:healthy()
      else
        got = hm:is_healthy()
      end
      if want ~= got then
        mismatch(i, op .. "()", want, got)
      end
    elseif op == "wh" then
      compare_worker(i, m, hm, ids[step[2]], now)
    elseif op == "wh_all" then
      for k = 1, seq.nids do
        compare_worker(i, m, hm, ids[k], now)
      end
    elseif op == "adv" then
      timed = true
      now = now + step[2]
      if virtual then
        sprun.sleep(step[2])
        if sprun.now() ~= now then
          mismatch(i, "virtual time after the sleep", now, sprun.now())
        end
      else
        NOW = now
      end
    elseif op == "back" then
      timed = true
      now = now - step[2]
      if now < 0 then
        now = 0
      end
      NOW = now
    end
    if not timed then
      compare_health_stats(i, m, hm, now, pool)
    end
  end
  current_pool = nil
  return #steps
end

--- The retry policy --------------------------------------------------------

local RETRY_ERRORS = {
  { "timeout", "timeout" },
  { "boom", "boom" },
  { "unavailable", "unavailable" },
  { errors.error("timeout", "slow"), "timeout" },
  { errors.error("boom", "bang"), "boom" },
  { errors.error("worker_crash", "gone"), "worker_crash" },
  { {}, "error" },
  { 42, "error" },
}
assert(#RETRY_ERRORS == gen.RETRY_ERRORS)
for i, e in ipairs(RETRY_ERRORS) do
  RETRY_ERROR_NAMES[i] = type(e[1]) == "table" and not errors.is_error(e[1])
                         and "{}" or show(e[1])
end

local function retriable(err)
  return err == 42 or (errors.is_error(err) and err.kind == "boom")
end

local function run_retry(seq)
  local o = {}
  for k, v in pairs(seq.opts) do
    o[k] = v
  end
  if o.retriable_errors == "function" then
    o.retriable_errors = retriable
  end
  local p = retry_policy.new(o)
  local cfg = p:config()
  if o.seed ~= nil and cfg.seed ~= o.seed then
    mismatch(0, "config().seed", o.seed, cfg.seed)
  end
  local m = retry_model.new(cfg)
  local steps = seq.steps
  for i = 1, #steps do
    local step = steps[i]
    local op, x = step[1], step[2]
    if op == "sr" then
      local want, got = m:should_retry(x), p:should_retry(x)
      if want ~= got then
        mismatch(i, "should_retry(" .. x .. ")", want, got)
      end
    elseif op == "bo" then
      local want, base = m:backoff_for_attempt(x)
      if m.jitter ~= false then
        count("retry delays jittered")
      end
      if want == m.cap and m.cap > 0 then
        count("retry delays at the cap")
      end
      local got = p:backoff_for_attempt(x)
      if want ~= got then
        mismatch(i, "backoff_for_attempt(" .. x .. ")", want, got)
      end
      local broken = m:bounds(got, base)
      if broken then
        mismatch(i, "backoff_for_attempt(" .. x .. ") range", broken, got)
      end
    else
      local e = RETRY_ERRORS[x]
      local want, got = m:retry_for_error(e[1], e[2]), p:retry_for_error(e[1])
      if want ~= got then
        mismatch(i, "retry_for_error(" .. show(e[1]) .. ")", want, got)
      end
    end
  end
  return #steps
end

--- Running, shrinking, reporting ------------------------------------------

-- The runners are one long branchy loop each, around calls that leave
-- traces (pcall, coroutines, varargs): the JIT spends more time recording
-- and aborting traces there than it saves, so they run interpreted (and
-- about four times faster). What they call is compiled as usual.
if jit then
  jit.off(run_breaker)
  jit.off(run_health)
  jit.off(run_retry)
end

local RUNNERS = { breaker = run_breaker, health = run_health,
                  retry = run_retry }

-- Runs one sequence; returns the number of steps, or nil and what went
-- wrong (a mismatch, or an error raised on the way).
function _M.run(seq)
  local runner = RUNNERS[seq.kind]
  local ok, r
  if seq.virtual then
    sched.last_run = nil
    ok, r = pcall(sprun.run, { clock = "virtual" }, runner, seq)
    if ok then
      local run = sched.last_run
      if run == nil or run.handles ~= 0 then
        return nil, format("the virtual run left %s handle(s) open",
                           tostring(run and run.handles))
      end
    end
  else
    ok, r = pcall(runner, seq)
  end
  current_cb, current_pool = nil, nil
  if observing then
    observing = false
    observe_calls(false)
  end
  if ok then
    return r
  end
  if getmetatable(r) == MISMATCH then
    return nil, format("step %d: %s", r.step, r.text), r.step
  end
  return nil, "error: " .. tostring(r)
end

local function with_steps(seq, steps)
  local copy = {}
  for k, v in pairs(seq) do
    copy[k] = v
  end
  copy.steps = steps
  return copy
end

-- The shortest failing sequence found by dropping steps: first everything
-- after the failing step, then chunks of halving size, repeatedly, keeping
-- each drop that still fails. Returns the sequence, its failure and the
-- number of runs it took.
function _M.shrink(seq, why, at, budget)
  budget = budget or 20000
  local runs = 0
  local function fails(steps)
    runs = runs + 1
    local n, w, a = _M.run(with_steps(seq, steps))
    if n == nil then
      why, at = w, a
      return true
    end
    return false
  end
  local steps = seq.steps
  if at and at >= 1 and at < #steps then
    local prefix = { unpack(steps, 1, at) }
    if fails(prefix) then
      steps = prefix
    end
  end
  local chunk = math.max(1, math.floor(#steps / 2))
  while runs < budget do
    local dropped = false
    local i = 1
    while i <= #steps and runs < budget do
      local trial = {}
      for j = 1, #steps do
        if j < i or j >= i + chunk then
          trial[#trial + 1] = steps[j]
        end
      end
      if #trial < #steps and fails(trial) then
        steps = trial
        dropped = true
      else
        i = i + chunk
      end
    end
    if chunk == 1 and not dropped then
      break
    end
    if not dropped then
      chunk = math.max(1, math.floor(chunk / 2))
    end
  end
  -- one last run so that `why` is the failure of the sequence returned
  local _, w = _M.run(with_steps(seq, steps))
  return with_steps(seq, steps), w or why, runs
end

local GENERATORS = {
  breaker = gen.breaker, health = gen.health, retry = gen.retry,
}

-- Runs `count` sequences of `kind` (of a breaker, in `mode`) with the seeds
-- seed .. seed + count - 1. Returns the number of steps run; raises with
-- the shrunk sequence on the first failure.
function _M.check(kind, seed, count, virtual, mode)
  local make = GENERATORS[kind]
  local steps = 0
  for k = 0, count - 1 do
    local s = seed + k
    local seq = make(s, virtual, mode)
    local n, why, at = _M.run(seq)
    if n == nil then
      local small, small_why, runs = _M.shrink(seq, why, at)
      error(format("\nmodel and %s disagree (sequence seed %d, %d steps)."
        .. "\n%s\n\nShortest failing sequence found (%d steps, after %d "
        .. "shrinking runs):\n%s\n%s\n\nReplay: SPRUN_SEED=%d "
        .. "SPRUN_MODEL_RUNS=1 tests/run tests/lua/model_spec.lua",
        mode and kind .. " (" .. mode .. " mode)" or kind, s, #seq.steps,
        why, #small.steps, runs, describe_seq(small),
        small_why or "(no failure: flaky?)", s), 0)
    end
    steps = steps + n
  end
  return steps
end

return _M
