-- sprun.fleet: breakers and health monitors that share what they see
-- across the hosts of a fleet, through Redis.
--
--   local f = sprun.fleet.connect { redis = "redis://127.0.0.1:6379/0" }
--   local cb = sprun.circuit_breaker.new { name = "db", fleet = f }
--
-- Once per interval each node sends one EVALSHA (fleet/script.lua) with
-- its members' running totals and states, and gets back the fleet's view:
-- live nodes, open votes, counts over the window, whether the fleet is
-- open and who holds its probe lease. fleet/members.lua applies it to the
-- local breakers between calls: a call reads only local memory.
--
-- Redis down, slow or cut off: after 3 missed intervals every member acts
-- purely locally again (sprun.fleet.degraded), and joins the fleet's view
-- again at the first sync that works (sprun.fleet.recovered).
--
-- The rule: nothing about a fleet is on a call's path, and nothing in a
-- run waits for Redis but the fleet's own sync task and the manual
-- controls (force_open, disable, release) called from a task.

local core = require "sprun.core"
local check = require "sprun.check"
local options = require "sprun.options"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"
local errors = require "sprun.errors"
local registry = require "sprun.telemetry.registry"
local circuit_breaker = require "sprun.circuit_breaker"
local redis = require "sprun.io.redis"
local kind = require "sprun.fleet.kind"
local members = require "sprun.fleet.members"
local sync = require "sprun.fleet.sync"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local pcall = pcall
local error = error
local ipairs = ipairs
local setmetatable = setmetatable
local tostring = tostring
local format = string.format
local find = string.find
local describe = check.describe
local now = clock.now

local _M = {}

local Fleet = kind.mt
local WHAT = "a fleet"

local function check_url(v)
  local host, why = redis.parse_url(v)
  if host == nil then
    return why
  end
end

local function check_node_id(v)
  if type(v) ~= "string" or v == "" or #v > 200 or find(v, "[%s%c]") then
    return "must be a string of 1 to 200 characters with no space"
  end
end

local function check_quorum(v)
  if type(v) ~= "table" then
    return "must be a table { min_nodes, min_share }"
  end
  for k, x in each_key, v do
    if k ~= "min_nodes" and k ~= "min_share" then
      return "is not a key of a quorum (valid keys: min_nodes, min_share)",
             "quorum." .. tostring(k), describe(x)
    end
  end
  local n, share = v.min_nodes, v.min_share
  if n ~= nil and (type(n) ~= "number" or n % 1 ~= 0 or n < 2 or n > 1e6)
  then
    return "must be a whole number from 2 to 1000000 (one node never opens "
           .. "another)", "quorum.min_nodes", describe(n)
  end
  if share ~= nil and (type(share) ~= "number" or not (share > 0)
                       or share > 1) then
    return "must be a number > 0 and <= 1", "quorum.min_share",
           describe(share)
  end
end

local parse_connect = options.parser("fleet.connect", {
  redis = { check = check_url, required = true },
  node_id = { check = function(v)
    if v ~= nil then
      return check_node_id(v)
    end
  end },
  interval_ms = { "integer", min = 10, limit = check.MS_MAX, default = 1000 },
  timeout_ms = { "integer", min = 1, limit = check.MS_MAX, default = 200 },
  quorum = { check = function(v)
    if v ~= nil then
      return check_quorum(v)
    end
  end },
  window_ms = { "integer", min = 1, limit = check.MS_MAX },
  prefix = { "string", default = "sprun:fleet:" },
})

-- hostname:pid, what names this node unless node_id is given.
local function default_node_id()
  local host = core.hostname() or "localhost"
  return (host:gsub("[%s%c]", "_")) .. ":" .. core.pid()
end

local function close(self)
  if self.closed then
    return
  end
  self.closed = true
  self.state = "closed"
  for _, m in ipairs(self:_list()) do
    members.release(m)
  end
  if self.syncing and self.syncing ~= kernel.current() then
    -- A sync in flight ends now: its connection is closed under it.
    self.syncing = false
  end
  if self.conn then
    self.conn:close()
    self.conn = nil
  end
  kernel.wake(self)
  registry.remove_breaker(self.guard)
  registry.remove_fleet(self)
end

-- connect{ redis = "redis://[[user]:password@]host[:port][/db]",
-- node_id = "<hostname>:<pid>", interval_ms = 1000, timeout_ms = 200,
-- quorum = { min_nodes = 2, min_share = 0.5 }, window_ms = 10 intervals,
-- prefix = "sprun:fleet:" } -> fleet. Returns at once: the first sync
-- runs beside the caller (fleet:sync() waits for one).
function _M.connect(opts)
  local o = parse_connect(opts)
  if kernel.running() == nil then
    error("fleet.connect: must be called inside a running loop (sprun.run "
          .. "or a script run by sprun)", 2)
  end
  local q = o.quorum or {}
  local node = o.node_id or default_node_id()
  local self = setmetatable({
    url = o.redis, node_id = node, interval_ms = o.interval_ms,
    timeout_ms = o.timeout_ms, prefix = o.prefix,
    quorum = { min_nodes = q.min_nodes or 2, min_share = q.min_share or 0.5 },
    window_ms = o.window_ms or 10 * o.interval_ms,
    expire_ms = sync.MISSED * o.interval_ms,
    -- A lease outlives a silent holder by the same 3 intervals.
    lease_ms = sync.MISSED * o.interval_ms,
    _by_key = {}, _by_obj = {}, _order = {}, _dirty = false, _cached = {},
    state = "connecting", closed = false, degraded = false, syncing = false,
    started_at = now(), synced_at = nil, round_trip_ms = nil,
    syncs = 0, sync_failures = 0, degradations = 0, last_error = nil,
    redis_time_ms = nil,
    -- The version of its syncs (sync.lua): wall-clock seconds now, then
    -- the monotonic clock of each sync.
    boot = string.format("%d", os.time()), clock_ms = 0,
  }, Fleet)
  self.guard = circuit_breaker.start_link {
    name = "sprun.fleet:" .. node, failure_threshold = 3,
    reset_timeout_ms = 4 * o.interval_ms,
  }
  registry.add_fleet(self)
  kernel.at_run_end(close, self)
  sync.start(self)
  return self
end

function _M.is_fleet(v)
  return kind.is_fleet(v)
end

--- Members -------------------------------------------------------------------

-- The members in the order they joined (a list rebuilt after a change).
function Fleet:_list()
  if self._dirty then
    local list = {}
    for _, m in ipairs(self._order) do
      if self._by_obj[m.obj] == m then
        list[#list + 1] = m
      end
    end
    self._order = list
    self._dirty = false
  end
  return self._order
end

-- A breaker ("b") or monitor ("m") named `name` joins; one of the same
-- kind and name already in the fleet leaves it (a policy reload, a pool
-- restarted under its name).
function Fleet:_join(k, name, obj)
  local key = k .. name
  local old = self._by_key[key]
  if old ~= nil then
    self:_drop(old)
  end
  local m = members.new(k, name, obj, self.prefix)
  self._by_key[key] = m
  self._by_obj[obj] = m
  local order = self._order
  order[#order + 1] = m
  return m
end

function Fleet:_drop(m)
  self._by_key[m.kind .. m.name] = nil
  self._by_obj[m.obj] = nil
  self._dirty = true
  members.release(m)
end

-- A breaker or monitor leaves the fleet and acts alone from now on.
-- Returns true if it was a member.
function Fleet:leave(obj)
  check.self(self, Fleet, "fleet.leave", WHAT)
  local m = self._by_obj[obj]
  if m == nil then
    return false
  end
  self:_drop(m)
  obj._fleet = nil
  return true
end

-- Breaker `obj` closed or opened: if it was the fleet's probe, the
-- outcome is published now rather than at the next interval, so that the
-- other nodes close within one interval of the probe's success.
function Fleet:_settled(obj)
  local m = self._by_obj[obj]
  if m ~= nil and m.probing ~= nil then
    sync.soon(self)
  end
end

function Fleet:_monitor_stats(hm, s)
  local m = self._by_obj[hm]
  if m == nil or self.degraded or self.closed then
    m = { view = nil }
  end
  return members.monitor_stats(m, s)
end

--- Reading ---------------------------------------------------------------

-- The fleet's view of the breaker (or, with kind "monitor", the monitor)
-- named `name`, as of the last sync: nil before the first, or when it is
-- not a member.
local KINDS = { breaker = "b", monitor = "m", rate_limiter = "r" }

function Fleet:view(name, what)
  check.self(self, Fleet, "fleet.view", WHAT)
  check.string("fleet.view", "name", name)
  local kind = what == nil and "b" or KINDS[what]
  if kind == nil then
    check.arg_error("fleet.view", "kind", 'must be "breaker", "monitor" or '
                    .. '"rate_limiter"', what)
  end
  local m = self._by_key[kind .. name]
  if m == nil then
    return nil
  end
  return members.view(m, self.degraded)
end

function Fleet:stats()
  check.self(self, Fleet, "fleet.stats", WHAT)
  local list = self:_list()
  local live = 0
  for _, m in ipairs(list) do
    if m.view and m.view.live > live then
      live = m.view.live
    end
  end
  return {
    node_id = self.node_id,
    state = self.state,
    members = #list,
    live_nodes = live,
    interval_ms = self.interval_ms,
    staleness_ms = self.synced_at and now() - self.synced_at or nil,
    round_trip_ms = self.round_trip_ms,
    missed_intervals = sync.missed(self),
    syncs = self.syncs,
    sync_failures = self.sync_failures,
    degradations = self.degradations,
    last_error = self.last_error and errors.message(self.last_error) or nil,
  }
end

--- Sync and control ---------------------------------------------------------

-- Runs one sync now, from the calling task (after the one in flight, if
-- any): true, or nil, err.
function Fleet:sync()
  check.self(self, Fleet, "fleet.sync", WHAT)
  return sync.once(self)
end

-- Sets (or with value nil clears) the fleet-wide manual state of breaker
-- `name` in Redis, then applies it here at once; the other nodes apply
-- it at their next sync.
local function control(self, fname, name, value)
  check.string(fname, "name", name)
  local task = kernel.need_task(fname)
  if self.closed then
    return nil, errors.error("closed", "fleet " .. self.node_id
                                       .. " is closed")
  end
  while self.syncing do
    kernel.block(self, task)
  end
  self.syncing = task
  local ok, reply, err = pcall(function()
    if self.conn == nil or self.conn.closed then
      local conn, e = redis.connect { url = self.url,
                                      timeout_ms = self.timeout_ms }
      if conn == nil then
        return nil, e
      end
      conn:_detach()
      self.conn, self.sha = conn, nil
    end
    local key = members.control_key(self.prefix, name)
    if value == nil then
      return self.conn:call("DEL", key)
    end
    return self.conn:call("SET", key, value, "PX",
                          format("%d", members.keep_ms(self)))
  end)
  self.syncing = false
  kernel.wake(self)
  if not ok then
    kernel.reraise_cancel(reply)
    return nil, errors.raised(reply)
  end
  if reply == nil then
    return nil, err
  end
  local m = self._by_key["b" .. name]
  if m ~= nil and not self.degraded then
    local r = m.view or { epoch = m.epoch or 0, open = false, live = 1,
                          votes = 0 }
    r.control = value
    members.apply(m, r, self.node_id)
  end
  return true
end

-- Opens breaker `name` on every node until fleet:release(name).
function Fleet:force_open(name)
  check.self(self, Fleet, "fleet.force_open", WHAT)
  return control(self, "fleet.force_open", name, "force_open")
end

-- Admits every call to breaker `name` on every node (it counts, never
-- opens) until fleet:release(name).
function Fleet:disable(name)
  check.self(self, Fleet, "fleet.disable", WHAT)
  return control(self, "fleet.disable", name, "disable")
end

-- Ends a fleet-wide force_open or disable: every node's breaker closes,
-- then follows the fleet's evidence again (an open fleet stays open).
function Fleet:release(name)
  check.self(self, Fleet, "fleet.release", WHAT)
  return control(self, "fleet.release", name, nil)
end

-- Stops syncing: every member acts alone from now on, the connection
-- closes. Idempotent; a run that ends closes its fleets.
function Fleet:close()
  check.self(self, Fleet, "fleet.close", WHAT)
  close(self)
  return true
end

function Fleet:__tostring()
  return format("sprun.fleet(%s)", self.node_id)
end

return _M
