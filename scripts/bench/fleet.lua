-- sprun.fleet against a real redis-server (Debian's, started here on
-- 127.0.0.1 and a free port, in a temporary directory, `--save ""`, killed
-- by its pid at the end), in three parts. (1) What a fleet adds to a
-- breaker's call: cb:call(fn) on a closed consecutive breaker with no fleet
-- and on one in a live fleet (interval_ms = 100, syncing on its own timer),
-- next to the bare fn(), in ns/op and B/op (the collector stopped), the
-- three timed in interleaved rounds with a sleep of one interval between
-- rounds so that the fleet syncs between the timed runs (a run is a loop
-- that never yields: no sync can run inside one); over the timed section
-- the fleet's syncs are counted, and so are Redis's EVALSHA calls (INFO
-- commandstats): equal, no call sent anything. (2) What one sync costs with
-- 1, 100, 200 (one EVALSHA: a sync sends 200 members per EVALSHA, each
-- within timeout_ms) and 10,000 breakers in one fleet, each
-- breaker making one call between syncs so that its totals grow as in real
-- traffic: sprun's CPU (getrusage(RUSAGE_SELF) around each f:sync(), the
-- calls between them left out) per breaker and per sync, the wall time per
-- sync, the Lua heap one sync allocates, and Redis's own cost, the EVALSHA
-- usec of INFO commandstats (CONFIG RESETSTAT before each case) and
-- redis-server's CPU (/proc/PID/schedstat). Each size first tries the
-- default timeout_ms = 200 (3 syncs); when they fail, two syncs run under a
-- 60 s timeout, the second timed, and the size is measured with a timeout
-- fitted to it (4x, rounded up to 100 ms); a size no timeout helps gets a
-- FAILS row and a "!!" line. (3) Time from a dependency going down to every
-- node open: 4 nodes in this process (4 fleets n1..n4, interval_ms = 200,
-- quorum min_nodes = 2, their timers a quarter interval apart), a breaker
-- "dep" each (failure_threshold = 50), nodes 1-2 calling every 5 ms and 3-4
-- every 100 ms from tasks of their own; once every fleet sees 4 live nodes
-- the dependency fails from t0 on, and a telemetry handler on
-- circuit_breaker.opened notes when each node opens; then the same with 4
-- independent breakers. Reported, medians of the trials: t0 to the quorum
-- (the second node open), t0 to every node open, the quorum to every node
-- open in ms and intervals (target <= 2 intervals, on the worst trial), and
-- the failures each node paid before it opened. About 20 s on this 2-core
-- VM (30 s when 10,000 breakers sync).
--
-- SPRUN_BENCH_FLEET_TRIALS (default 3) sets the trials of part 3.
local HERE = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = HERE .. "/?.lua;" .. HERE .. "/../../tests/lua/?.lua;"
               .. package.path
local sprun = require "sprun"
local H = require "harness"
local P = require "procs"
local redisd = require "redisd"

local fmt = string.format
local hrtime = sprun.hrtime
local cpu = P.rusage
local median = P.median
local thousands = P.thousands
local RUSAGE_SELF = P.RUSAGE_SELF

local TRIALS = tonumber(os.getenv("SPRUN_BENCH_FLEET_TRIALS")) or 3

-- What the final table shows, filled by the parts.
local summary = { calls = {}, syncs = {}, opens = {} }
local problems = {}

local function problem(s)
  problems[#problems + 1] = s
  print("!! " .. s)
end

--- Redis helpers ---------------------------------------------------------

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

-- redis-server's CPU so far, in ns: its main thread's time on a CPU from
-- /proc/PID/schedstat (ns), or user + sys from /proc/PID/stat (ticks).
local function proc_cpu(pid)
  local s = read_file("/proc/" .. pid .. "/schedstat")
  local ns = s and tonumber(s:match("^(%d+)"))
  if ns then
    return ns
  end
  s = read_file("/proc/" .. pid .. "/stat")
  if s == nil then
    return 0
  end
  local fields = {}
  for v in s:match("%) (.*)$"):gmatch("%S+") do
    fields[#fields + 1] = v
  end
  return (tonumber(fields[12]) + tonumber(fields[13])) * 1e9 / P.CLK_TCK
end

-- EVALSHA's calls and usec in INFO commandstats (0, 0 when absent).
local function evalsha_stats(admin)
  local info = assert(admin:call("INFO", "commandstats"))
  local calls, usec = info:match("cmdstat_evalsha:calls=(%d+),usec=(%d+)")
  return tonumber(calls) or 0, tonumber(usec) or 0
end

-- A new function from `src`, called with the given values (each loop is
-- compiled afresh for its case, as in core.lua).
local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

--- 1. A breaker's call with and without a fleet --------------------------

local CALL_INTERVAL = 100 -- the fleet's interval in part 1
local CALL_N = 2e6        -- calls per timed run
local CALL_ROUNDS = 11    -- timed runs of each case, interleaved

-- ns/op and B/op of one run(n), with the collector stopped.
local function timed(run, n)
  collectgarbage("collect")
  collectgarbage("stop")
  local kb0 = collectgarbage("count")
  local t0 = hrtime()
  run(n)
  local t1 = hrtime()
  local kb1 = collectgarbage("count")
  collectgarbage("restart")
  return (t1 - t0) / n, (kb1 - kb0) * 1024 / n
end

-- f:stats().syncs and EVALSHA's calls at a moment with no sync in flight
-- (the INFO goes out and comes back with no sync starting or ending).
local function quiet_counts(f, admin)
  for _ = 1, 100 do
    while f.syncing do
      sprun.sleep(1)
    end
    local syncs = f:stats().syncs
    local calls = evalsha_stats(admin)
    if not f.syncing and f:stats().syncs == syncs then
      return syncs, calls, f:stats().sync_failures
    end
  end
  error("fleet bench: no quiet moment between syncs")
end

local function part_calls(url, admin)
  print(fmt("-- 1. cb:call(fn) on a closed consecutive breaker, without and "
            .. "with a fleet (interval_ms = %d, syncing on its timer); %d "
            .. "interleaved rounds of %s calls, a sleep of one interval "
            .. "between rounds", CALL_INTERVAL, CALL_ROUNDS,
            thousands(CALL_N)))
  local f = sprun.fleet.connect { redis = url, node_id = "calls",
                                  interval_ms = CALL_INTERVAL,
                                  prefix = "bench:calls:" }
  local alone = sprun.circuit_breaker.start_link {
    name = "db_alone", failure_threshold = 5, reset_timeout_ms = 30000,
  }
  local member = sprun.circuit_breaker.start_link {
    name = "db", failure_threshold = 5, reset_timeout_ms = 30000, fleet = f,
  }
  assert(f:sync())
  assert(f:view("db"), "the fleet has no view of its breaker after a sync")
  local CALL = [[
    local cb = ...
    local function op() return true end
    return function(n)
      local b = cb
      for _ = 1, n do b:call(op) end
    end
  ]]
  local cases = {
    { key = "bare", run = fresh [[
      local function op() return true end
      return function(n)
        local f = op
        for _ = 1, n do f() end
      end
    ]] },
    { key = "alone", run = fresh(CALL, alone) },
    { key = "fleet", run = fresh(CALL, member) },
  }
  for _, c in ipairs(cases) do
    c.run(CALL_N / 10) -- warm-up: compile the traces
    c.ns, c.bytes = {}, {}
  end
  local syncs0, evalsha0, failures0 = quiet_counts(f, admin)
  local gaps = {}
  for r = 1, CALL_ROUNDS do
    -- A different order each round, so that no case always runs first.
    for i = 0, #cases - 1 do
      local c = cases[(r + i - 1) % #cases + 1]
      local ns, b = timed(c.run, CALL_N)
      c.ns[r], c.bytes[r] = ns, b
    end
    local before = f.syncs
    sprun.sleep(CALL_INTERVAL)
    gaps[r] = f.syncs - before
  end
  local syncs1, evalsha1, failures1 = quiet_counts(f, admin)
  local want = CALL_N / 10 + CALL_ROUNDS * CALL_N
  for _, cb in ipairs { alone, member } do
    local st = cb:stats()
    if st.total_successes ~= want then
      problem(fmt("part 1: breaker %s counted %d calls of %d", st.name,
                  st.total_successes, want))
    end
  end
  local syncs, evalsha = syncs1 - syncs0, evalsha1 - evalsha0
  local failures = failures1 - failures0
  local by = {}
  for _, c in ipairs(cases) do
    by[c.key] = { ns = median(c.ns), bytes = median(c.bytes), list = c.ns }
  end
  local synced_gaps = 0
  for _, g in ipairs(gaps) do
    if g > 0 then
      synced_gaps = synced_gaps + 1
    end
  end
  local from_calls = evalsha - syncs
  local rounds = function(list)
    return P.runs(list, function(v) return fmt("%.1f", v) end)
  end
  local bare = by.bare.ns
  H.record { name = "bare call fn()", ns = bare, bytes = by.bare.bytes,
             note = "rounds " .. rounds(by.bare.list) .. " ns" }
  H.record {
    name = "breaker call, closed, no fleet", ns = by.alone.ns,
    bytes = by.alone.bytes, bare = bare, target = { over = 5, bytes = 0 },
    note = "rounds " .. rounds(by.alone.list) .. " ns",
  }
  local diff = by.fleet.ns - by.alone.ns
  H.record {
    name = "breaker call, closed, in a live fleet", ns = by.fleet.ns,
    bytes = by.fleet.bytes, bare = bare, target = { over = 5, bytes = 0 },
    note = fmt("%+.2f ns (%+.1f%%) against no fleet; rounds %s ns; %d "
               .. "syncs over the timed rounds (%d of %d gaps between "
               .. "rounds had one; %d failed syncs), EVALSHA calls in Redis "
               .. "over the same span %d: %d sent by calls",
               diff, 100 * diff / by.alone.ns, rounds(by.fleet.list), syncs,
               synced_gaps, CALL_ROUNDS, failures, evalsha, from_calls),
  }
  if syncs == 0 then
    problem("part 1: the fleet did not sync during the timed rounds")
  end
  if from_calls ~= 0 or failures ~= 0 then
    problem(fmt("part 1: %d EVALSHA calls for %d syncs (%d failed syncs)",
                evalsha, syncs, failures))
  end
  summary.calls = { bare = by.bare, alone = by.alone, fleet = by.fleet,
                    syncs = syncs, evalsha = evalsha, failures = failures }
  f:close()
end

--- 2. The cost of a sync ---------------------------------------------------

-- 200: the most members whose EVALSHA stays within the 1,024 arguments
-- of a command (core.resp_command): 3 + 5 per member + 3.
local SYNC_SIZES = { 1, 100, 200, 10000 }
-- Timed syncs per case: enough for /proc's 10 ms ticks at the small sizes.
local SYNC_COUNT = { [1] = 500, [100] = 100, [200] = 50, [10000] = 10 }
local DEFAULT_TIMEOUT = 200
local HEAP_SYNCS = 5 -- syncs of the heap pass
-- Members per EVALSHA (fleet/sync.lua's CHUNK).
local CHUNK = require("sprun.fleet.sync").CHUNK

-- A fleet of `k` breakers b1..bk (each new: a breaker joins a fleet only
-- when it starts).
local function fleet_of(url, k, timeout_ms)
  local f = sprun.fleet.connect { redis = url, node_id = "n1",
                                  prefix = "bench:sync:" .. k .. ":",
                                  timeout_ms = timeout_ms }
  local list = {}
  for i = 1, k do
    list[i] = sprun.circuit_breaker.start_link {
      name = "b" .. i, failure_threshold = 5, reset_timeout_ms = 30000,
      fleet = f,
    }
  end
  return f, list
end

local function ok_call()
  return true
end

local function traffic(list)
  for i = 1, #list do
    list[i]:call(ok_call)
  end
end

-- One f:sync() timed: ok, err, ms.
local function timed_sync(f)
  local t0 = hrtime()
  local ok, err = f:sync()
  return ok, err, (hrtime() - t0) / 1e6
end

local function sync_name(k)
  return fmt("sync, %s breaker%s", thousands(k), k == 1 and "" or "s")
end

-- The syncs of `k` breakers that never go through: a row without a
-- target (no figure to hold one to), a "!!" line.
local function failed_size(k, walls, err, state)
  local mean = 0
  for _, w in ipairs(walls) do
    mean = mean + w / #walls
  end
  problem(fmt("part 2: no sync of %s breakers goes through, whatever the "
              .. "timeout: %s", thousands(k), err))
  H.record {
    name = sync_name(k) .. ": FAILS, no sync goes through",
    ns = mean * 1e6,
    note = fmt("%d syncs tried (%s ms each, default timeout and 60 s), "
               .. "every one failed: %s; the fleet is %s after them",
               #walls, P.runs(walls, function(w) return fmt("%.0f", w) end),
               err, state),
  }
  summary.syncs[#summary.syncs + 1] = { k = k, failed = err }
end

local function part_syncs(url, admin, pid)
  print(fmt("-- 2. one sync of a fleet of 1, 100, 200 and 10,000 breakers "
            .. "(one EVALSHA per %s members, one after the other), each breaker making one "
            .. "call between syncs", thousands(CHUNK)))
  for _, k in ipairs(SYNC_SIZES) do
    -- The default timeout first: does a sync fit in it?
    local f, list = fleet_of(url, k, nil)
    local tries, fits, first_err, walls = 3, 0, nil, {}
    for i = 1, tries do
      traffic(list)
      local ok, err, ms = timed_sync(f)
      walls[i] = ms
      if ok then
        fits = fits + 1
      else
        first_err = first_err or tostring(err)
      end
    end
    local timeout, probe_ms, failed = DEFAULT_TIMEOUT, nil, nil
    if fits < tries then
      print(fmt("!! %s breakers: %d of %d syncs went through with the "
                .. "default timeout_ms = %d (%s ms; %s)", thousands(k), fits,
                tries, DEFAULT_TIMEOUT, P.runs(walls, function(w)
                  return fmt("%.0f", w)
                end), first_err))
      f:close()
      -- Two syncs under a generous timeout (the first lets Redis finish
      -- what the timed-out ones left it), the second timed; then a
      -- timeout that fits it.
      f, list = fleet_of(url, k, 60000)
      local ok, err, ms
      for _ = 1, 2 do
        traffic(list)
        ok, err, ms = timed_sync(f)
        walls[#walls + 1] = ms
        if not ok then
          break
        end
      end
      if not ok then
        failed = tostring(err)
        failed_size(k, walls, failed, f:stats().state)
      else
        probe_ms = ms
        timeout = math.max(DEFAULT_TIMEOUT, math.ceil(4 * ms / 100) * 100)
        print(fmt("-- %s breakers: one sync takes %.0f ms; measured with "
                  .. "timeout_ms = %d", thousands(k), ms, timeout))
      end
      f:close()
      if not failed then
        f, list = fleet_of(url, k, timeout)
        traffic(list)
        assert(f:sync())
      end
    end
    if not failed then
      -- The Lua heap a sync allocates: the mean of HEAP_SYNCS, the
      -- collector stopped (a breaker's call allocates nothing).
      collectgarbage("collect")
      collectgarbage("stop")
      local kb0 = collectgarbage("count")
      local ok, err
      for _ = 1, HEAP_SYNCS do
        traffic(list)
        ok, err = f:sync()
        if not ok then
          break
        end
      end
      local kb1 = collectgarbage("count")
      collectgarbage("restart")
      assert(ok, tostring(err))
      local heap = (kb1 - kb0) * 1024 / HEAP_SYNCS
      -- The timed syncs.
      local n = SYNC_COUNT[k]
      assert(admin:call("CONFIG", "RESETSTAT"))
      local syncs0, failures0 = f.syncs, f.sync_failures
      local redis0 = proc_cpu(pid)
      local user, sys, wall, wall_list = 0, 0, 0, {}
      for i = 1, n do
        traffic(list)
        local u0, s0 = cpu(RUSAGE_SELF)
        local t0 = hrtime()
        ok, err = f:sync()
        local t1 = hrtime()
        local u1, s1 = cpu(RUSAGE_SELF)
        if not ok then
          problem(fmt("part 2: a sync of %s breakers failed: %s",
                      thousands(k), tostring(err)))
        end
        user, sys = user + (u1 - u0), sys + (s1 - s0)
        wall, wall_list[i] = wall + (t1 - t0), (t1 - t0)
      end
      local redis_cpu = proc_cpu(pid) - redis0
      local calls, usec = evalsha_stats(admin)
      local syncs = f.syncs - syncs0
      local failures = f.sync_failures - failures0
      f:close()
      local chunks = math.ceil(k / CHUNK)
      if calls ~= syncs * chunks then
        problem(fmt("part 2: %d EVALSHA calls for %d syncs of %d chunks",
                    calls, syncs, chunks))
      end
      local m = {
        k = k, syncs = syncs, failures = failures, timeout = timeout,
        fits = fits, tries = tries, probe_ms = probe_ms,
        cpu = (user + sys) / syncs, user = user / syncs, sys = sys / syncs,
        wall = wall / syncs, wall_median = median(wall_list),
        redis_usec = usec / syncs, evalsha = calls / syncs,
        redis_cpu = redis_cpu / syncs, heap = heap,
      }
      summary.syncs[#summary.syncs + 1] = m
      local name = sync_name(k)
      H.record {
        name = name .. ": sprun CPU per breaker", ns = m.cpu / k,
        bytes = heap / k,
        note = fmt("%.1f us of CPU per sync (user %.1f + sys %.1f, as "
                   .. "the kernel splits them by ticks), the mean of %d "
                   .. "syncs; B/op: Lua heap per breaker per sync (%.1f KiB "
                   .. "a sync, the mean of %d)", m.cpu / 1e3, m.user / 1e3,
                   m.sys / 1e3, syncs, heap / 1024, HEAP_SYNCS),
      }
      local fit = fmt("%d of %d syncs went through with the default "
                      .. "timeout_ms = 200", fits, tries)
      if probe_ms then
        fit = fit .. fmt("; one sync under a 60 s timeout took %.0f ms, so "
                         .. "these ran with timeout_ms = %d", probe_ms,
                         timeout)
      end
      H.record {
        name = name .. ": wall per sync (<= default timeout 200 ms)",
        ns = m.wall, target = { ns = DEFAULT_TIMEOUT * 1e6 },
        note = fmt("mean of %d syncs (median %s), %d failed; %s",
                   syncs, H.fmt_ns(m.wall_median), failures, fit),
      }
      H.record {
        name = name .. ": Redis EVALSHA time per breaker",
        ns = m.redis_usec * 1e3 / k,
        note = fmt("%s per sync in %.0f EVALSHA (INFO commandstats usec); "
                   .. "redis-server's CPU %s per sync (/proc/PID/schedstat)",
                   H.fmt_ns(m.redis_usec * 1e3), m.evalsha,
                   H.fmt_ns(m.redis_cpu)),
      }
    end
    collectgarbage("collect")
  end
end

--- 3. From a dependency down to every node open ----------------------------

local NODES = 4
local OPEN_INTERVAL = 200
local THRESHOLD = 50
local PERIODS = { 5, 5, 100, 100 } -- ms between a node's calls
local DOWN = sprun.error("dependency_down", "the dependency is down")

local trial_nodes -- the nodes of the trial running (the handler's)

local function on_opened(_, _, meta)
  local t = hrtime()
  for _, node in ipairs(trial_nodes or {}) do
    if node.open_at == nil and node.cb:state() == "open" then
      node.open_at = t
      node.reason = meta and meta.reason or "?"
    end
  end
end

local function trial(url, use_fleet, n)
  local failing, stop = false, false
  local function dep()
    if failing then
      return nil, DOWN
    end
    return true
  end
  local prefix = fmt("bench:open:%d:", n)
  local nodes = {}
  for k = 1, NODES do
    local f
    if use_fleet then
      f = sprun.fleet.connect { redis = url, node_id = "n" .. k,
                                interval_ms = OPEN_INTERVAL,
                                quorum = { min_nodes = 2 }, prefix = prefix }
    end
    nodes[k] = {
      fleet = f, period = PERIODS[k], failures = 0, calls = 0,
      cb = sprun.circuit_breaker.start_link {
        name = "dep", failure_threshold = THRESHOLD,
        reset_timeout_ms = 600000, fleet = f,
      },
    }
    if use_fleet then
      -- Staggered sync timers, as on hosts started apart.
      sprun.sleep(OPEN_INTERVAL / NODES)
    end
  end
  trial_nodes = nodes
  local tasks = {}
  for k, node in ipairs(nodes) do
    tasks[k] = sprun.spawn(function()
      while not stop do
        local r, err = node.cb:call(dep)
        if failing then
          node.calls = node.calls + 1
          if r == nil and sprun.error_kind(err) ~= "circuit_open" then
            node.failures = node.failures + 1
          end
        end
        sprun.sleep(node.period)
      end
    end)
  end
  -- Healthy until every fleet sees every node live.
  local deadline = sprun.now() + 5000
  while true do
    local live = true
    for _, node in ipairs(nodes) do
      local v = node.fleet and node.fleet:view("dep")
      if node.fleet and (v == nil or v.live_nodes < NODES) then
        live = false
      end
    end
    if live then
      break
    elseif sprun.now() > deadline then
      problem(fmt("part 3: trial %d: the fleets never saw %d live nodes",
                  n, NODES))
      break
    end
    sprun.sleep(10)
  end
  sprun.sleep(OPEN_INTERVAL)
  local syncs0 = {}
  for k, node in ipairs(nodes) do
    syncs0[k] = node.fleet and node.fleet.syncs or 0
  end
  for _, node in ipairs(nodes) do
    assert(node.cb:state() == "closed", "a node opened before t0")
  end
  failing = true
  local t0 = hrtime()
  -- Until every node is open (the slow nodes need 50 x 100 ms alone).
  deadline = sprun.now() + THRESHOLD * PERIODS[NODES] + 3000
  while sprun.now() < deadline do
    local all = true
    for _, node in ipairs(nodes) do
      if node.open_at == nil then
        all = false
      end
    end
    if all then
      break
    end
    sprun.sleep(5)
  end
  stop = true
  for _, t in ipairs(tasks) do
    t:await()
  end
  trial_nodes = nil
  local r = { nodes = {}, syncs = 0, sync_failures = 0 }
  local times = {}
  for k, node in ipairs(nodes) do
    local ms = node.open_at and (node.open_at - t0) / 1e6 or nil
    -- Open, a node runs no more calls (no half-open within the trial): its
    -- failures are those it paid before it opened.
    r.nodes[k] = { ms = ms, paid = node.failures,
                   reason = node.reason or "never", calls = node.calls }
    times[#times + 1] = ms or math.huge
    if node.fleet then
      r.syncs = r.syncs + node.fleet.syncs - syncs0[k]
      r.sync_failures = r.sync_failures + node.fleet.sync_failures
      node.fleet:close()
    end
  end
  table.sort(times)
  r.quorum, r.all = times[2], times[NODES]
  return r
end

local function part_opens(url)
  print(fmt("-- 3. a dependency down at t0: %d nodes, breaker \"dep\" with "
            .. "failure_threshold = %d, nodes calling every %s ms; fleet "
            .. "(interval_ms = %d, quorum min_nodes = 2) against independent "
            .. "breakers; %d trials each", NODES, THRESHOLD,
            table.concat(PERIODS, "/"), OPEN_INTERVAL, TRIALS))
  local telemetry = sprun.telemetry
  telemetry.attach("bench-fleet-opened",
                   { "snakepit", "circuit_breaker", "opened" }, on_opened)
  local results = { fleet = {}, alone = {} }
  for i = 1, TRIALS do
    results.fleet[i] = trial(url, true, i)
    results.alone[i] = trial(url, false, i)
  end
  telemetry.detach("bench-fleet-opened")
  local function field(list, key)
    local out = {}
    for i, r in ipairs(list) do
      out[i] = r[key]
    end
    return out
  end
  local function ms_list(list)
    return P.runs(list, function(v)
      return v == math.huge and "never" or fmt("%.0f", v)
    end)
  end
  -- "n1 50 (failures), n3 4 (fleet)" of each trial, "/" between trials.
  local function paid(list)
    local out = {}
    for i, r in ipairs(list) do
      local t = {}
      for k, n in ipairs(r.nodes) do
        t[k] = fmt("n%d %d%s", k, n.paid,
                   n.reason == "fleet" and "f" or "")
      end
      out[i] = table.concat(t, " ")
    end
    return table.concat(out, " / ")
  end
  local s = {}
  for _, mode in ipairs { "fleet", "alone" } do
    local list = results[mode]
    local q, a = field(list, "quorum"), field(list, "all")
    local after = {}
    for i, r in ipairs(list) do
      after[i] = r.all - r.quorum
    end
    s[mode] = { quorum = median(q), all = median(a), q_list = q, a_list = a,
                after = after, worst = math.max(unpack(after)),
                trials = list }
  end
  summary.opens = s
  local f, a = s.fleet, s.alone
  local syncs, sync_failures = 0, 0
  for _, r in ipairs(f.trials) do
    syncs, sync_failures = syncs + r.syncs, sync_failures + r.sync_failures
  end
  H.record {
    name = "open, fleet: dependency down -> quorum (2nd node open)",
    ns = f.quorum * 1e6,
    note = fmt("median of %d trials (%s ms)", TRIALS, ms_list(f.q_list)),
  }
  H.record {
    name = "open, fleet: dependency down -> every node open",
    ns = f.all * 1e6,
    note = fmt("median of %d trials (%s ms); failures paid before open "
               .. "(f: opened by the fleet) %s; %d syncs of the 4 fleets "
               .. "from t0 to the end, %d failed", TRIALS, ms_list(f.a_list),
               paid(f.trials), syncs, sync_failures),
  }
  H.record {
    name = "open, fleet: quorum -> every node open (<= 2 intervals)",
    ns = f.worst * 1e6, target = { ns = 2 * OPEN_INTERVAL * 1e6 },
    note = fmt("the worst of %d trials (%s ms = %s intervals of %d ms)",
               TRIALS, ms_list(f.after), P.runs(f.after, function(v)
                 return fmt("%.2f", v / OPEN_INTERVAL)
               end), OPEN_INTERVAL),
  }
  H.record {
    name = "open, independent: dependency down -> quorum (2nd node open)",
    ns = a.quorum * 1e6,
    note = fmt("median of %d trials (%s ms)", TRIALS, ms_list(a.q_list)),
  }
  H.record {
    name = "open, independent: dependency down -> every node open",
    ns = a.all * 1e6,
    note = fmt("median of %d trials (%s ms); failures paid before open %s",
               TRIALS, ms_list(a.a_list), paid(a.trials)),
  }
  H.record {
    name = "open: fleet vs independent, dependency down -> every node open",
    ns = f.all * 1e6, floor = a.all * 1e6,
    note = fmt("%.0f ms against %.0f ms: %.1fx sooner", f.all, a.all,
               a.all / f.all),
  }
end

--- The table ---------------------------------------------------------------

local function print_table()
  print("-- summary")
  local c = summary.calls
  if c.bare then
    print(fmt("  calls: bare fn() %.2f ns; breaker, no fleet %.2f ns "
              .. "(%.1f B); breaker in a fleet %.2f ns (%.1f B), %+.2f ns; "
              .. "%d syncs meanwhile, %d EVALSHA, %d from calls",
              c.bare.ns, c.alone.ns, c.alone.bytes, c.fleet.ns,
              c.fleet.bytes, c.fleet.ns - c.alone.ns, c.syncs, c.evalsha,
              c.evalsha - c.syncs))
  end
  if #summary.syncs > 0 then
    print(fmt("  %-9s %12s %12s %12s %12s %12s %8s %s", "breakers",
              "sprun CPU", "per breaker", "wall", "Redis usec",
              "per breaker", "EVALSHA", "in 200 ms"))
    for _, m in ipairs(summary.syncs) do
      if m.failed then
        print(fmt("  %-9s FAILS: %s", thousands(m.k), m.failed))
      else
        print(fmt("  %-9s %9.1f us %9.2f us %9.2f ms %9.1f us %9.2f us %8d "
                .. "%d/%d%s", thousands(m.k), m.cpu / 1e3,
                m.cpu / 1e3 / m.k, m.wall / 1e6, m.redis_usec,
                m.redis_usec / m.k, m.evalsha, m.fits, m.tries,
                m.probe_ms and fmt(" (one sync %.0f ms; ran with "
                                   .. "timeout_ms = %d)", m.probe_ms,
                                   m.timeout) or ""))
      end
    end
  end
  local o = summary.opens
  if o.fleet then
    print(fmt("  %-12s %10s %10s %18s  %s", "open", "quorum", "all",
              "all - quorum", "failures paid per node (trial 1)"))
    for _, mode in ipairs { "fleet", "alone" } do
      local s = o[mode]
      local t = {}
      for k, n in ipairs(s.trials[1].nodes) do
        t[k] = fmt("n%d %d", k, n.paid)
      end
      local after = median(s.after)
      print(fmt("  %-12s %7.0f ms %7.0f ms %7.0f ms (%.2f iv)  %s",
                mode == "fleet" and "fleet" or "independent", s.quorum,
                s.all, after, after / OPEN_INTERVAL, table.concat(t, ", ")))
    end
  end
  if #problems > 0 then
    print("  PROBLEMS: " .. table.concat(problems, "; "))
  end
end

--- The benchmark ---------------------------------------------------------

local function main(srv)
  local url = srv:url()
  local admin = assert(sprun.redis.connect { url = url, timeout_ms = 5000 })
  local version = assert(admin:call("INFO", "server")):match(
    "redis_version:(%S+)") or "?"
  print(fmt("-- redis-server %s on %s (pid %d); sprun %s", version, url,
            srv.pid, sprun.version))
  part_calls(url, admin)
  part_syncs(url, admin, srv.pid)
  part_opens(url)
  admin:close()
  print_table()
end

local t_start = hrtime()
local srv = redisd.start()
local ok, err = pcall(main, srv)
local pid = srv.pid
srv:stop()
assert(not P.alive(pid), "redis-server outlived srv:stop()")
print(fmt("-- done in %.1f s", (hrtime() - t_start) / 1e9))
if not ok then
  error(err, 0)
end
