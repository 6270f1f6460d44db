-- Scheduler and executor costs: a bare call, spawn + await of an empty
-- task, sleep(0), execute_with_timeout on an operation that returns at
-- once and on one that sleeps 0 ms, execute_batch of 100,000 sleep(1)
-- items 1,000 at a time, and 1,000,000 tasks sleeping on their own timers
-- (with the timer heap's cost per timer at 10,000 and 1,000,000 timers).
-- Runs in well under a minute.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local core = require "sprun.core"
local ffi = require "ffi"
local C = require("sprun.ffi").C
local H = require "harness"
local ex = sprun.executor

local fmt = string.format

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
H.case("execute_with_timeout, operation returns at once", 1e6, function(n)
  for _ = 1, n do ex.execute_with_timeout(empty, opts) end
end, bare, { ns = 300 })

local function sleep0() sprun.sleep(0) end
H.case("execute_with_timeout, operation sleeps 0 ms", 1e5, function(n)
  for _ = 1, n do ex.execute_with_timeout(sleep0, opts) end
end, bare, { ns = 1000 })

local function median(t)
  table.sort(t)
  return t[(#t + 1) / 2]
end

-- Resident memory in bytes (Linux), or nil.
local function rss()
  local f = io.open("/proc/self/statm")
  if not f then
    return nil
  end
  local pages = f:read("*l"):match("^%d+ (%d+)")
  f:close()
  return tonumber(pages) * 4096
end

--- execute_batch: 100,000 items of sleep(1), 1,000 at a time --------------
-- The floor is the timers: 100 rounds of 1 ms.
do
  local N, ROUNDS = 100000, 3
  local function item() sprun.sleep(1) end
  local fns = {}
  for i = 1, N do fns[i] = item end
  local walls = {}
  for r = 1, ROUNDS do
    collectgarbage("collect")
    local t0 = sprun.hrtime()
    local res = ex.execute_batch(fns, { max_concurrency = 1000 })
    walls[r] = sprun.hrtime() - t0
    assert(#res == N and res[N].ok)
  end
  table.sort(walls)
  H.record {
    name = "execute_batch 100,000 x sleep(1), max_concurrency 1000",
    ns = median(walls),
    floor = 100e6,
    target = { ratio = 1.3 },
    note = fmt("total wall, median of %d: %.1f ms (runs %s ms); floor "
               .. "100 ms of timers", ROUNDS, median(walls) / 1e6,
               table.concat({ fmt("%.0f", walls[1] / 1e6),
                              fmt("%.0f", walls[2] / 1e6),
                              fmt("%.0f", walls[3] / 1e6) }, "/")),
  }
end

--- The timer heap alone: arm n timers at random deadlines, fire them all --
-- A loop of its own in virtual time (the deadlines are 0 to 999 ms away),
-- so that only the heap and the dispatch are measured: ns per timer.
local function heap_cost(n)
  local fired = 0
  local loop = core.loop_new(true, function(_, kind, count)
    if kind == core.EV_TIMERS then
      fired = fired + count
    else
      fired = fired + 1
    end
  end, true)
  local h = ffi.cast("void *", loop:handle())
  local now = loop:now()
  local rnd = math.random
  math.randomseed(7)
  local t0 = sprun.hrtime()
  for i = 1, n do
    C.sp_lua_timer_add(h, now + rnd(0, 999), i, -1)
  end
  while fired < n do
    loop:step(false)
  end
  local ns = (sprun.hrtime() - t0) / n
  loop:close()
  return ns
end

--- 1,000,000 tasks, each asleep on a timer of its own ---------------------
-- Spawned all at once by the main task, then started (each runs to its
-- sleep(1000)), then woken and awaited. Heap per task: the Lua heap after
-- a full collection with every task asleep, less before. RSS: the growth
-- of the resident memory meanwhile.
local function million(n)
  local first_wake = nil
  local function sleeper()
    sprun.sleep(1000)
    first_wake = first_wake or sprun.hrtime()
  end
  local tasks = {}
  for i = 1, n do tasks[i] = false end
  collectgarbage("collect")
  local kb0, rss0 = collectgarbage("count"), rss()
  local t0 = sprun.hrtime()
  for i = 1, n do tasks[i] = sprun.spawn(sleeper) end
  local t1 = sprun.hrtime()
  sprun.sleep(0) -- every task runs to its sleep
  local t2 = sprun.hrtime()
  collectgarbage("collect")
  local kb1, rss1 = collectgarbage("count"), rss()
  local t3 = sprun.hrtime()
  for i = 1, n do tasks[i]:await() end
  local t4 = sprun.hrtime()
  -- The wake-up starts when the first task wakes (when spawning took less
  -- than the 1000 ms of the timers, the time waiting for them is not work).
  local wake = t4 - math.max(t3, first_wake)
  return {
    spawn = t1 - t0, start = t2 - t1, wake = wake,
    wall = (t1 - t0) + (t2 - t1) + wake,
    bytes = (kb1 - kb0) * 1024 / n,
    rss = rss0 and (rss1 - rss0) / n,
  }
end

do
  local small = million(10000)
  local m = million(1000000)
  local h_small, h_big = heap_cost(10000), heap_cost(1000000)
  H.record {
    name = "1,000,000 tasks asleep on their own timers",
    ns = m.wall / 1e6,
    bytes = m.bytes,
    target = { bytes = 1024 },
    note = fmt("per task; total %.2f s: spawn %.2f s, start to sleep %.2f s,"
               .. " wake + await %.2f s; RSS +%s B/task; 10,000 tasks: "
               .. "%.0f ns/task; timer heap alone, per timer armed and "
               .. "fired: %.0f ns at 10,000, %.0f ns at 1,000,000 timers",
               m.wall / 1e9, m.spawn / 1e9, m.start / 1e9, m.wake / 1e9,
               m.rss and fmt("%.0f", m.rss) or "?", small.wall / 1e4,
               h_small, h_big),
  }
end
