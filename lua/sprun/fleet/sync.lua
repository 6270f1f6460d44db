-- A fleet's sync (internal to sprun.fleet): every interval_ms a short
-- task sends one EVALSHA (the script of fleet/script.lua) with every
-- member's totals and state, and applies the fleet's answer.
--
-- The rule: no call ever waits for Redis. The sync runs beside the calls,
-- in a task of its own that lives only while a sync is in flight, so a
-- fleet never keeps a run alive; its timer is a background one. The sync
-- goes through a breaker of its own (3 failures open it for 4 intervals),
-- so that a Redis that is down costs one failed connect now and then.
--
-- The trap: a sync that timed out may still have been applied by Redis
-- (a stalled server runs it when it wakes). Totals are sent, never
-- deltas, and the script adds only what grew, so sending again adds
-- nothing twice.

local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local redis = require "sprun.io.redis"
local script = require "sprun.fleet.script"
local members = require "sprun.fleet.members"

local type = type
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local unpack = unpack
local floor = math.floor
local format = string.format
local hrtime = clock.hrtime
local min = math.min
local now = clock.now
local enabled = telemetry.enabled
local emit = telemetry.emit

local DEGRADED_EVENT = "sprun.fleet.degraded"
local RECOVERED_EVENT = "sprun.fleet.recovered"

-- Missed intervals after which the fleet's signals have expired.
local MISSED = 3
-- Members per EVALSHA (8 + 5 per member arguments: a command takes at
-- most 1,024). A longer list goes in several, one after the other, each
-- within timeout_ms: one script of ~5 ms at a time keeps Redis answering
-- others, and a fleet of thousands of breakers is never one reply too
-- long to wait for.
local CHUNK = 200

local _M = { MISSED = MISSED, CHUNK = CHUNK }

local function connect(f)
  local conn, err = redis.connect { url = f.url, timeout_ms = f.timeout_ms }
  if conn == nil then
    return nil, err
  end
  conn:_detach()
  f.conn = conn
  f.sha = nil
  return conn
end

local function load_script(f)
  local sha, err = f.conn:call("SCRIPT", "LOAD", script.SOURCE)
  if sha == nil then
    return nil, err
  end
  f.sha = sha
  return sha
end

-- The EVALSHA commands for the members in `list`, CHUNK at a time. The
-- sync's version (boot, clock) tells Redis a late copy from a newer sync
-- (script.lua): the clock is the monotonic one in ms, made to move on at
-- every sync.
local function commands(f, list)
  local ms = floor(hrtime() / 1e6)
  if ms <= f.clock_ms then
    ms = f.clock_ms + 1
  end
  f.clock_ms = ms
  local clock_ms = format("%d", ms)
  local cmds = {}
  for first = 1, #list, CHUNK do
    local last = min(#list, first + CHUNK - 1)
    local keys, argv = {}, { f.node_id, f.expire_ms, f.lease_ms, f.boot,
                             clock_ms }
    for i = first, last do
      local m = list[i]
      keys[#keys + 1] = m.base
      m.sent = members.totals(m)
      argv[#argv + 1] = m.sent
      argv[#argv + 1] = m.acked
      argv[#argv + 1] = members.status(m)
      argv[#argv + 1] = members.config(m, f)
    end
    local cmd = { "EVALSHA", f.sha, #keys }
    for i = 1, #keys do
      cmd[#cmd + 1] = keys[i]
    end
    for i = 1, #argv do
      cmd[#cmd + 1] = argv[i]
    end
    cmds[#cmds + 1] = cmd
  end
  return cmds
end

-- The replies of the commands, sent one at a time; an error reply is
-- { err = e } in its place (NOSCRIPT is told apart by the caller).
local function send(f, cmds)
  local out = {}
  for i = 1, #cmds do
    local reply, err = f.conn:call(unpack(cmds[i]))
    if reply == nil then
      if errors.kind(err) ~= "redis_error" then
        return nil, err
      end
      out[i] = { err = err }
      if i == 1 then
        return out
      end
    else
      out[i] = reply
    end
  end
  return out
end

-- The replies' lines in one list, or nil and the first error.
local function lines(replies)
  local out, time = {}, nil
  for i = 1, #replies do
    local r = replies[i]
    if type(r) ~= "table" or r.err ~= nil then
      return nil, r.err or errors.error("bad_reply",
                                        "fleet: the script returned "
                                        .. tostring(r))
    end
    time = time or script.time(r[1])
    for j = 2, #r do
      out[#out + 1] = r[j]
    end
  end
  return out, time
end

local function is_noscript(err)
  return errors.kind(err) == "redis_error" and err.details
         and err.details.code == "NOSCRIPT"
end

-- One sync: the members' totals and state out, the fleet's answer
-- applied. Returns true or nil, err.
local function round(f)
  if f.conn == nil or f.conn.closed then
    local ok, err = connect(f)
    if not ok then
      return nil, err
    end
  end
  if f.sha == nil then
    local ok, err = load_script(f)
    if not ok then
      return nil, err
    end
  end
  local list = f:_list()
  local sent_at = now()
  if #list == 0 then
    local ok, err = f.conn:call("PING")
    if not ok then
      return nil, err
    end
    return true, sent_at
  end
  local replies, err = send(f, commands(f, list))
  if replies ~= nil then
    for i = 1, #replies do
      if type(replies[i]) == "table" and is_noscript(replies[i].err) then
        replies, err = nil, replies[i].err
        break
      end
    end
  elseif not is_noscript(err) then
    return nil, err
  end
  if replies == nil then
    -- Redis forgot the script (a restart, SCRIPT FLUSH): load it again.
    local ok, e = load_script(f)
    if not ok then
      return nil, e
    end
    sent_at = now()
    replies, err = send(f, commands(f, list))
    if replies == nil then
      return nil, err
    end
  end
  local answers, time = lines(replies)
  if answers == nil then
    return nil, time
  end
  if #answers ~= #list then
    return nil, errors.error("bad_reply", ("fleet: %d answers for %d members")
                             :format(#answers, #list))
  end
  f.redis_time_ms = time
  for i = 1, #list do
    local m = list[i]
    local r = script.read(answers[i])
    if r == nil then
      return nil, errors.error("bad_reply", "fleet: cannot read the answer "
                               .. tostring(answers[i]))
    end
    m.acked = m.sent
    -- A member that left while the sync was out is not the fleet's.
    if f._by_obj[m.obj] == m then
      members.apply(m, r, f.node_id)
    end
  end
  return true, sent_at
end

local function degrade(f, reason)
  f.degraded = true
  f.state = "degraded"
  f.degraded_at = now()
  f.degradations = f.degradations + 1
  for _, m in ipairs(f:_list()) do
    members.release(m, true)
  end
  if enabled[DEGRADED_EVENT] then
    emit(DEGRADED_EVENT, { missed_intervals = MISSED },
         { node_id = f.node_id, reason = reason })
  end
end

local function succeeded(f, sent_at)
  f.synced_at = sent_at
  f.round_trip_ms = now() - sent_at
  f.syncs = f.syncs + 1
  f.last_error = nil
  f.state = "synced"
  if f.degraded then
    -- State first, then the event (as degrade does): a handler reading
    -- stats() sees the fleet synced.
    f.degraded = false
    if enabled[RECOVERED_EVENT] then
      emit(RECOVERED_EVENT, { degraded_ms = now() - f.degraded_at },
           { node_id = f.node_id })
    end
  end
end

local function failed(f, err)
  f.sync_failures = f.sync_failures + 1
  -- The sync's own breaker refusing says nothing new about Redis: the
  -- error that opened it stays the one shown.
  if errors.kind(err) ~= errors.CIRCUIT_OPEN or f.last_error == nil then
    f.last_error = err
  end
end

-- Runs one sync in the current task, one at a time per fleet: a caller
-- that finds one running waits for it, then runs its own.
function _M.once(f)
  local task = kernel.need_task("fleet.sync")
  while f.syncing do
    kernel.block(f, task)
  end
  if f.closed then
    return nil, errors.error("closed", "fleet " .. f.node_id .. " is closed")
  end
  f.syncing = task
  local ok, a, b = pcall(f.guard.call, f.guard, round, f)
  f.syncing = false
  kernel.wake(f)
  if not ok then
    kernel.reraise_cancel(a)
    a, b = nil, errors.raised(a)
  end
  if a then
    succeeded(f, b)
    return true
  end
  failed(f, b)
  return nil, b
end

local function run(f)
  _M.once(f)
  -- News that came while that sync was out goes in one more.
  while f.again and not f.closed do
    f.again = false
    _M.once(f)
  end
end

-- A sync as soon as possible (a probe's outcome): now, or right after the
-- one in flight.
function _M.soon(f)
  if f.closed or f.degraded then
    return
  end
  if f.syncing then
    f.again = true
  else
    kernel.spawn(nil, run, f)
  end
end

-- The timer: starts a sync unless one runs, and tells when the fleet's
-- signals have expired.
local function tick(f)
  if f.closed then
    return
  end
  local last = f.synced_at or f.started_at
  if not f.degraded and now() - last >= MISSED * f.interval_ms then
    local why = f.last_error and errors.message(f.last_error)
                or ("no sync for " .. MISSED .. " intervals")
    degrade(f, why)
  end
  if not f.syncing then
    kernel.spawn(nil, run, f)
  end
  kernel.after(f.interval_ms, tick, f)
end

function _M.start(f)
  kernel.after(0, tick, f)
end

-- Missed intervals since the last sync (for stats).
function _M.missed(f)
  local last = f.synced_at or f.started_at
  return floor((now() - last) / f.interval_ms)
end

return _M
