-- The breakers, health monitors, worker pools and fleets alive now, for
-- what reports on all of them (the Prometheus gauges). Registering keeps nothing alive: the sets
-- are weak, and an object that is collected leaves them.

local each_key = next -- never `pairs` in a loop: see tables.lua
local setmetatable = setmetatable
local sort = table.sort

local _M = {}

-- object -> the order it was registered in.
local breakers = setmetatable({}, { __mode = "k" })
local monitors = setmetatable({}, { __mode = "k" })
local pools = setmetatable({}, { __mode = "k" })
local fleets = setmetatable({}, { __mode = "k" })
local next_registered = 0

function _M.add_breaker(cb)
  next_registered = next_registered + 1
  breakers[cb] = next_registered
end

function _M.remove_breaker(cb)
  breakers[cb] = nil
end

function _M.add_monitor(hm)
  next_registered = next_registered + 1
  monitors[hm] = next_registered
end

function _M.add_pool(pool)
  next_registered = next_registered + 1
  pools[pool] = next_registered
end

function _M.remove_pool(pool)
  pools[pool] = nil
end

function _M.add_fleet(f)
  next_registered = next_registered + 1
  fleets[f] = next_registered
end

function _M.remove_fleet(f)
  fleets[f] = nil
end

local function in_order(set)
  local list = {}
  for obj in each_key, set do
    list[#list + 1] = obj
  end
  sort(list, function(a, b) return set[a] < set[b] end)
  return list
end

-- The live breakers, oldest first.
function _M.breakers()
  return in_order(breakers)
end

-- The live health monitors, oldest first.
function _M.monitors()
  return in_order(monitors)
end

-- The live pools, oldest first.
function _M.pools()
  return in_order(pools)
end

-- The open fleets, oldest first.
function _M.fleets()
  return in_order(fleets)
end

return _M
