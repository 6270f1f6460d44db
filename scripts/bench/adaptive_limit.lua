-- The hot paths of sprun.adaptive_limit, each next to the bare operation:
-- acquire + release with the RTT given and with it measured on the loop
-- clock, call(op), and a rejection at the limit, for both algorithms.
--
-- Each loop is compiled afresh for its case (see core.lua's `fresh`), and
-- the limit is a local of the loop's function. A permit is a number, so a
-- call that is admitted allocates nothing; a rejection reuses its error
-- while the counts it names stay the same.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"

local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

print("-- bare operation")
local bare = H.case("bare call of an operation returning at once", 1e7,
                    fresh [[
  local function op() return true end
  return function(n)
    local f = op
    for _ = 1, n do f() end
  end
]])

local ACQUIRE_RELEASE = [[
  local lim = ...
  local function op() return true end
  return function(n)
    local l = lim
    for _ = 1, n do
      local p = l:acquire()
      op()
      l:release(p, "success", 1)
    end
  end
]]

local MEASURED = [[
  local lim = ...
  local function op() return true end
  return function(n)
    local l = lim
    for _ = 1, n do
      local p = l:acquire()
      op()
      l:release(p, "success")
    end
  end
]]

local CALL = [[
  local lim = ...
  local function op() return true end
  return function(n)
    local l = lim
    for _ = 1, n do l:call(op) end
  end
]]

local REJECT = [[
  local lim = ...
  return function(n)
    local l, s = lim, 0
    for _ = 1, n do
      if not l:acquire() then s = s + 1 end
    end
    return s
  end
]]

for _, algorithm in ipairs { "aimd", "gradient2" } do
  print("-- " .. algorithm)
  local lim = sprun.adaptive_limit.new { algorithm = algorithm }
  H.case(algorithm .. ": acquire + op + release, RTT given", 1e7,
         fresh(ACQUIRE_RELEASE, lim), bare, { over = 40, bytes = 0 })
  H.case(algorithm .. ": acquire + op + release, RTT measured", 1e7,
         fresh(MEASURED, lim), bare, { over = 40, bytes = 0 })
  H.case(algorithm .. ": call(op)", 1e7, fresh(CALL, lim), bare,
         { over = 40, bytes = 0 })
  local full = sprun.adaptive_limit.new { algorithm = algorithm,
                                          min_limit = 1, max_limit = 1,
                                          initial_limit = 1 }
  assert(full:acquire())
  H.case(algorithm .. ": acquire refused at the limit", 1e7,
         fresh(REJECT, full), bare, { over = 20, bytes = 0 })
  assert(lim:stats().in_flight == 0)
end
