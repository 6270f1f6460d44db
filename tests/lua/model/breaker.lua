-- Reference model of the circuit breaker, in plain Lua, written from
-- DESIGN.md (sprun.circuit_breaker), the README's rate-window options and
-- the comments of sprun.h; it shares no code with runtime/core/breaker.c. Where the C keeps a ring or buckets
-- with running sums, the model keeps the plain list of the calls in the
-- window and counts them when asked.
--
-- Rules, every mode:
--  * closed: every call is admitted.
--  * open: every call is rejected (and counted in rejected_count); once
--    reset_timeout_ms have passed since it opened (now - opened_at >=
--    timeout; a clock before opened_at never counts as elapsed), the next
--    look at it (state, allow, call, stats, a manual record) turns it
--    half-open first. With half_open_max_calls = 0 it closes at once.
--  * half-open: at most half_open_max_calls calls in flight; a call's
--    permit comes back when it finishes, whatever its outcome;
--    half_open_max_calls successes close it; any failure re-opens it, with
--    failure_count = 1, open_reason "failures" and the timeout restarted.
--  * closed (and disabled), failure_count and success_count count the
--    consecutive failures and successes: a success zeroes failure_count
--    and a failure zeroes success_count.
--  * Snakepit's counts: since_close counts every failure counted since
--    the breaker last closed (or was reset), in every state; admitted the
--    probes admitted since it went half-open (zeroed at every
--    transition); lifetime every success counted, never zeroed.
--  * every transition and every reset starts a new epoch (the C
--    generation); a result is counted only under the epoch its call was
--    admitted in, else it is ignored (ignored_count).
--  * a neutral outcome (is_failure said no) counts nowhere but still gives
--    back a half-open permit.
--  * manual record_success/record_failure look at the time first, count
--    like a result of the current state that took 0 ms, and give back no
--    permit; reaching an open or forced-open breaker they count in the
--    totals only; an isolated breaker ignores them altogether.
--  * reset closes and zeroes every count (the totals, rejected_count,
--    opened_at and open_reason too); it reports "closed" only if it was
--    not closed already.
--
-- Consecutive mode (no window): failure_threshold consecutive failures
-- open a closed breaker, with open_reason "failures".
--
-- Rate windows (window = "count" or "time"; failure_threshold is then
-- never looked at):
--  * a success or failure counted while closed or disabled enters the
--    window, as a failure or not, and as slow when slow_call_ms > 0 and
--    the call took >= slow_call_ms (a manual record takes 0 ms);
--  * count window: the window is the last `size` calls entered;
--  * time window: time is cut in buckets of width = size_ms / buckets ms
--    from time 0; a call enters the bucket of its time, or the newest
--    bucket seen if that is later (a clock that went back); the newest
--    bucket moves on at every look at the time (tick) except while
--    isolated, and when a call enters; a call stays in the window while
--    fewer than `buckets` buckets have begun after its own;
--  * after a call entered while closed: with at least min_calls calls in
--    the window (at most `size` for a count window), failures / calls >=
--    failure_rate opens the breaker with open_reason "failure_rate", else
--    slow / calls >= slow_call_rate (only with slow_call_ms > 0) opens it
--    with "slow_call_rate"; failure_count then holds the window's
--    failures. The rates are the double quotients, compared with >=.
--  * the window is emptied when the breaker opens, closes, is reset or
--    enters a manual state (the newest bucket stays where it was).
--
-- Manual states:
--  * force_open, disable, isolate enter their state unless already in it
--    (then nothing happens): a new epoch, failure_count, success_count,
--    half_open_calls and the window zeroed, the totals, rejected_count,
--    opened_at and open_reason kept, and the event of the state
--    ("forced_open", "disabled", "isolated"). Only reset or another manual
--    call leaves them;
--  * forced_open rejects every call and counts the rejections, and never
--    turns half-open;
--  * disabled admits every call, counts like closed (window included) but
--    never opens;
--  * isolated rejects every call without counting the rejection.
--
-- Every transition is appended to self.ev_names ("opened" | "half_open" |
-- "closed" | "forced_open" | "disabled" | "isolated"), self.ev_counts
-- (failure_count right after it) and self.ev_reasons (the open_reason of
-- an opening), in the order they happen; self.nevents counts them until
-- clear_events(). note() appends an entry that is not a transition (the
-- driver's per-call telemetry events, kept in order among the
-- transitions); ev_notes[i] is true for those.

local floor = math.floor

local M = {}
M.__index = M

local _M = {}

-- cfg: threshold, max_calls, timeout, and for a rate window: window
-- ("count" | "time"), size (count), size_ms and buckets (time),
-- failure_rate, min_calls, slow_call_ms (0: none), slow_call_rate.
function _M.new(cfg)
  local window = cfg.window
  return setmetatable({
    threshold = cfg.threshold,
    max_calls = cfg.max_calls,
    timeout = cfg.timeout,
    window = window,
    size = cfg.size,
    size_ms = cfg.size_ms,
    buckets = cfg.buckets,
    width = window == "time" and cfg.size_ms / cfg.buckets or nil,
    failure_rate = cfg.failure_rate,
    min_calls = cfg.min_calls,
    slow_call_ms = cfg.slow_call_ms or 0,
    slow_call_rate = cfg.slow_call_rate,
    state = "closed",
    epoch = 0,
    failure_count = 0,
    success_count = 0,
    half_open_calls = 0,
    since_close = 0,
    admitted = 0,
    lifetime = 0,
    opened_at = 0,
    open_reason = nil,
    rejected = 0,
    successes = 0,
    failures = 0,
    ignored = 0,
    -- the calls in the window, oldest first: failed?, slow?, bucket
    w_failed = {},
    w_slow = {},
    w_bucket = {},
    w_n = 0,
    newest = 0, -- time window: the newest bucket seen
    ev_names = {},
    ev_counts = {},
    ev_reasons = {},
    ev_notes = {},
    ev_a = {},
    ev_b = {},
    nevents = 0,
    -- what happened to the window, for the driver's coverage counts
    evicted = 0,
    expired = 0,
    slow_added = 0,
    ties = 0,
    -- deadlines of the half-open timers a loop would arm (virtual runs)
    timers = nil,
  }, M)
end

function M:emit(name)
  local n = self.nevents + 1
  self.nevents = n
  self.ev_names[n] = name
  self.ev_counts[n] = self.since_close
  self.ev_reasons[n] = self.open_reason
  self.ev_notes[n] = false
end

-- An entry that is not a transition, with two values the driver checks.
function M:note(name, a, b)
  local n = self.nevents + 1
  self.nevents = n
  self.ev_names[n] = name
  self.ev_notes[n] = true
  self.ev_a[n] = a
  self.ev_b[n] = b
end

function M:clear_events()
  self.nevents = 0
end

--- The window ---------------------------------------------------------------

function M:window_clear()
  self.w_n = 0
end

-- Keeps the calls of the window from index `first` on.
function M:window_keep(first)
  local n = self.w_n
  local f, s, b = self.w_failed, self.w_slow, self.w_bucket
  local k = 0
  for i = first, n do
    k = k + 1
    f[k], s[k], b[k] = f[i], s[i], b[i]
  end
  self.w_n = k
end

-- Time window: the newest bucket moves on to the one of `now`.
function M:rotate(now)
  local bucket = floor(now / self.width)
  if bucket <= self.newest then
    return
  end
  self.newest = bucket
  local first, n = 1, self.w_n
  while first <= n and self.w_bucket[first] <= bucket - self.buckets do
    first = first + 1
  end
  if first > 1 then
    self.expired = self.expired + first - 1
    self:window_keep(first)
  end
end

function M:window_add(failed, slow, now)
  local bucket = 0
  if self.window == "time" then
    self:rotate(now)
    bucket = self.newest
  elseif self.w_n == self.size then
    self.evicted = self.evicted + 1
    self:window_keep(2)
  end
  if slow then
    self.slow_added = self.slow_added + 1
  end
  local n = self.w_n + 1
  self.w_n = n
  self.w_failed[n], self.w_slow[n], self.w_bucket[n] = failed, slow, bucket
end

-- calls, failures, slow calls in the window.
function M:window_counts()
  local failures, slow = 0, 0
  local f, s = self.w_failed, self.w_slow
  for i = 1, self.w_n do
    if f[i] then
      failures = failures + 1
    end
    if s[i] then
      slow = slow + 1
    end
  end
  return self.w_n, failures, slow
end

-- The open_reason a rate window opens with now, or nil.
function M:tripped()
  local calls, failures, slow = self:window_counts()
  local need = self.min_calls
  if self.window == "count" and need > self.size then
    need = self.size
  end
  if calls == 0 or calls < need then
    return nil
  end
  if failures / calls >= self.failure_rate then
    if failures / calls == self.failure_rate then
      self.ties = self.ties + 1
    end
    return "failure_rate"
  end
  if self.slow_call_ms > 0 and slow / calls >= self.slow_call_rate then
    if slow / calls == self.slow_call_rate then
      self.ties = self.ties + 1
    end
    return "slow_call_rate"
  end
  return nil
end

--- Transitions ------------------------------------------------------------

function M:to_open(now, reason)
  self.state = "open"
  self.epoch = self.epoch + 1
  self.opened_at = now
  self.open_reason = reason
  self.success_count = 0
  self.half_open_calls = 0
  self.admitted = 0
  self:window_clear()
  self:emit("opened")
  local timers = self.timers
  if timers then
    timers[#timers + 1] = now + self.timeout
  end
end

function M:to_closed()
  self.state = "closed"
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self.admitted = 0
  self.since_close = 0
  self:window_clear()
  self:emit("closed")
end

function M:to_half_open()
  self.state = "half_open"
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self.admitted = 0
  self:emit("half_open")
  if self.max_calls == 0 then
    self:to_closed()
  end
end

-- The lazy moves made at every look at the time: the time window's newest
-- bucket, and open -> half-open.
function M:tick(now)
  if self.window == "time" and self.state ~= "isolated" then
    self:rotate(now)
  end
  if self.state == "open" and now >= self.opened_at
     and now - self.opened_at >= self.timeout then
    self:to_half_open()
  end
end

--- Counting -------------------------------------------------------------------

-- One success or failure (or neutral outcome) of the current state, of a
-- call that took `ms` ms.
function M:count(outcome, now, ms)
  if outcome == "neutral" then
    return
  end
  local st = self.state
  if st == "isolated" then
    return
  end
  local counting = st == "closed" or st == "disabled"
  if counting and self.window then
    local slow = self.slow_call_ms > 0 and ms >= self.slow_call_ms
    self:window_add(outcome == "failure", slow, now)
  end
  if outcome == "success" then
    self.successes = self.successes + 1
    self.lifetime = self.lifetime + 1
    if counting then
      self.failure_count = 0
      self.success_count = self.success_count + 1
    elseif st == "half_open" then
      self.success_count = self.success_count + 1
      if self.success_count >= self.max_calls then
        self:to_closed()
      end
      return
    else
      return
    end
  else
    self.failures = self.failures + 1
    self.since_close = self.since_close + 1
    if counting then
      self.failure_count = self.failure_count + 1
      self.success_count = 0
      if st == "closed" and not self.window
         and self.failure_count >= self.threshold then
        self:to_open(now, "failures")
        return
      end
    elseif st == "half_open" then
      self.failure_count = 1
      self:to_open(now, "failures")
      return
    else
      return
    end
  end
  if st == "closed" and self.window then
    local reason = self:tripped()
    if reason then
      local _, failures = self:window_counts()
      self.failure_count = failures
      self:to_open(now, reason)
    end
  end
end

-- Admits a call: returns its epoch, or nil when rejected.
function M:acquire(now)
  self:tick(now)
  local st = self.state
  if st == "closed" or st == "disabled" then
    return self.epoch
  end
  if st == "half_open" and self.half_open_calls < self.max_calls then
    self.half_open_calls = self.half_open_calls + 1
    self.admitted = self.admitted + 1
    return self.epoch
  end
  if st ~= "isolated" then
    self.rejected = self.rejected + 1
  end
  return nil
end

function M:allow(now)
  self:tick(now)
  local st = self.state
  return st == "closed" or st == "disabled"
    or (st == "half_open" and self.half_open_calls < self.max_calls)
end

-- The result of a call admitted under `epoch`, that took `ms` ms.
function M:record(epoch, outcome, now, ms)
  if epoch ~= self.epoch then
    self.ignored = self.ignored + 1
    return
  end
  if self.state == "half_open" then
    -- admitted under this epoch while half-open: it holds a permit
    if self.half_open_calls <= 0 then
      error("model: a half-open result without a permit")
    end
    self.half_open_calls = self.half_open_calls - 1
  end
  self:count(outcome, now, ms)
end

function M:record_success(now)
  self:tick(now)
  self:count("success", now, 0)
end

function M:record_failure(now)
  self:tick(now)
  self:count("failure", now, 0)
end

function M:reset()
  local was_closed = self.state == "closed"
  self.state = "closed"
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self.admitted = 0
  self.since_close = 0
  self.opened_at = 0
  self.open_reason = nil
  self.rejected = 0
  self.successes = 0
  self.failures = 0
  self.ignored = 0
  self:window_clear()
  if not was_closed then
    self:emit("closed")
  end
end

-- force_open / disable / isolate: `state` is "forced_open", "disabled" or
-- "isolated", which is also the name of its event.
function M:manual(state)
  if self.state == state then
    return
  end
  self.state = state
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self.admitted = 0
  self:window_clear()
  self:emit(state)
end

-- A loop's clock moved to `now`: its half-open timers due by then fire in
-- deadline order (each looks at the breaker at its own deadline).
function M:advance(now)
  local timers = self.timers
  if timers == nil or timers[1] == nil then
    return
  end
  table.sort(timers)
  local keep = {}
  for i = 1, #timers do
    local d = timers[i]
    if d <= now then
      self:tick(d)
    else
      keep[#keep + 1] = d
    end
  end
  self.timers = keep
end

return _M
