-- Scheduler and executor costs: spawn+await of an empty task, sleep(0),
-- execute_with_timeout on an operation that returns at once.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"
local ex = sprun.executor

local function empty() return true end

local bare = H.case("bare call of an empty function", 1e7, function(n)
  local f = empty
  for _ = 1, n do f() end
end)

H.case("spawn + await of an empty task", 1e5, function(n)
  for _ = 1, n do sprun.spawn(empty):await() end
end, bare)

H.case("sleep(0)", 1e5, function(n)
  for _ = 1, n do sprun.sleep(0) end
end, bare)

local opts = { timeout_ms = 1000 }
H.case("execute_with_timeout, operation returns at once", 1e5, function(n)
  for _ = 1, n do ex.execute_with_timeout(empty, opts) end
end, bare)
