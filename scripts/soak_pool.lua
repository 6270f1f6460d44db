-- Pool soak: a million calls through a sprun.pool while a chaos task
-- kills workers now and then, then a check that no call was lost or
-- answered twice, that the pool's counts add up, that no worker process is
-- left, and that sprun's memory stayed flat. Run by `make soak` after
-- scripts/soak.lua (not by `make test`):
--
--   build/sprun scripts/soak_pool.lua [calls] [workers] [in_flight] [seed]
--
-- Environment: SOAK_WORKER=python serves the calls with Python workers
-- (python/sprun_worker.py) instead of Lua ones (this very script, which
-- serves when a pool started it); SOAK_CHAOS_MS (default 500) is the mean
-- time between two kills, 0 for none.
--
-- Each call is pool:call("work", { i = i }) (every second one idempotent);
-- the worker answers with the call's number, so a reply that reaches the
-- wrong caller is seen. The chaos task sends SIGKILL or SIGSEGV to a
-- random ready worker (by pid from pool:workers(), checked to still be
-- sprun's child). Every `calls / 20` calls a line shows the rate, sprun's
-- RSS, the workers' RSS (sum and largest), the crashes and restarts.
--
-- Exits 1 with a message when a call ended twice or never, or got another
-- call's reply; when an idempotent call failed but for the poison rule
-- (see tests/lua/pool_chaos_spec.lua), or a non-idempotent one with
-- anything but worker_crash; when the pool's stats do not add up; when a
-- worker process outlives pool:stop(); or when sprun's RSS after warm-up
-- (the first 10% of calls) rose past 10% + 8 MiB of its warm-up figure.
local sprun = require "sprun"
local ffi = require "ffi"

pcall(ffi.cdef, "int getpid(void);")
pcall(ffi.cdef, "int kill(int pid, int sig);")
pcall(ffi.cdef, "long readlink(const char *path, char *buf, size_t size);")

-- Started by the pool: serve.
if os.getenv("SPRUN_CHANNEL") then
  local pid = ffi.C.getpid()
  sprun.pool.serve {
    work = function(a) return { i = a.i, pid = pid } end,
  }
  return 0
end

local CALLS = tonumber(arg and arg[1]) or 1000000
local SIZE = tonumber(arg and arg[2]) or 4
local IN_FLIGHT = tonumber(arg and arg[3]) or 256
local SEED = tonumber(arg and arg[4]) or 20240601
local CHAOS_MS = tonumber(os.getenv("SOAK_CHAOS_MS")) or 500
local PYTHON = os.getenv("SOAK_WORKER") == "python"
local CONCURRENCY = 16
local MAX_RETRIES = 10

local RSS_GROWTH = 0.10
local RSS_SLACK_KB = 8 * 1024
local SIGKILL, SIGSEGV, ESRCH = 9, 11, 3

local function fail(msg)
  io.stderr:write("soak_pool: FAILED (seed ", SEED, "): ", msg, "\n")
  os.exit(1)
end

local function status_kb(pid, field)
  local f = io.open("/proc/" .. pid .. "/status", "r")
  if f == nil then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match(field .. ":%s*(%d+) kB"))
end

-- The state letter and parent pid of `pid`, or nil when it is gone.
local function proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "rb")
  if f == nil then
    return nil
  end
  local s = f:read("*a") or ""
  f:close()
  local state, ppid = s:match("^%d+ %(.*%) (%S) (%-?%d+)")
  return state, tonumber(ppid)
end

local function self_exe()
  local buf = ffi.new("char[4096]")
  local n = ffi.C.readlink("/proc/self/exe", buf, 4095)
  assert(n > 0, "cannot read /proc/self/exe")
  return ffi.string(buf, n)
end

local function script_path()
  local src = debug.getinfo(1, "S").source:sub(2)
  if src:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    src = p:read("*l") .. "/" .. src
    p:close()
  end
  return src
end

math.randomseed(SEED)
local me = ffi.C.getpid()
local cmd
if PYTHON then
  cmd = { "python3", "-c", "import os, sprun_worker\n"
    .. "pid = os.getpid()\n"
    .. "sprun_worker.run({'work': lambda a: {'i': a['i'], 'pid': pid}})" }
else
  cmd = { self_exe(), script_path() }
end

local ended = ffi.new("uint8_t[?]", CALLS + 1)
local outcomes = { ok = 0 }
local crossed, bad = 0, {}
local idem_crash = 0
local pids, npids = {}, 0
local kills = { [SIGKILL] = 0, [SIGSEGV] = 0 }
local warm_at = math.floor(CALLS / 10)
local report_every = math.max(1, math.floor(CALLS / 20))
local warm_rss, rss_min, rss_max
local next_call, completed = 1, 0

local function see(pid)
  if pid and not pids[pid] then
    pids[pid] = true
    npids = npids + 1
  end
end

local pool = sprun.pool.start {
  name = "soak", size = SIZE, cmd = cmd, concurrency = CONCURRENCY,
  max_queue = IN_FLIGHT * 2, queue_timeout_ms = 60000,
  request_timeout_ms = 30000, start_failures = 1000000,
  restart = { backoff_ms = { 10 }, max_restarts = 1000000 },
  crash_barrier = { retry = "idempotent", max_retries = MAX_RETRIES,
                    backoff_ms = { 5, 10, 20 } },
}

local wall0 = sprun.hrtime()
local last_t, last_n = wall0, 0

local function report()
  local t = sprun.hrtime()
  local rss = status_kb(me, "VmRSS")
  if completed == warm_at or (warm_rss == nil and completed > warm_at) then
    warm_rss, rss_min, rss_max = rss, rss, rss
  elseif warm_rss then
    rss_min, rss_max = math.min(rss_min, rss), math.max(rss_max, rss)
  end
  local wsum, wmax, nw = 0, 0, 0
  for _, w in ipairs(pool:workers()) do
    see(w.pid)
    if w.rss_mb then
      wsum, wmax, nw = wsum + w.rss_mb, math.max(wmax, w.rss_mb), nw + 1
    end
  end
  local s = pool:stats()
  local crashes = 0
  for _, n in pairs(s.crashes) do
    crashes = crashes + n
  end
  print(("  %7d calls  %6.0f/s  sprun RSS %6.1f MiB  workers RSS %6.1f "
    .. "MiB (%d, largest %.1f)  crashes %d  restarts %d"):format(
    completed, (completed - last_n) / ((t - last_t) / 1e9), rss / 1024,
    wsum, nw, wmax, crashes, s.restarts))
  io.stdout:flush()
  last_t, last_n = t, completed
end

local done = false
local chaos = sprun.spawn(function()
  if CHAOS_MS <= 0 then
    return
  end
  while not done do
    sprun.sleep(CHAOS_MS / 2 + math.random(CHAOS_MS))
    local ready = {}
    for _, w in ipairs(pool:workers()) do
      see(w.pid)
      if w.state == "ready" then
        ready[#ready + 1] = w
      end
    end
    if #ready > 0 and not done then
      local w = ready[math.random(#ready)]
      local sig = math.random(2) == 1 and SIGKILL or SIGSEGV
      local state, ppid = proc_state(w.pid)
      if state and state ~= "Z" and ppid == me
         and ffi.C.kill(w.pid, sig) == 0 then
        kills[sig] = kills[sig] + 1
      end
    end
  end
end)

local CALL_IDEM = { idempotent = true }
local CALL_PLAIN = { idempotent = false }
local ARGS = {}

local function caller()
  while next_call <= CALLS do
    local i = next_call
    next_call = i + 1
    ARGS.i = i
    local idem = i % 2 == 0
    local v, err = pool:call("work", ARGS, idem and CALL_IDEM or CALL_PLAIN)
    ended[i] = ended[i] + 1
    if v ~= nil then
      if v.i ~= i then
        crossed = crossed + 1
      end
      see(v.pid)
      outcomes.ok = outcomes.ok + 1
    else
      local kind = sprun.error_kind(err)
      outcomes[kind] = (outcomes[kind] or 0) + 1
      local d = err.details or {}
      if kind == "worker_crash" and idem and (d.attempt or 0) >= 1 then
        idem_crash = idem_crash + 1
      elseif not (kind == "worker_crash" and not idem and d.attempt == 0)
             and kind ~= "poison_request" then
        if #bad < 10 then
          bad[#bad + 1] = ("call %d%s: %s"):format(i,
            idem and " (idempotent)" or "", tostring(err))
        end
      end
    end
    completed = completed + 1
    if completed % report_every == 0 then
      report()
    end
  end
end

print(("soak_pool: %d calls through %d %s workers (concurrency %d), %d "
  .. "in flight, a kill every ~%d ms, seed %d"):format(CALLS, SIZE,
  PYTHON and "Python" or "Lua", CONCURRENCY, IN_FLIGHT, CHAOS_MS, SEED))
local tasks = {}
for k = 1, IN_FLIGHT do
  tasks[k] = sprun.spawn(caller)
end
for k = 1, IN_FLIGHT do
  local _, err = tasks[k]:await()
  if err then
    fail("caller " .. k .. " failed: " .. tostring(err))
  end
end
local secs = (sprun.hrtime() - wall0) / 1e9
done = true
chaos:await()
local end_rss = status_kb(me, "VmRSS")
local s = pool:stats()
for _, w in ipairs(pool:workers()) do
  see(w.pid)
end
pool:stop()

--- The report -------------------------------------------------------------

local lost, twice = 0, 0
for i = 1, CALLS do
  if ended[i] == 0 then lost = lost + 1 end
  if ended[i] > 1 then twice = twice + 1 end
end
local kinds, total = {}, 0
for k, n in pairs(outcomes) do
  kinds[#kinds + 1] = k
  total = total + n
end
table.sort(kinds)
local parts = {}
for _, k in ipairs(kinds) do
  parts[#parts + 1] = ("%s %d"):format(k, outcomes[k])
end
local err_sum = 0
for _, n in pairs(s.errors) do
  err_sum = err_sum + n
end
local crash_parts, crash_sum = {}, 0
for k, n in pairs(s.crashes) do
  crash_parts[#crash_parts + 1] = ("%s %d"):format(k, n)
  crash_sum = crash_sum + n
end
table.sort(crash_parts)
local left = {}
for pid in pairs(pids) do
  local gone = ffi.C.kill(pid, 0) ~= 0 and ffi.errno() == ESRCH
  if not gone or proc_state(pid) then
    left[#left + 1] = pid
  end
end

print(("  wall time        %.1f s, %.0f calls/s"):format(secs, CALLS / secs))
print("  outcomes         " .. table.concat(parts, ", "))
print(("  chaos            %d SIGKILL + %d SIGSEGV sent; crashes %s; %d "
  .. "restarts; %d poisoned; %d worker pids seen"):format(kills[SIGKILL],
  kills[SIGSEGV], table.concat(crash_parts, ", "), s.restarts, s.poisoned,
  npids))
print(("  pool stats       requests %d = replies %d + errors %d; service p50 "
  .. "%.2f ms, p99 %.2f ms"):format(s.requests, s.replies, err_sum,
  s.service_ms.p50, s.service_ms.p99))
print(("  RSS              sprun: peak %.1f MiB; after warm-up %.1f MiB, at "
  .. "the end %.1f MiB (min %.1f, max %.1f after warm-up)"):format(
  status_kb(me, "VmHWM") / 1024, warm_rss / 1024, end_rss / 1024,
  rss_min / 1024, rss_max / 1024))

if lost > 0 or twice > 0 or completed ~= CALLS or total ~= CALLS then
  fail(("%d calls never ended, %d ended more than once (%d completed, %d "
    .. "outcomes, %d submitted)"):format(lost, twice, completed, total,
                                          CALLS))
end
if crossed > 0 then
  fail(("%d calls got another call's reply"):format(crossed))
end
if #bad > 0 then
  fail("calls that ended wrongly:\n  " .. table.concat(bad, "\n  "))
end
if idem_crash ~= s.poisoned then
  fail(("%d idempotent calls failed after a retry, but %d were poisoned")
    :format(idem_crash, s.poisoned))
end
if s.requests ~= CALLS or s.replies ~= outcomes.ok
   or s.replies + err_sum ~= s.requests or s.in_flight ~= 0
   or s.queued ~= 0 or s.protocol_errors ~= 0 then
  fail(("the pool's stats do not add up: requests %d, replies %d (callers "
    .. "saw %d), errors %d, in flight %d, queued %d, protocol errors %d")
    :format(s.requests, s.replies, outcomes.ok, err_sum, s.in_flight,
            s.queued, s.protocol_errors))
end
if #left > 0 then
  fail(("%d worker processes outlived pool:stop(): %s"):format(#left,
    table.concat(left, " ")))
end
if rss_max > warm_rss * (1 + RSS_GROWTH) + RSS_SLACK_KB then
  fail(("sprun's RSS grew from %.1f MiB after warm-up to %.1f MiB")
    :format(warm_rss / 1024, rss_max / 1024))
end
print("soak_pool: ok")
return 0
