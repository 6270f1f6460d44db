-- A pool's supervision (internal): what the pool does when its workers
-- start, answer, break the protocol and die, and its states ("running",
-- "failed" for a cool-down, "draining", "stopped"). The methods here are
-- the Pool class; pool/init.lua adds the public ones.
--
-- A slot is one place in the pool: { id = "worker_N", gen, w (the worker
-- serving, or starting), next (its replacement while recycling) }. When a
-- worker dies the death is classified (pool/barrier.lua) and recorded in
-- the pool's health monitor, its slot may be tainted, and its requests
-- get the crash (pool/requests.lua decides on a retry). The slot restarts
-- after a backoff; too many restarts in a window, or workers that keep
-- dying before they are ready, fail the pool for a cool-down. Recycling
-- (max_requests, ttl_ms, max_rss_mb) starts the replacement first; the old
-- worker finishes what it has, so capacity never drops.
--
-- The trap: every event comes from the loop's dispatch, where nothing may
-- wait; a reply belongs to the worker process it was sent to
-- (w.inflight), so one that comes after its request timed out, or from a
-- process that was replaced, reaches nobody.

local errors = require "sprun.errors"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"
local telemetry = require "sprun.telemetry"
local protocol = require "sprun.pool.protocol"
local barrier = require "sprun.pool.barrier"
local worker = require "sprun.pool.worker"
local requests = require "sprun.pool.requests"
local pool_events = require "sprun.pool.events"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local tostring = tostring
local random = math.random
local min = math.min
local format = string.format
local now = clock.now
local enabled = telemetry.enabled
local emit = telemetry.emit
local pool_error = requests.error
local finish = requests.finish
local dispatch = requests.dispatch

local TAINTED_EVENT = "snakepit.worker.tainted"
local RESTARTED_EVENT = "snakepit.worker.restarted"
local OUTPUT_EVENT = "sprun.pool.worker_output"
local STARTED_EVENT = pool_events.STARTED
local STOPPED_EVENT = pool_events.STOPPED
local REQUEST_EVENT = pool_events.REQUEST

local Pool = {}
Pool.__index = Pool

--- Starting workers ------------------------------------------------------

local function start_timeout(w)
  if w.state == "starting" then
    w:kill("start_timeout")
  end
end

-- Starts a worker in `slot`: as its worker, or as the replacement of the
-- one serving (`replacing`). Returns the worker or nil.
local function start_worker(self, slot, replacing)
  slot.gen = slot.gen + 1
  local w, err = worker.start(self, slot, slot.gen, self._o)
  if w == nil then
    -- The program cannot run at all: the pool cannot serve.
    self:_fail("cannot start " .. slot.id .. ": " .. tostring(err), nil)
    return nil
  end
  self._live[w] = true
  if replacing then
    slot.next = w
  else
    slot.w = w
  end
  kernel.after(self._o.start_timeout_ms, start_timeout, w)
  return w
end

-- Whether crashed workers are replaced: while the pool runs, and while it
-- drains (the calls it took before still need workers).
local function serving(self)
  return self._state == "running" or self._state == "draining"
end

-- Starts workers for the slots that have none, startup_batch at a time.
local function fill(self)
  if not serving(self) then
    return
  end
  local starting = 0
  for _, slot in ipairs(self._slots) do
    if slot.w and slot.w.state == "starting" then
      starting = starting + 1
    end
  end
  for _, slot in ipairs(self._slots) do
    if starting >= self._o.startup_batch or not serving(self) then
      return
    end
    if slot.w == nil and not slot.waiting then
      start_worker(self, slot)
      starting = starting + 1
    end
  end
end

--- Worker events (see pool/worker.lua) -----------------------------------

local function check_recycle(self, w)
  local slot = w.slot
  if w.recycle_due and slot.w == w and slot.next == nil
     and self._state == "running" and not slot.removed
     and (slot.replace_at == nil or now() >= slot.replace_at) then
    start_worker(self, slot, true)
  end
end

local function stop_when_idle(w)
  if w.state == "draining" and w.n == 0 then
    w:kill("recycle", "SIGTERM")
  end
end

function Pool:_ready(w)
  local slot = w.slot
  w.state = "ready"
  w.ready_at = now()
  w:hold(w.n > 0)
  slot.start_failures = 0
  if slot.next == w then
    -- A recycled worker's replacement is up: it serves, the old one
    -- finishes what it has and stops.
    local old = slot.w
    slot.w, slot.next = w, nil
    self._stats.recycled = self._stats.recycled + 1
    if old then
      old.state = "draining"
      stop_when_idle(old)
      kernel.after(self._o.request_timeout_ms + self._o.stop_timeout_ms,
                   function() old:kill("recycle") end)
    end
    slot.replace_failures = 0
    if self._stale then
      self._stale[old] = nil
      self:_roll_next()
    end
  elseif slot.crashed then
    slot.crashed = false
    if enabled[RESTARTED_EVENT] then
      emit(RESTARTED_EVENT, {}, { pool = self._name, worker_id = slot.id })
    end
  end
  if enabled[STARTED_EVENT] then
    pool_events.worker_started(self, w)
  end
  if self._o.ttl_ms then
    kernel.after(self._o.ttl_ms, function()
      if w.state == "ready" then
        w.recycle_due = "ttl"
        check_recycle(self, w)
      end
    end)
  end
  fill(self)
  dispatch(self)
  self:_wake_waiters()
end

function Pool:_message(w, msg)
  local id = msg.id
  local req = type(id) == "number" and w.inflight[id]
  if not req then
    local hb = w.heartbeat
    if hb and id == hb then
      w.heartbeat = nil
      return
    end
    self._stats.dropped_replies = self._stats.dropped_replies + 1
    return self:_violation(w, type(id) == "number"
      and "a reply to request " .. id .. ", which is not in flight on it"
      or "a message without a request id")
  end
  requests.untrack(self, w, req)
  w.served = w.served + 1
  local e = msg.error
  local err = nil
  if e ~= nil then
    local kind, message, details = "worker_error", nil, nil
    if type(e) == "table" then
      if type(e.kind) == "string" and e.kind ~= "" then
        kind = e.kind
      end
      message = type(e.message) == "string" and e.message or nil
      details = e.details ~= protocol.null and e.details or nil
    end
    err = errors.error(kind, message, details)
    finish(req, false, err)
  else
    local v = msg.ok
    finish(req, true, v ~= protocol.null and v or nil)
  end
  if enabled[REQUEST_EVENT] then
    pool_events.request(self, w, req, err)
  end
  if w.max_requests and w.served >= w.max_requests then
    w.recycle_due = w.recycle_due or "max_requests"
  end
  check_recycle(self, w)
  stop_when_idle(w)
  dispatch(self)
end

function Pool:_violation(w, why, fatal)
  self._stats.protocol_errors = self._stats.protocol_errors + 1
  w.violations = w.violations + 1
  if w.violations == 1 then
    io.stderr:write(w.prefix, "protocol violation: ", why,
                    " (counted; later ones from this worker are not ",
                    "logged)\n")
    io.stderr:flush()
  end
  if fatal then
    w:kill("protocol")
  end
end

function Pool:_output(w, stream, line)
  if enabled[OUTPUT_EVENT] then
    emit(OUTPUT_EVENT, {}, { pool = self._name, worker_id = w.id,
                             stream = stream, line = line })
  end
end

-- The restart delay of a slot after its n-th crash in a row: the list's,
-- or exponential from base_ms to max_ms with equal jitter.
local function backoff(r, n)
  if r.backoff_ms then
    return r.backoff_ms[min(n, #r.backoff_ms)]
  end
  local d = min(r.max_ms, r.base_ms * 2 ^ (n - 1))
  return d / 2 + random() * d / 2
end

-- Records a crash: stats, the health monitor, the taint.
local function record_crash(self, w, info)
  local slot = w.slot
  local stats = self._stats
  local class = info.classification
  stats.crashes[class] = (stats.crashes[class] or 0) + 1
  slot.last_crash = info
  self._last_crash, self._last_tail = info, w:stderr_tail()
  self._hm:record_crash(slot.id, { reason = class })
  local cbo = self._o.crash_barrier
  if cbo.taint_ms > 0 and cbo.mark[class] then
    slot.tainted_until = info.at_ms + cbo.taint_ms
    if enabled[TAINTED_EVENT] then
      emit(TAINTED_EVENT, { duration_ms = cbo.taint_ms },
           { pool = self._name, worker_id = slot.id, reason = class })
    end
  end
end

-- The crash-loop guard, for a crash of a slot's serving worker: the
-- reason to fail the pool, or nil.
local function crash_loop(self, slot, info)
  local r = self._o.restart
  local t = info.at_ms
  local times = self._restart_times
  local kept = {}
  for i = 1, #times do
    if times[i] >= t - r.window_ms then
      kept[#kept + 1] = times[i]
    end
  end
  kept[#kept + 1] = t
  self._restart_times = kept
  if info.before_ready then
    slot.start_failures = slot.start_failures + 1
  end
  if #kept > r.max_restarts then
    return format("%d crashes within %d ms (restart.max_restarts = %d)",
                  #kept, r.window_ms, r.max_restarts)
  elseif slot.start_failures >= self._o.start_failures then
    return format("%s died before it was ready %d times in a row", slot.id,
                  slot.start_failures)
  end
end

function Pool:_exit(w, code, signal)
  local slot = w.slot
  self._live[w] = nil
  local intentional = w.kill_reason == "recycle" or w.kill_reason == "stop"
  local t = now()
  local info = {
    classification = barrier.classify(code, signal,
      not intentional and w.kill_reason or nil, w.oom_before),
    signal = signal, exit_code = code, worker_id = slot.id, pid = w.pid,
    slot = slot, at_ms = t, before_ready = w.ready_at == nil,
  }
  if enabled[STOPPED_EVENT] then
    pool_events.worker_stopped(self, w, code, signal, info.classification)
  end
  if not intentional then
    record_crash(self, w, info)
  end
  -- The requests in flight there get the crash (their callers decide on
  -- a retry), or the end when the pool stopped the worker itself.
  local proc_id = slot.id .. "#" .. w.gen
  for id, req in each_key, w.inflight do
    w.inflight[id] = nil
    self._inflight = self._inflight - 1
    local err
    if intentional then
      err = pool_error(self, "closed", "the pool was stopped")
      finish(req, false, err)
    else
      -- Poison counts only the deaths a request can cause (the classes
      -- that taint): a plain SIGKILL from outside is nobody's fault.
      if self._o.crash_barrier.mark[info.classification]
         and self._poison:crashed(requests.poison_key(req), proc_id, t) then
        self._stats.poisoned = self._stats.poisoned + 1
      end
      err = barrier.crash_error(self._name, slot.id, info, req.attempt)
      finish(req, false, err, info)
    end
    if enabled[REQUEST_EVENT] then
      pool_events.request(self, w, req, err)
    end
  end
  w.n = 0
  self:_wake_waiters()
  if self._stale and self._stale[w] then
    self._stale[w] = nil
  end
  if slot.next == w then
    -- A replacement that died: the old worker goes on serving, and is
    -- replaced again after the restart backoff (at its next reply, or
    -- when the backoff ends), so that a command that cannot start is
    -- not started in a loop.
    slot.next = nil
    if not intentional then
      local n = (slot.replace_failures or 0) + 1
      slot.replace_failures = n
      local delay = backoff(self._o.restart, n)
      slot.replace_at = t + delay
      local old = slot.w
      kernel.after(delay, function()
        if old and slot.w == old then
          check_recycle(self, old)
        end
      end)
    end
    dispatch(self)
    return
  end
  if slot.w ~= w then
    -- A drained worker's end.
    dispatch(self)
    return
  end
  slot.w = nil
  if not serving(self) or intentional or slot.removed then
    fill(self)
    dispatch(self)
    if self._stale then
      self:_roll_next()
    end
    return
  end
  local why = crash_loop(self, slot, info)
  if why then
    if self._state == "draining" then
      -- A drain does not turn into a cool-down (which would reopen the
      -- pool): nothing restarts, and what waits fails now.
      requests.fail_queued(self, pool_error(self, "pool_failed", why))
      self:_wake_waiters()
      dispatch(self)
      return
    end
    self:_fail(why, info)
    return
  end
  slot.crashed = true
  slot.streak = (w.ready_at and t - w.ready_at > self._o.restart.max_ms * 2)
                and 1 or (slot.streak or 0) + 1
  slot.waiting = true
  self._stats.restarts = self._stats.restarts + 1
  kernel.after(backoff(self._o.restart, slot.streak), function()
    slot.waiting = false
    fill(self)
  end)
  dispatch(self)
end

--- States -----------------------------------------------------------------

-- nil, or the error a call gets at once in the pool's state; `retry`: the
-- call was taken before and a crash sends it again, which a drain allows.
function Pool:_refuse(retry)
  local st = self._state
  if st == "running" or (retry and st == "draining") then
    return nil
  elseif st == "failed" then
    if now() < self._failed_until then
      return self._failed_error
    end
    self:_recover()
    return nil
  end
  return pool_error(self, "closed", "the pool is " .. st)
end

function Pool:_fail(why, info)
  self._state = "failed"
  local cooldown = self._o.restart.cooldown_ms
  self._failed_until = now() + cooldown
  self._failed_error = pool_error(self, "pool_failed", why, {
    last_crash = info and {
      worker_id = info.worker_id, classification = info.classification,
      signal = info.signal, exit_code = info.exit_code,
    } or nil,
    stderr_tail = self._last_tail or {}, cooldown_ms = cooldown,
  })
  requests.fail_queued(self, self._failed_error)
  kernel.after(cooldown, function()
    if self._state == "failed" then
      self:_recover()
    end
  end)
end

function Pool:_recover()
  self._state = "running"
  self._restart_times = {}
  for _, slot in ipairs(self._slots) do
    slot.start_failures, slot.streak, slot.waiting = 0, 0, false
  end
  fill(self)
end

-- Wakes the tasks waiting in drain or stop.
function Pool:_wake_waiters()
  local ws = self._waiters
  if ws[1] then
    self._waiters = {}
    for i = 1, #ws do
      kernel.wake_task(ws[i])
    end
  end
end

-- The owning task was cancelled: the pool stops at once.
function Pool:_abort()
  self:_stop_now()
end

Pool._fill = fill
Pool._start_worker = start_worker
Pool._check_recycle = check_recycle

return Pool
