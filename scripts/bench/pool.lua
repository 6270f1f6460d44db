-- sprun.pool: 50,000 echo requests ({ i = i }) over 4 worker processes,
-- with the crash barrier on (the default options), next to the same
-- workload on Python's own process pools.
--
--   * 4 Python workers (scripts/bench/pool/echo_worker.py, on
--     python/sprun_worker.py) at concurrency 1 and pipelined (concurrency
--     8); then 4 sprun Lua workers (echo_worker.lua) alike;
--   * multiprocessing.Pool(4).map(echo, items, chunksize=1) and
--     concurrent.futures.ProcessPoolExecutor(4) (a submit per item, and
--     map with chunksize=1), measured by scripts/bench/pool/peers.py, run
--     once the sprun cases are done, so that nothing else competes for
--     the cores meanwhile.
--
-- Each sprun case runs in a sprun process of its own (this script, run
-- with the arguments `case KIND CONCURRENCY`), so that no case runs on
-- the traces, heap and timer heap another case left: it starts its pool,
-- warms it up (every worker ready, the traces compiled), then times
-- ROUNDS rounds of N calls, made by size x concurrency tasks calling in a
-- loop (every slot of every worker busy), and prints its figures as one
-- JSON line. Per request, the median of the rounds: the wall time (and
-- req/s); the sprun process's own CPU (getrusage(RUSAGE_SELF), user +
-- sys; the workers' CPU is not in it, theirs is read from /proc/PID/stat
-- and shown in the note), its read and write syscalls (/proc/self/io) and
-- context switches; the Lua heap allocated (a pass of 5,000 calls with
-- the collector stopped, as B/op); and sprun's resident memory.
--
-- Targets (on the Python cases): >= 64,000 req/s (<= 15.6 us of wall per
-- request), <= 3 us of sprun CPU per request, at least the req/s of
-- multiprocessing.Pool.map (a ratio of times <= 1) and 4 times that of
-- the faster ProcessPoolExecutor case (a ratio <= 0.25). The Lua-worker
-- rows have no target: they show what sprun costs on both ends.
--
-- Every reply is checked against its args: a wrong one does not stop the
-- bench, it is counted, and shown in the note of the case and in a line
-- starting with "!!".
--
-- Every pool is stopped (pool:stop() reaps its workers) and each worker's
-- pid is checked gone, by the case and again here; the peers' process
-- group too. Runs in about 40 s, 20 of them the Python peers.
--
-- SPRUN_BENCH_POOL_N (default 50000) sets the requests per round,
-- SPRUN_BENCH_POOL_ROUNDS (default 3) the rounds; SPRUN_BENCH_POOL_PEERS=0
-- skips the Python peers.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local cjson = require("cjson").new()

local fmt = string.format

local HERE = arg[0]:match("^(.*)/[^/]*$")
local N = tonumber(os.getenv("SPRUN_BENCH_POOL_N")) or 50000
local ROUNDS = tonumber(os.getenv("SPRUN_BENCH_POOL_ROUNDS")) or 3
local WORKERS = 4
local WARM = 5000       -- calls before the clock starts
local ALLOC_N = 5000    -- calls of the allocation pass
local PEERS = os.getenv("SPRUN_BENCH_POOL_PEERS") ~= "0"

local P = require "procs"
local SPRUN, alive, median = P.SPRUN, P.alive, P.median
local rss_kb, thousands = P.rss_kb, P.thousands
local run_json, runs = P.run_json, P.runs
local CLK_TCK = P.CLK_TCK

--- One case, in a process of its own --------------------------------------

-- This process so far: user and sys CPU in ns, context switches
-- (voluntary, involuntary), read and write syscalls.
local function usage()
  local user, sys, vcsw, ivcsw = P.rusage(P.RUSAGE_SELF)
  local f = assert(io.open("/proc/self/io"))
  local io_text = f:read("*a")
  f:close()
  return {
    user = user, sys = sys, vcsw = vcsw, ivcsw = ivcsw,
    reads = tonumber(io_text:match("syscr:%s*(%d+)")),
    writes = tonumber(io_text:match("syscw:%s*(%d+)")),
  }
end

-- The CPU (user + sys) the processes `pids` used so far, in ns.
local function workers_cpu(pids)
  local t = 0
  for _, pid in ipairs(pids) do
    local f = io.open("/proc/" .. pid .. "/stat")
    if f then
      local s = f:read("*a")
      f:close()
      -- The fields after the command (in parentheses, maybe with spaces):
      -- utime and stime are the 12th and 13th.
      local fields = {}
      for v in s:match("%) (.*)$"):gmatch("%S+") do
        fields[#fields + 1] = v
      end
      t = t + (tonumber(fields[12]) + tonumber(fields[13])) * 1e9 / CLK_TCK
    end
  end
  return t
end

-- n calls of echo from `callers` tasks; returns the errors, the first
-- one, and the wrong replies (a value that is not the args sent).
local function calls(pool, n, callers)
  local per = math.floor(n / callers)
  local extra = n - per * callers
  local errs, first, wrong = 0, nil, 0
  local tasks = {}
  for k = 1, callers do
    local from = (k - 1) * per + 1 + math.min(k - 1, extra)
    local to = from + per - 1 + (k <= extra and 1 or 0)
    tasks[k] = sprun.spawn(function()
      for i = from, to do
        local v, err = pool:call("echo", { i = i })
        if v == nil then
          errs = errs + 1
          first = first or err
        elseif type(v) ~= "table" or v.i ~= i then
          wrong = wrong + 1
          if wrong <= 3 then
            io.stderr:write(fmt("pool bench: WRONG REPLY to { i = %d }: "
              .. "%s\n", i, type(v) == "table" and cjson.encode(v)
                            or tostring(v)))
          end
        end
      end
    end)
  end
  for k = 1, callers do
    tasks[k]:await()
  end
  return errs, first, wrong
end

local function run_case(kind, concurrency)
  local cmd = kind == "lua"
    and { SPRUN, HERE .. "/pool/echo_worker.lua" }
    or { "python3", HERE .. "/pool/echo_worker.py" }
  local callers = WORKERS * concurrency
  local pool = sprun.pool.start { name = kind .. "_c" .. concurrency,
                                  size = WORKERS, cmd = cmd,
                                  concurrency = concurrency }
  local errs, first, wrong = calls(pool, WARM, callers)
  assert(errs == 0, tostring(first))
  local wrong_total = wrong
  local pids = {}
  for _, w in ipairs(pool:workers()) do
    pids[#pids + 1] = w.pid
  end
  assert(#pids == WORKERS)
  local r = { kind = kind, concurrency = concurrency, callers = callers,
              n = N, pids = pids, rounds = {} }
  for k = 1, ROUNDS do
    collectgarbage("collect")
    local w0 = workers_cpu(pids)
    local u0 = usage()
    local t0 = sprun.hrtime()
    errs, first, wrong = calls(pool, N, callers)
    local t1 = sprun.hrtime()
    local u1 = usage()
    local w1 = workers_cpu(pids)
    assert(errs == 0, tostring(first))
    wrong_total = wrong_total + wrong
    local per = {}
    for key, v in pairs(u1) do
      per[key] = (v - u0[key]) / N
    end
    per.cpu = per.user + per.sys
    per.wall = (t1 - t0) / N
    per.workers_cpu = (w1 - w0) / N
    r.rounds[k] = per
  end
  r.rss_kb, r.hwm_kb = rss_kb()
  -- The Lua heap allocated per call, apart: with the collector stopped.
  collectgarbage("collect")
  collectgarbage("stop")
  local kb0 = collectgarbage("count")
  errs, first, wrong = calls(pool, ALLOC_N, callers)
  local kb1 = collectgarbage("count")
  collectgarbage("restart")
  assert(errs == 0, tostring(first))
  r.wrong = wrong_total + wrong
  r.bytes = (kb1 - kb0) * 1024 / ALLOC_N
  local st = pool:stats()
  if next(st.errors) or next(st.crashes) or st.restarts > 0 then
    error("the pool had errors or crashes: " .. cjson.encode {
      errors = st.errors, crashes = st.crashes, restarts = st.restarts }, 0)
  end
  pool:stop()
  for _, pid in ipairs(pids) do
    assert(not alive(pid), "worker " .. pid .. " outlived pool:stop()")
  end
  io.stdout:write(cjson.encode(r), "\n")
  io.stdout:flush()
end

if arg[1] == "case" then
  run_case(arg[2], tonumber(arg[3]))
  return
end

--- The benchmark --------------------------------------------------------

local H = require "harness"


-- A child process to completion, its stdout's JSON lines decoded.

local function case(kind, concurrency)
  local r = run_json({ SPRUN, arg[0], "case", kind, concurrency },
                     120000)[1]
  for _, pid in ipairs(r.pids) do
    assert(not alive(pid), "worker " .. pid .. " outlived its case")
  end
  local m = {}
  for _, key in ipairs { "wall", "cpu", "user", "sys", "reads", "writes",
                         "vcsw", "ivcsw", "workers_cpu" } do
    local list = {}
    for i, round in ipairs(r.rounds) do
      list[i] = round[key]
    end
    m[key] = median(list)
    m[key .. "_list"] = list
  end
  m.kind, m.concurrency, m.callers = kind, concurrency, r.callers
  m.n, m.bytes, m.rss_kb, m.hwm_kb = r.n, r.bytes, r.rss_kb, r.hwm_kb
  m.wrong, m.total = r.wrong, WARM + #r.rounds * r.n + ALLOC_N
  m.req_s = 1e9 / m.wall
  return m
end


-- The rows of a case: wall per request, sprun CPU per request.
local function report(m, targets)
  local name = fmt("pool echo, 4 %s workers, concurrency %d",
                   m.kind == "lua" and "sprun Lua" or "Python", m.concurrency)
  local wrong = ""
  if m.wrong > 0 then
    wrong = fmt("; WRONG REPLIES: %d of %s calls", m.wrong,
                thousands(m.total))
    print(fmt("!! %s: %d of %s calls came back with a value other than "
              .. "their args", name, m.wrong, thousands(m.total)))
  end
  H.record {
    name = name .. ": wall per request"
           .. (targets and " (>= 64,000 req/s)" or ""),
    ns = m.wall, bytes = m.bytes,
    target = targets and { ns = 1e9 / 64000 } or nil,
    note = fmt("%s req/s, median of %d rounds of %s calls from %d tasks "
               .. "(rounds %s req/s); sprun RSS %.1f MiB (peak %.1f MiB); "
               .. "B/op: Lua heap allocated per call%s",
               thousands(m.req_s), #m.wall_list, thousands(m.n), m.callers,
               runs(m.wall_list, function(w) return thousands(1e9 / w) end),
               m.rss_kb / 1024, m.hwm_kb / 1024, wrong),
  }
  H.record {
    name = name .. ": sprun CPU per request",
    ns = m.cpu, bytes = m.bytes,
    target = targets and { ns = 3000 } or nil,
    note = fmt("user %.2f + sys %.2f us (rounds %s us); per call %.2f read "
               .. "+ %.2f write syscalls, %.2f + %.2f context switches; the "
               .. "workers' CPU %.2f us per call; cores busy: sprun %.2f, "
               .. "workers %.2f", m.user / 1e3, m.sys / 1e3,
               runs(m.cpu_list, function(c) return fmt("%.1f", c / 1e3) end),
               m.reads, m.writes, m.vcsw, m.ivcsw, m.workers_cpu / 1e3,
               m.cpu / m.wall, m.workers_cpu / m.wall),
  }
end

print(fmt("-- %s echo requests over %d workers, %d rounds (sprun %s)",
          thousands(N), WORKERS, ROUNDS, sprun.version))
local py1 = case("py", 1)
report(py1, true)
local py8 = case("py", 8)
report(py8, true)
report(case("lua", 1), false)
report(case("lua", 8), false)

--- Python's own pools -----------------------------------------------------

if PEERS then
  local peers = {}
  for _, p in ipairs(run_json({ "python3", HERE .. "/pool/peers.py", N,
                                WORKERS }, 180000)) do
    peers[p.case] = p
  end
  local NAMES = {
    mp_map = "multiprocessing.Pool(4).map, chunksize=1",
    ppe_submit = "ProcessPoolExecutor(4), a submit per item",
    ppe_map = "ProcessPoolExecutor(4).map, chunksize=1",
  }
  print("-- Python's process pools, the same workload (peers.py)")
  for _, c in ipairs { "mp_map", "ppe_submit", "ppe_map" } do
    local p = assert(peers[c], "peers.py did not report " .. c)
    p.ns = 1e9 / p.req_s
    H.record {
      name = "peer: " .. NAMES[c],
      ns = p.ns,
      note = fmt("%s req/s; %s calls in %.2f s; the Python parent's own "
                 .. "CPU %.2f us per call; its RSS %.1f MiB",
                 thousands(p.req_s), thousands(p.n), p.seconds, p.cpu_us,
                 p.rss_kb / 1024),
    }
  end
  local mp = peers.mp_map
  local ppe = peers.ppe_submit.ns < peers.ppe_map.ns and peers.ppe_submit
              or peers.ppe_map
  print("-- sprun's pool of Python workers against them (ratio of times "
        .. "per request)")
  for _, m in ipairs { py1, py8 } do
    local name = fmt("pool echo, 4 Python workers, concurrency %d",
                     m.concurrency)
    H.record {
      name = name .. " vs multiprocessing.Pool.map (>= its req/s)",
      ns = m.wall, floor = mp.ns, target = { ratio = 1 },
      note = fmt("%s req/s against %s req/s: %.2fx", thousands(m.req_s),
                 thousands(mp.req_s), m.req_s / mp.req_s),
    }
    H.record {
      name = name .. " vs ProcessPoolExecutor (>= 4x its req/s)",
      ns = m.wall, floor = ppe.ns, target = { ratio = 0.25 },
      note = fmt("%s req/s against %s req/s (%s, the faster of its two "
                 .. "cases): %.2fx", thousands(m.req_s),
                 thousands(ppe.req_s), ppe.case, m.req_s / ppe.req_s),
    }
  end
end
