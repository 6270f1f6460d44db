-- The generator of random operation sequences for the model-based tests.
--
-- gen.breaker(seed, virtual, mode), gen.health(seed, virtual),
-- gen.retry(seed) each make one sequence from one seed (each kind, breaker
-- mode and clock drawing from its own stream): a configuration and up to
-- MAX_STEPS steps. A step is a list { op, x, y }. Steps never depend on
-- what the objects answer, and a step whose premise is gone (a "finish"
-- whose "start" was dropped by shrinking) is skipped when run, so any
-- subset of a sequence's steps is again a valid sequence.

local prng = require "model.prng"

local _M = {}

_M.MAX_STEPS = 200

-- What a breaker's operation does when it runs.
--   ok ok_nil ok_false      successes: return "v" / nil / false, nil
--   fail fail_false         return nil, "boom" / false, "boom"
--   raise raise_obj         raise "boom" / an error object of kind "boom"
--   ignored ignored_raise   fail with "ignored": neutral under is_failure
--   explode                 fail with "explode": is_failure raises on it
_M.OUTCOMES = {
  { "ok", 10 }, { "ok_nil", 2 }, { "ok_false", 2 }, { "fail", 8 },
  { "fail_false", 2 }, { "raise", 3 }, { "raise_obj", 2 }, { "ignored", 3 },
  { "ignored_raise", 1 }, { "explode", 1 },
}

-- A list of { value, weight } as a table where each value appears
-- `weight` times: one draw picks by weight.
local function urn(weights)
  local t = {}
  for i = 1, #weights do
    for _ = 1, weights[i][2] do
      t[#t + 1] = weights[i][1]
    end
  end
  return t
end

local OUTCOMES = urn(_M.OUTCOMES)

local BREAKER_OPS = {
  { "call", 26 }, { "start", 10 }, { "finish", 12 }, { "adv", 20 },
  { "rs", 4 }, { "rf", 7 }, { "allow", 3 }, { "state", 3 }, { "stats", 2 },
  { "reset", 2 }, { "back", 2 },
}

-- The breaker's steps with the manual states (force_open, disable,
-- isolate) at three levels: none, now and then (about one step in 30),
-- often (about one in 11).
local MANUAL_LEVELS = { 0, 1, 3 }
local BREAKER_URNS = {}
for level, weight in ipairs(MANUAL_LEVELS) do
  local ops = { unpack(BREAKER_OPS) }
  if weight > 0 then
    ops[#ops + 1] = { "force_open", weight }
    ops[#ops + 1] = { "disable", weight }
    ops[#ops + 1] = { "isolate", weight }
  end
  BREAKER_URNS[level] = urn(ops)
end

-- A time step around `span`: on it, either side of it, or anywhere.
local function time_step(g, span)
  local r = g:float()
  if r < 0.08 then
    return 0
  elseif r < 0.2 then
    return 1
  elseif r < 0.5 and span > 0 then
    local v = span + g:int(-1, 1)
    return v < 0 and 0 or v
  elseif r < 0.95 then
    return g:int(0, 2 * span + 2)
  end
  return g:int(0, 10 * span + 10)
end

-- 1..MAX_STEPS, short ones more often (a mean of about a quarter of
-- MAX_STEPS, and one sequence in five at least half of it): most bugs need
-- few steps, and the time goes to the long ones.
local function length(g)
  local u = g:float()
  return 1 + math.floor((_M.MAX_STEPS - 1) * u * u * u + 0.5)
end

-- The breaker's modes, each drawing from its own stream (the first number
-- for literal times, the second for virtual time).
_M.BREAKER_MODES = { consecutive = { 1, 2 }, count = { 6, 7 },
                     time = { 8, 9 } }

-- Rates with exact ties among the quotients of small counts (3 of 10 is
-- 0.3, 2 of 6 is 1/3): the trip rule is >=.
local RATES = { 0, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.4, 0.5, 0.5, 0.6, 2 / 3,
                0.75, 0.8, 1 }
local SLOW_RATES = { 0, 0.2, 1 / 3, 0.5, 0.5, 0.75, 1 }
-- Slow-call thresholds and bucket widths. Under virtual time a call also
-- counts as slow when it took that long in real time, so the thresholds
-- there are far above what a call takes.
local SLOW_MS = { [false] = { 1, 2, 3, 5, 10, 50 },
                  [true] = { 1000, 2000, 5000 } }
local WIDTHS = { [false] = { 1, 2, 3, 5, 10, 50 },
                 [true] = { 100, 500, 1000, 2000 } }

-- The options of a rate window (seq.window ... seq.slow_call_rate); nil
-- for an option left to its default.
local function rate_window(g, seq, mode, virtual)
  seq.window = mode
  if mode == "count" then
    if g:chance(0.95) then
      seq.size = g:pick { 1, 2, 3, 4, 5, 6, 8, 10, 20 }
    end
  elseif g:chance(0.95) then
    seq.buckets = g:pick { 1, 2, 3, 4, 5, 10 }
    seq.size_ms = seq.buckets * g:pick(WIDTHS[virtual])
  end
  if g:chance(0.9) then
    seq.min_calls = g:pick { 1, 1, 2, 3, 4, 5, 10, 25 }
  end
  if g:chance(0.9) then
    seq.failure_rate = g:pick(RATES)
  end
  if g:chance(0.6) then
    seq.slow_call_ms = g:pick(SLOW_MS[virtual])
  end
  if g:chance(0.8) then
    seq.slow_call_rate = g:pick(SLOW_RATES)
  end
  if mode == "time" and virtual then
    -- Buckets are aligned on time 0, and a virtual run starts at the real
    -- clock's time: the run first waits until it is this many ms into a
    -- bucket, so that the sequence does not depend on when it runs.
    local size_ms = seq.size_ms or 60000
    seq.phase = g:int(0, size_ms / (seq.buckets or 10) - 1)
  end
end

-- How long a call's fn takes (it moves the clock on while it runs); under
-- literal times it may also set the clock back (a negative duration).
local function duration(g, seq, spans)
  local r = g:float()
  local slow = seq.slow_call_ms
  if r < 0.45 then
    return 0
  elseif r < 0.75 and slow then
    return slow + g:int(-1, 1)
  elseif r < 0.95 or seq.virtual then
    return time_step(g, g:pick(spans))
  end
  return -g:int(1, g:pick(spans) + 2)
end

-- mode: "consecutive" (the default), "count" or "time".
function _M.breaker(seed, virtual, mode)
  mode = mode or "consecutive"
  virtual = virtual or false
  local g = prng.new(seed, _M.BREAKER_MODES[mode][virtual and 2 or 1])
  local seq = {
    kind = "breaker",
    mode = mode,
    seed = seed,
    virtual = virtual,
    threshold = g:pick { 1, 1, 2, 2, 3, 5 },
    max_calls = g:pick { 0, 1, 1, 1, 2, 3 },
    timeout = g:pick { 0, 1, 2, 5, 10, 10, 100, 1000 },
    is_failure = g:chance(0.5),
    -- "stats": stats() after every step that is not a time step;
    -- "peek": the C struct, read without a look at the clock, after every
    -- step (so the lazy half-open move is seen only when a step makes it).
    compare = g:chance(0.5) and "stats" or "peek",
    -- per-call telemetry events observed (calls then take the observed
    -- path of circuit_breaker.call)
    observe = g:chance(0.2),
    -- the level of manual states: an index of MANUAL_LEVELS
    manual = g:pick { 1, 1, 1, 2, 2, 2, 2, 3, 3, 3 },
  }
  if mode ~= "consecutive" then
    rate_window(g, seq, mode, virtual)
  end
  -- The spans time steps are drawn around.
  local spans = { seq.timeout }
  if seq.slow_call_ms then
    spans[#spans + 1] = seq.slow_call_ms
  end
  if mode == "time" then
    local size_ms = seq.size_ms or 60000
    spans[#spans + 1] = size_ms / (seq.buckets or 10)
    spans[#spans + 1] = size_ms
  end
  local ops = BREAKER_URNS[seq.manual]
  local steps, open, next_id = {}, {}, 0
  for i = 1, length(g) do
    local op = g:pick(ops)
    local step
    if op == "call" then
      step = { "call", g:pick(OUTCOMES), duration(g, seq, spans) }
    elseif op == "start" then
      next_id = next_id + 1
      open[#open + 1] = next_id
      step = { "start", next_id }
    elseif op == "finish" and open[1] ~= nil then
      -- any call in flight, not necessarily the oldest
      local k = g:int(1, #open)
      local id = table.remove(open, k)
      step = { "finish", id, g:pick(OUTCOMES) }
    elseif op == "adv" or (op == "back" and virtual) then
      step = { "adv", time_step(g, g:pick(spans)) }
    elseif op == "back" then
      step = { "back", g:int(1, g:pick(spans) + 2) }
    elseif op == "finish" then
      step = { "state" }
    else
      step = { op }
    end
    steps[i] = step
  end
  seq.steps = steps
  return seq
end

-- Worker ids: numbers and strings, 1 and "1" being two workers.
_M.WORKER_IDS = { 1, 2, "1", "w", 3, 4, 2.5, "x", 5, 6, 0, -7, 7, 8, 9, 10 }

local HEALTH_OPS = {
  { "crash", 40 }, { "adv", 25 }, { "healthy", 5 }, { "wh", 8 },
  { "wh_all", 2 }, { "stats", 4 }, { "back", 2 },
}
HEALTH_OPS = urn(HEALTH_OPS)

local REASONS = {}
for i = 1, _M.MAX_STEPS do
  REASONS[i] = "r" .. i
end

function _M.health(seed, virtual)
  local g = prng.new(seed, virtual and 4 or 3)
  local max_crashes = g:pick { 1, 2, 3, 3, 4, 5, 8 }
  local max_workers = g:pick { 1, 2, 3, 4, 6, 10 }
  local window = g:pick { 1, 2, 5, 10, 10, 50, 1000 }
  local capacity = max_workers > max_crashes and max_workers
                   or max_crashes + 1
  local seq = {
    kind = "health",
    seed = seed,
    virtual = virtual or false,
    max_crashes = max_crashes,
    max_workers = max_workers,
    window = window,
    check_interval = g:int(1, window + 1),
    nids = math.min(#_M.WORKER_IDS, g:int(1, capacity + 3)),
  }
  local steps, reason = {}, 0
  for i = 1, length(g) do
    local op = g:pick(HEALTH_OPS)
    local step
    if op == "crash" then
      -- info: 0 none, 1 a table without reason, 2 a reason
      local info = g:int(0, 3)
      reason = reason + 1
      step = { "crash", g:int(1, seq.nids), info >= 2 and REASONS[reason]
                                           or info == 1 }
    elseif op == "adv" or (op == "back" and virtual) then
      step = { "adv", time_step(g, window) }
    elseif op == "back" then
      step = { "back", g:int(1, window + 2) }
    elseif op == "healthy" then
      step = { g:chance(0.5) and "healthy" or "is_healthy" }
    elseif op == "wh" then
      step = { "wh", g:int(1, seq.nids) }
    else
      step = { op }
    end
    steps[i] = step
  end
  seq.steps = steps
  return seq
end

-- Error values retry_for_error is asked about, with their kinds (filled
-- in by the spec, which makes the error objects).
_M.RETRY_ERRORS = 8

local RETRY_OPS = { { "sr", 3 }, { "bo", 8 }, { "rfe", 2 } }
RETRY_OPS = urn(RETRY_OPS)

local function attempt(g, count)
  local r = g:float()
  if r < 0.9 then
    return g:int(1, count + 3)
  end
  return g:pick { 100, 1000, 65536, 2 ^ 31, 2 ^ 32 - 1 }
end

function _M.retry(seed)
  local g = prng.new(seed, 5)
  local o = {}
  o.max_attempts = g:pick { 1, 2, 3, 3, 5, 10, 2 ^ 32 - 1 }
  if g:chance(0.5) then
    o.backoff = "list"
    local list = {}
    for i = 1, g:int(1, 6) do
      list[i] = g:chance(0.1) and g:int(0, 1000) + 0.5 or g:int(0, 2000)
    end
    o.backoff_ms = list
  else
    o.backoff = "exponential"
    o.base_backoff_ms = g:pick { 0, 1, 10, 100, 150, 1000 }
    -- every power below the cap is exact in a double for these
    o.multiplier = g:pick { 1, 1.5, 2, 2, 3, 10 }
  end
  o.max_backoff_ms = g:pick { 0, 50, 500, 1000, 30000, 100000 }
  o.jitter = g:pick { false, true, "full", "equal", "decorrelated" }
  o.jitter_factor = g:pick { 0, 0.1, 0.25, 0.5, 1 }
  if g:chance(0.8) then
    o.seed = g:int(0, 2 ^ 32 - 1) * 2 ^ 21 + g:int(0, 2 ^ 21 - 1)
  end
  local r = g:float()
  if r < 0.4 then
    o.retriable_errors = nil
  elseif r < 0.6 then
    o.retriable_errors = "all"
  elseif r < 0.8 then
    o.retriable_errors = { "boom", "timeout" }
  else
    o.retriable_errors = "function"
  end
  local seq = { kind = "retry", seed = seed, opts = o }
  local count = o.backoff == "list" and #o.backoff_ms or 6
  local steps = {}
  for i = 1, length(g) do
    local op = g:pick(RETRY_OPS)
    if op == "rfe" then
      steps[i] = { "rfe", g:int(1, _M.RETRY_ERRORS) }
    else
      steps[i] = { op, attempt(g, count) }
    end
  end
  seq.steps = steps
  return seq
end

return _M
