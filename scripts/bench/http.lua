-- sprun.http: 20,000 GETs of a small body ("ok\n") with 50 in flight
-- against a local nginx, in requests/s, next to curl --parallel (libcurl's
-- own multi interface, which sprun's pool is built on: the floor of this
-- design), Node's fetch and Python's aiohttp, in the same run, on the same
-- URL, one after another.
--
--   * sprun: `sprun.http.get(url)` from 50 tasks looping, and the target
--     case, a client with a circuit breaker per origin
--     (`sprun.http.client{ breaker_per_origin = { failure_threshold = 5 } }`,
--     `c:get(url)`), from 50 tasks alike; then the cost of a request
--     cancelled in flight, one at a time: a GET of /limited/large.bin
--     (4 MiB at 256 KiB/s) cancelled once its first bytes are in, and
--     one cancelled a loop turn after it started (by then sent: nginx
--     logs each; the notes say how many it saw);
--   * curl -sS --no-progress-meter -Z --parallel-max 50 -K FILE (20,000
--     `url = ...` lines; the bodies and a "%{http_code}" line per
--     transfer go to its stdout, which this script checks);
--   * Node's fetch (scripts/bench/http/fetch.mjs) and aiohttp
--     (scripts/bench/http/aiohttp_get.py, on Debian's python3-aiohttp;
--     skipped, with a line saying why, when it cannot be imported): 50
--     loops of a GET and its body, sharing one count.
--
-- Each sprun case runs in a sprun process of its own (this script with the
-- arguments `case KIND URL`), so that no case runs on the traces, heap and
-- connection pool another case left: it warms up (2,000 requests: the 50
-- connections open, the traces compiled), then times ROUNDS rounds of N
-- and prints its figures as one JSON line. Per request, the median of the
-- rounds: the wall time (and req/s) and the sprun process's own CPU
-- (getrusage(RUSAGE_SELF), user + sys, libcurl included); the Lua heap
-- allocated (a pass of 2,000 requests with the collector stopped, as
-- B/op); sprun's resident memory. Node and aiohttp warm up and time their
-- rounds alike, in their own process, and report their own CPU (they are
-- 4 to 6 times slower: they stop after the round that passes 8 s of
-- timed rounds, so that the bench stays within a minute); curl is a new
-- process per round, timed from here (its start and the reading of its
-- config are in its time: about 10 ms of some 1,500), its CPU taken from
-- getrusage(RUSAGE_CHILDREN). nginx's own CPU per request (master
-- and workers, from /proc/PID/stat) is in every note.
--
-- nginx runs with ONE worker. Every client here is single-threaded and
-- keeps about one core busy (the notes say how much), while nginx, at 25
-- to 40 us of CPU a request on this VM, needs a third of the other: one
-- worker leaves the client a core to itself, and a second worker has no
-- bottleneck to relieve. Measured on this 2-core VM, 10 alternating
-- pairs of runs (curl, then the breaker case) against an nginx of each
-- kind: curl --parallel 12,700 req/s with one worker against 13,030 with
-- two (medians), the breaker case 8,780 against 8,960, nginx's CPU the
-- same (18 s in all each); a difference of 2 to 3 % within a spread of
-- +-20 % from run to run. SPRUN_BENCH_HTTP_WORKERS=2 measures the other
-- way.
--
-- Targets (on the client with a breaker per origin): >= 31,000 req/s
-- (<= 32.3 us of wall per request), >= 0.8x the req/s of curl --parallel
-- (a ratio of times <= 1.25) and >= 4x that of Node's fetch (<= 0.25).
--
-- Every response is checked (status 200, body "ok\n"): a wrong one or an
-- error does not stop the bench, it is counted and shown in the note of
-- its case and in a line starting with "!!". Nothing is sent anywhere but
-- 127.0.0.1 (curl with --noproxy '*'; sprun and aiohttp ignore proxies
-- from the environment; Node's fetch has none). nginx is stopped at the
-- end by tests/lua/httpd/nginx.lua (its process group killed and reaped),
-- the peers' process groups are checked empty. Runs in 40 to 50 s
-- on this VM.
--
-- SPRUN_BENCH_HTTP_N (default 20000) sets the requests per round,
-- SPRUN_BENCH_HTTP_ROUNDS (default 3) the rounds,
-- SPRUN_BENCH_HTTP_WORKERS (default 1) nginx's workers,
-- SPRUN_BENCH_HTTP_PEER_MS (default 8000) the timed rounds' budget of Node
-- and aiohttp; SPRUN_BENCH_HTTP_PEERS=0 skips the peers.
local HERE = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = HERE .. "/?.lua;" .. HERE .. "/../../tests/lua/?.lua;"
               .. package.path
local sprun = require "sprun"
local cjson = require("cjson").new()

local fmt = string.format

local N = tonumber(os.getenv("SPRUN_BENCH_HTTP_N")) or 20000
local ROUNDS = tonumber(os.getenv("SPRUN_BENCH_HTTP_ROUNDS")) or 3
local WORKERS = tonumber(os.getenv("SPRUN_BENCH_HTTP_WORKERS")) or 1
local PEERS = os.getenv("SPRUN_BENCH_HTTP_PEERS") ~= "0"
local CONCURRENCY = 50
-- Node's fetch and aiohttp time rounds until ROUNDS are done or
-- PEER_BUDGET_MS went on them (one round at least).
local PEER_BUDGET_MS = tonumber(os.getenv("SPRUN_BENCH_HTTP_PEER_MS"))
                       or 8000
local WARM = 2000       -- requests before the clock starts
local ALLOC_N = 2000    -- requests of the allocation pass
-- The cancel cases open a connection per request (a cancel closes it),
-- each left in TIME_WAIT: a few thousand, not tens.
local CANCEL_N = 2000
local CANCEL_WARM = 200
local LARGE = 4 * 1024 * 1024
local BODY = "ok\n"

local P = require "procs"
local SPRUN, alive, median = P.SPRUN, P.alive, P.median
local rss_kb, thousands = P.rss_kb, P.thousands
local runs = P.runs
local RUSAGE_SELF, RUSAGE_CHILDREN = P.RUSAGE_SELF, P.RUSAGE_CHILDREN
local CLK_TCK = P.CLK_TCK
local cpu = P.rusage



-- User and sys CPU in ns of this process (RUSAGE_SELF, every thread) or
-- of its children reaped so far (RUSAGE_CHILDREN).

-- Resident memory (now, and the peak) of this process in KiB.

-- A string quoted on one line.
local function show(v)
  return (fmt("%q", tostring(v)):gsub("\\\n", "\\n"))
end

--- One case, in a process of its own --------------------------------------

local shown = 0 -- wrong responses written to stderr so far

-- n GETs of url by `callers` tasks, each looping on fetch(url) while
-- the shared count lasts. Returns the errors, the first one, and the
-- wrong responses (any status but 200, any body but "ok\n").
local function gets(fetch, url, n, callers)
  local left, errs, first, wrong = n, 0, nil, 0
  local function caller()
    while left > 0 do
      left = left - 1
      local r, err = fetch(url)
      if r == nil then
        errs = errs + 1
        first = first or tostring(err)
      elseif r.status ~= 200 or r.body ~= BODY then
        wrong = wrong + 1
        shown = shown + 1
        if shown <= 3 then
          io.stderr:write(fmt("http bench: WRONG RESPONSE: %s %s\n",
                              tostring(r.status), show(r.body)))
        end
      end
    end
  end
  local tasks = {}
  for k = 1, callers do
    tasks[k] = sprun.spawn(caller)
  end
  for k = 1, callers do
    tasks[k]:await()
  end
  return errs, first, wrong
end

-- The cancel cases: n GETs, one at a time, each started in a task and
-- cancelled from here, then awaited. "mid_body": once its first bytes
-- are in (the request task's on_body ends the wait of a gate task, which
-- this task awaits); "started": one loop turn after the task started the
-- request. Returns the wrong outcomes (anything but a "cancelled" error)
-- and the first one.
local function sleeper()
  sprun.sleep(10000)
end

local function cancels(kind, url, n)
  local http = sprun.http
  local wrong, first = 0, nil
  for _ = 1, n do
    local t
    if kind == "mid_body" then
      local gate = sprun.spawn(sleeper)
      local function opened()
        gate:cancel()
      end
      t = sprun.spawn(function()
        local r, err = http.get(url, { on_body = opened })
        gate:cancel()
        return r, err
      end)
      gate:await()
    else
      t = sprun.spawn(http.get, url)
      sprun.sleep(0)
    end
    t:cancel()
    local r, err = t:await()
    if r ~= nil or sprun.error_kind(err) ~= "cancelled" then
      wrong = wrong + 1
      first = first or (r and fmt("a response (%s)", tostring(r.status))
                        or tostring(err))
    end
  end
  return 0, first, wrong
end

local function run_case(kind, url)
  local http = sprun.http
  local batch, client
  if kind == "get" then
    batch = function(n)
      return gets(http.get, url, n, CONCURRENCY)
    end
  elseif kind == "client" then
    client = http.client { breaker_per_origin = { failure_threshold = 5 } }
    local function fetch(u)
      return client:get(u)
    end
    batch = function(n)
      return gets(fetch, url, n, CONCURRENCY)
    end
  else
    batch = function(n)
      return cancels(kind, url, n)
    end
  end
  local cancel = kind == "mid_body" or kind == "started"
  local n = cancel and CANCEL_N or N
  local r = { kind = kind, n = n, rounds = {}, errors = 0, wrong = 0 }
  local function add(errs, first, wrong)
    r.errors, r.wrong = r.errors + errs, r.wrong + wrong
    r.first_error = r.first_error or first
  end
  add(batch(cancel and CANCEL_WARM or WARM))
  for k = 1, ROUNDS do
    collectgarbage("collect")
    local u0, s0 = cpu(RUSAGE_SELF)
    local t0 = sprun.hrtime()
    local errs, first, wrong = batch(n)
    local t1 = sprun.hrtime()
    local u1, s1 = cpu(RUSAGE_SELF)
    add(errs, first, wrong)
    r.rounds[k] = { wall = (t1 - t0) / n, user = (u1 - u0) / n,
                    sys = (s1 - s0) / n, cpu = (u1 - u0 + s1 - s0) / n }
  end
  r.rss_kb, r.hwm_kb = rss_kb()
  -- The Lua heap allocated per request, apart: with the collector stopped.
  local alloc_n = cancel and CANCEL_WARM or ALLOC_N
  collectgarbage("collect")
  collectgarbage("stop")
  local kb0 = collectgarbage("count")
  local errs, first, wrong = batch(alloc_n)
  local kb1 = collectgarbage("count")
  collectgarbage("restart")
  add(errs, first, wrong)
  r.bytes = (kb1 - kb0) * 1024 / alloc_n
  r.total = (cancel and CANCEL_WARM or WARM) + ROUNDS * n + alloc_n
  r.pool = http.pool_stats()
  if client then
    local st = client:stats().origins
    local _, o = next(st)
    r.breaker_state = o and o.state
    r.client_requests = o and o.requests
  end
  io.stdout:write(cjson.encode(r), "\n")
  io.stdout:flush()
end

if arg[1] == "case" then
  run_case(arg[2], arg[3])
  return
end

--- The benchmark --------------------------------------------------------

local H = require "harness"
local nginx = require "httpd.nginx"

-- The peers run as they are, without what a sanitizer build preloads.
local ENV = { LD_PRELOAD = false }


local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

-- The fields of /proc/PID/stat after the command (in parentheses, maybe
-- with spaces), or nil once the process is gone.
local function stat_fields(pid)
  local s = read_file("/proc/" .. pid .. "/stat")
  if s == nil then
    return nil
  end
  local fields = {}
  for v in s:match("%) (.*)$"):gmatch("%S+") do
    fields[#fields + 1] = v
  end
  return fields
end

-- nginx's master and its workers (the processes whose parent it is).
local function nginx_pids(master)
  local pids = { master }
  local r = assert(sprun.process.run { "ls", "/proc", timeout_ms = 5000 })
  for pid in r.stdout:gmatch("%d+") do
    local f = stat_fields(pid)
    if f and tonumber(f[2]) == master then
      pids[#pids + 1] = tonumber(pid)
    end
  end
  return pids
end

-- The CPU (user + sys) the processes `pids` used so far, in ns.
local function procs_cpu(pids)
  local t = 0
  for _, pid in ipairs(pids) do
    local f = stat_fields(pid)
    if f then
      -- utime and stime are the 12th and 13th fields after the command.
      t = t + (tonumber(f[12]) + tonumber(f[13])) * 1e9 / CLK_TCK
    end
  end
  return t
end

-- A child's stdout's JSON lines decoded; raises if it failed. A peer
-- (not this script's own cases) runs without LD_PRELOAD.
local function run_json(cmd, timeout_ms, peer)
  return P.run_json(cmd, timeout_ms, peer and ENV or nil)
end

-- A child process to completion (its process group checked empty after).
local function run(cmd, timeout_ms, peer)
  cmd.timeout_ms = timeout_ms
  cmd.env = peer and ENV or nil
  local r, err = sprun.process.run(cmd)
  assert(r, tostring(err))
  assert(not alive(-r.pid), cmd[1] .. " left a process behind")
  return r
end


local function req_s_list(walls)
  return runs(walls, function(w) return thousands(1e9 / w) end)
end

-- "; WRONG ..." for a note, and its "!!" line, when anything failed.
local function failures(name, m)
  if m.wrong == 0 and m.errors == 0 then
    return ""
  end
  local s = fmt("%d wrong responses and %d errors of %s requests%s",
                m.wrong, m.errors, thousands(m.total),
                m.first_error and ", the first: " .. m.first_error or "")
  print(fmt("!! %s: %s", name, s))
  return "; FAILED: " .. s
end

local function main(srv)
  local url = srv:url("/small")
  local pids = nginx_pids(srv.pid)
  local function nginx_ns()
    return procs_cpu(pids)
  end
  -- The server answers as the cases expect, before anything is timed.
  local r, err = sprun.http.get(url)
  assert(r and r.status == 200 and r.body == BODY,
         "nginx did not answer /small with 200 ok: " .. tostring(err))

  print(fmt("-- %s GETs of %s (%s, %d bytes), %d in flight, rounds: %d; "
            .. "nginx %s with %d worker%s (pids %s); sprun %s",
            thousands(N), url, show(BODY), #BODY, CONCURRENCY, ROUNDS,
            (srv:error_log_text():match("nginx/([%d.]+)") or "?"), WORKERS,
            WORKERS == 1 and "" or "s", table.concat(pids, " "),
            sprun.version))

  --- sprun ------------------------------------------------------------

  local function case(kind, case_url)
    local n0 = nginx_ns()
    local c = run_json({ SPRUN, arg[0], "case", kind, case_url }, 60000)[1]
    c.nginx = (nginx_ns() - n0) / c.total
    local m = { kind = kind, n = c.n, bytes = c.bytes, total = c.total,
                rss_kb = c.rss_kb, hwm_kb = c.hwm_kb, wrong = c.wrong,
                errors = c.errors, first_error = c.first_error,
                nginx = c.nginx, pool = c.pool,
                breaker_state = c.breaker_state,
                client_requests = c.client_requests }
    for _, key in ipairs { "wall", "cpu", "user", "sys" } do
      local list = {}
      for i, round in ipairs(c.rounds) do
        list[i] = round[key]
      end
      m[key] = median(list)
      m[key .. "_list"] = list
    end
    m.req_s = 1e9 / m.wall
    return m
  end

  local function report_gets(name, m, target)
    local extra = ""
    if m.breaker_state then
      extra = fmt("; the origin's breaker %s after %s requests through it",
                  m.breaker_state, thousands(m.client_requests))
    end
    H.record {
      name = name, ns = m.wall, bytes = m.bytes, target = target,
      note = fmt("%s req/s, median of %d rounds of %s from %d tasks "
                 .. "(rounds %s req/s); sprun CPU %.1f us/request (user "
                 .. "%.1f + sys %.1f; rounds %s us), %.2f cores busy; "
                 .. "nginx CPU %.1f us/request; %d connections; sprun RSS "
                 .. "%.1f MiB (peak %.1f MiB); B/op: Lua heap allocated "
                 .. "per request%s%s",
                 thousands(m.req_s), #m.wall_list, thousands(m.n),
                 CONCURRENCY, req_s_list(m.wall_list), m.cpu / 1e3,
                 m.user / 1e3, m.sys / 1e3,
                 runs(m.cpu_list, function(c) return fmt("%.1f", c / 1e3) end),
                 m.cpu / m.wall, m.nginx / 1e3, m.pool.sockets,
                 m.rss_kb / 1024, m.hwm_kb / 1024, extra,
                 failures(name, m)),
    }
  end

  local get = case("get", url)
  report_gets("http.get, 50 tasks looping", get)
  local client = case("client", url)
  report_gets("http.client, breaker per origin, 50 tasks (>= 31,000 req/s)",
              client, { ns = 1e9 / 31000 })

  -- How many GETs of large.bin nginx logged so far (it logs a request
  -- once it sees its client go, at once here).
  local large = srv:url("/limited/large.bin")
  local function large_logged()
    local _, n = (read_file(srv.access_log_file) or "")
                 :gsub('"/limited/large%.bin" %d+', "")
    return n
  end
  for _, c in ipairs {
    { "mid_body", "a GET cancelled mid-body (its first bytes in)",
      "a gate task's spawn and await included" },
    { "started", "a GET cancelled one loop turn after it started",
      "a sleep(0) included" },
  } do
    local logged = large_logged()
    local m = case(c[1], large)
    logged = large_logged() - logged
    local rounds_us = runs(m.wall_list, function(w)
      return fmt("%.1f", w / 1e3)
    end)
    H.record {
      name = c[2] .. ": start + cancel + await", ns = m.wall,
      bytes = m.bytes,
      note = fmt("%s cancels/s, one at a time, median of %d rounds of %s "
                 .. "(rounds %s us); a new connection each (a cancel "
                 .. "closes it), %s; %s of %s reached nginx (its access "
                 .. "log); sprun CPU %.1f us each (user %.1f + sys %.1f); "
                 .. "nginx CPU %.1f us each; transfers left running %d; "
                 .. "B/op: Lua heap per cancelled request%s",
                 thousands(m.req_s), #m.wall_list, thousands(m.n), rounds_us,
                 c[3], thousands(logged), thousands(m.total), m.cpu / 1e3,
                 m.user / 1e3, m.sys / 1e3, m.nginx / 1e3, m.pool.running,
                 failures(c[2], m)),
    }
  end

  if not PEERS then
    return
  end

  --- The peers ----------------------------------------------------------

  print("-- the peers, the same workload on the same URL, one after another")
  local peers = {}

  -- curl --parallel: a new process per round, timed from here. Its
  -- stdout holds each body and each transfer's status line (-w), not in
  -- pairs: what is left once every "ok\n" and "200\n" is taken out, and
  -- counts other than n, are wrong responses. (Bodies to stdout rather
  -- than `output = "/dev/null"` lines: curl opens /dev/null anew for each
  -- transfer, which made it slower here. --no-progress-meter because this
  -- curl (7.88) draws the parallel progress meter despite -s.)
  local function curl_run(config, n)
    local n0 = nginx_ns()
    local cu0, cs0 = cpu(RUSAGE_CHILDREN)
    local t0 = sprun.hrtime()
    local res = run({ "curl", "-q", "-sS", "--no-progress-meter",
                      "--noproxy", "*", "-Z", "--parallel-max",
                      tostring(CONCURRENCY), "-w", "%{http_code}\\n",
                      "-K", config },
                60000, true)
    local t1 = sprun.hrtime()
    local cu1, cs1 = cpu(RUSAGE_CHILDREN)
    local rest, bodies = res.stdout:gsub(BODY, "")
    local codes
    rest, codes = rest:gsub("200\n", "")
    local m = { wall = (t1 - t0) / n, cpu = (cu1 - cu0 + cs1 - cs0) / n,
                nginx = (nginx_ns() - n0) / n,
                wrong = math.max(n - bodies, n - codes, 0),
                errors = res.code == 0 and 0 or 1 }
    if rest ~= "" or res.code ~= 0 or m.wrong > 0 then
      m.wrong = math.max(m.wrong, 1)
      m.first_error = fmt("exit %s, %d bodies %s and %d status lines 200 of "
                          .. "%d, stderr %s, the rest of stdout %s",
                          tostring(res.code), bodies, show(BODY), codes, n,
                          show(res.stderr:sub(1, 200)), show(rest:sub(1, 200)))
    end
    return m
  end

  local function curl_config(n)
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    local line = 'url = "' .. url .. '"\n'
    for _ = 1, n do
      f:write(line)
    end
    f:close()
    return path
  end

  do
    local version = run({ "curl", "--version" }, 5000, true)
    local warm_cfg, cfg = curl_config(WARM), curl_config(N)
    local m = { walls = {}, cpus = {}, nginxs = {}, wrong = 0, errors = 0 }
    local function add(x)
      m.wrong, m.errors = m.wrong + x.wrong, m.errors + x.errors
      m.first_error = m.first_error or x.first_error
    end
    add(curl_run(warm_cfg, WARM))
    for k = 1, ROUNDS do
      local x = curl_run(cfg, N)
      add(x)
      m.walls[k], m.cpus[k], m.nginxs[k] = x.wall, x.cpu, x.nginx
    end
    os.remove(warm_cfg)
    os.remove(cfg)
    m.wall, m.cpu, m.nginx = median(m.walls), median(m.cpus), median(m.nginxs)
    m.req_s, m.total = 1e9 / m.wall, WARM + ROUNDS * N
    local name = "peer: curl -Z --parallel-max 50"
    H.record {
      name = name, ns = m.wall,
      note = fmt("%s req/s, median of %d runs of %s (rounds %s req/s), "
                 .. "each a new curl process, its start included; curl's "
                 .. "CPU %.1f us/request, %.2f cores busy; nginx CPU %.1f "
                 .. "us/request; %s%s",
                 thousands(m.req_s), ROUNDS, thousands(N),
                 req_s_list(m.walls), m.cpu / 1e3, m.cpu / m.wall,
                 m.nginx / 1e3,
                 version.stdout:match("^(curl %S+)") or "curl",
                 failures(name, m)),
    }
    peers.curl = m
  end

  -- Node's fetch and aiohttp: warmed up and timed in their own process.
  local function script_peer(key, name, cmd)
    local n0 = nginx_ns()
    local p = run_json(cmd, 120000, true)[1]
    local m = { walls = {}, cpus = {}, wrong = p.wrong, errors = p.errors }
    if p.first_error ~= cjson.null then
      m.first_error = p.first_error
    end
    for k, round in ipairs(p.rounds) do
      m.walls[k], m.cpus[k] = round.wall_ns / p.n, round.cpu_ns / p.n
    end
    m.wall, m.cpu = median(m.walls), median(m.cpus)
    m.req_s = 1e9 / m.wall
    m.total = WARM + #p.rounds * p.n
    m.nginx = (nginx_ns() - n0) / m.total
    H.record {
      name = name, ns = m.wall,
      note = fmt("%s req/s, median of %d round(s) of %s from %d loops "
                 .. "(rounds %s req/s); its CPU %.1f us/request, %.2f cores "
                 .. "busy; nginx CPU %.1f us/request; its RSS %.1f MiB; "
                 .. "%s%s", thousands(m.req_s), #m.walls, thousands(p.n),
                 p.concurrency, req_s_list(m.walls), m.cpu / 1e3,
                 m.cpu / m.wall, m.nginx / 1e3, p.rss_kb / 1024,
                 p.version, failures(name, m)),
    }
    peers[key] = m
  end

  local args = { url, tostring(N), tostring(ROUNDS), tostring(WARM),
                 tostring(CONCURRENCY), tostring(PEER_BUDGET_MS) }
  local function with_args(cmd)
    for _, a in ipairs(args) do
      cmd[#cmd + 1] = a
    end
    return cmd
  end

  local node = run({ "sh", "-c", "command -v node" }, 5000, true)
  if node.code == 0 then
    script_peer("node", "peer: node fetch, 50 loops",
                with_args { "node", HERE .. "/http/fetch.mjs" })
  else
    print("-- peer node fetch skipped: no node on PATH")
  end

  -- Debian's python3-aiohttp is for Debian's python3, which may not be
  -- the first on PATH.
  local python, why
  for _, py in ipairs { "/usr/bin/python3", "python3" } do
    local res = sprun.process.run { py, "-c", "import aiohttp", env = ENV,
                                    timeout_ms = 10000 }
    if res and res.code == 0 then
      python = py
      break
    end
    why = why or (res and (res.stderr:match("([^\n]+)\n?$") or "")
                  or "cannot run " .. py)
  end
  if python then
    script_peer("aiohttp", "peer: aiohttp, 50 tasks, one ClientSession",
                with_args { python, HERE .. "/http/aiohttp_get.py" })
  else
    print("-- peer aiohttp skipped: " .. tostring(why))
  end

  --- sprun against them -------------------------------------------------

  print("-- sprun's client (breaker per origin) against them (ratio of "
        .. "times per request)")
  local name = "http.client, breaker per origin"
  local curl = peers.curl
  H.record {
    name = name .. " vs curl --parallel (>= 0.8x its req/s)",
    ns = client.wall, floor = curl.wall, target = { ratio = 1 / 0.8 },
    note = fmt("%s req/s against %s req/s: %.2fx; CPU per request %.1f "
               .. "against %.1f us", thousands(client.req_s),
               thousands(curl.req_s), client.req_s / curl.req_s,
               client.cpu / 1e3, curl.cpu / 1e3),
  }
  if peers.node then
    H.record {
      name = name .. " vs node fetch (>= 4x its req/s)",
      ns = client.wall, floor = peers.node.wall, target = { ratio = 0.25 },
      note = fmt("%s req/s against %s req/s: %.2fx; CPU per request %.1f "
                 .. "against %.1f us", thousands(client.req_s),
                 thousands(peers.node.req_s),
                 client.req_s / peers.node.req_s, client.cpu / 1e3,
                 peers.node.cpu / 1e3),
    }
  end
end

local srv = nginx.start { workers = WORKERS, large_bytes = LARGE,
                          log_level = "notice" }
local ok, err = pcall(main, srv)
srv:stop()
assert(not alive(-srv.pid), "nginx outlived srv:stop()")
if not ok then
  error(err, 0)
end
