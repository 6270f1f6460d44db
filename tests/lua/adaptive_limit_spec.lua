-- sprun.adaptive_limit: permits, literal RTT sequences through the C core,
-- call()'s rule for drops, and the simulation: 200 clients pressing on a
-- dependency whose latency grows past a knee of 20 calls in flight, under
-- virtual time, with AIMD and gradient2 against a fixed limit of 200. The
-- figures are printed as TAP comments (# ...) for the README.
local h = require "helpers"
local sprun = require "sprun"
local al = require "sprun.adaptive_limit"

local unpack = unpack or table.unpack

-- n permits of lim.
local function take(lim, n)
  local permits = {}
  for i = 1, n do
    permits[i] = assert(lim:acquire())
  end
  return permits
end

-- One call of lim ending with `outcome` after `rtt` ms, with `extra` other
-- calls in flight for it.
local function sample(lim, extra, outcome, rtt)
  local held = take(lim, extra)
  local p = assert(lim:acquire())
  lim:release(p, outcome, rtt)
  for i = 1, #held do
    lim:release(held[i], "ignored")
  end
  return lim:stats().estimated_limit
end

describe("adaptive_limit", function()
  describe("new", function()
    it("starts with the documented defaults", function()
      local s = al.new():stats()
      assert.are.same({
        name = "adaptive_limit", algorithm = "aimd", limit = 20,
        estimated_limit = 20, in_flight = 0, max_in_flight = 0,
        acquired = 0, rejected = 0, successes = 0, dropped = 0,
        ignored = 0, updates = 0,
      }, s)
      local g = al.new { algorithm = "gradient2" }:stats()
      assert.are.same({ 20, 0, 0, 1 }, { g.limit, g.long_rtt_ms,
                                         g.short_rtt_ms, g.gradient })
    end)

    it("brings the default initial limit into [min_limit, max_limit]",
      function()
        assert.are.same({ 8, 50, 20 },
          { al.new { max_limit = 8 }:limit(),
            al.new { min_limit = 50 }:limit(),
            al.new { min_limit = 5, max_limit = 30 }:limit() })
      end)

    it("is loaded lazily as sprun.adaptive_limit", function()
      assert.are.equal(al, sprun.adaptive_limit)
      assert.is_true(al.is_adaptive_limit(al.new()))
      assert.is_false(al.is_adaptive_limit({}))
    end)
  end)

  describe("acquire and release", function()
    it("admits floor(limit) calls and refuses the next with "
       .. "limit_exceeded, naming the limit and the count", function()
      local lim = al.new { name = "db", initial_limit = 3 }
      local permits = take(lim, 3)
      local p, err = lim:acquire()
      assert.is_nil(p)
      assert.are.equal("limit_exceeded", sprun.error_kind(err))
      assert.are.equal("limit_exceeded: adaptive limit 'db' reached: "
                       .. "limit 3, 3 in flight", tostring(err))
      assert.are.same({ name = "db", limit = 3, in_flight = 3 },
                      err.details)
      local s = lim:stats()
      assert.are.same({ 3, 1, 3, 3 },
                      { s.in_flight, s.rejected, s.acquired, s.max_in_flight })
      for i = 1, 3 do
        assert.is_true(lim:release(permits[i], "ignored"))
      end
      assert.are.equal(0, lim:stats().in_flight)
    end)

    it("refuses a permit released twice, and never counts it twice",
      function()
        local lim = al.new { initial_limit = 4 }
        local p = assert(lim:acquire())
        local other = assert(lim:acquire())
        lim:release(p, "success", 1)
        local ok, err = pcall(lim.release, lim, p, "success", 1)
        assert.is_false(ok)
        assert.are.equal("adaptive_limit.release: permit " .. p
                         .. " was already released", err)
        local s = lim:stats()
        assert.are.same({ 1, 1, 1 }, { s.in_flight, s.successes, s.updates })
        lim:release(other, "ignored")
      end)

    it("refuses an old permit whose slot was given to a new call, and "
       .. "keeps the new one valid", function()
      local lim = al.new { initial_limit = 1 }
      local old = assert(lim:acquire())
      lim:release(old, "ignored")
      local new = assert(lim:acquire())
      assert.are_not.equal(old, new)
      assert.has_error(function() lim:release(old, "ignored") end,
        "adaptive_limit.release: permit " .. old .. " was already released")
      assert.are.equal(1, lim:stats().in_flight)
      assert.is_true(lim:release(new, "ignored"))
      assert.are.equal(0, lim:stats().in_flight)
    end)

    it("checks the outcome and the RTT before spending the permit",
      function()
        local lim = al.new()
        local p = assert(lim:acquire())
        assert.has_error(function() lim:release(p, "failure", 1) end,
          'adaptive_limit.release: outcome must be "success", "dropped" or '
          .. '"ignored", got "failure"')
        assert.has_error(function() lim:release(p, "success", -1) end,
          "adaptive_limit.release: rtt_ms must be a number >= 0 or nil, "
          .. "got -1")
        assert.are.equal(1, lim:stats().in_flight)
        lim:release(p, "dropped", 1)
        assert.are.same({ 0, 1 }, { lim:stats().in_flight,
                                    lim:stats().dropped })
      end)

    it("keeps in_flight in step over 10,000 random acquires and releases",
      function()
        local lim = al.new { initial_limit = 10, max_limit = 30,
                             timeout_ms = 40 }
        local held, seed = {}, 12345
        local function rand(n)
          seed = (seed * 1103515245 + 12345) % 2147483648
          return seed % n
        end
        local outcomes = { "success", "dropped", "ignored" }
        for _ = 1, 10000 do
          if rand(2) == 0 then
            local p = lim:acquire()
            if p then held[#held + 1] = p end
          elseif #held > 0 then
            local i = rand(#held) + 1
            lim:release(held[i], outcomes[rand(3) + 1], rand(80))
            held[i] = held[#held]
            held[#held] = nil
          end
          local s = lim:stats()
          assert(s.in_flight == #held, "in_flight " .. s.in_flight)
          assert(s.limit >= 1 and s.limit <= 30, "limit " .. s.limit)
        end
        local s = lim:stats()
        assert.are.equal(s.acquired, s.successes + s.dropped + s.ignored
                                     + #held)
      end)
  end)

  describe("through the core, literal RTTs give exact limits", function()
    it("aimd: +1 when pressed on, x backoff_ratio on a drop or an RTT "
       .. "above timeout_ms, clamped", function()
      local lim = al.new { initial_limit = 4, max_limit = 6,
                           backoff_ratio = 0.5, timeout_ms = 100 }
      local p = take(lim, 4)
      local seen = {}
      lim:release(p[1], "success", 10)     -- 4 in flight: 5
      seen[1] = lim:stats().estimated_limit
      lim:release(p[2], "success", 10)     -- 3 in flight, 6 >= 5: 6
      seen[2] = lim:stats().estimated_limit
      lim:release(p[3], "dropped", 10)     -- 3
      seen[3] = lim:stats().estimated_limit
      lim:release(p[4], "success", 10)     -- 1 in flight, 2 < 3: stays
      seen[4] = lim:stats().estimated_limit
      assert.are.same({ 5, 6, 3, 3 }, seen)
      assert.are.same({ 4, 5, 6, 6 },
        { sample(lim, 2, "success", 10), sample(lim, 3, "success", 100),
          sample(lim, 4, "success", 10), sample(lim, 5, "success", 10) })
      assert.are.same({ 3, 1.5, 1, 1 },
        { sample(lim, 0, "success", 100.5), sample(lim, 0, "dropped", 1),
          sample(lim, 0, "dropped", 1), sample(lim, 0, "dropped", 1) })
    end)

    it("gradient2: 1.5 x long / short clamped to [0.5, 1], a smoothing "
       .. "share of the way to limit x gradient + queue", function()
      local lim = al.new { algorithm = "gradient2", initial_limit = 20,
                           long_window = 3, smoothing = 0.5, queue_size = 2 }
      local seen = {}
      for i, rtt in ipairs { 10, 10, 10, 60, 240 } do
        seen[i] = sample(lim, 14, "success", rtt)
      end
      assert.are.same({ 21, 22, 23, 22.5625, 21.97607421875 }, seen)
      local s = lim:stats()
      assert.are.same({ 137.5, 240, 0.859375, 21 },
                      { s.long_rtt_ms, s.short_rtt_ms, s.gradient, s.limit })
      -- App-limited (2 in flight < 21.9 / 2): the RTTs move, not the limit.
      assert.are.equal(21.97607421875, sample(lim, 1, "success", 500))
      assert.are.equal(318.75, lim:stats().long_rtt_ms)
    end)

    it("gradient2: queue_size \"sqrt\" and a function of the limit",
      function()
        local lim = al.new { algorithm = "gradient2", initial_limit = 16,
                             smoothing = 1, queue_size = "sqrt" }
        -- max(4, floor(sqrt(limit))): 4 up to a limit of 24, then 5.
        assert.are.same({ 20, 24, 28, 33 },
          { sample(lim, 10, "success", 10), sample(lim, 10, "success", 10),
            sample(lim, 12, "success", 10), sample(lim, 14, "success", 10) })
        local given = {}
        local fn = al.new { algorithm = "gradient2", initial_limit = 10,
                            smoothing = 1,
                            queue_size = function(limit)
                              given[#given + 1] = limit
                              return limit / 2
                            end }
        assert.are.same({ 15, 22.5 },
          { sample(fn, 6, "success", 10), sample(fn, 8, "success", 10) })
        assert.are.same({ 10, 15 }, given)
      end)

    it("measures the RTT from acquire on the loop clock when none is "
       .. "given", function()
      local short, aimd = h.vrun(function()
        local g = al.new { algorithm = "gradient2" }
        local p = assert(g:acquire())
        sprun.sleep(25)
        g:release(p, "success")
        local a = al.new { timeout_ms = 20 }
        local q = assert(a:acquire())
        sprun.sleep(21)
        a:release(q, "success")
        return g:stats().short_rtt_ms, a:stats().estimated_limit
      end)
      assert.are.same({ 25, 18 }, { short, aimd })
    end)

    it("with window_ms, backs off once per window however many drops",
      function()
        local lim = al.new { initial_limit = 40, backoff_ratio = 0.5,
                             window_ms = 100, window_min_samples = 1 }
        -- The windows read the loop clock: a virtual loop drives it.
        local limits = h.vrun(function()
          local out = {}
          for i = 1, 5 do
            sample(lim, 30, "dropped", 10)
            out[i] = lim:stats().estimated_limit
            sprun.sleep(30)
          end
          return out
        end)
        -- Drops at 0, 30, 60, 90 share a window closed at 120: one halving.
        assert.are.same({ 40, 40, 40, 40, 20 }, limits)
        assert.are.same({ 5, 1 }, { lim:stats().dropped,
                                    lim:stats().updates })
      end)
  end)

  describe("call", function()
    local DROPS = { timeout = true, unavailable = true, overloaded = true }

    it("passes fn's values through and counts a success", function()
      local lim = al.new()
      assert.are.same({ 1, nil, 3 }, { lim:call(function(a, b, c)
        return a, b, c end, 1, nil, 3) })
      assert.are.same({ 1, 0, 0 }, { lim:stats().successes,
                                     lim:stats().dropped,
                                     lim:stats().in_flight })
    end)

    for _, kind in ipairs { "timeout", "unavailable", "overloaded",
                            "not_found", "bad_request" } do
      it("counts nil, " .. kind .. " as "
         .. (DROPS[kind] and "a drop" or "a success"), function()
        local lim = al.new()
        local r, err = lim:call(function()
          return nil, sprun.error(kind, "x") end)
        assert.is_nil(r)
        assert.are.equal(kind, sprun.error_kind(err))
        local s = lim:stats()
        assert.are.same(DROPS[kind] and { 0, 1 } or { 1, 0 },
                        { s.successes, s.dropped })
        assert.are.equal(DROPS[kind] and 18 or 20, s.estimated_limit)
      end)
    end

    it("counts a plain string kind and false, kind as the kind says",
      function()
        local lim = al.new()
        lim:call(function() return false, "timeout" end)
        lim:call(function() return nil, "timeout" end)
        assert.are.equal(2, lim:stats().dropped)
      end)

    it("ignores a raised error, gives the permit back and raises it again",
      function()
        local lim = al.new()
        local ok, err = pcall(lim.call, lim, function() error("boom", 0) end)
        assert.are.same({ false, "boom" }, { ok, err })
        local s = lim:stats()
        assert.are.same({ 0, 1, 0, 0 },
                        { s.in_flight, s.ignored, s.successes, s.updates })
      end)

    it("does not call fn past the limit", function()
      local lim = al.new { initial_limit = 1 }
      local p = assert(lim:acquire())
      local called = false
      local r, err = lim:call(function() called = true end)
      assert.is_nil(r)
      assert.is_false(called)
      assert.are.equal("limit_exceeded", sprun.error_kind(err))
      lim:release(p, "ignored")
    end)

    it("gives the permit back when a queue_size function fails", function()
      local lim = al.new { algorithm = "gradient2",
                           queue_size = function() return -1 end }
      assert.has_error(function() lim:call(function() return 1 end) end,
        "adaptive_limit: option 'queue_size' function must return a "
        .. "number >= 0, got -1")
      assert.are.same({ 0, 1 }, { lim:stats().in_flight,
                                  lim:stats().ignored })
    end)
  end)

  --- The simulation ------------------------------------------------------
  -- A dependency that takes 10 ms while at most KNEE = 20 calls are in
  -- it, and 2 ms more for each call past that (its throughput falls past
  -- the knee: 20 calls in 10 ms, 40 in 50 ms). 200 client tasks call it
  -- through the limit in a loop for RUN_MS of virtual time; a refused
  -- client waits 20 ms and tries again. Measured over the second half:
  -- the limit every 10 ms, the calls completed (throughput), those within
  -- a 100 ms deadline (goodput), and their latency.
  describe("the simulation", function()
    local KNEE, BASE_MS, SLOPE_MS = 20, 10, 2
    local CLIENTS, BACKOFF_MS, DEADLINE_MS = 200, 20, 100

    local function percentile(sorted, q)
      return sorted[math.max(1, math.ceil(#sorted * q))]
    end

    local function simulate(opts, run_ms)
      return h.vrun(function()
        local lim = al.new(opts)
        local in_dep = 0
        local function dependency()
          in_dep = in_dep + 1
          sprun.sleep(BASE_MS + SLOPE_MS * math.max(0, in_dep - KNEE))
          in_dep = in_dep - 1
          return true
        end
        local start = sprun.now()
        local stop, from = start + run_ms, start + run_ms / 2
        local latencies, good = {}, 0
        local function client()
          while sprun.now() < stop do
            local t0 = sprun.now()
            if lim:call(dependency) then
              if t0 >= from then
                local ms = sprun.now() - t0
                latencies[#latencies + 1] = ms
                if ms <= DEADLINE_MS then good = good + 1 end
              end
            else
              sprun.sleep(BACKOFF_MS)
            end
          end
        end
        local tasks = {}
        for i = 1, CLIENTS do tasks[i] = sprun.spawn(client) end
        local limits = {}
        while sprun.now() < stop do
          sprun.sleep(10)
          if sprun.now() >= from then
            limits[#limits + 1] = lim:stats().estimated_limit
          end
        end
        for i = 1, #tasks do tasks[i]:await() end
        local sum, lo, hi = 0, math.huge, -math.huge
        for i = 1, #limits do
          sum = sum + limits[i]
          lo, hi = math.min(lo, limits[i]), math.max(hi, limits[i])
        end
        table.sort(latencies)
        local secs = (stop - from) / 1000
        return {
          avg = sum / #limits, lo = lo, hi = hi,
          -- the average over the last fifth (the drift test below)
          last = (function()
            local s, n = 0, 0
            for i = math.floor(#limits * 0.8) + 1, #limits do
              s, n = s + limits[i], n + 1
            end
            return s / n
          end)(),
          throughput = #latencies / secs, goodput = good / secs,
          p50 = percentile(latencies, 0.5), p99 = percentile(latencies, 0.99),
          stats = lim:stats(),
        }
      end)
    end

    local function show(name, f)
      io.write(string.format(
        "# %-24s limit avg %5.1f (min %5.1f, max %5.1f)  throughput %4.0f/s"
        .. "  goodput %4.0f/s  p50 %3d ms  p99 %3d ms\n", name, f.avg, f.lo,
        f.hi, f.throughput, f.goodput, f.p50, f.p99))
    end

    local RUN_MS = 10000
    local fixed

    setup(function()
      fixed = simulate({ min_limit = 200, max_limit = 200,
                         initial_limit = 200 }, RUN_MS)
      show("fixed limit 200", fixed)
    end)

    it("the model: a fixed limit of 200 lets all 200 clients in, at "
       .. "10 + 2 x 180 = 370 ms each", function()
      assert.are.same({ 200, 370, 370, 0 },
                      { fixed.avg, fixed.p50, fixed.p99, fixed.goodput })
      -- 200 calls per 370 ms.
      assert.is_true(math.abs(fixed.throughput - 200 / 0.370) < 5,
                     fixed.throughput)
    end)

    for _, case in ipairs {
      { "aimd", { algorithm = "aimd", timeout_ms = 2 * BASE_MS } },
      { "aimd, window_ms 100", { algorithm = "aimd", timeout_ms = 2 * BASE_MS,
                                 window_ms = 100 }, stable = true },
      { "gradient2", { algorithm = "gradient2" } },
      { "gradient2, window_ms 100", { algorithm = "gradient2",
                                      window_ms = 100 }, stable = true },
    } do
      local name, opts = case[1], case[2]
      it(name .. " starting at 5 converges near the knee and beats the "
         .. "fixed limit", function()
        opts.initial_limit = 5
        local f = simulate(opts, RUN_MS)
        show(name, f)
        -- Never moving (5), pinned at min_limit (1) or run to max_limit
        -- (200) all fail this.
        assert.is_true(f.avg >= 0.5 * KNEE and f.avg <= 2 * KNEE,
                       "average limit " .. f.avg)
        if case.stable then
          -- With one update per window it holds its place, too.
          assert.is_true(f.lo >= 0.75 * KNEE and f.hi <= 1.5 * KNEE,
                         ("limit between %.1f and %.1f"):format(f.lo, f.hi))
        end
        assert.is_true(f.throughput > 1.2 * fixed.throughput,
                       "throughput " .. f.throughput)
        assert.is_true(f.goodput > 0.9 * f.throughput,
                       "goodput " .. f.goodput)
        assert.is_true(f.p99 < fixed.p50 / 3, "p99 " .. f.p99)
        assert.is_true(f.stats.rejected > 0)
      end)
    end

    it("gradient2's long-term RTT follows a sustained overload up, so its "
       .. "limit creeps past the knee (Netflix's behaviour, at the pace of "
       .. "long_window)", function()
      local f = simulate({ algorithm = "gradient2", window_ms = 100,
                           initial_limit = 5 }, 60000)
      show("gradient2, window, 60 s", f)
      io.write(string.format("# %-24s limit over the last 6 s %5.1f, "
                             .. "long-term RTT %.1f ms\n", "", f.last,
                             f.stats.long_rtt_ms))
      assert.is_true(f.last > 1.5 * KNEE, "last " .. f.last)
      assert.is_true(f.stats.long_rtt_ms > 1.5 * BASE_MS,
                     "long RTT " .. f.stats.long_rtt_ms)
      assert.is_true(f.last < 200)
    end)
  end)
end)
