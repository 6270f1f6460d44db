-- sprun.fleet against a real redis-server the spec starts (redisd.lua):
-- the fleet's life (connect, sync, stats, close, the run's end), what
-- joins it (breakers, monitors, pools, HTTP clients' per-origin
-- breakers), what it counts (only what the breaker counts), the keys it
-- leaves in Redis (hash-tagged, every one with an expiry), and Redis
-- forgetting its script.
local h = require "helpers"
local sprun = require "sprun"
local redisd = require "redisd"

local cb_new = sprun.circuit_breaker.start_link
local hm_new = sprun.health_monitor.start_link

local function with_redis(fn, opts)
  return redisd.with(opts, fn)
end

local function fail() return nil, sprun.error("unavailable", "down") end
local function succeed() return "ok" end

local function connect(srv, id, extra)
  local o = { redis = srv:url(), node_id = id, interval_ms = 100 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return sprun.fleet.connect(o)
end

local function redis_conn(srv)
  return assert(sprun.redis.connect { url = srv:url() })
end

-- HGETALL as a table.
local function hash(r, key)
  local list = assert(r:call("HGETALL", key))
  local t = {}
  for i = 1, #list, 2 do t[list[i]] = tonumber(list[i + 1]) end
  return t
end

describe("sprun.fleet", function()
  it("syncs at once and every interval; stats say how fresh the view is",
    function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local cb = cb_new { name = "db", fleet = f }
      assert.are.equal(f, cb:fleet())
      assert.are.equal("connecting", f:stats().state)
      h.wait_for("the first sync", function()
        return f:stats().syncs >= 1
      end, 3000)
      local s0 = f:stats().syncs
      sprun.sleep(550)
      local s = f:stats()
      assert.are.equal("synced", s.state)
      assert.is_true(s.syncs - s0 >= 4 and s.syncs - s0 <= 7, s.syncs - s0)
      assert.are.equal("n1", s.node_id)
      assert.are.equal(1, s.members)
      assert.are.equal(1, s.live_nodes)
      assert.are.equal(0, s.sync_failures)
      assert.is_true(s.staleness_ms <= s.interval_ms + 100, s.staleness_ms)
      local v = f:view("db")
      assert.are.same({ "closed", 1, 0 }, { v.state, v.live_nodes, v.calls })
      assert.is_nil(f:view("other"))
      f:close()
      assert.are.equal("closed", f:stats().state)
      local n = f:stats().syncs
      sprun.sleep(300)
      assert.are.equal(n, f:stats().syncs)
    end)
  end)

  it("the run's end closes a fleet left open: no handle, no task left",
    function()
    local pid, f
    h.run_tasks(function()
      local srv = redisd.start()
      pid = srv.pid
      f = connect(srv, "n1")
      cb_new { name = "db", fleet = f }
      assert(f:sync())
      -- The fleet is left open, its connection up: the run closes it.
      srv:stop()
    end)
    assert.are.equal("closed", f:stats().state)
    assert.is_false(h.alive(pid))
  end)

  it("counts what the breaker counts, never what it was told to ignore",
    function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local cb = cb_new { name = "db", failure_threshold = 100, fleet = f,
        is_failure = function(err) return err.kind ~= "bad_input" end }
      for _ = 1, 7 do cb:call(succeed) end
      for _ = 1, 3 do cb:call(fail) end
      for _ = 1, 5 do
        cb:call(function() return nil, sprun.error("bad_input", "mine") end)
      end
      -- A bulkhead that refuses never reaches the breaker at all.
      local bh = sprun.bulkhead.new { name = "b", max_concurrent = 1,
                                      max_queue = 0 }
      local hold = sprun.spawn(function()
        return bh:call(function() sprun.sleep(50) end)
      end)
      sprun.sleep(0)
      local _, err = bh:call(function() return cb:call(succeed) end)
      assert.are.equal("bulkhead_full", sprun.error_kind(err))
      hold:await()
      assert(f:sync())
      local v = f:view("db")
      assert.are.same({ 10, 3 }, { v.calls, v.failures })
      local r = redis_conn(srv)
      local c = hash(r, "sprun:fleet:b{db}:c")
      assert.are.same({ 10, 3 }, { c["all:c"], c["all:f"] })
      -- Sent again with nothing new: nothing is added twice.
      assert(f:sync())
      assert(f:sync())
      c = hash(r, "sprun:fleet:b{db}:c")
      assert.are.same({ 10, 3 }, { c["all:c"], c["all:f"] })
      r:close()
      f:close()
    end)
  end)

  it("keeps every key under one hash tag per member, each with an expiry",
    function()
    with_redis(function(srv)
      local f = connect(srv, "n1", { prefix = "app:" })
      local cb = cb_new { name = "db", failure_threshold = 1, fleet = f }
      local hm = hm_new { name = "workers", fleet = f }
      cb:call(fail)
      hm:record_crash("w1")
      assert(f:sync())
      local r = redis_conn(srv)
      local keys = assert(r:call("KEYS", "*"))
      table.sort(keys)
      -- Members, totals, counts and failing nodes of each; the breaker's
      -- vote (no state yet: the fleet never opened).
      assert.are.same({ "app:b{db}:c", "app:b{db}:n", "app:b{db}:t",
        "app:b{db}:v", "app:b{db}:x", "app:m{workers}:c",
        "app:m{workers}:n", "app:m{workers}:t", "app:m{workers}:x" }, keys)
      for _, k in ipairs(keys) do
        assert.is_truthy(k:match("^app:b{db}:%a$")
                         or k:match("^app:m{workers}:%a$"), k)
        local ttl = r:call("PTTL", k)
        -- Twice the longest of the window, the 3 intervals of expiry and
        -- the reset timeout, plus the expiry: here the monitor's 60 s
        -- window and the breaker's 30 s timeout.
        local most = k:match("{db}") and 2 * 30000 + 300 or 2 * 60000 + 300
        assert.is_true(ttl > most - 5000 and ttl <= most, k .. " " .. ttl)
      end
      r:close()
      f:close()
    end)
  end)

  it("syncs 450 breakers in 3 EVALSHAs of at most 200, each counted",
    function()
    with_redis(function(srv)
      -- No sync on the timer but the first: the count is of this one.
      local f = connect(srv, "n1", { interval_ms = 60000 })
      assert(f:sync())
      local cbs = {}
      for i = 1, 450 do
        cbs[i] = cb_new { name = "b" .. i, fleet = f }
        for _ = 1, i % 3 do cbs[i]:call(succeed) end
      end
      local r = redis_conn(srv)
      assert(r:call("CONFIG", "RESETSTAT"))
      assert(f:sync())
      local info = r:call("INFO", "commandstats")
      assert.are.equal("3", info:match("cmdstat_evalsha:calls=(%d+)"))
      for _, i in ipairs { 1, 200, 201, 400, 401, 450 } do
        assert.are.equal(i % 3, f:view("b" .. i).calls, i)
      end
      r:close()
      f:close()
    end)
  end)

  it("reloads its script when Redis forgot it (NOSCRIPT)", function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local cb = cb_new { name = "db", fleet = f }
      assert(f:sync())
      local r = redis_conn(srv)
      assert(r:call("SCRIPT", "FLUSH"))
      cb:call(succeed)
      assert(f:sync())
      assert.are.equal(1, f:view("db").calls)
      local info = r:call("INFO", "commandstats")
      -- Loaded at the first sync, then again after the flush.
      assert.are.equal("2", info:match("cmdstat_script|load:calls=(%d+)"))
      r:close()
      f:close()
    end)
  end)

  it("a breaker of the same name takes the old one's place; leave lets go",
    function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local a = cb_new { name = "db", fleet = f }
      local b = cb_new { name = "db", fleet = f }
      assert.are.equal(1, f:stats().members)
      assert.is_false(f:leave(a))
      assert.is_true(f:leave(b))
      assert.is_nil(b:fleet())
      assert.are.equal(0, f:stats().members)
      f:close()
    end)
  end)

  it("a monitor in a fleet reports the fleet's crashes beside its own",
    function()
    with_redis(function(srv)
      local f1, f2 = connect(srv, "n1"), connect(srv, "n2")
      local m1 = hm_new { name = "w", max_crashes = 3, fleet = f1 }
      local m2 = hm_new { name = "w", max_crashes = 3, fleet = f2 }
      local s = m1:stats()
      assert.are.same({ "local", 0, true },
        { s.fleet_state, s.fleet_crashes_in_window, s.fleet_is_healthy })
      for i = 1, 2 do m1:record_crash("a" .. i) end
      for i = 1, 5 do m2:record_crash("b" .. i) end
      assert(f1:sync()); assert(f2:sync()); assert(f1:sync())
      s = m1:stats()
      assert.are.same({ 2, true, 7, 2, "synced" },
        { s.crashes_in_window, s.is_healthy, s.fleet_crashes_in_window,
          s.fleet_live_nodes, s.fleet_state })
      -- 7 crashes for 2 nodes at 3 each: under 6 would be healthy.
      assert.is_false(s.fleet_is_healthy)
      assert.is_false(m2:stats().is_healthy)
      assert.are.equal(7, f2:view("w", "monitor").crashes)
      f1:close(); f2:close()
      assert.are.equal("local", m1:stats().fleet_state)
    end)
  end)

  it("a pool's own breaker and monitor join its fleet and leave when it "
     .. "stops", function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local pool = assert(sprun.pool.start {
        name = "py", size = 1, fleet = f, breaker = {},
        cmd = { h.sprun, h.root .. "/scripts/pool/worker.lua" } })
      assert.are.equal(2, f:stats().members)
      assert.are.equal(f, pool:breaker():fleet())
      assert.are.equal(f, pool:health_monitor():fleet())
      assert(f:sync())
      assert.is_table(f:view("py"))
      assert.is_table(f:view("py", "monitor"))
      pool:stop()
      assert.are.equal(0, f:stats().members)
      f:close()
    end)
  end)

  it("an HTTP client's per-origin breakers join the fleet and leave with "
     .. "their origin", function()
    with_redis(function(srv)
      local f = connect(srv, "n1")
      local c = sprun.http.client { breaker_per_origin = {
        failure_threshold = 2, fleet = f }, idle_origin_ms = 1,
        timeout_ms = 500 }
      assert.are.equal(0, f:stats().members)
      local _, err = c:get("http://127.0.0.1:1/x")
      assert.is_truthy(err)
      assert.are.equal(1, f:stats().members)
      assert(f:sync())
      assert.are.equal(1, f:view("http://127.0.0.1:1").failures)
      sprun.sleep(5)
      c:get("http://127.0.0.1:2/x")
      -- The idle origin was swept: its breaker left the fleet.
      assert.is_nil(f:view("http://127.0.0.1:1"))
      f:close()
    end)
  end)

  it("shows each node's staleness, state and syncs to Prometheus",
    function()
    with_redis(function(srv)
      local prom = assert(sprun.telemetry.prometheus { port = 0 })
      local f = connect(srv, "n1")
      cb_new { name = "db", fleet = f }
      assert(f:sync())
      assert(f:sync())
      local text = prom:metrics()
      local st = tonumber(text:match(
        'sprun_fleet_staleness_seconds{node="n1"} ([%d.e-]+)'))
      assert.is_true(st ~= nil and st >= 0 and st < 0.2, text)
      assert.matches('sprun_fleet_degraded{node="n1"} 0\n', text)
      assert.matches('sprun_fleet_live_nodes{node="n1"} 1\n', text)
      local n = tonumber(text:match('sprun_fleet_syncs_total{node="n1"} (%d+)'))
      assert.is_true(n >= 2, text)
      f:close()
      assert.is_nil(prom:metrics():match('sprun_fleet_degraded{node="n1"}'))
      prom:close()
    end)
  end)

  it("connects with AUTH and SELECT from the URL", function()
    with_redis(function(srv)
      local f = sprun.fleet.connect { redis = srv:url(3), node_id = "n1",
                                      interval_ms = 100 }
      cb_new { name = "db", fleet = f }
      assert(f:sync())
      local r = assert(sprun.redis.connect { url = srv:url(3) })
      assert.are.equal(1, r:call("EXISTS", "sprun:fleet:b{db}:n"))
      r:close()
      f:close()
      local bad = sprun.fleet.connect { redis = "redis://:wrong@127.0.0.1:"
        .. srv.port, node_id = "n2", interval_ms = 100 }
      local ok, e = bad:sync()
      assert.is_nil(ok)
      assert.are.equal("redis_error", sprun.error_kind(e))
      bad:close()
    end, { password = "pw" })
  end)

  it("with Redis unreachable, degrades after 3 intervals with the reason "
     .. "and keeps every call local", function()
    h.run_tasks(function()
      local events = {}
      local id = "fleet_spec_degraded"
      sprun.telemetry.attach(id, { "sprun", "fleet", "degraded" },
        function(_, m, md) events[#events + 1] = { m, md } end)
      local f = sprun.fleet.connect { redis = "redis://127.0.0.1:1",
                                      node_id = "n1", interval_ms = 50 }
      local cb = cb_new { name = "db", failure_threshold = 2, fleet = f }
      h.wait_for("degraded", function() return #events > 0 end, 2000)
      sprun.telemetry.detach(id)
      local s = f:stats()
      assert.are.equal("degraded", s.state)
      assert.are.equal(1, s.degradations)
      assert.is_truthy(s.last_error:match("connection_refused")
                       or s.last_error:match("refused"), s.last_error)
      assert.are.equal("n1", events[1][2].node_id)
      assert.is_truthy(events[1][2].reason:match("refused"),
                       events[1][2].reason)
      -- The breaker is its own: two failures open it, a call is answered.
      cb:call(fail)
      cb:call(fail)
      assert.are.equal("open", cb:state())
      f:close()
    end)
  end)
end)

describe("sprun.fleet and rate limiters", function()
  it("gives each live node its share of a limiter's rate and burst, and "
     .. "the whole back to one that leaves", function()
    with_redis(function(srv)
      local fs, lims = {}, {}
      for i = 1, 3 do
        fs[i] = connect(srv, "n" .. i)
        lims[i] = sprun.rate_limiter.new { name = "api", rate = 300,
                                           burst = 30, fleet = fs[i] }
      end
      for _ = 1, 2 do
        for i = 1, 3 do assert(fs[i]:sync()) end
      end
      for i = 1, 3 do
        local s = lims[i]:stats()
        assert.are.same({ 100, 10 }, { s.rate, s.burst }, "n" .. i)
        assert.are.equal(3, fs[i]:view("api", "rate_limiter").live_nodes)
      end
      -- The calls each took count in the fleet's view.
      for _ = 1, 4 do lims[1]:take() end
      assert(fs[1]:sync())
      assert.are.equal(4, fs[1]:view("api", "rate_limiter").calls)
      fs[3]:close()
      assert.are.same({ 300, 30 }, { lims[3]:stats().rate,
                                     lims[3]:stats().burst })
      -- n3's liveness expires after 3 intervals: the others split the rate.
      h.wait_for("n1 and n2 at half the rate", function()
        return lims[1]:stats().rate == 150 and lims[2]:stats().rate == 150
      end, 2000)
      assert.are.equal(15, lims[1]:stats().burst)
      fs[1]:close()
      fs[2]:close()
    end)
  end)

  it("is for a plain limiter only: keyed ones take no fleet", function()
    h.run_tasks(function()
      local f = sprun.fleet.connect { redis = "redis://127.0.0.1:1",
                                      node_id = "n1" }
      local ok, err = pcall(sprun.rate_limiter.keyed, { rate = 1,
                                                        fleet = f })
      f:close()
      assert.is_false(ok)
      assert.matches("rate_limiter.keyed: unknown option 'fleet'", err, 1,
                     true)
    end)
  end)
end)

describe("sprun.fleet misuse", function()
  it("needs a running loop", function()
    local ok, err = pcall(sprun.fleet.connect, { redis = "redis://x" })
    assert.is_false(ok)
    assert.is_truthy(err:match("must be called inside a running loop"), err)
  end)
end)
