-- sprun.fleet under Redis faults, against a real redis-server the spec
-- starts (redisd.lua): three fleets in this one process are three nodes
-- (n1, n2, n3, one breaker "db" each), each with a caller task calling
-- its breaker every 5 ms, while Redis stalls (SIGSTOP), dies and comes
-- back empty on the same port (SIGKILL, a new server), or one node is cut
-- off from it (tcp_proxy.lua: dropped bytes, then delayed ones).
--
-- What must hold whatever Redis does:
--   every call is answered, as fast as when Redis is healthy (a call
--   reads local memory only: it never waits for Redis);
--   a node that cannot sync degrades after 3 missed intervals, with a
--   reason, and recovers at the first sync that works again;
--   a node that can sync is not disturbed by another one that cannot;
--   what Redis counts ("all:c", "all:f") is what the breakers counted,
--   no call added twice, none lost (the script's running totals).
-- No handle, task or redis-server process is left (redisd.with).
--
local h = require "helpers"
local sprun = require "sprun"
local redisd = require "redisd"
local tcp_proxy = require "tcp_proxy"

local cb_new = sprun.circuit_breaker.start_link

local NODES = 3
local INTERVAL = 100
local TIMEOUT = 100
-- Missed intervals before a fleet degrades (fleet/sync.lua's MISSED).
local MISSED = 3
-- The sync's own breaker: open for 4 intervals after 3 failures.
local GUARD_OPEN = 4 * INTERVAL
-- A caller's pause between calls.
local PACE = 5
-- What a noisy 2-core machine or an ASan build may add to a time bound
-- (a timer firing late, a task resumed late).
local SLACK = 150
-- The slowest a call may be during a fault: 5 times the slowest healthy
-- one, or FAST_MS. Both are far below the TIMEOUT a call waiting for
-- Redis would take.
local FAST_MS = 20
-- The longest a caller may go between two calls: a loop blocked on Redis
-- would stop every caller for TIMEOUT ms or more.
local GAP_MS = PACE + 75

local KEY_C = "sprun:fleet:b{db}:c"
local KEY_T = "sprun:fleet:b{db}:t"

-- FLEET_FIGURES=1 prints the measured figures as TAP comments.
local function figure(fmt, ...)
  if os.getenv("FLEET_FIGURES") then
    print("# " .. fmt:format(...))
  end
end

local function fail() return nil, sprun.error("unavailable", "down") end
local function succeed() return "ok" end

local function ms_since(ns)
  return (sprun.hrtime() - ns) / 1e6
end

local function redis_conn(url)
  return assert(sprun.redis.connect { url = url })
end

-- HGETALL as a table.
local function hash(r, key)
  local list = assert(r:call("HGETALL", key))
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = list[i + 1] end
  return t
end

-- What node n's breaker has counted and sends (fleet/members.lua
-- totals): every call (successes + failures) and every failure.
local function totals(n)
  local s = n.cb:stats()
  return s.total_successes + s.total_failures, s.total_failures,
         s.rejected_count
end

local function sum_totals(nodes)
  local c, f = 0, 0
  for _, n in ipairs(nodes) do
    local nc, nf = totals(n)
    c, f = c + nc, f + nf
  end
  return c, f
end

-- The totals the node last saw Redis acknowledge ("c f s r x", what the
-- script counts from when Redis stores none for the node): internal to
-- sprun.fleet (members.lua's record), read to state the exact invariant.
local function acked(n)
  local m = n.f._by_key["bdb"]
  local c, f = m.acked:match("^(%d+) (%d+)")
  return tonumber(c), tonumber(f)
end

--- The nodes, their callers and what they saw --------------------------------

local watch_seq = 0

-- Runs body(ctx) with NODES fleets (node i on urls[i]), each synced and
-- seeing every node live, their callers calling, and the fleet's events
-- recorded; stops the callers and closes the fleets whatever body did.
local function with_nodes(urls, body)
  watch_seq = watch_seq + 1
  local ctx = { nodes = {}, by_id = {}, events = {}, ids = {}, tasks = {},
                phase = "setup", stopped = false }

  -- The fleet's events, each with the loop time it came at and the
  -- node's stats then.
  for _, what in ipairs { "degraded", "recovered" } do
    local id = "fleet_faults_" .. what .. "_" .. watch_seq
    sprun.telemetry.attach(id, { "sprun", "fleet", what },
      function(_, m, md)
        local n = ctx.by_id[md.node_id]
        ctx.events[#ctx.events + 1] = {
          what = what, t = sprun.now(), node = md.node_id,
          reason = md.reason, m = m, phase = ctx.phase,
          stats = n and n.f:stats() }
      end)
    ctx.ids[#ctx.ids + 1] = id
  end

  -- The record of phase `p` of node n: calls, wrong answers, the
  -- slowest call, the longest gap between calls, states seen, staleness.
  local function rec(n, p)
    local r = n.rec[p]
    if r == nil then
      r = { calls = 0, wrong = 0, max_call = 0, max_gap = 0, states = {},
            max_stale = 0, max_rtt = 0, first = sprun.hrtime(),
            last = sprun.hrtime() }
      n.rec[p] = r
    end
    return r
  end
  ctx.rec = rec

  function ctx.set_phase(p)
    ctx.phase = p
    ctx.phase_at = sprun.now()
  end

  -- The callers stop; the fleets keep syncing.
  function ctx.stop_calls()
    if not ctx.stopped then
      ctx.stopped = true
      for _, t in ipairs(ctx.tasks) do
        t:await()
      end
    end
  end

  local function caller(n)
    local k, prev = 0, sprun.hrtime()
    while not ctx.stopped do
      k = k + 1
      local failing = k % 4 == 0
      local t0 = sprun.hrtime()
      local v, err = n.cb:call(failing and fail or succeed)
      local took = ms_since(t0)
      local r = rec(n, ctx.phase)
      r.calls = r.calls + 1
      r.last = t0
      if failing then
        if v ~= nil or sprun.error_kind(err) ~= "unavailable" then
          r.wrong = r.wrong + 1
        end
      elseif v ~= "ok" then
        r.wrong = r.wrong + 1
      end
      if took > r.max_call then r.max_call = took end
      local gap = (t0 - prev) / 1e6
      if r.calls > 1 and gap > r.max_gap then r.max_gap = gap end
      prev = t0
      sprun.sleep(PACE)
    end
  end

  -- Every 5 ms: each node's state, and how stale its view is while
  -- synced.
  local function sampler()
    while not ctx.stopped do
      for _, n in ipairs(ctx.nodes) do
        local s = n.f:stats()
        local r = rec(n, ctx.phase)
        r.states[s.state] = (r.states[s.state] or 0) + 1
        if s.state == "synced" then
          if s.staleness_ms > r.max_stale then r.max_stale = s.staleness_ms end
          if s.round_trip_ms > r.max_rtt then r.max_rtt = s.round_trip_ms end
        end
      end
      sprun.sleep(5)
    end
  end

  local ok, err = pcall(function()
    for i = 1, NODES do
      local id = "n" .. i
      local f = sprun.fleet.connect { redis = urls[i], node_id = id,
        interval_ms = INTERVAL, timeout_ms = TIMEOUT }
      local cb = cb_new { name = "db", fleet = f,
                          failure_threshold = 1000000 }
      local n = { id = id, f = f, cb = cb, rec = {} }
      ctx.nodes[i] = n
      ctx.by_id[id] = n
    end
    h.wait_for("every node synced and seeing " .. NODES .. " live",
      function()
        for _, n in ipairs(ctx.nodes) do
          local s = n.f:stats()
          if s.state ~= "synced" or s.live_nodes ~= NODES then
            return false
          end
        end
        return true
      end, 5000)
    assert.are.equal(0, #ctx.events)
    ctx.set_phase("healthy")
    for _, n in ipairs(ctx.nodes) do
      ctx.tasks[#ctx.tasks + 1] = sprun.spawn(caller, n)
    end
    ctx.tasks[#ctx.tasks + 1] = sprun.spawn(sampler)
    body(ctx)
  end)
  ctx.stopped = true
  for _, t in ipairs(ctx.tasks) do
    pcall(t.await, t)
  end
  for _, n in ipairs(ctx.nodes) do
    n.f:close()
  end
  for _, id in ipairs(ctx.ids) do
    sprun.telemetry.detach(id)
  end
  if not ok then
    error(err, 0)
  end
end

-- The events `what` ("degraded", "recovered") of node `id` (every node's
-- if nil), in order.
local function events(ctx, what, id)
  local out = {}
  for _, e in ipairs(ctx.events) do
    if e.what == what and (id == nil or e.node == id) then
      out[#out + 1] = e
    end
  end
  return out
end

local function all_state(ctx, state, list)
  for _, n in ipairs(list or ctx.nodes) do
    if n.f:stats().state ~= state then
      return false
    end
  end
  return true
end

-- Asserts that node n's calls during phase `p` were all answered, and
-- none slower than the healthy ones allow; returns the record.
local function assert_fast(n, p, healthy)
  local r = n.rec[p]
  assert.is_table(r, n.id .. ": no call during " .. p)
  local what = ("%s %s: "):format(n.id, p)
  assert.are.equal(0, r.wrong, what .. "wrong answers")
  local bound = math.max(FAST_MS, 5 * healthy.max_call)
  assert.is_true(r.max_call <= bound, ("%sslowest call %.3f ms > %.3f ms")
                 :format(what, r.max_call, bound))
  local gap = math.max(GAP_MS, 2 * healthy.max_gap)
  assert.is_true(r.max_gap <= gap, ("%slongest gap between calls %.1f ms "
                 .. "> %.1f ms"):format(what, r.max_gap, gap))
  return r
end

-- The mean time between two calls of node n while healthy.
local function pace(n)
  local r = n.rec.healthy
  return (r.last - r.first) / 1e6 / math.max(1, r.calls - 1)
end

-- Asserts that the nodes' synced view was never staler than an interval,
-- a round trip and the slack during phase p.
local function assert_fresh(n, p)
  local r = n.rec[p]
  local bound = INTERVAL + r.max_rtt + 60
  assert.is_true((r.states.synced or 0) > 0, n.id .. " " .. p
                 .. ": never synced")
  assert.is_true(r.max_stale <= bound, ("%s %s: staleness %d ms > %d ms")
                 :format(n.id, p, r.max_stale, bound))
end

-- Final syncs, then Redis's counts against the breakers' totals: exactly
-- equal, and each node's stored totals its own.
local function assert_counted(ctx, url)
  ctx.stop_calls()
  for _ = 1, 2 do
    for _, n in ipairs(ctx.nodes) do
      local ok, err = n.f:sync()
      assert(ok, n.id .. ": final sync: " .. tostring(err))
    end
  end
  local r = redis_conn(url)
  local c = hash(r, KEY_C)
  local t = hash(r, KEY_T)
  r:close()
  local calls, failures = sum_totals(ctx.nodes)
  figure("totals: Redis all:c=%s all:f=%s, breakers %d calls %d failures",
         tostring(c["all:c"]), tostring(c["all:f"]), calls, failures)
  for _, n in ipairs(ctx.nodes) do
    local nc, nf, nr = totals(n)
    -- The totals, then the version of the sync that sent them.
    assert.are.equal(("%d %d 0 %d 0"):format(nc, nf, nr),
                     t[n.id]:match("^%d+ %d+ %d+ %d+ %d+"), n.id)
    assert.matches("^[%d ]+ " .. n.f.boot .. " %d+$", t[n.id])
    assert.are.equal(0, nr, n.id .. ": rejected calls")
    assert.are.equal("closed", n.cb:state(), n.id)
  end
  assert.are.same({ calls, failures },
                  { tonumber(c["all:c"]), tonumber(c["all:f"]) })
  return calls, failures
end

-- Asserts node n's degraded event (the only one in phase p): a reason,
-- 3 missed intervals, sent once the last sync that worked is 3 intervals
-- old; returns it.
local function assert_degraded(ctx, n, p, reason_pattern)
  local list = events(ctx, "degraded", n.id)
  assert.are.equal(1, #list, n.id .. ": degraded events")
  local e = list[1]
  assert.are.equal(p, e.phase, n.id)
  assert.is_string(e.reason, n.id .. ": no reason")
  assert.is_true(#e.reason > 0, n.id .. ": empty reason")
  assert.is_truthy(e.reason:match(reason_pattern),
                   n.id .. " degraded with reason: " .. e.reason)
  assert.are.equal(MISSED, e.m.missed_intervals, n.id)
  local stale = e.stats.staleness_ms
  assert.is_true(stale >= MISSED * INTERVAL
                 and stale < (MISSED + 1) * INTERVAL + SLACK,
                 n.id .. " degraded at staleness " .. stale)
  assert.are.equal("degraded", e.stats.state)
  return e
end

-- Asserts node n's recovered event after its degraded one `d`, within
-- `limit` ms of `since`; returns it.
local function assert_recovered(ctx, n, d, since, limit)
  local list = events(ctx, "recovered", n.id)
  assert.are.equal(1, #list, n.id .. ": recovered events")
  local e = list[1]
  assert.is_true(e.t >= since and e.t - since <= limit,
                 ("%s recovered %d ms after the fault ended (limit %d)")
                 :format(n.id, e.t - since, limit))
  assert.is_true(math.abs(e.m.degraded_ms - (e.t - d.t)) <= 1,
                 n.id .. " degraded_ms " .. e.m.degraded_ms)
  -- (What stats() says from inside the handler: see the last spec.)
  return e
end

describe("sprun.fleet under Redis faults", function()
  it("Redis stalled 5 s (SIGSTOP): every node degrades with a reason, "
     .. "calls stay fast; after SIGCONT every node recovers and Redis "
     .. "counts every call once", function()
    redisd.with(nil, function(srv)
      local u = srv:url()
      with_nodes({ u, u, u }, function(ctx)
        sprun.sleep(1000)
        assert.are.equal(0, #ctx.events)
        ctx.set_phase("stall")
        local stop_at = sprun.now()
        assert(srv.proc:kill("SIGSTOP"))
        sprun.sleep(5000)
        ctx.set_phase("resumed")
        local cont_at = sprun.now()
        assert(srv.proc:kill("SIGCONT"))
        -- Worst case: the sync's breaker has just opened again.
        local limit = GUARD_OPEN + 2 * INTERVAL + SLACK
        h.wait_for("every node recovered", function()
          return #events(ctx, "recovered") == NODES
        end, limit + 1000)
        h.wait_for("every node synced", function()
          return all_state(ctx, "synced")
        end, 1000)
        ctx.set_phase("after")
        sprun.sleep(600)

        for _, n in ipairs(ctx.nodes) do
          local healthy = n.rec.healthy
          local d = assert_degraded(ctx, n, "stall", "")
          figure("%s: degraded %d ms after SIGSTOP (staleness %d ms): %s",
                 n.id, d.t - stop_at, d.stats.staleness_ms, d.reason)
          -- A stalled Redis accepts connections but answers nothing: a
          -- timeout, of the call or of the connect.
          assert.is_truthy(d.reason:match("within %d+ ms")
                           or d.reason:lower():match("time"),
                           n.id .. ": " .. d.reason)
          local e = assert_recovered(ctx, n, d, cont_at, limit)
          figure("%s: recovered %d ms after SIGCONT (degraded %d ms)",
                 n.id, e.t - cont_at, e.m.degraded_ms)
          local r = assert_fast(n, "stall", healthy)
          -- Calls went on at their pace through the 5 s.
          local expected = 5000 / pace(n)
          figure("%s: %d calls healthy (slowest %.3f ms, longest gap "
                 .. "%.1f ms), %d in the stall of %.0f expected (slowest "
                 .. "%.3f ms, gap %.1f ms)", n.id, healthy.calls,
                 healthy.max_call, healthy.max_gap, r.calls, expected,
                 r.max_call, r.max_gap)
          assert.is_true(r.calls > expected / 2,
                         ("%s: %d calls in the stall, %.0f expected")
                         :format(n.id, r.calls, expected))
          assert.is_true((r.states.degraded or 0) > 0, n.id)
          assert_fast(n, "resumed", healthy)
          assert_fast(n, "after", healthy)
          assert_fresh(n, "healthy")
          assert_fresh(n, "after")
          figure("%s: staleness healthy <= %d ms, after <= %d ms (rtt %d)",
                 n.id, healthy.max_stale, n.rec.after.max_stale,
                 n.rec.after.max_rtt)
          -- Stayed synced once recovered.
          assert.are.same({ synced = n.rec.after.states.synced },
                          n.rec.after.states)
          local s = n.f:stats()
          assert.are.same({ "synced", 1, NODES },
                          { s.state, s.degradations, s.live_nodes })
        end
        assert_counted(ctx, u)
      end)
    end)
  end)

  it("Redis killed (SIGKILL) and started again empty on its port: nodes "
     .. "degrade, reload the script and recover; the new Redis counts "
     .. "exactly what was not acknowledged before the kill", function()
    redisd.with(nil, function(srv)
      local u, port = srv:url(), srv.port
      local srv2
      local ok, err = pcall(with_nodes, { u, u, u }, function(ctx)
        sprun.sleep(500)
        ctx.set_phase("down")
        local kill_at = sprun.now()
        -- SIGKILL, and waits for it.
        srv:stop()
        local at_kill = {}
        for _, n in ipairs(ctx.nodes) do
          at_kill[n.id] = { totals(n) }
        end
        sprun.sleep(600)
        h.wait_for("every node degraded", function()
          return #events(ctx, "degraded") == NODES
        end, 1000)
        -- A reply Redis wrote just before the kill can still be read from
        -- the socket after it: what each node saw acknowledged is final
        -- only once a sync has failed, that is once the node degraded.
        local acked_c, acked_f = 0, 0
        for _, n in ipairs(ctx.nodes) do
          local c, f = acked(n)
          local tc, tf = at_kill[n.id][1], at_kill[n.id][2]
          assert.is_true(c > 0 and c <= tc and f <= tf, n.id)
          acked_c, acked_f = acked_c + c, acked_f + f
        end
        ctx.set_phase("restarted")
        srv2 = redisd.start { port = port }
        local start_at = sprun.now()
        local limit = GUARD_OPEN + 2 * INTERVAL + SLACK
        h.wait_for("every node recovered", function()
          return #events(ctx, "recovered") == NODES
        end, limit + 1000)
        h.wait_for("every node synced", function()
          return all_state(ctx, "synced")
        end, 1000)
        ctx.set_phase("after")
        sprun.sleep(300)

        for _, n in ipairs(ctx.nodes) do
          local healthy = n.rec.healthy
          local d = assert_degraded(ctx, n, "down", "refused")
          figure("%s: degraded %d ms after SIGKILL: %s", n.id,
                 d.t - kill_at, d.reason)
          local e = assert_recovered(ctx, n, d, start_at, limit)
          figure("%s: recovered %d ms after the new server was up",
                 n.id, e.t - start_at)
          local r = assert_fast(n, "down", healthy)
          figure("%s: slowest call healthy %.3f ms, down %.3f ms (gap "
                 .. "%.1f / %.1f ms), %d calls down", n.id,
                 healthy.max_call, r.max_call, healthy.max_gap, r.max_gap,
                 r.calls)
          assert_fast(n, "restarted", healthy)
          assert_fast(n, "after", healthy)
          assert_fresh(n, "after")
        end

        local r = redis_conn(u)
        local info = assert(r:call("INFO", "commandstats"))
        -- A new connection to a new server: each node loaded the script.
        local loads = tonumber(info:match("cmdstat_script|load:calls=(%d+)"))
        figure("SCRIPT LOAD on the new server: %s, EVALSHA: %s",
               tostring(loads), info:match("cmdstat_evalsha:calls=(%d+)"))
        assert.is_true(loads ~= nil and loads >= NODES, info)
        ctx.stop_calls()
        for _, n in ipairs(ctx.nodes) do
          assert(n.f:sync())
        end
        local c = hash(r, KEY_C)
        local calls, failures = sum_totals(ctx.nodes)
        local since_kill = 0
        for _, n in ipairs(ctx.nodes) do
          since_kill = since_kill + totals(n) - at_kill[n.id][1]
        end
        local all_c, all_f = tonumber(c["all:c"]), tonumber(c["all:f"])
        figure("new server: all:c=%d all:f=%d; breakers %d/%d, acked "
               .. "before the kill %d/%d, counted since the kill %d",
               all_c, all_f, calls, failures, acked_c, acked_f, since_kill)
        assert.is_true(all_c > 0 and since_kill > 0)
        -- What the old server had is not added again: the new one counts
        -- from the totals each node last saw acknowledged (the script,
        -- with no totals stored for the node), so exactly what grew since.
        assert.are.same({ calls - acked_c, failures - acked_f },
                        { all_c, all_f })
        assert.is_true(all_c >= since_kill and all_c < calls)
        -- Sent again with no new call: nothing is added.
        for _, n in ipairs(ctx.nodes) do
          assert(n.f:sync())
        end
        c = hash(r, KEY_C)
        assert.are.same({ all_c, all_f },
                        { tonumber(c["all:c"]), tonumber(c["all:f"]) })
        r:close()
      end)
      if srv2 then
        srv2:stop()
        assert.is_false(h.alive(srv2.pid))
      end
      assert(ok, err)
    end)
  end)

  it("one node cut off from Redis (dropped, then delayed bytes): it "
     .. "degrades and recovers, the others stay synced, calls stay fast, "
     .. "Redis counts every call once", function()
    redisd.with(nil, function(srv)
      local proxy = tcp_proxy.start("127.0.0.1", srv.port)
      local via = "redis://127.0.0.1:" .. proxy.port
      local ok, err = pcall(with_nodes, { via, srv:url(), srv:url() },
                            function(ctx)
        local n1, n2, n3 = ctx.nodes[1], ctx.nodes[2], ctx.nodes[3]
        sprun.sleep(600)

        -- Dropped: n1's commands never reach Redis.
        ctx.set_phase("drop")
        local drop_at = sprun.now()
        proxy:set("drop")
        sprun.sleep(600)
        h.wait_for("n1 degraded", function()
          return #events(ctx, "degraded", "n1") == 1
        end, 1000)
        -- n1 no longer syncs: the others see 2 live nodes.
        h.wait_for("n2 and n3 seeing 2 live nodes", function()
          return n2.f:view("db").live_nodes == 2
                 and n3.f:view("db").live_nodes == 2
        end, 1000)
        ctx.set_phase("healed")
        -- The connection that carried dropped bytes is cut: n1 connects
        -- again.
        proxy:set("pass")
        proxy:cut()
        local pass_at = sprun.now()
        local limit = GUARD_OPEN + 2 * INTERVAL + SLACK
        h.wait_for("n1 recovered", function()
          return #events(ctx, "recovered", "n1") == 1
        end, limit + 1000)
        h.wait_for("every node seeing 3 live nodes", function()
          for _, n in ipairs(ctx.nodes) do
            local v = n.f:view("db")
            if v.live_nodes ~= NODES or n.f:stats().state ~= "synced" then
              return false
            end
          end
          return true
        end, 1000)
        local d = assert_degraded(ctx, n1, "drop", "")
        figure("n1: degraded %d ms after the drop: %s", d.t - drop_at,
               d.reason)
        local e = assert_recovered(ctx, n1, d, pass_at, limit)
        figure("n1: recovered %d ms after the pass", e.t - pass_at)
        for _, n in ipairs(ctx.nodes) do
          local r = assert_fast(n, "drop", n.rec.healthy)
          figure("%s: slowest call healthy %.3f ms, drop %.3f ms (gap "
                 .. "%.1f / %.1f ms), %d calls in the drop", n.id,
                 n.rec.healthy.max_call, r.max_call, n.rec.healthy.max_gap,
                 r.max_gap, r.calls)
        end
        for _, n in ipairs { n2, n3 } do
          assert.are.same({}, events(ctx, "degraded", n.id))
          assert.are.same({ synced = n.rec.drop.states.synced },
                          n.rec.drop.states, n.id)
          assert_fresh(n, "drop")
        end

        -- Delayed past the timeout: n1 misses its syncs again.
        ctx.set_phase("delay")
        local delay_at = sprun.now()
        proxy:set("delay", 3 * TIMEOUT)
        h.wait_for("n1 degraded again", function()
          return #events(ctx, "degraded", "n1") == 2
        end, 1000 + SLACK)
        sprun.sleep(200)
        local d2 = events(ctx, "degraded", "n1")[2]
        assert.are.equal("delay", d2.phase)
        assert.is_truthy(d2.reason:match("within %d+ ms")
                         or d2.reason:lower():match("time"), d2.reason)
        figure("n1: degraded %d ms after the delay: %s", d2.t - delay_at,
               d2.reason)
        ctx.set_phase("healed2")
        proxy:set("pass")
        proxy:cut()
        local pass2_at = sprun.now()
        h.wait_for("n1 recovered again", function()
          return #events(ctx, "recovered", "n1") == 2
        end, limit + 1000)
        local e2 = events(ctx, "recovered", "n1")[2]
        assert.is_true(e2.t - pass2_at <= limit, e2.t - pass2_at)
        figure("n1: recovered %d ms after the second pass", e2.t - pass2_at)
        h.wait_for("every node synced", function()
          return all_state(ctx, "synced")
        end, 1000)
        ctx.set_phase("after")
        sprun.sleep(300)
        for _, n in ipairs(ctx.nodes) do
          local r = assert_fast(n, "delay", n.rec.healthy)
          figure("%s: slowest call in the delay %.3f ms (gap %.1f ms)",
                 n.id, r.max_call, r.max_gap)
          assert_fast(n, "healed", n.rec.healthy)
          assert_fast(n, "after", n.rec.healthy)
        end
        for _, n in ipairs { n2, n3 } do
          assert.are.same({}, events(ctx, "degraded", n.id))
          assert.are.same({ synced = n.rec.delay.states.synced },
                          n.rec.delay.states, n.id)
        end
        assert.are.equal(2, n1.f:stats().degradations)
        assert_counted(ctx, srv:url())
      end)
      proxy:close()
      assert(ok, err)
    end)
  end)

  -- A sync that timed out but still reaches Redis after a newer one of
  -- the same node (its bytes held up on the way, as a retransmitted
  -- segment of a connection the node already closed) has lower totals
  -- than those stored, as a reset breaker's would: its version (boot,
  -- clock) tells it apart, and it adds nothing.
  it("a sync that timed out and reaches Redis after a newer one of the "
     .. "same node adds nothing twice", function()
    redisd.with(nil, function(srv)
      local proxy = tcp_proxy.start("127.0.0.1", srv.port)
      local via = "redis://127.0.0.1:" .. proxy.port
      local ok, err = pcall(with_nodes, { via, srv:url(), srv:url() },
                            function(ctx)
        local n1 = ctx.nodes[1]
        sprun.sleep(300)
        ctx.set_phase("late")
        local f0 = n1.f:stats().sync_failures
        -- n1's next EVALSHA waits 300 ms in the proxy: n1 gives up on it
        -- after 100.
        proxy:set("delay", 3 * TIMEOUT)
        h.wait_for("n1's sync timed out", function()
          return n1.f:stats().sync_failures > f0
        end, 1000)
        local failed_at = sprun.now()
        local late_c = totals(n1)
        -- From now on n1's bytes pass at once, but the EVALSHA that timed
        -- out is still held for ~200 ms: the next sync is applied first.
        proxy:set("pass")
        local s0 = n1.f:stats().syncs
        h.wait_for("n1 synced again", function()
          return n1.f:stats().syncs > s0
        end, 1000)
        local synced_at = sprun.now()
        -- The scenario, not the fleet: the newer sync must have been
        -- applied before the held one reached Redis.
        assert.is_true(synced_at - failed_at < 2 * TIMEOUT,
                       "n1 synced again only " .. (synced_at - failed_at)
                       .. " ms after the timeout")
        -- The held EVALSHA reaches Redis.
        sprun.sleep(4 * TIMEOUT)
        local r = redis_conn(srv:url())
        local stored = r:call("HGET", KEY_T, "n1")
        r:close()
        figure("n1: a sync of %d calls timed out, a newer one applied "
               .. "%d ms later; stored totals now %s", late_c,
               synced_at - failed_at, tostring(stored))
        local calls = sum_totals(ctx.nodes)
        local ok2, e = pcall(assert_counted, ctx, srv:url())
        assert(ok2, tostring(e) .. (" (n1 had counted %d calls when its "
               .. "late sync was sent; the breakers %d in all)")
               :format(late_c, calls))
      end)
      proxy:close()
      assert(ok, err)
    end)
  end)

  -- Each event comes once the state it tells is set: a handler that
  -- reads fleet:stats() (or scrapes sprun_fleet_degraded) sees it.
  it("a degraded or recovered handler sees the state the event tells",
    function()
    redisd.with(nil, function(srv)
      local proxy = tcp_proxy.start("127.0.0.1", srv.port)
      local seen, ids = {}, {}
      local f
      local ok, err = pcall(function()
        f = sprun.fleet.connect { redis = "redis://127.0.0.1:" .. proxy.port,
          node_id = "n1", interval_ms = INTERVAL, timeout_ms = TIMEOUT }
        cb_new { name = "db", fleet = f }
        for _, what in ipairs { "degraded", "recovered" } do
          local id = "fleet_faults_seen_" .. what
          sprun.telemetry.attach(id, { "sprun", "fleet", what },
            function()
              local v = f:view("db")
              seen[#seen + 1] = { what, f:stats().state, v and v.stale }
            end)
          ids[#ids + 1] = id
        end
        assert(f:sync())
        proxy:set("drop")
        h.wait_for("degraded", function() return #seen >= 1 end, 1000)
        proxy:set("pass")
        proxy:cut()
        h.wait_for("recovered", function() return #seen >= 2 end, 2000)
        assert.are.equal("synced", f:stats().state)
        assert.are.same({ { "degraded", "degraded", true },
                          { "recovered", "synced", nil } }, seen)
      end)
      for _, id in ipairs(ids) do
        sprun.telemetry.detach(id)
      end
      if f then f:close() end
      proxy:close()
      assert(ok, err)
    end)
  end)
end)
