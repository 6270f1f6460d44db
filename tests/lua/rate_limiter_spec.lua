-- sprun.rate_limiter: take() at literal times through the C core (a clock
-- the spec sets), wait() under virtual time (exact wake times, first come
-- first served, timeouts and deadlines, a cancelled waiter giving its slot
-- back), keyed limiters (full keys dropped first, then the least recently
-- used evicted, memory bounded), set_rate, telemetry, and a take() that
-- allocates nothing.
local sprun = require "sprun"
local sp = require "sprun.ffi"
local h = require "helpers"
local telemetry = require "sprun.telemetry"

local ffi = sp.ffi
local rl = sprun.rate_limiter
local vrun = h.vrun
local ex = sprun.executor

-- A limiter on a clock the spec sets: t.now.
local function at(opts, make)
  local t = { now = 0 }
  opts.clock = function() return t.now end
  return (make or rl.new)(opts), t
end

-- The admissions of one take a ms over [from, to).
local function admitted_each_ms(lim, t, from, to)
  local n = 0
  for ms = from, to - 1 do
    t.now = ms
    if lim:take() then n = n + 1 end
  end
  return n
end

describe("rate_limiter", function()
  it("is sprun.rate_limiter, loaded on first use", function()
    assert.are.equal(require "sprun.rate_limiter", sprun.rate_limiter)
    assert.is_true(rl.is_rate_limiter(rl.new { rate = 1 }))
    assert.is_true(rl.is_rate_limiter(rl.keyed { rate = 1 }))
    assert.is_false(rl.is_rate_limiter({}))
  end)

  it("lays sp_rate_t out as the C compiler does (all 8-byte fields)",
    function()
    -- tests/c/test-rate.c's rate_layout pins the same figures on the C side.
    assert.are.same({ 24, 136, 24, 80, 128 },
      { ffi.sizeof("sp_rate_state_t"), ffi.sizeof("sp_rate_t"),
        ffi.sizeof("sp_rate_config_t"), ffi.offsetof("sp_rate_t", "state"),
        ffi.offsetof("sp_rate_t", "seq_") })
  end)

  describe("take at literal times", function()
    it("admits the burst, then one per interval, retry_after exact to the "
       .. "ms", function()
      local lim, t = at { name = "api", rate = 10 }
      t.now = 5000
      for _ = 1, 10 do assert.is_true(lim:take()) end
      assert.are.same({ false, 100 }, { lim:take() })
      t.now = 5099
      assert.are.same({ false, 1 }, { lim:take() })
      t.now = 5100
      assert.are.same({ true }, { lim:take() })
      assert.are.same({ false, 300 }, { lim:take(3) })
      t.now = 5400
      assert.is_true(lim:take(3))
      local s = lim:stats()
      assert.are.same({ name = "api", rate = 10, per_ms = 1000, burst = 10,
        taken = 12, rejected = 3, waited = 0, timed_out = 0, given_back = 0,
        cancelled = 0, waiting = 0, available = 0 }, s)
      t.now = 6399
      assert.are.equal(9, lim:stats().available)
      t.now = 6400
      assert.are.equal(10, lim:stats().available)
    end)

    it("keeps 3 per second exact: 334, 667, 1000 ms, and 10,802 takes in "
       .. "an hour", function()
      local lim, t = at { rate = 3 }
      for _ = 1, 3 do assert.is_true(lim:take()) end
      local times = {}
      for ms = 1, 3000 do
        t.now = ms
        if lim:take() then times[#times + 1] = ms end
      end
      assert.are.same({ 334, 667, 1000, 1334, 1667, 2000, 2334, 2667, 3000 },
                      times)
      lim, t = at { rate = 3 }
      assert.are.equal(3 + 3 * 3600 - 1,
                       admitted_each_ms(lim, t, 0, 3600000))
    end)

    it("defaults burst to the rate rounded up; per_ms sets the period",
      function()
      local lim, t = at { rate = 2.5 }
      assert.are.equal(3, lim:stats().burst)
      for _ = 1, 3 do assert.is_true(lim:take()) end
      -- 2.5 per second: one every 400 ms.
      assert.are.same({ false, 400 }, { lim:take() })
      lim, t = at { rate = 1, per_ms = 60000, burst = 2 }
      assert.is_true(lim:take(2))
      t.now = 59999
      assert.are.same({ false, 1 }, { lim:take() })
      t.now = 60000
      assert.is_true(lim:take())
    end)

    it("refuses n above the burst for ever, taking nothing", function()
      local lim = at { rate = 10, burst = 4 }
      assert.are.same({ false, math.huge }, { lim:take(5) })
      assert.is_true(lim:take(4))
      assert.are.same({ taken = 1, rejected = 1 },
        { taken = lim:stats().taken, rejected = lim:stats().rejected })
    end)

    it("takes a time earlier than one seen as that one", function()
      local lim, t = at { rate = 10, burst = 1 }
      t.now = 1000
      assert.is_true(lim:take())
      t.now = 0
      assert.are.same({ false, 100 }, { lim:take() })
    end)

    it("reads the loop's clock when no clock is given", function()
      vrun(function()
        local lim = rl.new { rate = 10, burst = 1 }
        assert.is_true(lim:take())
        assert.are.same({ false, 100 }, { lim:take() })
        sprun.sleep(60)
        assert.are.same({ false, 40 }, { lim:take() })
        sprun.sleep(40)
        assert.is_true(lim:take())
      end)
    end)
  end)

  describe("set_rate", function()
    it("keeps the calls already taken, under the new rate and burst",
      function()
      local lim, t = at { rate = 10 }
      assert.is_true(lim:take(6))
      lim:set_rate(20, 20)
      assert.are.same({ 20, 20, 14 }, { lim:stats().rate,
        lim:stats().burst, lim:stats().available })
      -- 6 taken, burst 5: a take of 1 waits two intervals of 200 ms.
      lim:set_rate(5, 5)
      assert.are.same({ false, 400 }, { lim:take() })
      t.now = 400
      assert.is_true(lim:take())
    end)

    it("keeps the burst when only the rate is given", function()
      local lim = at { rate = 10, burst = 2 }
      lim:set_rate(100)
      assert.are.same({ 100, 2 }, { lim:stats().rate, lim:stats().burst })
      assert.is_true(lim:take(2))
      assert.are.same({ false, 10 }, { lim:take() })
    end)
  end)

  describe("wait, in virtual time", function()
    it("wakes each waiter at its slot, first come first served", function()
      local woke = {}
      vrun(function()
        local lim = rl.new { rate = 10, burst = 1 }
        local t0 = sprun.now()
        assert.is_true(lim:take())
        local tasks = {}
        for i = 1, 4 do
          tasks[i] = sprun.spawn(function()
            assert.is_true(lim:wait(i == 3 and 1 or nil))
            woke[#woke + 1] = { i, sprun.now() - t0 }
          end)
        end
        for i = 1, 4 do tasks[i]:await() end
        local s = lim:stats()
        assert.are.same({ 4, 0 }, { s.waited, s.waiting })
      end)
      assert.are.same({ { 1, 100 }, { 2, 200 }, { 3, 300 }, { 4, 400 } },
                      woke)
    end)

    it("serves waiters of n calls in order: a take cannot pass them",
      function()
      local log = {}
      vrun(function()
        local lim = rl.new { rate = 10, burst = 3 }
        local t0 = sprun.now()
        assert.is_true(lim:take(3))
        local a = sprun.spawn(function()
          lim:wait(3)
          log[#log + 1] = { "a", sprun.now() - t0 }
        end)
        local b = sprun.spawn(function()
          lim:wait(1)
          log[#log + 1] = { "b", sprun.now() - t0 }
        end)
        sprun.sleep(10)
        -- a's 3 are due at 300 and b's 1 at 400: a take of 1 is due after
        -- them, at 500.
        assert.are.same({ false, 490 }, { lim:take() })
        a:await()
        b:await()
      end)
      assert.are.same({ { "a", 300 }, { "b", 400 } }, log)
    end)

    it("returns at once when the slot is now, without sleeping", function()
      vrun(function()
        local lim = rl.new { rate = 10, burst = 2 }
        local t0 = sprun.now()
        -- Runs as soon as this task yields: a wait that slept would let it.
        local other = false
        local t = sprun.spawn(function() other = true end)
        assert.is_true(lim:wait())
        assert.is_true(lim:wait())
        assert.is_false(other)
        t:await()
        assert.are.equal(0, sprun.now() - t0)
        assert.are.equal(2, lim:stats().waited)
      end)
    end)

    it("refuses a slot further than timeout_ms, reserving nothing",
      function()
      vrun(function()
        local lim = rl.new { name = "api", rate = 10, burst = 1 }
        local t0 = sprun.now()
        assert.is_true(lim:take())
        local ok, err = lim:wait(1, 99)
        assert.is_nil(ok)
        assert.are.equal("rate_limited", sprun.error_kind(err))
        assert.are.equal("rate_limited: rate limiter 'api': the slot is 100 "
                         .. "ms away, past the 99 ms allowed", tostring(err))
        assert.are.same({ name = "api", retry_after_ms = 100,
                          timeout_ms = 99 }, err.details)
        -- Nothing reserved: the same slot is there for the next waiter.
        assert.is_true(lim:wait(1, 100))
        assert.are.equal(100, sprun.now() - t0)
        local s = lim:stats()
        assert.are.same({ 1, 1 }, { s.waited, s.timed_out })
      end)
    end)

    it("refuses n above the burst: never admitted", function()
      vrun(function()
        local lim = rl.new { name = "api", rate = 10, burst = 2 }
        local ok, err = lim:wait(3)
        assert.is_nil(ok)
        assert.are.equal("rate_limited: rate limiter 'api': n = 3 is above "
                         .. "the burst (2): never admitted", tostring(err))
        assert.are.equal(math.huge, err.details.retry_after_ms)
        assert.is_true(lim:take(2))
      end)
    end)

    it("is bounded by the task's deadline too", function()
      vrun(function()
        -- One every 200 ms: at 20 ms the slot is 180 ms away, and 80 ms
        -- are left of the deadline.
        local lim = rl.new { rate = 5, burst = 1 }
        assert.is_true(lim:take())
        local ok, err
        ex.execute_with_timeout(function()
          sprun.sleep(20)
          ok, err = lim:wait(1, 1000)
        end, { timeout_ms = 100 })
        assert.is_nil(ok)
        assert.are.same({ retry_after_ms = 180, timeout_ms = 80 },
          { retry_after_ms = err.details.retry_after_ms,
            timeout_ms = err.details.timeout_ms })
        assert.are.same({ 0, 1 },
                        { lim:stats().waited, lim:stats().timed_out })
      end)
    end)

    it("gives the last waiter's slot back when it is cancelled asleep",
      function()
      local woke = {}
      vrun(function()
        local lim = rl.new { rate = 10, burst = 1 }
        local t0 = sprun.now()
        assert.is_true(lim:take())
        local function waiter(name)
          return sprun.spawn(function()
            lim:wait()
            woke[#woke + 1] = { name, sprun.now() - t0 }
          end)
        end
        local a, b = waiter("a"), waiter("b")
        sprun.sleep(50)
        assert.are.equal(2, lim:stats().waiting)
        b:cancel()
        local c = waiter("c")
        a:await()
        c:await()
        assert.are.equal("cancelled", b:status())
        local s = lim:stats()
        assert.are.same({ 3, 1, 1, 0 },
                        { s.waited, s.cancelled, s.given_back, s.waiting })
      end)
      -- c has b's slot, 200, not 300.
      assert.are.same({ { "a", 100 }, { "c", 200 } }, woke)
    end)

    it("keeps the slot of a waiter cancelled with a later one queued",
      function()
      local woke = {}
      vrun(function()
        local lim = rl.new { rate = 10, burst = 1 }
        local t0 = sprun.now()
        assert.is_true(lim:take())
        local function waiter(name)
          return sprun.spawn(function()
            lim:wait()
            woke[#woke + 1] = { name, sprun.now() - t0 }
          end)
        end
        local a, b = waiter("a"), waiter("b")
        sprun.sleep(50)
        a:cancel()
        local c = waiter("c")
        b:await()
        c:await()
        local s = lim:stats()
        assert.are.same({ 1, 0 }, { s.cancelled, s.given_back })
      end)
      -- b keeps 200 (promised), and a's 100 is not given to c: c gets 300.
      assert.are.same({ { "b", 200 }, { "c", 300 } }, woke)
    end)

    it("runs a loop of its own outside a task", function()
      -- One every 50 ms. The clock is whole ms, so the slot is between
      -- 49 and 50 ms of real time after the take.
      local lim = rl.new { rate = 20, burst = 1 }
      assert.is_true(lim:take())
      local t0 = sprun.hrtime()
      assert.is_true(lim:wait())
      local waited_ms = (sprun.hrtime() - t0) / 1e6
      assert.is_true(waited_ms >= 48, waited_ms .. " ms")
      assert.are.equal(1, lim:stats().waited)
      assert.is_nil(require("sprun.sched").running())
    end)
  end)

  describe("keyed", function()
    it("keeps one state per key", function()
      local kl, t = at({ name = "per_ip", rate = 1, burst = 2 }, rl.keyed)
      assert.is_true(kl:take("a", 2))
      assert.are.same({ false, 1000 }, { kl:take("a") })
      assert.is_true(kl:take("b"))
      assert.is_true(kl:take(7))
      t.now = 1000
      assert.is_true(kl:take("a"))
      local s = kl:stats()
      assert.are.same({ 3, 4, 1, 10000 },
                      { s.keys, s.taken, s.rejected, s.max_keys })
    end)

    it("drops the keys whose state is full first, keeping busy ones",
      function()
      local kl, t = at({ rate = 1, burst = 5, max_keys = 3 }, rl.keyed)
      assert.is_true(kl:take("a", 5))   -- full again at 5000
      assert.is_true(kl:take("b"))      -- full again at 1000
      assert.is_true(kl:take("c"))
      t.now = 2000
      assert.is_true(kl:take("d"))
      local s = kl:stats()
      assert.are.same({ 2, 2, 0 }, { s.keys, s.dropped, s.evicted })
      -- "a", least recently used but not full, was kept, exactly: 3 of
      -- its 5 are still in use.
      assert.are.same({ false, 1000 }, { kl:take("a", 3) })
      assert.is_true(kl:take("a", 2))
    end)

    it("evicts the least recently used key when every key is busy",
      function()
      local kl = at({ rate = 1, burst = 1, max_keys = 2 }, rl.keyed)
      assert.is_true(kl:take("x"))
      assert.is_true(kl:take("y"))
      assert.is_false(kl:take("x"))     -- x is now the most recently used
      assert.is_true(kl:take("z"))      -- evicts y
      assert.are.same({ 2, 1, 0 },
        { kl:stats().keys, kl:stats().evicted, kl:stats().dropped })
      assert.is_false(kl:take("x"))
      -- y comes back with a full burst: the documented excess.
      assert.is_true(kl:take("y"))
    end)

    it("holds at most max_keys states for 100,000 keys", function()
      local kl, t = at({ rate = 5, max_keys = 100 }, rl.keyed)
      for i = 1, 1000 do kl:take("warm" .. i) end
      collectgarbage("collect")
      local kb0 = collectgarbage("count")
      -- A key every 3 ms, each full again 200 ms after its take: the 100
      -- slots hold 300 ms of keys, of which the older third are full.
      for i = 1, 100000 do
        t.now = 3 * i
        kl:take("k" .. i)
        assert(kl:stats().keys <= 100)
      end
      collectgarbage("collect")
      local s = kl:stats()
      -- The keys of the last 200 ms are not full, so never dropped; the
      -- slots of dropped keys may be free.
      assert.is_true(s.keys >= 66 and s.keys <= 100, s.keys .. " keys")
      assert.are.equal(100000 + 1000 - s.keys, s.evicted + s.dropped)
      assert.is_true(s.dropped > 0 and s.evicted > 0)
      assert.is_true(collectgarbage("count") - kb0 < 256,
                     collectgarbage("count") - kb0 .. " KB more")
      assert.are.equal(100, kl._cap)
    end)

    it("waits per key in virtual time and gives a cancelled slot back",
      function()
      local woke = {}
      vrun(function()
        local kl = rl.keyed { rate = 10, burst = 1 }
        local t0 = sprun.now()
        local function waiter(key, name)
          return sprun.spawn(function()
            assert.is_true(kl:wait(key, 1, 1000))
            woke[#woke + 1] = { name, sprun.now() - t0 }
          end)
        end
        assert.is_true(kl:take("a"))
        local a1, b1 = waiter("a", "a1"), waiter("b", "b1")
        local a2 = waiter("a", "a2")
        sprun.sleep(10)
        a2:cancel()
        local a3 = waiter("a", "a3")
        a1:await(); b1:await(); a3:await()
        local ok, err = kl:wait("a", 1, 50)
        assert.is_nil(ok)
        assert.are.equal("rate_limited: rate limiter 'rate_limiter' for key "
                         .. '"a": the slot is 100 ms away, past the 50 ms '
                         .. "allowed", tostring(err))
        assert.are.equal("a", err.details.key)
        assert.are.equal(1, kl:stats().given_back)
      end)
      assert.are.same({ { "b1", 0 }, { "a1", 100 }, { "a3", 200 } }, woke)
    end)

    it("set_rate converts every key", function()
      local kl, t = at({ rate = 10, burst = 10 }, rl.keyed)
      assert.is_true(kl:take("a", 6))
      assert.is_true(kl:take("b", 2))
      kl:set_rate(5, 5)
      assert.are.same({ false, 400 }, { kl:take("a") })
      assert.is_true(kl:take("b", 3))
      t.now = 400
      assert.is_true(kl:take("a"))
    end)
  end)

  describe("telemetry", function()
    after_each(function()
      for _, r in ipairs(telemetry.list_handlers({})) do
        telemetry.detach(r.id)
      end
    end)

    it("emits sprun.rate_limiter.rejected on a refusal only, while a "
       .. "handler is attached", function()
      local seen = {}
      local lim = at { name = "api", rate = 10, burst = 1 }
      local kl = at({ name = "per_ip", rate = 10, burst = 1 }, rl.keyed)
      assert.is_nil(telemetry.enabled["sprun.rate_limiter.rejected"])
      assert.is_true(lim:take())
      assert.is_false(lim:take())
      telemetry.attach("rl", { "sprun", "rate_limiter", "rejected" },
        function(event, m, md)
          seen[#seen + 1] = { table.concat(event, "."), m, md }
        end)
      assert.is_false(lim:take())
      assert.is_true(kl:take("1.2.3.4"))
      assert.is_false(kl:take("1.2.3.4"))
      assert.are.same({ false, math.huge }, { lim:take(2) })
      vrun(function()
        local l = rl.new { name = "w", rate = 10, burst = 1 }
        l:take()
        l:wait(1, 10)
      end)
      telemetry.detach("rl")
      assert.is_false(lim:take())
      local E = "sprun.rate_limiter.rejected"
      assert.are.same({
        { E, { retry_after_ms = 100 }, { name = "api" } },
        { E, { retry_after_ms = 100 }, { name = "per_ip", key = "1.2.3.4" } },
        { E, { retry_after_ms = math.huge }, { name = "api" } },
        { E, { retry_after_ms = 100 }, { name = "w" } },
      }, seen)
    end)
  end)

  describe("take()'s hot path", function()
    it("allocates nothing, admitted or refused, keyed or not", function()
      -- The least of two measures after a long warm-up: a trace compiled
      -- during a measure is counted by the collector too.
      local function bytes(f)
        f(20000)
        local best = math.huge
        for _ = 1, 2 do
          collectgarbage("collect")
          collectgarbage("stop")
          local kb0 = collectgarbage("count")
          f(100000)
          best = math.min(best, collectgarbage("count") - kb0)
          collectgarbage("restart")
        end
        return best
      end
      local open = rl.new { rate = 1e9, burst = 1e9, per_ms = 1 }
      local shut = rl.new { rate = 1e-6, burst = 1 }
      shut:take()
      local kl = rl.keyed { rate = 1e9, per_ms = 1 }
      local got = {
        bytes(function(n) local l = open for _ = 1, n do l:take() end end),
        bytes(function(n) local l = shut for _ = 1, n do l:take() end end),
        bytes(function(n)
          local l = kl
          for _ = 1, n do l:take("k") end
        end),
      }
      for i = 1, 3 do
        assert.is_true(got[i] < 4, i .. ": " .. got[i] .. " KB")
      end
      assert.is_false(shut:take())
    end)
  end)
end)
