-- A pool's requests (internal): the queue, the choice of a worker, the
-- wait of the caller with its two timeouts (queue_timeout_ms while queued,
-- the request's own once sent), and the crash barrier's retry loop.
--
-- A request is { id, op, json (the framed JSON), task, state = "queued" |
-- "sent" | "done", worker, attempt, ok, value, crash }. The caller waits
-- in its own task; whatever ends the request (a reply, the worker's
-- death, the pool failing) sets its outcome and wakes the task.
--
-- The trap: the caller's timer is re-armed when the request is sent,
-- possibly in the same turn as the old one fired; a wake by the timer
-- counts only once the request's own deadline has passed.

local check = require "sprun.check"
local errors = require "sprun.errors"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"
local protocol = require "sprun.pool.protocol"
local telemetry = require "sprun.telemetry"
local pool_events = require "sprun.pool.events"

local type = type
local ipairs = ipairs
local error = error
local min = math.min
local format = string.format
local now = clock.now
local wait_or_cancel = kernel.wait_or_cancel
local wake_task = kernel.wake_task
local WAKE_TIMER = kernel.WAKE_TIMER
local enabled = telemetry.enabled
local REQUEST_EVENT = pool_events.REQUEST

local _M = {}

function _M.error(pool, kind, message, details)
  return errors.error(kind, "pool '" .. pool._name .. "': " .. message,
                      details)
end
local pool_error = _M.error

-- Ends a request with its outcome and wakes its caller.
function _M.finish(req, ok, value, crash)
  if req.state == "done" then
    return
  end
  req.state = "done"
  req.ok, req.value, req.crash = ok, value, crash
  wake_task(req.task)
end
local finish = _M.finish

-- Takes `req` off its worker's books.
function _M.untrack(pool, w, req)
  if w.inflight[req.id] == req then
    w.inflight[req.id] = nil
    w.n = w.n - 1
    pool._inflight = pool._inflight - 1
    if w.n == 0 then
      w:hold(w.state == "starting")
    end
    if pool._state == "draining" then
      pool:_wake_waiters()
    end
  end
end
local untrack = _M.untrack

-- Whether worker w can take one more request now.
local function has_room(pool, w)
  return w ~= nil and w.state == "ready" and w.n < pool._o.concurrency
end

-- The ready worker to send `req` to: one with room, untainted (unless
-- every ready worker is tainted), preferring the session's worker and,
-- for a retry, another slot than the one that crashed; nil when none has
-- room now.
local function pick(pool, req)
  if req.strict then
    local w = req.strict.w
    return has_room(pool, w) and w or nil
  end
  local t = now()
  local want = req.session and pool._sessions[req.session]
  local best, best_score
  for _, slot in ipairs(pool._slots) do
    local w = slot.w
    if has_room(pool, w) then
      -- Taint outweighs the retry's avoidance, which outweighs the
      -- session, which outweighs the load (w.n <= concurrency < 1e8).
      local score = w.n
      if slot.tainted_until and slot.tainted_until > t then
        score = score + 4e8
      end
      if req.avoid == slot then
        score = score + 2e8
      end
      if want == slot then
        score = score - 1e8
      end
      if best == nil or score < best_score then
        best, best_score = w, score
      end
    end
  end
  return best
end

local MAX_SESSIONS = 10000

local function remember_session(pool, session, slot)
  local s = pool._sessions
  if s[session] == nil then
    pool._nsessions = pool._nsessions + 1
    if pool._nsessions > MAX_SESSIONS then
      s = {}
      pool._sessions = s
      pool._nsessions = 1
    end
  end
  s[session] = slot
end

local function send(pool, w, req)
  local t = now()
  req.state = "sent"
  req.worker = w
  req.sent_at = t
  w.inflight[req.id] = req
  w.n = w.n + 1
  pool._inflight = pool._inflight + 1
  if w.n == 1 then
    w:hold(true)
  end
  w:send(req.json)
  if enabled[REQUEST_EVENT] then
    req.sent_ns = pool_events.ticks_ns()
  end
  pool._stats:queue_wait(t - req.queued_at)
  if req.session then
    remember_session(pool, req.session, w.slot)
  end
  -- From now on the request's own timeout runs, within its caller's
  -- deadline (sprun.deadline) if that comes first.
  local hard = req.hard_deadline
  if hard and hard - t < req.timeout_ms then
    req.timeout_ms = hard > t and hard - t or 0
  end
  kernel.disarm(req.task)
  req.deadline = t + req.timeout_ms
  kernel.arm(req.task, req.timeout_ms)
end

-- Sends what waits to the workers that have room, oldest first; a request
-- bound to one busy worker (strict affinity) lets the others by. A
-- request sent out of turn leaves its entry behind, which is dropped when
-- it reaches the head.
function _M.dispatch(pool)
  local q = pool._queue
  local i = q.head
  while i <= q.tail do
    local req = q[i]
    if req.state == "queued" then
      local w = pick(pool, req)
      if w then
        send(pool, w, req)
      elseif not req.strict then
        -- Nobody has room: the rest waits too.
        break
      end
    end
    if i == q.head and req.state ~= "queued" then
      q[i] = nil
      q.head = i + 1
    end
    i = i + 1
  end
  if q.head > q.tail then
    q.head, q.tail = 1, 0
  end
end
local dispatch = _M.dispatch

-- Requests waiting in the queue (counted in events.lua, which the
-- pool's events need it for).
_M.queued = pool_events.queued
local queued = _M.queued

-- Waits for `req` to be answered: true, or false and the timeout error.
local function await(pool, req, task)
  while req.state ~= "done" do
    local ok, why = wait_or_cancel(task)
    if not ok then
      -- Cancelled: a queued request leaves the queue; one in flight stops
      -- for real, with its worker.
      kernel.disarm(task)
      if req.state == "sent" then
        local w = req.worker
        untrack(pool, w, req)
        w:kill("timeout")
        if enabled[REQUEST_EVENT] then
          pool_events.request(pool, w, req, why)
        end
      end
      req.state = "done"
      if pool._state == "draining" then
        pool:_wake_waiters()
      end
      -- The call ends here: counted, as every end of a call is.
      pool._stats:error(why)
      error(why, 0)
    end
    if why == WAKE_TIMER and req.state ~= "done" and now() >= req.deadline
    then
      if req.state == "queued" then
        req.state = "done"
        if pool._state == "draining" then
          pool:_wake_waiters()
        end
        return false, pool_error(pool, "queue_timeout", format(
          "no worker took the request within %s ms",
          check.shortest(req.queue_wait_ms, 6)),
          { queue_timeout_ms = req.queue_wait_ms })
      end
      local w = req.worker
      untrack(pool, w, req)
      req.state = "done"
      -- The work stops with its process (it may be stuck in C code).
      w:kill("timeout")
      local err = pool_error(pool, errors.TIMEOUT, format(
        "%s did not answer within %s ms (killed)", w.id,
        check.shortest(req.timeout_ms, 6)),
        { timeout_ms = req.timeout_ms, worker_id = w.id, pid = w.pid })
      if enabled[REQUEST_EVENT] then
        pool_events.request(pool, w, req, err)
      end
      return false, err
    end
  end
  kernel.disarm(task)
  return true
end

-- The key a request is known by for poison: its own, or the op and its
-- JSON args.
local function key_of(key, op, args)
  return key or op .. "\0" .. args
end

-- One attempt of a call: the request, done; or nil and the error it got
-- before it could be queued.
local function attempt(pool, task, op, op_json, args, o, n, avoid)
  local id = pool._next_id + 1
  pool._next_id = id
  local o_pool = pool._o
  local req = {
    id = id, op = op, json = protocol.frame(o_pool.protocol,
      '{"id":' .. id .. ',"op":' .. op_json .. ',"args":' .. args .. "}"),
    task = task, state = "queued", queued_at = now(), attempt = n,
    avoid = avoid, session = o.session, key = o.key, op = op,
    args = args,
    timeout_ms = o.timeout_ms or o_pool.request_timeout_ms,
    hard_deadline = kernel.deadline(),
  }
  if o.session ~= nil and o_pool.affinity ~= "hint" then
    local slot = pool._sessions[o.session]
    if slot then
      if o_pool.affinity == "strict_fail_fast" and not has_room(pool, slot.w)
      then
        return nil, pool_error(pool, "worker_busy", "the session's worker "
          .. slot.id .. " has no room now (affinity = strict_fail_fast)",
          { worker_id = slot.id })
      end
      req.strict = slot
    end
  end
  local q = pool._queue
  local w = (q.head > q.tail or req.strict) and pick(pool, req)
  if w then
    send(pool, w, req)
  else
    if queued(pool) >= o_pool.max_queue then
      return nil, pool_error(pool, "pool_saturated", format(
        "%d requests queued already (max_queue)", o_pool.max_queue),
        { max_queue = o_pool.max_queue })
    end
    -- Nor past its caller's deadline.
    local wait = kernel.capped(o_pool.queue_timeout_ms)
    req.queue_wait_ms = wait
    req.deadline = req.queued_at + wait
    kernel.arm(task, wait)
    q.tail = q.tail + 1
    q[q.tail] = req
  end
  local ok, err = await(pool, req, task)
  if not ok then
    return nil, err
  end
  return req
end

-- The pause before a retry, in the caller's task; a cancellation meanwhile
-- ends the call, counted like any other end (sched.sleep would raise it
-- past the stats).
-- A drain waits for the calls in that pause too (pool._retrying).
local function backoff(pool, task, ms)
  pool._retrying = pool._retrying + 1
  kernel.arm(task, ms)
  while true do
    local ok, why = wait_or_cancel(task)
    if not ok then
      kernel.disarm(task)
      pool._retrying = pool._retrying - 1
      pool._stats:error(why)
      if pool._state == "draining" then
        pool:_wake_waiters()
      end
      error(why, 0)
    end
    if why == WAKE_TIMER then
      pool._retrying = pool._retrying - 1
      return
    end
  end
end

-- The values of a call, made in the caller's task: attempts on workers
-- until one answers, a retry after a crash only where the crash barrier
-- allows it.
function _M.call(pool, op, op_json, args, o)
  local task = kernel.current()
  local stats = pool._stats
  stats.requests = stats.requests + 1
  local cb = pool._o.crash_barrier
  local n, avoid = 0, nil
  while true do
    local err = pool:_refuse(n > 0)
    if err == nil and not pool._poison:empty() then
      if pool._poison:is_poison(key_of(o.key, op, args), now()) then
        err = pool_error(pool, "poison_request", "the request crashed two "
          .. "workers and is refused for " .. cb.taint_ms .. " ms",
          { key = o.key, taint_ms = cb.taint_ms })
      end
    end
    local req
    if err == nil then
      req, err = attempt(pool, task, op, op_json, args, o, n, avoid)
    end
    if n > 0 and err ~= nil and pool._state == "draining" then
      -- A retry refused: the drain may be waiting for this call.
      pool:_wake_waiters()
    end
    if req and req.ok then
      stats.replies = stats.replies + 1
      stats:service(now() - req.sent_at)
      return req.value
    end
    if req then
      err = req.value
    end
    local crash = req and req.crash
    if crash then
      local may = (cb.retry == "always"
                   or (cb.retry == "idempotent" and o.idempotent == true))
                  and n < cb.max_retries
      if may and pool._poison:is_poison(key_of(o.key, op, args), now()) then
        -- Not retried into a third worker.
        err = errors.error("poison_request", "pool '" .. pool._name
          .. "': the request crashed two workers and is refused for "
          .. cb.taint_ms .. " ms (last: " .. tostring(err.message) .. ")",
          { key = o.key, taint_ms = cb.taint_ms, crash = err.details },
          err)
        may = false
      end
      if not may then
        stats:error(err)
        return nil, err
      end
      n = n + 1
      avoid = crash.slot
      backoff(pool, task, cb.backoff_ms[min(n, #cb.backoff_ms)])
    else
      stats:error(err)
      return nil, err
    end
  end
end

-- Fails every queued request with `err` (the pool failed or stopped).
function _M.fail_queued(pool, err)
  local q = pool._queue
  for i = q.head, q.tail do
    if q[i].state == "queued" then
      finish(q[i], false, err)
    end
  end
  q.head, q.tail = 1, 0
end

function _M.poison_key(req)
  return key_of(req.key, req.op, req.args)
end
return _M
