-- Health monitor: tracks worker crashes and decides whether a pool is
-- healthy (fewer than max_crashes crashes in the last crash_window_ms).
--
-- The counting is sp_health_t of runtime/core: O(1) per crash, memory
-- bounded by max_crashes and max_workers. This module maps worker ids
-- (strings or numbers) to the slots of the C monitor and keeps the last
-- few crash reasons of each worker.
--
-- The trap: when the C monitor runs out of slots it forgets the worker
-- idle longest and hands its slot to the new one; the Lua maps must drop
-- that id at once, or two ids would share a slot.

local sp = require "sprun.ffi"
local check = require "sprun.check"
local options = require "sprun.options"
local clock = require "sprun.clock"
local kernel = require "sprun.sched.kernel"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local registry = require "sprun.telemetry.registry"
local fleet_kind = require "sprun.fleet.kind"

local ffi = sp.ffi
local C = sp.C
local type = type
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local check_self = check.self
local check_id = check.id
local arg_error = check.arg_error
local enabled = telemetry.enabled
local emit = telemetry.emit

local CRASH_EVENT = "snakepit.worker.crash"

-- Crash reasons kept per worker.
local REASONS = 4
-- What sp_health_worker_add puts in *evicted when it evicted nobody.
local NO_SLOT = check.UINT32_MAX

local WHAT = "a health monitor"

local _M = {}

local mt = { __index = _M }

local parse_options = options.parser("health_monitor.start_link", {
  name = { "string" },
  pool = { "string", default = "default" },
  crash_window_ms = { "integer", min = 1, limit = check.MS_MAX,
                      default = 60000 },
  max_crashes = { "integer", min = 1, limit = check.UINT32_MAX - 2,
                  default = 10 },
  check_interval_ms = { "integer", min = 1, limit = check.MS_MAX,
                        default = 30000 },
  max_workers = { "integer", min = 1, limit = check.UINT32_MAX,
                  default = 1024 },
  clock = { "function" },
  fleet = { check = fleet_kind.check },
})

function _M.start_link(opts)
  local o = parse_options(opts)
  local h = ffi.gc(ffi.new("sp_health_t"), C.sp_health_close)
  local config = ffi.new("sp_health_config_t", {
    max_crashes = o.max_crashes,
    max_workers = o.max_workers,
    crash_window_ms = o.crash_window_ms,
  })
  local rc = C.sp_health_init(h, config)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end
  local hm = setmetatable({
    _h = h,
    _name = o.name or o.pool,
    _pool = o.pool,
    _check_interval_ms = o.check_interval_ms,
    _clock = clock.reader("health_monitor", o.clock),
    _slots = {},    -- worker id -> slot
    _ids = {},      -- slot -> worker id
    _reasons = {},  -- slot -> ring { head =, n =, [1..REASONS] }
    _slot_out = ffi.new("uint32_t[2]"),
    _worker_out = ffi.new("sp_worker_stats_t"),
  }, mt)
  registry.add_monitor(hm)
  if o.fleet ~= nil then
    hm._fleet = o.fleet
    o.fleet:_join("m", hm._name, hm)
  end
  return hm
end

-- The slot of a worker seen for the first time.
local function add_worker(self, worker_id)
  local out = self._slot_out
  local rc = C.sp_health_worker_add(self._h, out, out + 1)
  if rc < 0 then
    return nil, errors.from_code(rc)
  end
  local slot, evicted = out[0], out[1]
  if evicted ~= NO_SLOT then
    local old = self._ids[evicted]
    if old ~= nil then
      self._slots[old] = nil
      self._ids[evicted] = nil
    end
  end
  self._slots[worker_id] = slot
  self._ids[slot] = worker_id
  self._reasons[slot] = { head = 0, n = 0, false, false, false, false }
  return slot
end

-- Records one crash of `worker_id`; info.reason, if any, is kept. Returns
-- true, or nil and an error if the monitor has no room for a new worker.
-- Every check_interval_ms of a running loop, crashes older than the
-- window are dropped (queries stay exact without it; this keeps the counts
-- read from stats() fresh and frees idle workers' slots for reuse).
local function cleanup(self)
  if self._cleanup_sched ~= kernel.running() then
    self._cleanup_sched = nil
    return
  end
  C.sp_health_expire(self._h, self._clock())
  kernel.after(self._check_interval_ms, cleanup, self)
end

local function arm_cleanup(self)
  local running = kernel.running()
  if running ~= nil and self._cleanup_sched ~= running then
    self._cleanup_sched = running
    kernel.after(self._check_interval_ms, cleanup, self)
  end
end

function _M.record_crash(self, worker_id, info)
  check_self(self, mt, "health_monitor.record_crash", WHAT)
  check_id("health_monitor.record_crash", "worker_id", worker_id)
  if info ~= nil and type(info) ~= "table" then
    arg_error("health_monitor.record_crash", "info", "must be a table or nil",
              info)
  end
  local slot = self._slots[worker_id]
  if slot == nil then
    local err
    slot, err = add_worker(self, worker_id)
    if slot == nil then
      return nil, err
    end
  end
  C.sp_health_record(self._h, slot, self._clock())
  -- Armed once per run: a cleanup armed by an earlier run ended with it.
  if self._cleanup_sched ~= kernel.running() then
    arm_cleanup(self)
  end
  local reason = info and info.reason
  if reason ~= nil then
    local ring = self._reasons[slot]
    local head = ring.head % REASONS + 1
    ring[head] = reason
    ring.head = head
    if ring.n < REASONS then
      ring.n = ring.n + 1
    end
  end
  if enabled[CRASH_EVENT] then
    emit(CRASH_EVENT, {}, { pool = self._pool, worker_id = worker_id,
                            reason = reason })
  end
  return true
end

function _M.is_healthy(self)
  check_self(self, mt, "health_monitor.is_healthy", WHAT)
  return C.sp_health_is_healthy(self._h, self._clock()) == 1
end

function _M.healthy(self)
  check_self(self, mt, "health_monitor.healthy", WHAT)
  return C.sp_health_is_healthy(self._h, self._clock()) == 1
end

-- What the monitor knows of one worker: crash_count, its crashes since it
-- was first seen (Snakepit's lifetime count, which goes only when the
-- worker is forgotten), crashes_in_window, last_crash_ms, the last few
-- reasons, and healthy (crashes_in_window < max_crashes). A worker it does
-- not know (it never crashed, or was forgotten to make room) is healthy
-- with no crash, as in Snakepit.
function _M.worker_health(self, worker_id)
  check_self(self, mt, "health_monitor.worker_health", WHAT)
  check_id("health_monitor.worker_health", "worker_id", worker_id)
  local slot = self._slots[worker_id]
  local w = self._worker_out
  if slot == nil or C.sp_health_worker(self._h, slot, self._clock(), w) < 0
  then
    return { healthy = true, crash_count = 0, crashes_in_window = 0,
             reasons = {} }
  end
  local ring, reasons = self._reasons[slot], {}
  for i = 1, ring.n do
    -- oldest first: the ring's oldest entry follows its head
    reasons[i] = ring[(ring.head - ring.n + i - 1) % REASONS + 1]
  end
  return {
    healthy = w.crashes_in_window < self._h.config.max_crashes,
    crash_count = tonumber(w.total_crashes),
    crashes_in_window = w.crashes_in_window,
    last_crash_ms = tonumber(w.last_crash_ms),
    reasons = reasons,
  }
end

function _M.stats(self)
  check_self(self, mt, "health_monitor.stats", WHAT)
  local h = self._h
  local in_window = C.sp_health_expire(h, self._clock())
  local s = {
    pool = self._pool,
    name = self._name,
    total_crashes = tonumber(h.total_crashes),
    crashes_in_window = in_window,
    workers_with_crashes = h.workers_with_crashes,
    max_crashes = h.config.max_crashes,
    crash_window_ms = tonumber(h.config.crash_window_ms),
    is_healthy = in_window < h.config.max_crashes,
  }
  if self._fleet ~= nil then
    -- In a fleet: its crashes in the window beside these (fleet/members).
    return self._fleet:_monitor_stats(self, s)
  end
  return s
end

-- The fleet the monitor is in, or nil.
function _M.fleet(self)
  check_self(self, mt, "health_monitor.fleet", WHAT)
  return self._fleet
end

function _M.is_monitor(v)
  return getmetatable(v) == mt
end

function _M.name(self)
  check_self(self, mt, "health_monitor.name", WHAT)
  return self._name
end

return _M
