-- Rate limiter: at most `rate` calls per `per_ms` ms, in bursts of at most
-- `burst`. The rule is GCRA, sp_rate_t of runtime/core (one timestamp of
-- state, exact to the ms for any rate that is a ratio of small integers:
-- 3 per 1000 ms admits exactly 3 a second for ever, after the burst).
--
--   take([n])              true, or false and the ms after which the same
--                          take would pass (math.huge: n > burst, never)
--   wait([n], timeout_ms)  inside a task: sleeps on the loop until its
--                          slot, then true; nil and a rate_limited error
--                          when the slot is further than timeout_ms (or
--                          than the task's deadline), with nothing taken
--
-- Waiters are served first come, first served: a wait reserves its slot
-- in the C state before it sleeps, and takes cannot pass a reservation. A
-- waiter cancelled while asleep gives its slot back if nothing was
-- reserved or taken after it (GCRA cannot give back a slot in the middle:
-- the later ones are already promised times that count on it).
--
-- keyed{...}: one GCRA state per key (a client, an address), in one array
-- of at most max_keys. A key whose state is full again (its TAT is past)
-- is dropped first, losing nothing: a new state for it is full too. With
-- max_keys keys all active, the least recently used is evicted, and may
-- then get up to one burst more than the rate allows.
--
-- The trap: the hot path is take(): a load of the loop's clock, one FFI
-- call writing retry_after into the limiter's buffer, no allocation, and
-- one table lookup for telemetry on a refusal only.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local clock = require "sprun.clock"
local options = require "sprun.options"
local errors = require "sprun.errors"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local telemetry = require "sprun.telemetry"

local ffi = sp.ffi
local C = sp.C
local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local error = error
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local ceil = math.ceil
local huge = math.huge
local format = string.format
local describe = check.describe
local check_self = check.self
local enabled = telemetry.enabled
local emit = telemetry.emit
local wait_or_cancel = kernel.wait_or_cancel
local WAKE_TIMER = kernel.WAKE_TIMER
local MS_MAX = check.MS_MAX

local ETIMEDOUT = sp.SP_ETIMEDOUT
local MIN_RATE, MAX_RATE = sp.SP_RATE_MIN_RATE, sp.SP_RATE_MAX_RATE
local REJECTED_EVENT = "sprun.rate_limiter.rejected"
local RATE_LIMITED = "rate_limited"
local WHAT, KWHAT = "a rate limiter", "a keyed rate limiter"
-- The most keys a keyed limiter may be given room for.
local MAX_KEYS = 2 ^ 24

local STATE = ffi.typeof("sp_rate_state_t")
local STATES = ffi.typeof("sp_rate_state_t[?]")
local LIMITER = ffi.typeof("sp_rate_t")

local _M = {}
local mt = { __index = _M }
local K = {}
local kmt = { __index = K }

local SPEC = {
  name = { "string", default = "rate_limiter" },
  rate = { "number", required = true, min = MIN_RATE, max = MAX_RATE },
  per_ms = { "integer", min = 1, limit = MS_MAX, default = 1000 },
  -- Default: the rate rounded up.
  burst = { "integer", min = 1, limit = MS_MAX },
  clock = { "function" },
}

local KSPEC = { max_keys = { "integer", min = 1, limit = MAX_KEYS,
                             default = 10000 } }
for k, v in each_key, SPEC do
  KSPEC[k] = v
end

-- new only: the rate is a fleet's, each node its share (fleet/members.lua)
SPEC.fleet = { check = require("sprun.fleet.kind").check }
local parse_options = options.parser("rate_limiter.new", SPEC)
local parse_keyed = options.parser("rate_limiter.keyed", KSPEC)

--- The C limiter --------------------------------------------------------

-- The largest burst the C core takes with this rate and per_ms.
local function max_burst(rate, per_ms)
  return tonumber(C.sp_rate_max_burst(rate, per_ms))
end

local function config_of(rate, per_ms, burst)
  local c = ffi.new("sp_rate_config_t")
  c.rate, c.per_ms, c.burst = rate, per_ms, burst
  return c
end

-- A whole number in full (1000000000, not 1e+09), else as describe()
-- shows it.
local function number_text(v)
  if v % 1 == 0 and v < 2 ^ 63 then
    return format("%.0f", v)
  end
  return describe(v)
end

-- The rule a burst out of the core's range breaks, and what it was.
local function burst_rule(rate, per_ms, burst, given)
  return format("must be an integer between 1 and %.0f with rate %s per "
                .. "%.0f ms", max_burst(rate, per_ms), number_text(rate),
                per_ms),
         number_text(burst) .. (given and ""
                                or " (the default: rate rounded up)")
end

-- The fields both kinds of limiter share, from parsed options; nil and
-- the option error's rule and got when the burst is out of range.
local function base(o, fname)
  local burst = o.burst or ceil(o.rate)
  local r = LIMITER()
  if C.sp_rate_init(r, config_of(o.rate, o.per_ms, burst)) ~= 0 then
    local rule, got = burst_rule(o.rate, o.per_ms, burst, o.burst ~= nil)
    return nil, rule, got
  end
  return {
    _r = r,
    _name = o.name,
    _clock = clock.reader(fname, o.clock),
    _out = ffi.new("double[1]"),
    _ticket = ffi.new("uint64_t[1]"),
    _waiting = 0,
    _cancelled = 0,
  }
end

function _M.new(opts)
  local o = parse_options(opts)
  local self, rule, got = base(o, "rate_limiter")
  if self == nil then
    options.fail("rate_limiter.new", "burst", rule, got)
  end
  self._s = self._r.state
  -- Found on the limiter itself: no search of its keys, then of mt.
  self.take = _M.take
  if o.fleet ~= nil then
    self._fleet, self._global = o.fleet, { o.rate, o.burst or ceil(o.rate) }
    o.fleet:_join("r", o.name, setmetatable(self, mt))
  end
  return setmetatable(self, mt)
end

function _M.is_rate_limiter(v)
  return getmetatable(v) == mt or getmetatable(v) == kmt
end

--- Refusals -------------------------------------------------------------

local function refused(self, retry_after_ms, key)
  if enabled[REJECTED_EVENT] then
    emit(REJECTED_EVENT, { retry_after_ms = retry_after_ms },
         { name = self._name, key = key })
  end
  return false, retry_after_ms
end

local function limited(self, key, message, retry_after_ms, timeout_ms)
  refused(self, retry_after_ms, key)
  local where = key == nil and "" or " for key " .. describe(key)
  return nil, errors.error(RATE_LIMITED, format("rate limiter '%s'%s: %s",
                                                self._name, where, message),
                           { name = self._name, key = key,
                             retry_after_ms = retry_after_ms,
                             timeout_ms = timeout_ms })
end

--- take -----------------------------------------------------------------

-- n, 1 for nil. Raises at the user's level: call it straight from the API
-- function.
local function count_of(fname, n)
  if n == nil then
    return 1
  end
  if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > MS_MAX then
    error(format("%s: n %s, got %s", fname,
                 check.expect_integer(n, 1, MS_MAX), describe(n)), 3)
  end
  return n
end

-- n: the calls to admit at once (default 1).
function _M.take(self, n)
  check_self(self, mt, "rate_limiter.take", WHAT)
  n = count_of("rate_limiter.take", n)
  local out = self._out
  if C.sp_rate_take(self._r, self._s, n, self._clock(), out) == 1 then
    return true
  end
  return refused(self, out[0])
end

--- wait -----------------------------------------------------------------

-- The state `key` has now (the limiter's own for nil), or nil.
local function state_of(self, key)
  if key == nil then
    return self._s
  end
  local i = self._slot[key]
  return i and self._states[i - 1]
end

-- Sleeps the task `ms` (>= 1) on the loop for a reservation of n made
-- with `ticket`. A cancellation gives the reservation back if GCRA allows
-- (see the header), then goes on up.
local function sleep_reserved(self, task, ms, n, ticket, key)
  self._waiting = self._waiting + 1
  kernel.arm(task, ms)
  local ok, why
  repeat
    -- Woken early by something else: the timer is still armed.
    ok, why = wait_or_cancel(task)
  until not ok or why == WAKE_TIMER
  kernel.disarm(task)
  self._waiting = self._waiting - 1
  if not ok then
    self._cancelled = self._cancelled + 1
    local s = state_of(self, key)
    if s ~= nil
      and C.sp_rate_cancel(self._r, s, n, ticket, self._clock()) == 1
      and key ~= nil then
      -- The state is back where it was: maybe full soon, or now.
      self._next_full = 0
    end
    error(why, 0)
  end
  return true
end

local function check_timeout(fname, timeout_ms)
  if timeout_ms ~= nil and (type(timeout_ms) ~= "number"
                            or not (timeout_ms >= 0 and timeout_ms <= MS_MAX))
  then
    error(format("%s: timeout_ms %s, got %s", fname,
                 check.expect_number(timeout_ms, 0), describe(timeout_ms)), 3)
  end
end

local note_new -- a keyed limiter's, below

-- Reserves n on state s (of `key`, nil for the own one) and sleeps until
-- the slot. Runs in a task. `added`: the slot of a key new to a keyed
-- limiter, noted once the reservation moved its TAT on.
local function wait_in_task(self, s, n, timeout_ms, key, added)
  local task = kernel.current() or kernel.need_task("rate_limiter.wait")
  -- A deadline nearer than the timeout bounds the wait too.
  local limit = kernel.capped(timeout_ms)
  local out, ticket = self._out, self._ticket
  local rc = C.sp_rate_reserve(self._r, s, n, self._clock(), limit or huge,
                               out, ticket)
  if added then
    note_new(self, added)
  end
  local ms = out[0]
  if rc == 0 then
    if ms == 0 then
      return true
    end
    return sleep_reserved(self, task, ms, n, ticket[0], key)
  end
  local why = rc == ETIMEDOUT
    and format("the slot is %s ms away, past the %s ms allowed",
               describe(ms), describe(limit))
    or format("n = %s is above the burst (%.0f): never admitted",
              describe(n), tonumber(self._r.config.burst))
  return limited(self, key, why, ms, limit)
end

-- Waits for n calls' worth of the rate (default 1), at most timeout_ms
-- (default: as long as it takes). Outside a task, runs a loop until done.
function _M.wait(self, n, timeout_ms)
  check_self(self, mt, "rate_limiter.wait", WHAT)
  n = count_of("rate_limiter.wait", n)
  check_timeout("rate_limiter.wait", timeout_ms)
  kernel.check_caller("rate_limiter.wait")
  return sched.in_task(wait_in_task, self, self._s, n, timeout_ms)
end

--- stats and set_rate ---------------------------------------------------

local function stats_of(self)
  local r = self._r
  local c = r.config
  return {
    name = self._name,
    rate = c.rate,
    per_ms = tonumber(c.per_ms),
    burst = tonumber(c.burst),
    -- takes admitted and refused; waits that got a slot, and that were
    -- refused; slots given back by cancelled waiters
    taken = tonumber(r.taken),
    rejected = tonumber(r.rejected),
    waited = tonumber(r.reserved),
    timed_out = tonumber(r.refused),
    given_back = tonumber(r.returned),
    cancelled = self._cancelled,
    waiting = self._waiting,
  }
end

function _M.stats(self)
  check_self(self, mt, "rate_limiter.stats", WHAT)
  local s = stats_of(self)
  -- The calls a take could have at once now.
  s.available = tonumber(C.sp_rate_available(self._r, self._s,
                                             self._clock()))
  return s
end

function _M.name(self)
  check_self(self, mt, "rate_limiter.name", WHAT)
  return self._name
end

-- Checks set_rate's arguments: the new config, or raises at the user's
-- level (called straight from the API function).
local function new_config(self, fname, rate, burst)
  local r = self._r
  if type(rate) ~= "number" or not (rate >= MIN_RATE and rate <= MAX_RATE)
  then
    error(format("%s: rate %s, got %s", fname,
                 check.expect_number(rate, MIN_RATE, MAX_RATE),
                 describe(rate)), 3)
  end
  local per_ms = tonumber(r.config.per_ms)
  if burst == nil then
    burst = tonumber(r.config.burst)
  elseif type(burst) ~= "number" or burst % 1 ~= 0 or burst < 1
    or burst > MS_MAX then
    error(format("%s: burst %s, got %s", fname,
                 check.expect_integer(burst, 1, MS_MAX), describe(burst)), 3)
  end
  if burst > max_burst(rate, per_ms) then
    local rule = burst_rule(rate, per_ms, burst, true)
    error(format("%s: burst %s, got %s", fname, rule, number_text(burst)),
          3)
  end
  return config_of(rate, per_ms, burst)
end

-- A new rate (and burst; default: the burst stays) from now on, for a
-- node given its share of a fleet's rate. The calls already taken stay
-- taken (a token bucket keeps its tokens), and waiters keep their slots.
function _M.set_rate(self, rate, burst)
  check_self(self, mt, "rate_limiter.set_rate", WHAT)
  local c = new_config(self, "rate_limiter.set_rate", rate, burst)
  C.sp_rate_set(self._r, c, self._clock())
end

--- Keyed limiters -------------------------------------------------------

-- Keys are in slots 1..max_keys (state i - 1 of the array), in a list
-- from the most recently used (_head) to the least (_tail), linked by
-- _newer / _older; freed slots are stacked in _free. The array starts
-- small and doubles up to max_keys.
local FIRST_CAP = 64

function _M.keyed(opts)
  local o = parse_keyed(opts)
  local self, rule, got = base(o, "rate_limiter.keyed")
  if self == nil then
    options.fail("rate_limiter.keyed", "burst", rule, got)
  end
  local cap = o.max_keys < FIRST_CAP and o.max_keys or FIRST_CAP
  self._max_keys = o.max_keys
  self._cap = cap
  self._states = STATES(cap)
  self._used = 0     -- slots ever used: 1.._used
  self._count = 0    -- keys now
  self._slot = {}    -- key -> slot
  self._key = {}     -- slot -> key
  self._newer, self._older = {}, {}
  self._head, self._tail = false, false
  self._free, self._nfree = {}, 0
  -- No key is full before this time (see sweep); 0: not known.
  self._next_full = 0
  self._evicted, self._dropped = 0, 0
  self.take = K.take
  return setmetatable(self, kmt)
end

local function unlink(self, i)
  local newer, older = self._newer[i], self._older[i]
  if newer then
    self._older[newer] = older
  else
    self._head = older
  end
  if older then
    self._newer[older] = newer
  else
    self._tail = newer
  end
end

local function link_head(self, i)
  local head = self._head
  self._newer[i], self._older[i] = false, head
  if head then
    self._newer[head] = i
  else
    self._tail = i
  end
  self._head = i
end

-- Forgets the key in slot i and frees the slot.
local function drop(self, i)
  unlink(self, i)
  self._slot[self._key[i]] = nil
  self._key[i] = nil
  self._count = self._count - 1
  local n = self._nfree + 1
  self._free[n], self._nfree = i, n
end

-- Drops every key whose state is full at `now` and notes when the next
-- one can be: takes only move a state's TAT on, so until then none is.
-- O(keys), run only when the array is full and that time has come, so at
-- most once per ms.
local function sweep(self, now)
  local r, states = self._r, self._states
  local soonest = huge
  local i = self._tail
  while i do
    local newer = self._newer[i]
    local at = tonumber(C.sp_rate_full_at(r, states[i - 1]))
    if at <= now then
      drop(self, i)
      self._dropped = self._dropped + 1
    elseif at < soonest then
      soonest = at
    end
    i = newer
  end
  self._next_full = soonest
end

local function grow(self)
  local cap = self._cap * 2
  if cap > self._max_keys then
    cap = self._max_keys
  end
  local states = STATES(cap)
  ffi.copy(states, self._states, ffi.sizeof(STATE) * self._cap)
  self._states, self._cap = states, cap
end

-- A slot for a new key at `now`: a free one, a new one, one of a full key,
-- or the least recently used one's.
local function new_slot(self, now)
  local n = self._nfree
  if n == 0 and self._used == self._cap and self._cap < self._max_keys then
    grow(self)
  end
  if n == 0 and self._used < self._cap then
    self._used = self._used + 1
    return self._used
  end
  if n == 0 and now >= self._next_full then
    sweep(self, now)
    n = self._nfree
  end
  if n > 0 then
    local i = self._free[n]
    self._free[n], self._nfree = nil, n - 1
    return i
  end
  local i = self._tail
  drop(self, i)
  self._evicted = self._evicted + 1
  n = self._nfree
  self._free[n], self._nfree = nil, n - 1
  return i
end

local function add_key(self, key, now)
  local i = new_slot(self, now)
  local s = self._states[i - 1]
  s.last_ms_, s.ahead_, s.seq_ = 0, 0, 0
  self._slot[key], self._key[i] = i, key
  self._count = self._count + 1
  link_head(self, i)
  return i
end

-- The slot of `key` at `now`, made the most recently used; `added` true
-- for a key new to the limiter.
local function slot_of(self, key, now)
  local i = self._slot[key]
  if i == nil then
    return add_key(self, key, now), true
  end
  if self._head ~= i then
    unlink(self, i)
    link_head(self, i)
  end
  return i, false
end

-- A key just given a state: no key is full before it is.
function note_new(self, i)
  local at = tonumber(C.sp_rate_full_at(self._r, self._states[i - 1]))
  if at < self._next_full then
    self._next_full = at
  end
end

local function check_key(fname, key)
  local t = type(key)
  if t ~= "string" and (t ~= "number" or key ~= key) then
    error(fname .. ": key must be a string or a number, got "
          .. describe(key), 3)
  end
end

function K.take(self, key, n)
  check_self(self, kmt, "rate_limiter.take", KWHAT)
  check_key("rate_limiter.take", key)
  n = count_of("rate_limiter.take", n)
  local now = self._clock()
  local i, added = slot_of(self, key, now)
  local out = self._out
  local rc = C.sp_rate_take(self._r, self._states[i - 1], n, now, out)
  if added then
    note_new(self, i)
  end
  if rc == 1 then
    return true
  end
  return refused(self, out[0], key)
end

local function keyed_wait(self, key, n, timeout_ms)
  local i, added = slot_of(self, key, self._clock())
  return wait_in_task(self, self._states[i - 1], n, timeout_ms, key,
                      added and i)
end

function K.wait(self, key, n, timeout_ms)
  check_self(self, kmt, "rate_limiter.wait", KWHAT)
  check_key("rate_limiter.wait", key)
  n = count_of("rate_limiter.wait", n)
  check_timeout("rate_limiter.wait", timeout_ms)
  kernel.check_caller("rate_limiter.wait")
  return sched.in_task(keyed_wait, self, key, n, timeout_ms)
end

function K.stats(self)
  check_self(self, kmt, "rate_limiter.stats", KWHAT)
  local s = stats_of(self)
  s.keys = self._count
  s.max_keys = self._max_keys
  s.evicted = self._evicted
  s.dropped = self._dropped
  return s
end

function K.name(self)
  check_self(self, kmt, "rate_limiter.name", KWHAT)
  return self._name
end

-- As set_rate of one limiter, for every key.
function K.set_rate(self, rate, burst)
  check_self(self, kmt, "rate_limiter.set_rate", KWHAT)
  local c = new_config(self, "rate_limiter.set_rate", rate, burst)
  local now = self._clock()
  local old = LIMITER()
  ffi.copy(old, self._r, ffi.sizeof(LIMITER))
  C.sp_rate_set(self._r, c, now)
  local states = self._states
  local i = self._head
  while i do
    C.sp_rate_rescale(old, self._r, states[i - 1], now)
    i = self._older[i]
  end
  self._next_full = 0
end

return _M
