-- Bad-input cases (see bad_input_spec.lua) of sprun.fleet: its options,
-- the `fleet` option of what joins one, and the fleet's methods.
local sprun = require "sprun"

local fleet = sprun.fleet

-- A fleet on a Redis nobody listens at (port 1): it never syncs, which
-- these cases do not need. Closed by the case's closers.
local function a_fleet(ctx)
  local f = fleet.connect { redis = "redis://127.0.0.1:1", node_id = "n1" }
  ctx[#ctx + 1] = function() f:close() end
  return f
end

local URL = "redis://127.0.0.1:1"

return {
  { id = "fleet.connect: no options", task = true,
    call = function() return fleet.connect, nil end,
    raises = "fleet.connect: options must be a table, got nil" },
  { id = "fleet.connect: no redis", task = true,
    call = function() return fleet.connect, {} end,
    raises = "fleet.connect: option 'redis' must be a redis:// URL, got "
      .. "nil" },
  { id = "fleet.connect: an http url", task = true,
    call = function() return fleet.connect, { redis = "http://x:6379" } end,
    raises = "fleet.connect: option 'redis' must be a redis:// URL, got "
      .. "\"http://x:6379\"" },
  { id = "fleet.connect: interval_ms 5", task = true,
    call = function()
      return fleet.connect, { redis = URL, interval_ms = 5 }
    end,
    raises = "fleet.connect: option 'interval_ms' must be an integer >= "
      .. "10, got 5" },
  { id = "fleet.connect: timeout_ms 0", task = true,
    call = function()
      return fleet.connect, { redis = URL, timeout_ms = 0 }
    end,
    raises = "fleet.connect: option 'timeout_ms' must be an integer >= 1, "
      .. "got 0" },
  { id = "fleet.connect: a node_id with a space", task = true,
    call = function()
      return fleet.connect, { redis = URL, node_id = "a b" }
    end,
    raises = "fleet.connect: option 'node_id' must be a string of 1 to "
      .. "200 characters with no space, got \"a b\"" },
  { id = "fleet.connect: quorum of one node", task = true,
    call = function()
      return fleet.connect, { redis = URL, quorum = { min_nodes = 1 } }
    end,
    raises = "fleet.connect: option 'quorum.min_nodes' must be a whole "
      .. "number from 2 to 1000000 (one node never opens another), "
      .. "got 1" },
  { id = "fleet.connect: quorum share 0", task = true,
    call = function()
      return fleet.connect, { redis = URL, quorum = { min_share = 0 } }
    end,
    raises = "fleet.connect: option 'quorum.min_share' must be a number > "
      .. "0 and <= 1, got 0" },
  { id = "fleet.connect: quorum with an unknown key", task = true,
    call = function()
      return fleet.connect, { redis = URL, quorum = { nodes = 3 } }
    end,
    raises = "fleet.connect: option 'quorum.nodes' is not a key of a "
      .. "quorum (valid keys: min_nodes, min_share), got 3" },
  { id = "fleet.connect: option intervall_ms", task = true,
    call = function()
      return fleet.connect, { redis = URL, intervall_ms = 9 }
    end,
    raises = "fleet.connect: unknown option 'intervall_ms' (did you mean "
      .. "'interval_ms'?)" },
  { id = "fleet.connect: outside a loop",
    call = function() return fleet.connect, { redis = URL } end,
    raises = "fleet.connect: must be called inside a running loop "
      .. "(sprun.run or a script run by sprun)" },
  { id = "fleet option: a table for a breaker",
    call = function()
      return sprun.circuit_breaker.start_link, { name = "x", fleet = {} }
    end,
    raises = "circuit_breaker.start_link: option 'fleet' must be a fleet "
      .. "(sprun.fleet.connect), got table" },
  { id = "fleet option: a number for a monitor",
    call = function()
      return sprun.health_monitor.start_link, { fleet = 5 }
    end,
    raises = "health_monitor.start_link: option 'fleet' must be a fleet "
      .. "(sprun.fleet.connect), got 5" },
  { id = "fleet option: a string for a pool", task = true,
    call = function()
      return sprun.pool.start, { cmd = { "true" }, fleet = "redis://x" }
    end,
    raises = "pool.start: option 'fleet' must be a fleet "
      .. "(sprun.fleet.connect), got \"redis://x\"" },
  { id = "fleet option: a number in an http client's breaker_per_origin",
    call = function()
      return sprun.http.client, { breaker_per_origin = { fleet = 1 } }
    end,
    raises = "http.client: option 'breaker_per_origin.fleet' must be a "
      .. "fleet (sprun.fleet.connect), got 1" },
  { id = "fleet.view: no name", task = true,
    call = function(ctx) local f = a_fleet(ctx); return f.view, f end,
    raises = "fleet.view: name must be a non-empty string, got nil" },
  { id = "fleet.view: kind pool", task = true,
    call = function(ctx)
      local f = a_fleet(ctx)
      return f.view, f, "db", "pool"
    end,
    raises = "fleet.view: kind must be \"breaker\", \"monitor\" or "
      .. "\"rate_limiter\", got \"pool\"" },
  { id = "fleet.stats: called with a dot", task = true,
    call = function(ctx) local f = a_fleet(ctx); return f.stats end,
    raises = "fleet.stats: self must be a fleet, got nil (did you mean "
      .. "f:stats(...)?)" },
  { id = "fleet.force_open: a number for a name", task = true,
    call = function(ctx)
      local f = a_fleet(ctx)
      return f.force_open, f, 5
    end,
    raises = "fleet.force_open: name must be a non-empty string, got 5" },
  { id = "fleet.force_open: Redis unreachable", task = true,
    call = function(ctx)
      local f = a_fleet(ctx)
      return f.force_open, f, "db"
    end,
    returns = { nil, "connection_refused: connect to 127.0.0.1:1: connection "
      .. "refused" } },
  { id = "fleet.sync: after close", task = true,
    call = function(ctx)
      local f = a_fleet(ctx)
      f:close()
      return f.sync, f
    end,
    returns = { nil, "closed: fleet n1 is closed" } },
  { id = "fleet.leave: a breaker as self",
    call = function()
      return require("sprun.fleet.kind").mt.leave,
             sprun.circuit_breaker.start_link { name = "x" }
    end,
    raises = "fleet.leave: self must be a fleet, got table" },
}
