-- Reference model of the circuit breaker, in plain Lua, written from
-- DESIGN.md (sprun.circuit_breaker) and the comments of sprun.h; it shares
-- no code with runtime/core/breaker.c.
--
-- Rules (consecutive-failure mode, the only mode there is):
--  * closed: every call is admitted; failure_threshold consecutive failures
--    open it; a success resets the failure count.
--  * open: every call is rejected (and counted in rejected_count); once
--    reset_timeout_ms have passed since it opened (now - opened_at >=
--    timeout; a clock before opened_at never counts as elapsed), the next
--    look at it (state, allow, call, stats, a manual record) turns it
--    half-open first. With half_open_max_calls = 0 it closes at once.
--  * half-open: at most half_open_max_calls calls in flight; a call's
--    permit comes back when it finishes, whatever its outcome;
--    half_open_max_calls successes close it; any failure re-opens it, with
--    failure_count = 1 and the timeout restarted.
--  * every transition and every reset starts a new epoch (the C
--    generation); a result is counted only under the epoch its call was
--    admitted in, else it is ignored (ignored_count).
--  * a neutral outcome (is_failure said no) counts nowhere but still gives
--    back a half-open permit.
--  * manual record_success/record_failure look at the time first, count
--    like a result of the current state, and give back no permit; reaching
--    an open breaker they count in the totals only.
--  * reset closes and zeroes every count (the totals and rejected_count
--    too); it reports "closed" only if it was not closed already.
--
-- Every transition is appended to self.ev_names ("opened" | "half_open" |
-- "closed") and self.ev_counts (failure_count right after it), in the order
-- they happen; self.nevents counts them until clear_events().

local M = {}
M.__index = M

local _M = {}

function _M.new(threshold, max_calls, timeout)
  return setmetatable({
    threshold = threshold,
    max_calls = max_calls,
    timeout = timeout,
    state = "closed",
    epoch = 0,
    failure_count = 0,
    success_count = 0,
    half_open_calls = 0,
    opened_at = 0,
    rejected = 0,
    successes = 0,
    failures = 0,
    ignored = 0,
    ev_names = {},
    ev_counts = {},
    nevents = 0,
    -- deadlines of the half-open timers a loop would arm (virtual runs)
    timers = nil,
  }, M)
end

function M:emit(name)
  local n = self.nevents + 1
  self.nevents = n
  self.ev_names[n] = name
  self.ev_counts[n] = self.failure_count
end

function M:clear_events()
  self.nevents = 0
end

function M:to_open(now)
  self.state = "open"
  self.epoch = self.epoch + 1
  self.opened_at = now
  self.success_count = 0
  self.half_open_calls = 0
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
  self:emit("closed")
end

function M:to_half_open()
  self.state = "half_open"
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self:emit("half_open")
  if self.max_calls == 0 then
    self:to_closed()
  end
end

-- The lazy open -> half-open move.
function M:tick(now)
  if self.state == "open" and now >= self.opened_at
     and now - self.opened_at >= self.timeout then
    self:to_half_open()
  end
end

function M:count(outcome, now)
  if outcome == "success" then
    self.successes = self.successes + 1
    if self.state == "closed" then
      self.failure_count = 0
      self.success_count = self.success_count + 1
    elseif self.state == "half_open" then
      self.success_count = self.success_count + 1
      if self.success_count >= self.max_calls then
        self:to_closed()
      end
    end
  elseif outcome == "failure" then
    self.failures = self.failures + 1
    if self.state == "closed" then
      self.failure_count = self.failure_count + 1
      self.success_count = 0
      if self.failure_count >= self.threshold then
        self:to_open(now)
      end
    elseif self.state == "half_open" then
      self.failure_count = 1
      self:to_open(now)
    end
  end
  -- "neutral": not the breaker's business
end

-- Admits a call: returns its epoch, or nil when rejected.
function M:acquire(now)
  self:tick(now)
  local st = self.state
  if st == "closed" then
    return self.epoch
  end
  if st == "half_open" and self.half_open_calls < self.max_calls then
    self.half_open_calls = self.half_open_calls + 1
    return self.epoch
  end
  self.rejected = self.rejected + 1
  return nil
end

function M:allow(now)
  self:tick(now)
  local st = self.state
  return st == "closed"
    or (st == "half_open" and self.half_open_calls < self.max_calls)
end

-- The result of a call admitted under `epoch`.
function M:record(epoch, outcome, now)
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
  self:count(outcome, now)
end

function M:record_success(now)
  self:tick(now)
  self:count("success", now)
end

function M:record_failure(now)
  self:tick(now)
  self:count("failure", now)
end

function M:reset()
  local was_closed = self.state == "closed"
  self.state = "closed"
  self.epoch = self.epoch + 1
  self.failure_count = 0
  self.success_count = 0
  self.half_open_calls = 0
  self.opened_at = 0
  self.rejected = 0
  self.successes = 0
  self.failures = 0
  self.ignored = 0
  if not was_closed then
    self:emit("closed")
  end
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
