-- The executor as the seed's code calls it: a fresh closure per call and
-- the options as a table literal at each call, next to the same with a
-- prebuilt policy and to the bare operation (the closure made and called,
-- its two failures included), all measured in this run; then the new
-- stages (hedged calls, an adaptive limit in a pipeline); then a call from
-- plain LuaJIT code outside any loop, measured in a luajit child (this
-- script runs inside sprun's loop).
--
-- A fresh closure per call is what keeps the caller's loop out of
-- LuaJIT's traces (FNEW is not compiled): these rows are the interpreted
-- cost a caller pays, not the compiled one of scripts/bench/core.lua.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"

local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

local ex = sprun.executor
local ERR = sprun.error("unavailable", "flaky")

print("-- the seed's call form: a fresh closure per call, 2 failures then "
      .. "a success")
local bare = H.case("bare: the closure made and called 3 times", 1e6, fresh([[
  local ERR = ...
  return function(n)
    for _ = 1, n do
      local calls = 0
      local f = function()
        calls = calls + 1
        if calls < 3 then return nil, ERR end
        return calls
      end
      f() f() f()
    end
  end
]], ERR))
H.case("execute_with_retry, options literal at each call", 1e6, fresh([[
  local ex, ERR = ...
  return function(n)
    for _ = 1, n do
      local calls = 0
      ex.execute_with_retry(function()
        calls = calls + 1
        if calls < 3 then return nil, ERR end
        return calls
      end, { max_attempts = 5, backoff_ms = { 0 } })
    end
  end
]], ex, ERR), bare, { over = 300 })
local policy = sprun.retry_policy.new { max_attempts = 5, backoff_ms = { 0 } }
H.case("execute_with_retry, a prebuilt policy", 1e6, fresh([[
  local ex, ERR, policy = ...
  return function(n)
    for _ = 1, n do
      local calls = 0
      ex.execute_with_retry(function()
        calls = calls + 1
        if calls < 3 then return nil, ERR end
        return calls
      end, policy)
    end
  end
]], ex, ERR, policy), bare, { over = 150 })
local bare1 = H.case("bare: a closure made and called once", 1e6, fresh [[
  return function(n)
    for i = 1, n do
      local f = function() return i end
      f()
    end
  end
]])
H.case("execute_with_timeout, options literal at each call", 1e6, fresh([[
  local ex = ...
  return function(n)
    for i = 1, n do
      ex.execute_with_timeout(function() return i end, { timeout_ms = 1000 })
    end
  end
]], ex), bare1)
H.case("execute_batch of 4, options literal at each call", 2e5, fresh([[
  local ex = ...
  return function(n)
    for i = 1, n do
      ex.execute_batch({ function() return i end, function() return 2 end,
                         function() return 3 end, function() return 4 end },
                       { timeout_ms = 1000, max_concurrency = 2 })
    end
  end
]], ex), bare1)

print("-- new stages")
H.case("execute_hedged, first attempt wins at once", 2e5, fresh([[
  local ex = ...
  return function(n)
    for i = 1, n do
      ex.execute_hedged(function() return i end, { delay_ms = 100 })
    end
  end
]], ex), bare1)
local al = sprun.adaptive_limit.new { name = "bench", initial_limit = 100 }
local p_plain = sprun.pipeline { name = "bench_plain" }
local p_limited = sprun.pipeline { name = "bench_limited", adaptive_limit = al }
local PIPE = [[
  local p = ...
  local function op() return true end
  return function(n)
    local q = p
    for _ = 1, n do q:execute(op) end
  end
]]
local plain = H.case("pipeline with no stage", 1e6, fresh(PIPE, p_plain))
H.case("pipeline with an adaptive_limit stage", 1e6, fresh(PIPE, p_limited),
       plain)

print("-- outside any loop (plain LuaJIT, a luajit child)")
local root = arg[0]:match("^(.*)/scripts/bench/[^/]*$") or "."
local build = os.getenv("SPRUN_BUILD") or (root .. "/build")
local child = [[
local sprun = require "sprun"
local ex = sprun.executor
local policy = sprun.retry_policy.new { max_attempts = 3, backoff_ms = { 0 } }
local function op() return 1 end
local function time(f, n)
  f(n // 10)
  local t0 = sprun.hrtime()
  f(n)
  return (sprun.hrtime() - t0) / n
end
local bare = time(function(n) for _ = 1, n do op() end end, 1000000)
local pol = time(function(n)
  for _ = 1, n do ex.execute_with_retry(op, policy) end
end, 100000)
local seed = time(function(n)
  for _ = 1, n do
    ex.execute_with_retry(op, { max_attempts = 3, backoff_ms = { 0 } })
  end
end, 100000)
local run = time(function(n)
  for _ = 1, n do sprun.run(op) end
end, 100000)
io.write(string.format("%.3f %.3f %.3f %.3f\n", bare, pol, seed, run))
]]
local path = os.tmpname()
local f = assert(io.open(path, "w"))
f:write((child:gsub("n // 10", "math.floor(n / 10)")))
f:close()
local env = "LUA_PATH='" .. root .. "/lua/?.lua;" .. root
            .. "/lua/?/init.lua;;' LUA_CPATH='" .. build
            .. "/lib/lua/5.1/?.so;;' "
local out = assert(io.popen(env .. "luajit " .. path)):read("*a")
os.remove(path)
local b, pol, seed, run = out:match("([%d.]+) ([%d.]+) ([%d.]+) ([%d.]+)")
assert(b, "the luajit child printed: " .. out)
b, pol, seed, run = tonumber(b), tonumber(pol), tonumber(seed), tonumber(run)
H.record { name = "outside a loop: bare call", ns = b }
H.record { name = "outside a loop: execute_with_retry, a policy", ns = pol,
           bare = b, target = { ns = 1000 },
           note = "each call runs a run of its own; its loop and state are kept between calls" }
H.record { name = "outside a loop: execute_with_retry, options literal",
           ns = seed, bare = b, target = { ns = 1000 } }
H.record { name = "outside a loop: sprun.run(fn)", ns = run, bare = b }
