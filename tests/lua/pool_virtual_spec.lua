-- sprun.pool's policies in time, under `sprun --virtual-time`: restart
-- backoff, the crash-loop guard and its cool-down, taint expiry, ttl
-- recycling and queue timeouts, with real Lua workers
-- (tests/lua/pool/worker.lua) scripted by their requests. Minutes and
-- hours of policy run in a moment: the clock jumps whenever no worker is
-- starting or busy. Times are printed in whole tens of seconds, so that
-- the real time a worker takes to start (which virtual time follows while
-- it is in flight) never shows.
local h = require "helpers"

local WORKER = h.root .. "/tests/lua/pool/worker.lua"

-- What the script prints when run in virtual time, with its pool's
-- worker pids (the script's last line "pids ...") checked gone.
local function vrun(body)
  local dir = h.tmpdir()
  local path = h.write_file(dir .. "/script.lua", [[
local sprun = require "sprun"
local SPRUN, WORKER = arg[1], arg[2]
local t0 = sprun.now()
local function at() return math.floor((sprun.now() - t0) / 10000) * 10 end
local pids = {}
local function note_pids(p)
  for _, w in ipairs(p:workers()) do
    if w.pid then pids[w.pid] = true end
  end
end
]] .. body .. [[

local list = {}
for pid in pairs(pids) do list[#list + 1] = pid end
print("pids " .. table.concat(list, " "))
]])
  local r = h.sprun_run { "--virtual-time", path, h.sprun, WORKER }
  h.rmrf(dir)
  assert(r.code == 0, "the script failed:\n" .. r.stdout .. r.stderr)
  local pids = r.stdout:match("pids ([%d ]*)\n$")
  assert(pids, "no pids line:\n" .. r.stdout)
  for pid in pids:gmatch("%d+") do
    assert.is_true(h.wait_until(function()
      return not h.alive(tonumber(pid))
    end, 2000), "worker " .. pid .. " is still alive")
  end
  return r.stdout:gsub("pids [%d ]*\n$", ""), r.stderr
end

describe("sprun.pool in virtual time", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("backs a crashing worker off by restart.backoff_ms, fails the pool "
     .. "past max_restarts in window_ms, and recovers after cooldown_ms",
    function()
    local out = vrun [[
sprun.telemetry.attach("t", { "snakepit", "worker", "restarted" },
  function(_, _, md) print("restarted " .. md.worker_id .. " at " .. at()) end)
local p = sprun.pool.start { name = "vt", size = 1, cmd = { SPRUN, WORKER },
  queue_timeout_ms = 3600000,
  restart = { backoff_ms = { 10000, 60000, 120000 }, max_restarts = 3,
              window_ms = 600000, cooldown_ms = 300000 } }
for i = 1, 4 do
  note_pids(p)
  local _, e = p:call("exit", 7, { key = "crash" .. i })
  print("crash " .. i .. " at " .. at() .. ": " .. tostring(e))
end
local _, e = p:call("echo", 1)
print(e.kind .. " at " .. at() .. ": " .. e.message)
print("details", e.details.last_crash.classification,
      e.details.last_crash.exit_code, e.details.cooldown_ms)
print("state " .. p:stats().state)
sprun.sleep(299000)
print("at " .. at() .. ": " .. tostring(select(2, p:call("echo", 1)).kind))
sprun.sleep(1000)
print("after cooldown at " .. at() .. ": " .. tostring(p:call("echo", "back")))
note_pids(p)
local s = p:stats()
print("state " .. s.state .. ", restarts " .. s.restarts .. ", crashes "
      .. s.crashes.exit)
p:stop()
]]
    assert.are.equal([[
crash 1 at 0: worker_crash: vt/worker_1 exited with status 7 (exit)
restarted worker_1 at 10
crash 2 at 10: worker_crash: vt/worker_1 exited with status 7 (exit)
restarted worker_1 at 70
crash 3 at 70: worker_crash: vt/worker_1 exited with status 7 (exit)
restarted worker_1 at 190
crash 4 at 190: worker_crash: vt/worker_1 exited with status 7 (exit)
pool_failed at 190: pool 'vt': 4 crashes within 600000 ms (restart.max_restarts = 3)
details	exit	7	300000
state failed
at 480: pool_failed
after cooldown at 490: back
state running, restarts 3, crashes 4
]], out)
  end)

  it("fails a pool whose workers die before ready start_failures times, "
     .. "with their stderr in the error", function()
    local out = vrun [[
local p = sprun.pool.start { name = "vt", size = 1,
  cmd = { SPRUN, WORKER }, env = { SPRUN_TEST_START = "exit:3" },
  start_failures = 3, queue_timeout_ms = 3600000,
  restart = { backoff_ms = { 20000 }, cooldown_ms = 600000 } }
local _, e = p:call("echo", 1)
print(e.kind .. " at " .. at() .. ": " .. e.message)
print("tail: " .. table.concat(e.details.stderr_tail, "|"))
local _, e2 = p:call("echo", 1)
print("at once: " .. e2.kind .. " at " .. at())
local s = p:stats()
print("restarts " .. s.restarts .. ", exits " .. s.crashes.exit)
sprun.sleep(600000)
local _, e3 = p:call("echo", 1)
print("after cooldown: " .. e3.kind .. " at " .. at())
p:stop()
]]
    assert.are.equal([[
pool_failed at 40: pool 'vt': worker_1 died before it was ready 3 times in a row
tail: cannot start: exit:3
at once: pool_failed at 40
restarts 2, exits 3
after cooldown: pool_failed at 680
]], out)
  end)

  it("sends no request to a tainted slot until taint_ms is over", function()
    local out = vrun [[
local p = sprun.pool.start { name = "vt", size = 2, cmd = { SPRUN, WORKER },
  restart = { backoff_ms = { 1000 } },
  crash_barrier = { taint_ms = 120000 } }
local function who() return p:call("who").id end
sprun.sleep(10000) -- both ready: the first slot has the first call
print("first: " .. who())
note_pids(p)
local _, e = p:call("segv")
print(e.details.worker_id .. " " .. e.details.classification)
sprun.sleep(10000)
local seen = {}
for i = 1, 5 do seen[i] = who() end
print("tainted: " .. table.concat(seen, " ") .. ", stats.tainted "
      .. p:stats().tainted)
sprun.sleep(109000)
print("at " .. at() .. ": " .. who())
sprun.sleep(2000)
print("at " .. at() .. ": " .. who())
note_pids(p)
p:stop()
]]
    assert.are.equal([[
first: worker_1
worker_1 segfault
tainted: worker_2 worker_2 worker_2 worker_2 worker_2, stats.tainted 1
at 120: worker_2
at 130: worker_1
]], out)
  end)

  it("uses a tainted slot when every slot is tainted", function()
    local out = vrun [[
local p = sprun.pool.start { name = "vt", size = 1, cmd = { SPRUN, WORKER },
  restart = { backoff_ms = { 1000 } } }
local _, e = p:call("segv")
print(e.details.classification .. ", tainted " .. p:stats().tainted)
print(p:call("echo", "still served") .. " at " .. at())
note_pids(p)
p:stop()
]]
    assert.are.equal("segfault, tainted 1\nstill served at 0\n", out)
  end)

  it("recycles a worker every ttl_ms, its replacement up before it goes",
    function()
    local out = vrun [[
local p = sprun.pool.start { name = "vt", size = 1, cmd = { SPRUN, WORKER },
  ttl_ms = 3600000 }
local seen, n = {}, 0
local function pid()
  local v = p:call("who").pid
  if not seen[v] then seen[v], n = true, n + 1 end
  pids[v] = true
  return v
end
pid()
sprun.sleep(3590000)
pid()
print("before the hour: " .. n .. " pid(s), recycled " .. p:stats().recycled)
for _ = 1, 3 do
  sprun.sleep(3600000)
  pid()
end
local s = p:stats()
print("after 3 more hours: " .. n .. " pids, recycled " .. s.recycled
      .. ", restarts " .. s.restarts .. ", ready " .. s.ready)
p:stop()
]]
    assert.are.equal([[
before the hour: 1 pid(s), recycled 0
after 3 more hours: 4 pids, recycled 3, restarts 0, ready 1
]], out)
  end)

  it("times a queued request out after queue_timeout_ms, and answers "
     .. "pool_saturated at once past max_queue", function()
    local out = vrun [[
local p = sprun.pool.start { name = "vt", size = 1, cmd = { SPRUN, WORKER },
  queue_timeout_ms = 20000, max_queue = 2,
  restart = { backoff_ms = { 60000 } } }
note_pids(p)
local _, e = p:call("exit", 1)
print("crash: " .. e.kind)
local ts = {}
for i = 1, 3 do
  ts[i] = sprun.spawn(function()
    local _, err = p:call("echo", i)
    return err.kind .. " at " .. at()
  end)
end
for i = 1, 3 do print(i .. ": " .. ts[i]:await()) end
sprun.sleep(40000)
print("at " .. at() .. ": " .. p:call("echo", "served"))
note_pids(p)
local s = p:stats()
print("queue_timeout " .. s.errors.queue_timeout .. ", pool_saturated "
      .. s.errors.pool_saturated)
p:stop()
]]
    assert.are.equal([[
crash: worker_crash
1: queue_timeout at 20
2: queue_timeout at 20
3: pool_saturated at 0
at 60: served
queue_timeout 2, pool_saturated 1
]], out)
  end)
end)
