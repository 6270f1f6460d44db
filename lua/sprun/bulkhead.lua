-- Bulkhead: at most max_concurrent calls run at once; up to max_queue more
-- wait their turn (first come, first served), and any beyond that are
-- rejected at once with kind "bulkhead_full".
--
-- A queued call is a task waiting on the loop, never a busy wait: a call
-- that finishes hands its slot straight to the first waiter and wakes it.
--
-- The trap: a waiter can be cancelled after it was handed a slot but
-- before it ran; it must then pass the slot on, or the slot is lost for
-- good.

local check = require "sprun.check"
local options = require "sprun.options"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local clock = require "sprun.clock"

local pcall = pcall
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable
local check_self = check.self
local enabled = telemetry.enabled
local emit = telemetry.emit

local REJECTED_EVENT = "sprun.bulkhead.rejected"
local FULL = "bulkhead_full"
local WHAT = "a bulkhead"

local _M = {}

local mt = { __index = _M }

local SPEC = {
  name = { "string", default = "bulkhead" },
  max_concurrent = { "integer", min = 1, limit = check.UINT32_MAX,
                     default = 10 },
  max_queue = { "integer", min = 0, limit = check.UINT32_MAX, default = 0 },
  -- How long a queued call waits for a slot before it is refused
  -- (bulkhead_full, details.waited_ms); none: as long as it takes.
  max_wait_ms = { "number", min = 0, limit = check.MS_MAX },
}

local parse_options = options.parser("bulkhead.new", SPEC)

function _M.new(opts)
  local o = parse_options(opts)
  return setmetatable({
    _name = o.name,
    _max_concurrent = o.max_concurrent,
    _max_queue = o.max_queue,
    _max_wait_ms = o.max_wait_ms,
    _timed_out = 0,
    _in_flight = 0,
    _max_in_flight = 0,
    _queue = {},      -- waiters { task = t, granted = bool }, oldest first
    _head = 1,        -- the queue is _queue[_head .. _tail]
    _tail = 0,
    _rejected = 0,
    _admitted = 0,
    _full = errors.error(FULL, "bulkhead '" .. o.name .. "' is full",
                         { name = o.name }),
  }, mt)
end

function _M.is_bulkhead(v)
  return getmetatable(v) == mt
end

local function queued(self)
  return self._tail - self._head + 1
end

local function take_slot(self)
  local n = self._in_flight + 1
  self._in_flight = n
  self._admitted = self._admitted + 1
  if n > self._max_in_flight then
    self._max_in_flight = n
  end
end

-- Hands free slots to the waiters at the head of the queue.
local function grant(self)
  local q = self._queue
  while self._in_flight < self._max_concurrent and self._head <= self._tail do
    local w = q[self._head]
    q[self._head] = nil
    self._head = self._head + 1
    if not kernel.is_cancelled(w.task) then
      w.granted = true
      take_slot(self)
      kernel.wake_task(w.task)
    end
  end
  -- An emptied queue starts again at 1 in a new table (the old one may
  -- have grown large); an unused one is left alone.
  if self._head > self._tail and self._head ~= 1 then
    self._queue, self._head, self._tail = {}, 1, 0
  end
end

local function release(self)
  self._in_flight = self._in_flight - 1
  grant(self)
end

local function reject(self)
  self._rejected = self._rejected + 1
  if enabled[REJECTED_EVENT] then
    emit(REJECTED_EVENT, { in_flight = self._in_flight,
                           queued = queued(self) },
         { pool = self._name })
  end
  return nil, self._full
end

-- Takes a free slot if there is one and nobody queues for it: true, else
-- false (nothing done).
local function take(self)
  if self._in_flight < self._max_concurrent and queued(self) == 0 then
    take_slot(self)
    return true
  end
  return false
end

-- Takes waiter w out of the queue (it was neither granted nor woken).
local function unqueue(self, w)
  local q = self._queue
  for i = self._head, self._tail do
    if q[i] == w then
      for j = i, self._tail - 1 do
        q[j] = q[j + 1]
      end
      q[self._tail] = nil
      self._tail = self._tail - 1
      return
    end
  end
end

-- Takes a slot, waiting in the queue if need be. Returns true, or nil and
-- the bulkhead_full error. Only a task can wait: called from another
-- coroutine of a running loop, raises under the name fname.
local function acquire(self, fname)
  if take(self) then
    return true
  end
  local task = kernel.current()
  if task == nil then
    kernel.check_caller(fname)
  end
  if task == nil or queued(self) >= self._max_queue then
    return reject(self)
  end
  local w = { task = task, granted = false }
  local q = self._queue
  self._tail = self._tail + 1
  q[self._tail] = w
  local max_wait = self._max_wait_ms
  local since = max_wait and clock.now()
  if max_wait then
    kernel.arm(task, max_wait)
  end
  while not w.granted do
    local ok, why = pcall(kernel.wait, task)
    if not ok or (why == kernel.WAKE_TIMER and not w.granted) then
      if max_wait then
        kernel.disarm(task)
      end
      if w.granted then
        release(self)
      else
        unqueue(self, w)
      end
      if ok then
        -- Waited max_wait_ms: refused as a full bulkhead is.
        self._timed_out = self._timed_out + 1
        local _, full = reject(self)
        return nil, errors.with_details(full, "waited_ms",
                                        clock.now() - since)
      end
      error(why, 0)
    end
  end
  if max_wait then
    kernel.disarm(task)
  end
  return true
end

local function finish(self, ok, ...)
  release(self)
  if not ok then
    error((...), 0)
  end
  return ...
end

-- For pipelines, which run the call themselves: _take or else _acquire,
-- then _release once whatever was admitted is over.
_M._take = take
_M._acquire = acquire
_M._release = release

local function call_in_task(self, fname, fn, ...)
  local ok, err = acquire(self, fname)
  if not ok then
    return nil, err
  end
  return finish(self, pcall(fn, ...))
end

-- Runs fn(...) in a slot; returns its values, or nil and a bulkhead_full
-- error without running it. A raised error is raised again (the slot is
-- given back first). Outside a task it runs a loop until done.
function _M.call(self, fn, ...)
  check_self(self, mt, "bulkhead.call", WHAT)
  check.func("bulkhead.call", "fn", fn)
  kernel.check_caller("bulkhead.call")
  return sched.in_task(call_in_task, self, "bulkhead.call", fn, ...)
end

function _M.stats(self)
  check_self(self, mt, "bulkhead.stats", WHAT)
  return {
    name = self._name,
    in_flight = self._in_flight,
    queued = queued(self),
    max_in_flight = self._max_in_flight,
    max_concurrent = self._max_concurrent,
    max_queue = self._max_queue,
    max_wait_ms = self._max_wait_ms,
    admitted_count = self._admitted,
    rejected_count = self._rejected,
    timed_out_count = self._timed_out,
  }
end

function _M.name(self)
  check_self(self, mt, "bulkhead.name", WHAT)
  return self._name
end

-- New limits, from options checked by bulkhead.new's rules; the calls in
-- flight and the queue stay. A larger max_concurrent lets waiters in now;
-- a smaller one lets the calls in flight finish.
function _M._reconfigure(self, opts)
  local o = parse_options(opts)
  self._max_wait_ms = o.max_wait_ms
  self._max_concurrent = o.max_concurrent
  self._max_queue = o.max_queue
  grant(self)
end

return _M
