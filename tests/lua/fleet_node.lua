-- One node of a fleet, as a worker of sprun.pool, for
-- fleet_cluster_spec.lua: a sprun process of its own with a fleet, one
-- breaker "dep" in it, and a dependency the spec turns down and up. The
-- spec drives it through pool calls:
--
--   start { url, node_id, interval_ms, reset_timeout_ms } -> { pid }
--   dep "down" | "up"          the dependency fails or works from now on
--   call n                     n calls through the breaker -> counts, state
--   state                      -> { state, events, stats, view }
--   force_open / release       the fleet-wide manual state of "dep"
--   close                      closes the fleet
--
-- Each transition of the breaker is kept with the reason it opened and
-- the time it happened on CLOCK_MONOTONIC, which every process on the
-- machine shares, so that the spec can order the nodes' transitions.
local here = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$")
package.path = here .. "/?.lua;" .. package.path
local sprun = require "sprun"
local core = require "sprun.core"
local h = require "helpers"

local mono_ms = h.mono_ms

local node = { down = false, events = {} }

local TRANSITIONS = { "opened", "closed", "half_open", "forced_open",
                      "disabled" }

local function dependency()
  if node.down then
    return nil, sprun.error("unavailable", "the dependency is down")
  end
  return "ok"
end

local handlers = {}

function handlers.start(o)
  for _, name in ipairs(TRANSITIONS) do
    sprun.telemetry.attach("fleet_node." .. name,
      { "snakepit", "circuit_breaker", name },
      function(_, _, md)
        if md.pool == "dep" then
          local e = node.events
          e[#e + 1] = { name = name, reason = md.reason, at = mono_ms() }
        end
      end)
  end
  node.f = sprun.fleet.connect { redis = o.url, node_id = o.node_id,
                                 interval_ms = o.interval_ms,
                                 quorum = { min_nodes = 2, min_share = 0.5 } }
  node.cb = sprun.circuit_breaker.start_link { name = "dep",
    failure_threshold = 3, reset_timeout_ms = o.reset_timeout_ms,
    fleet = node.f }
  assert(node.f:sync())
  return { pid = core.pid() }
end

function handlers.dep(mode)
  node.down = mode == "down"
  return mode
end

function handlers.call(n)
  local r = { ok = 0, failed = 0, rejected = 0 }
  for _ = 1, n do
    local v, err = node.cb:call(dependency)
    if v ~= nil then
      r.ok = r.ok + 1
    elseif sprun.error_kind(err) == "circuit_open" then
      r.rejected = r.rejected + 1
    else
      r.failed = r.failed + 1
    end
  end
  r.state = node.cb:state()
  return r
end

function handlers.state()
  local s = node.f:stats()
  return { state = node.cb:state(), events = node.events,
           fleet = { state = s.state, live_nodes = s.live_nodes,
                     syncs = s.syncs, interval_ms = s.interval_ms,
                     last_error = s.last_error,
                     sync_failures = s.sync_failures,
                     staleness_ms = s.staleness_ms },
           view = node.f:view("dep"), now = mono_ms() }
end

function handlers.force_open()
  return assert(node.f:force_open("dep"))
end

function handlers.release()
  return assert(node.f:release("dep"))
end

function handlers.close()
  node.f:close()
  return true
end

sprun.pool.serve(handlers)
