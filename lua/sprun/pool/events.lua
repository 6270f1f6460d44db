-- A pool's telemetry (internal): the events of its workers' lives and of
-- the requests they serve.
--
--   sprun.pool.worker_started  a worker process said it is ready
--   sprun.pool.worker_stopped  a worker process is gone, whatever ended it
--   sprun.pool.request         a request sent to a worker ended there
--
-- The emit sites (pool/supervise.lua, pool/requests.lua) check
-- telemetry.enabled[...] before they call in here, so that with no
-- handler an event costs one table lookup; nothing here runs then.
--
-- The trap: `ready` and `busy` are counted after the change the event
-- reports, from the slots' serving workers as pool:stats() counts them
-- (ready here is the idle ones: stats().ready is ready + busy).

local telemetry = require "sprun.telemetry"
local clock = require "sprun.clock"
local errors = require "sprun.errors"

local emit = telemetry.emit
local now = clock.now
local ticks_ns = clock.ticks_ns
local kind_of = errors.kind

local _M = {}

local STARTED = "sprun.pool.worker_started"
local STOPPED = "sprun.pool.worker_stopped"
local REQUEST = "sprun.pool.request"
_M.STARTED, _M.STOPPED, _M.REQUEST = STARTED, STOPPED, REQUEST

-- The serving workers that are ready and idle, and those ready and busy.
local function counts(pool)
  local ready, busy = 0, 0
  local slots = pool._slots
  for i = 1, #slots do
    local w = slots[i].w
    if w and w.state == "ready" then
      if w.n > 0 then
        busy = busy + 1
      else
        ready = ready + 1
      end
    end
  end
  return ready, busy
end

-- Requests waiting in the pool's queue (requests.queued).
local function queued(pool)
  local q = pool._queue
  local n = 0
  for i = q.head, q.tail do
    if q[i].state == "queued" then
      n = n + 1
    end
  end
  return n
end
_M.queued = queued

-- Worker w is up and takes requests.
function _M.worker_started(pool, w)
  local ready, busy = counts(pool)
  emit(STARTED, { pid = w.pid, ready = ready, busy = busy },
       { pool = pool._name, worker_id = w.id })
end

-- Worker w's process is gone: it exited with `code`, or was killed by
-- `signal` (a name); `class` is its death's class (pool/barrier.lua).
-- The reason is "stopped" (the pool stopped), "recycled" (replaced:
-- recycling, a shrink, a new command) or "crashed" (any other death,
-- those the pool caused for a timeout, a heartbeat or the protocol
-- included; classification says which).
function _M.worker_stopped(pool, w, code, signal, class)
  local why = w.kill_reason
  local reason, classification = "crashed", class
  if why == "stop" then
    reason, classification = "stopped", nil
  elseif why == "recycle" then
    reason, classification = "recycled", nil
  end
  local ready, busy = counts(pool)
  emit(STOPPED, {
    pid = w.pid, lifetime_ms = now() - w.started_at, ready = ready,
    busy = busy, code = code,
  }, {
    pool = pool._name, worker_id = w.id, reason = reason,
    classification = classification, signal = signal,
  })
end

-- The time a request is sent, for its event's duration_ms (sent while no
-- handler listened: 0).
_M.ticks_ns = ticks_ns

-- Request `req`, sent to worker w, ended: with its reply's value (err
-- nil) or with `err` (the worker's error, its crash, a timeout, ...).
function _M.request(pool, w, req, err)
  local sent = req.sent_ns
  local ready, busy = counts(pool)
  emit(REQUEST, {
    duration_ms = sent and (ticks_ns() - sent) / 1e6 or 0, ready = ready,
    busy = busy, queued = queued(pool),
  }, {
    pool = pool._name, worker_id = w.id,
    outcome = err == nil and "ok" or kind_of(err),
  })
end

return _M
