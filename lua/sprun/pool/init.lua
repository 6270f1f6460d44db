-- sprun.pool: a supervised pool of worker processes with Snakepit's crash
-- barrier.
--
--   local pool = sprun.pool.start { name = "py", size = 4,
--                                   cmd = { "python3", "worker.py" } }
--   local value, err = pool:call("predict", { x = 1 }, { idempotent = true })
--   pool:drain(5000)
--
-- A worker is any program that speaks the protocol (pool/protocol.lua) on
-- its fd 3 (or stdin and stdout): sprun ships a Python module for it
-- (python/sprun_worker.py, found by workers on PYTHONPATH) and a Lua one,
-- sprun.pool.serve(handlers). Calls are queued and sent by
-- pool/requests.lua; what happens as workers start, answer and die is
-- pool/supervise.lua.

local ffi = require "ffi"
local check = require "sprun.check"
local options = require "sprun.options"
local errors = require "sprun.errors"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"
local registry = require "sprun.telemetry.registry"
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"
local protocol = require "sprun.pool.protocol"
local barrier = require "sprun.pool.barrier"
local worker = require "sprun.pool.worker"
local popts = require "sprun.pool.options"
local stats_m = require "sprun.pool.stats"
local requests = require "sprun.pool.requests"
local Pool = require "sprun.pool.supervise"
local reconfigure = require "sprun.pool.reconfigure"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local next = next
local ipairs = ipairs
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local format = string.format
local now = clock.now
local check_self = check.self
local describe = check.describe

local WHAT = "a pool"
local in_context = kernel.in_context

local _M = {}

-- Where the Python helper is: next to lua/ in the source tree, or under
-- share/sprun once installed. The path is resolved (symlinks and ".."),
-- since Python reads the ".." of a PYTHONPATH entry as text.
do
  pcall(ffi.cdef, [[
    char *realpath(const char *path, char *resolved_path);
    void free(void *ptr);
  ]])
  local function resolved(path)
    local p = ffi.C.realpath(path, nil)
    if p == nil then
      return nil
    end
    local s = ffi.string(p)
    ffi.C.free(p)
    return s
  end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  for _, dir in ipairs { here .. "/../../../python",
                         here .. "/../../../../sprun/python" } do
    local f = io.open(dir .. "/sprun_worker.py")
    if f then
      f:close()
      worker.python_path = resolved(dir) or dir
      break
    end
  end
  _M.python_path = worker.python_path
end

-- Infrastructure failures, which a breaker made from options counts: not
-- the worker's own answers, nor a full queue.
local POOL_FAILURES = { worker_crash = true, timeout = true,
                        queue_timeout = true, pool_failed = true }
local function pool_failure(err)
  return POOL_FAILURES[errors.kind(err)] == true
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do
    s[v] = true
  end
  return s
end

-- Runs `fn(pool)` every `interval(pool)` ms while the pool lives and
-- interval gives one (a reload may turn it off), from the loop. `key`
-- marks the pool while it runs, so that a reload turning it back on
-- starts one timer, never two.
local function every(self, key, interval, fn)
  local function tick()
    local ms = interval(self)
    if self._state == "stopped" or ms == nil then
      self[key] = false
      return
    end
    fn(self)
    kernel.after(interval(self) or ms, tick)
  end
  local ms = interval(self)
  if ms ~= nil and not self[key] then
    self[key] = true
    kernel.after(ms, tick)
  end
end

local function check_rss(self)
  local limit = self._o.max_rss_mb
  for _, slot in ipairs(self._slots) do
    local w = slot.w
    if w and w.state == "ready" and not w.recycle_due then
      local rss = w:rss_mb()
      if rss and rss > limit then
        w.recycle_due = "memory"
        self:_check_recycle(w)
      end
    end
  end
end

local function heartbeat(self)
  local hb = self._o.heartbeat
  local t = now()
  for _, slot in ipairs(self._slots) do
    local w = slot.w
    if w and w.state == "ready" then
      if w.heartbeat then
        if t >= w.heartbeat_deadline then
          w:kill("heartbeat")
        end
      elseif w.n == 0 then
        local id = self._next_id + 1
        self._next_id = id
        w.heartbeat, w.heartbeat_deadline = id, t + hb.timeout_ms
        w:hold(true)
        w:send(protocol.frame(self._o.protocol,
          '{"id":' .. id .. ',"op":"sprun.heartbeat"}'))
      end
    end
  end
end

-- pool.start{ name, size, cmd, ... } (see pool/options.lua): the pool,
-- with its workers starting. Called from a task, which owns the pool: its
-- cancellation stops the pool.
function _M.start(opts)
  local ok, o = options.capture({}, _M._parse, opts, {})
  if not ok then
    error(options.message(o, "pool.start"), 2)
  end
  return _M._start(o, kernel.need_task("pool.start"))
end

-- The options of pool.start checked (raises an option error at `path`),
-- ready for _start.
function _M._parse(opts, path)
  local o = popts.parse(opts, path, health_monitor.is_monitor,
                        circuit_breaker.is_breaker)
  o.crash_barrier.mark = set_of(o.crash_barrier.mark_on)
  return o
end

-- A pool from checked options, owned by `task` (nil: by no task).
function _M._start(o, task)
  local hm = o.health
  if not health_monitor.is_monitor(hm) then
    hm = health_monitor.start_link { name = o.name, pool = o.name,
      crash_window_ms = o.health and o.health.crash_window_ms,
      max_crashes = o.health and o.health.max_crashes, fleet = o.fleet }
  end
  local cb = o.breaker
  if cb ~= nil and not circuit_breaker.is_breaker(cb) then
    local bo = {}
    for k, v in each_key, cb do
      bo[k] = v
    end
    bo.name = bo.name or o.name
    if bo.fleet == nil then
      bo.fleet = o.fleet
    end
    if bo.is_failure == nil then
      bo.is_failure = pool_failure
    end
    cb = circuit_breaker.start_link(bo)
  end
  local self = setmetatable({
    _name = o.name, _o = o, _state = "running", _slots = {},
    _queue = { head = 1, tail = 0 }, _inflight = 0, _next_id = 0,
    _stats = stats_m.new(), _sessions = {}, _nsessions = 0,
    _poison = barrier.poison_registry(o.crash_barrier.taint_ms),
    _restart_times = {}, _waiters = {}, _hm = hm, _cb = cb, _owner = task,
    _ops = {}, _nops = 0, _retrying = 0, _started_at = now(), _live = {},
  }, Pool)
  for i = 1, o.size do
    self._slots[i] = { index = i, id = "worker_" .. i, gen = 0,
                       start_failures = 0, streak = 0 }
  end
  kernel.own(task, self)
  registry.add_pool(self)
  self:_fill()
  self:_timers()
  return self
end

local function rss_interval(self)
  return self._o.max_rss_mb and self._o.rss_check_ms
end

local function heartbeat_interval(self)
  return self._o.heartbeat and self._o.heartbeat.interval_ms
end

-- Starts the periodic checks the options ask for and that do not run.
function Pool:_timers()
  every(self, "_rss_timer", rss_interval, check_rss)
  every(self, "_heartbeat_timer", heartbeat_interval, heartbeat)
end

function _M.is_pool(v)
  return getmetatable(v) == Pool
end

--- Calls -------------------------------------------------------------------

local EMPTY = {}
local CALL_KEYS = { idempotent = true, session = true, timeout_ms = true,
                    key = true, deadline_ms = true }

-- The call's options, checked where the user gave them.
local function call_options(opts)
  if opts == nil then
    return EMPTY
  end
  if type(opts) ~= "table" then
    return nil, "options must be a table, got " .. describe(opts)
  end
  for k in each_key, opts do
    if not CALL_KEYS[k] then
      return nil, "unknown option " .. describe(k) .. " (valid options: "
                  .. "deadline_ms, idempotent, key, session, timeout_ms)"
    end
  end
  for _, k in ipairs { "timeout_ms", "deadline_ms" } do
    local t = opts[k]
    if t ~= nil and (type(t) ~= "number"
                     or not (t >= 0 and t <= check.MS_MAX)) then
      return nil, "option '" .. k .. "' " .. check.expect_number(t, 0) ..
                  ", got " .. describe(t)
    end
  end
  if opts.idempotent ~= nil and type(opts.idempotent) ~= "boolean" then
    return nil, "option 'idempotent' must be a boolean, got "
                .. describe(opts.idempotent)
  end
  local s = opts.session
  if s ~= nil and type(s) ~= "string" and type(s) ~= "number" then
    return nil, "option 'session' must be a string or a number, got "
                .. describe(s)
  end
  if opts.key ~= nil and type(opts.key) ~= "string" then
    return nil, "option 'key' must be a string, got " .. describe(opts.key)
  end
  return opts
end

local function breaker_call(self, op, op_json, args, o)
  local stats = self._stats
  local before = stats.requests
  local ok, v, err = self._cb:_pcall(requests.call, self, op, op_json, args,
                                     o)
  if not ok then
    error(v, 0)
  end
  if stats.requests == before then
    -- Refused by the breaker before it was queued (no wait in between):
    -- still a request, with its error.
    stats.requests = before + 1
    stats:error(err)
  end
  return v, err
end

local adaptive_limit = require "sprun.adaptive_limit"
local adaptive_take, adaptive_settle = adaptive_limit._take,
                                       adaptive_limit._settle

-- A call's values after its permit went back: a raise goes on up.
local function limited_values(ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

local inline = require "sprun.sched.inline"
local deadline_outcome = require("sprun.retry").deadline_outcome

local function within_deadline(self, op, args, o)
  local ms = o.deadline_ms
  local rest = {}
  for k, v in each_key, o do
    if k ~= "deadline_ms" then
      rest[k] = v
    end
  end
  return deadline_outcome(now() + ms, inline.run_child(ms, self.call, 4,
    nil, nil, nil, { self, op, args, rest }))
end

-- Sends `op` with `args` (any JSON value) to a worker and returns its
-- reply's value, or nil and the error. opts: { idempotent, session,
-- timeout_ms, key }.
function Pool.call(self, op, args, opts)
  check_self(self, Pool, "pool.call", WHAT)
  if type(op) ~= "string" or op == "" then
    check.arg_error("pool.call", "op", "must be a non-empty string", op)
  end
  local o, why = call_options(opts)
  if o == nil then
    error("pool.call: " .. why, 2)
  end
  local a, bad = protocol.encode(args)
  if a == nil then
    error("pool.call: args cannot be sent as JSON: " .. bad, 2)
  end
  local op_json = self._ops[op]
  if op_json == nil then
    op_json = protocol.encode(op)
    if self._nops < 256 then
      self._ops[op], self._nops = op_json, self._nops + 1
    end
  end
  kernel.check_caller("pool.call")
  if o.deadline_ms then
    -- One deadline for the call and the crash barrier's retries on other
    -- workers: a child cancelled at it (sprun.deadline caps each wait).
    return sched.in_task(within_deadline, self, op, args, o)
  end
  local call = self._cb and breaker_call or requests.call
  local al = self._o.adaptive_limit
  if al ~= nil then
    -- The adaptive limit comes first: a call past it is refused
    -- (limit_exceeded) before it is queued or counted by the breaker.
    local permit, err = adaptive_take(al)
    if permit == nil then
      self._stats.requests = self._stats.requests + 1
      self._stats:error(err)
      return nil, err
    end
    if in_context() then
      return limited_values(adaptive_settle(al, permit,
                                            pcall(call, self, op, op_json, a,
                                                  o)))
    end
    return limited_values(adaptive_settle(al, permit, pcall(sched.in_task,
      call, self, op, op_json, a, o)))
  end
  -- In a task (the usual case) the call runs right here: sched.in_task's
  -- varargs would keep the JIT off this path.
  if in_context() then
    return call(self, op, op_json, a, o)
  end
  return sched.in_task(call, self, op, op_json, a, o)
end

--- Looking at it -----------------------------------------------------------

local copy = require("sprun.tables").copy

function Pool.stats(self)
  check_self(self, Pool, "pool.stats", WHAT)
  local t = now()
  local ready, busy, starting, tainted, inflight = 0, 0, 0, 0, 0
  for _, slot in ipairs(self._slots) do
    local w = slot.w
    if w then
      if w.state == "ready" then
        ready = ready + 1
        if w.n > 0 then
          busy = busy + 1
        end
      elseif w.state == "starting" then
        starting = starting + 1
      end
    end
    if slot.tainted_until and slot.tainted_until > t then
      tainted = tainted + 1
    end
  end
  local s = self._stats
  local wait, service = s:latencies()
  return {
    name = self._name, state = self._state, size = self._o.size,
    ready = ready, busy = busy, starting = starting, tainted = tainted,
    queued = requests.queued(self), in_flight = self._inflight,
    requests = s.requests, replies = s.replies, errors = copy(s.errors),
    crashes = copy(s.crashes), restarts = s.restarts, recycled = s.recycled,
    dropped_replies = s.dropped_replies, protocol_errors = s.protocol_errors,
    poisoned = s.poisoned, queue_wait_ms = wait, service_ms = service,
    is_healthy = self._hm:is_healthy(),
    adaptive_limit = self._o.adaptive_limit
                     and self._o.adaptive_limit:stats() or nil,
  }
end

local function worker_info(w, slot, t)
  local c = slot.last_crash
  return {
    id = slot.id, pid = w.pid, generation = w.gen, state = w.state,
    requests = w.served, in_flight = w.n, rss_mb = w:rss_mb(),
    max_requests = w.max_requests,
    started_at_ms = w.started_at, ready_at_ms = w.ready_at,
    tainted = slot.tainted_until ~= nil and slot.tainted_until > t,
    last_crash = c and { classification = c.classification, at_ms = c.at_ms,
                         signal = c.signal, exit_code = c.exit_code } or nil,
  }
end

-- One entry per worker process alive: the slots' workers, and the
-- replacements starting while workers are recycled.
function Pool.workers(self)
  check_self(self, Pool, "pool.workers", WHAT)
  local out, t = {}, now()
  for _, slot in ipairs(self._slots) do
    if slot.w then
      out[#out + 1] = worker_info(slot.w, slot, t)
    end
    if slot.next then
      out[#out + 1] = worker_info(slot.next, slot, t)
    end
  end
  return out
end

function Pool.name(self)
  check_self(self, Pool, "pool.name", WHAT)
  return self._name
end

function Pool.health_monitor(self)
  check_self(self, Pool, "pool.health_monitor", WHAT)
  return self._hm
end

function Pool.breaker(self)
  check_self(self, Pool, "pool.breaker", WHAT)
  return self._cb
end

--- Recycling and stopping -------------------------------------------------

-- Replaces worker `id` ("worker_2") now, the replacement first: true, or
-- false when it cannot be now (not ready, or being replaced already).
function Pool.recycle(self, id)
  check_self(self, Pool, "pool.recycle", WHAT)
  local slot
  for _, s in ipairs(self._slots) do
    if s.id == id then
      slot = s
    end
  end
  if slot == nil then
    check.arg_error("pool.recycle", "id", "must be the id of a worker of "
                    .. "the pool (worker_1 to worker_" .. #self._slots .. ")",
                    id)
  end
  local w = slot.w
  if not (w and w.state == "ready") or slot.next then
    return false
  end
  w.recycle_due = "asked"
  self:_check_recycle(w)
  return slot.next ~= nil
end

-- Every worker process still alive (serving, replacing or draining).
local function live_workers(self)
  local list = {}
  for w in each_key, self._live do
    list[#list + 1] = w
  end
  return list
end

-- Stops every worker: SIGTERM, then SIGKILL after stop_timeout_ms. What
-- is queued or in flight ends with kind "closed".
function Pool:_stop_now()
  if self._state == "stopped" then
    return
  end
  self._state = "stopped"
  registry.remove_pool(self)
  kernel.disown(self._owner, self)
  -- The monitor and breaker it made from options leave their fleet.
  local fleet = self._o.fleet
  if fleet ~= nil then
    if not health_monitor.is_monitor(self._o.health) then
      fleet:leave(self._hm)
    end
    if self._cb and not circuit_breaker.is_breaker(self._o.breaker) then
      fleet:leave(self._cb)
    end
  end
  requests.fail_queued(self, requests.error(self, "closed",
                                            "the pool was stopped"))
  local list = live_workers(self)
  for _, w in ipairs(list) do
    w:kill("stop", "SIGTERM")
  end
  if #list > 0 then
    kernel.after(self._o.stop_timeout_ms, function()
      for _, w in ipairs(list) do
        w:kill("stop")
      end
    end)
  end
end

-- Waits in the calling task until `done()`, or until `ms` have passed.
local function wait_until(self, done, ms)
  local task = kernel.need_task("pool.drain")
  local deadline = ms and now() + ms
  if ms then
    kernel.arm(task, ms)
  end
  while not done() and not (deadline and now() >= deadline) do
    local ws = self._waiters
    ws[#ws + 1] = task
    local ok, why = kernel.wait_or_cancel(task)
    if not ok then
      kernel.disarm(task)
      error(why, 0)
    end
  end
  kernel.disarm(task)
end

local function stop_and_reap(self)
  self:_stop_now()
  wait_until(self, function() return next(self._live) == nil end)
  return true
end

-- Stops at once (see _stop_now) and waits until every worker is reaped.
function Pool.stop(self)
  check_self(self, Pool, "pool.stop", WHAT)
  kernel.check_caller("pool.stop")
  return sched.in_task(stop_and_reap, self)
end

local function drain_and_stop(self, ms)
  if self._state == "running" or self._state == "failed" then
    self._state = "draining"
  end
  wait_until(self, function()
    return self._inflight == 0 and requests.queued(self) == 0
           and self._retrying == 0
  end, ms)
  return stop_and_reap(self)
end

-- Takes no more calls, lets the queued and in-flight ones finish (for at
-- most `ms`, default no limit), then stops and reaps every worker.
function Pool.drain(self, ms)
  check_self(self, Pool, "pool.drain", WHAT)
  if ms ~= nil and (type(ms) ~= "number" or not (ms >= 0 and ms <= check.MS_MAX))
  then
    check.arg_error("pool.drain", "ms", check.expect_number(ms, 0), ms)
  end
  kernel.check_caller("pool.drain")
  return sched.in_task(drain_and_stop, self, ms)
end

function Pool.__tostring(self)
  return format("sprun.pool '%s' (%s, %d workers)", self._name, self._state,
                #self._slots)
end

_M._live_error = reconfigure.live_error

-- A sprun script as a worker: see pool/serve.lua.
function _M.serve(handlers)
  return require("sprun.pool.serve").serve(handlers)
end

return _M
