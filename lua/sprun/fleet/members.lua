-- The breakers and health monitors of a fleet, node side (internal to
-- sprun.fleet): what each sends at a sync, and what each does with the
-- fleet's answer.
--
-- A breaker stays the one authority on admission: the fleet only moves
-- it between syncs, through its C struct, with the levers sprun.h gives a
-- fleet (sp_breaker_trip, sp_breaker_recover, `held`). Calls never look
-- at the fleet. What it sends is read from the struct's running totals,
-- so that joining a fleet adds nothing to a call.
--
-- The trap: a node waiting for another node's probe must not probe
-- itself when its own reset timeout runs out, so it is held open (held =
-- 1) for as long as the fleet is open and the lease is someone else's.
-- Every way out of the fleet (degraded, closed, left) lets go of the hold
-- and of a manual state the fleet set, or the breaker would stay open
-- with nobody to tell it otherwise.

local sp = require "sprun.ffi"

local tonumber = tonumber
local format = string.format
local max, ceil = math.max, math.ceil

local STATE_CLOSED = sp.SP_BREAKER_STATE_CLOSED
local STATE_OPEN = sp.SP_BREAKER_STATE_OPEN
local STATE_HALF_OPEN = sp.SP_BREAKER_STATE_HALF_OPEN
local WINDOW_TIME = sp.SP_WINDOW_TIME
local WINDOW_CONSECUTIVE = sp.SP_WINDOW_CONSECUTIVE

-- Buckets of a window that is not the breaker's own (a consecutive or a
-- count window, a monitor's crash window).
local BUCKETS = 10

local _M = {}

local share

-- A member record for `obj`, a breaker ("b") or a monitor ("m").
function _M.new(kind, name, obj, prefix)
  return {
    kind = kind, name = name, obj = obj,
    base = prefix .. kind .. "{" .. name .. "}",
    acked = "0 0 0 0 0",
    sent = nil,     -- the totals of the sync in flight
    epoch = nil,    -- the fleet's epoch this node last saw (nil: none yet)
    probing = nil,  -- holding the lease: the generation it started from
    manual = nil,   -- the manual state the fleet set ("force_open", ...)
    view = nil,     -- the member's part of the last reply (script.read)
  }
end

-- "calls failures slow rejections crashes", the running totals.
function _M.totals(m)
  if m.kind == "r" then
    local r = m.obj._r
    return format("%d 0 0 %d 0", tonumber(r.taken + r.reserved),
                  tonumber(r.rejected + r.refused))
  end
  if m.kind == "m" then
    return format("0 0 0 0 %d", tonumber(m.obj._h.total_crashes))
  end
  local b = m.obj._b
  local ok, failed = tonumber(b.total_successes), tonumber(b.total_failures)
  return format("%d %d %d %d 0", ok + failed, failed,
                tonumber(b.total_slow), tonumber(b.rejected_count))
end

-- "vote epoch probe" (probe: 0 none, 1 ok, 2 failed).
function _M.status(m)
  if m.kind ~= "b" then
    return "0 0 0"
  end
  local b = m.obj._b
  local state = b.state
  local vote = (state == STATE_OPEN or state == STATE_HALF_OPEN) and 1 or 0
  local probe = 0
  if m.probing ~= nil then
    if state == STATE_CLOSED then
      probe = 1
    elseif state == STATE_OPEN and b.generation ~= m.probing then
      probe = 2
    end
  end
  return format("%d %d %d", vote, m.epoch or -1, probe)
end

-- "window_ms buckets reset_ms min_calls failure_rate slow_rate min_nodes
-- min_share" for a fleet `f` (its window_ms and quorum).
function _M.config(m, f)
  local q = f.quorum
  if m.kind == "r" then
    return format("%d %d 0 1 -1 -1 %d %.17g", f.window_ms, BUCKETS,
                  q.min_nodes, q.min_share)
  end
  if m.kind == "m" then
    local w = tonumber(m.obj._h.config.crash_window_ms)
    return format("%d %d 0 1 -1 -1 %d %.17g", w, BUCKETS, q.min_nodes,
                  q.min_share)
  end
  local c = m.obj._b.config
  local window, buckets = f.window_ms, BUCKETS
  if c.window_type == WINDOW_TIME then
    window, buckets = tonumber(c.window_ms), c.window_buckets
  end
  local frate, srate, min_calls = -1, -1, 1
  if c.window_type ~= WINDOW_CONSECUTIVE then
    frate, min_calls = c.failure_rate, c.min_calls
    if c.slow_call_ms > 0 then
      srate = c.slow_call_rate
    end
  end
  return format("%d %d %d %d %.17g %.17g %d %.17g", window,
                buckets, tonumber(c.reset_timeout_ms), min_calls, frate,
                srate, q.min_nodes, q.min_share)
end

-- A rate limiter's share of the fleet's rate, with `live` nodes live:
-- rate / live and the burst divided alike (at least 1), set when the
-- number changes. A degraded fleet keeps the last share: a node that
-- cannot see the others does not take the whole rate for itself.
share = function(m, live)
  if live < 1 then
    live = 1
  end
  if m.shared_by == live then
    return
  end
  m.shared_by = live
  local g = m.obj._global
  m.obj:set_rate(g[1] / live, max(1, ceil(g[2] / live)))
end

-- Lets the breaker act alone again: no hold, no probe, no manual state
-- of the fleet's. keep_view keeps the last view (a degraded fleet shows
-- it, marked stale).
function _M.release(m, keep_view)
  if not keep_view then
    m.view = nil
  end
  m.probing = nil
  if m.kind == "r" and not keep_view then
    -- Alone again: the whole rate is its own.
    share(m, 1)
  end
  if m.kind ~= "b" then
    return
  end
  local cb = m.obj
  cb._b.held = 0
  if m.manual ~= nil then
    m.manual = nil
    cb:reset()
  end
  -- A hold may have kept it open past its timeout: half-open it now.
  cb:state()
end

-- Applies the fleet's answer `r` (script.read) to the member, as node
-- `node`.
function _M.apply(m, r, node)
  m.view = r
  if m.kind == "r" then
    share(m, r.live)
  end
  if m.kind ~= "b" then
    return
  end
  local cb = m.obj
  local b = cb._b
  local control = r.control
  if control ~= nil then
    -- The operator's word, fleet-wide, comes before any evidence.
    b.held = 0
    m.probing = nil
    if m.manual ~= control then
      m.manual = control
      if control == "disable" then
        cb:disable()
      else
        cb:force_open()
      end
    end
    m.epoch = r.epoch
    return
  elseif m.manual ~= nil then
    m.manual = nil
    cb:reset()
  end
  if m.epoch ~= nil and r.epoch > m.epoch then
    -- A probe somewhere closed the fleet: everyone closes.
    b.held = 0
    m.probing = nil
    cb:_fleet_recover()
  end
  m.epoch = r.epoch
  if not r.open then
    b.held = 0
    m.probing = nil
    cb:state()
    return
  end
  -- Closed, or half-open on its own timer before it learnt the fleet is
  -- open: only the lease holder may probe.
  if r.lease ~= node then
    m.probing = nil
  end
  if b.state == STATE_CLOSED
     or (b.state == STATE_HALF_OPEN and r.lease ~= node) then
    cb:_fleet_trip()
  end
  if r.lease == node then
    if m.probing == nil then
      b.held = 0
      cb:state()
      m.probing = b.generation
    end
  else
    m.probing = nil
    b.held = 1
  end
end

-- What fleet:view(name) gives of a member's last answer, or nil.
function _M.view(m, stale)
  local r = m.view
  if r == nil then
    return nil
  end
  return {
    live_nodes = r.live, open_votes = r.votes, calls = r.calls,
    failures = r.failures, slow_calls = r.slow, rejections = r.rejections,
    crashes = r.crashes, failing_nodes = r.failing_nodes,
    state = r.open and "open" or "closed", open_ms = r.open_ms,
    probe_node = r.lease, control = r.control, epoch = r.epoch,
    stale = stale or nil,
  }
end

-- A monitor's fleet figures for its stats(): the fleet's crashes in the
-- window and whether they stay under max_crashes per live node; its own
-- figures when the fleet has none to give.
function _M.monitor_stats(m, s)
  local r = m.view
  if r == nil then
    s.fleet_crashes_in_window = s.crashes_in_window
    s.fleet_is_healthy = s.is_healthy
    s.fleet_live_nodes = 1
    s.fleet_state = "local"
    return s
  end
  s.fleet_crashes_in_window = r.crashes
  s.fleet_live_nodes = r.live
  s.fleet_is_healthy = r.crashes < s.max_crashes * r.live
  s.fleet_state = "synced"
  return s
end

-- The key of a member's fleet-wide manual state.
function _M.control_key(prefix, name)
  return prefix .. "b{" .. name .. "}:m"
end

-- The expiry of what a fleet keeps for a member (see script.lua).
function _M.keep_ms(f)
  return 2 * f.window_ms + 3 * f.expire_ms
end


return _M
