-- sprun.pipeline and sprun.bulkhead: the fixed order of the stages,
-- per-attempt timeouts, fallbacks, bulkhead limits under 1,000 callers and
-- the retry budget under a dependency that always fails. Timing runs in
-- virtual time.
local sprun = require "sprun"
local sched = require "sprun.sched"
local pipeline = require "sprun.pipeline"
local bulkhead = require "sprun.bulkhead"

local function vrun(fn, ...)
  return sprun.run({ clock = "virtual" }, fn, ...)
end

local function assert_no_handles()
  assert.are.equal(0, sched.last_run.handles)
  assert.is_nil(sched.running())
end

local function fails(kind)
  return function()
    return nil, sprun.error(kind or "unavailable", "down")
  end
end

describe("sprun.pipeline", function()
  after_each(function()
    pipeline._trace = nil
  end)

  it("is a field of sprun, callable and with new", function()
    assert.are.equal(pipeline, sprun.pipeline)
    assert.is_true(pipeline.is_pipeline(sprun.pipeline {}))
    assert.is_true(pipeline.is_pipeline(pipeline.new {}))
    assert.are.equal(bulkhead, sprun.bulkhead)
  end)

  it("runs the stages outermost first: fallback, retry, breaker, bulkhead, "
     .. "timeout", function()
    local trace = {}
    pipeline._trace = function(stage) trace[#trace + 1] = stage end
    local p = sprun.pipeline {
      name = "ordered", timeout_ms = 100,
      retry = { max_attempts = 2, backoff_ms = { 1 } },
      breaker = { failure_threshold = 10 },
      bulkhead = { max_concurrent = 1 },
      fallback = function(err) return "fallback", err end,
    }
    local v = vrun(function()
      return p:execute(fails())
    end)
    assert.are.equal("fallback", v)
    assert.are.same({ "fallback", "retry",
                      "breaker", "bulkhead", "timeout", "call",
                      "breaker", "bulkhead", "timeout", "call" }, trace)
    assert_no_handles()
  end)

  it("leaves out the stages not given", function()
    local trace = {}
    pipeline._trace = function(stage) trace[#trace + 1] = stage end
    local p = sprun.pipeline { bulkhead = { max_concurrent = 2 } }
    assert.are.same({ 7 }, { p:execute(function() return 7 end) })
    assert.are.same({ "bulkhead", "call" }, trace)
    assert.are.same({ 1, 2, 3 }, { sprun.pipeline {}:execute(
      function(...) return ... end, 1, 2, 3) })
  end)

  it("counts each attempt once in the breaker", function()
    local p = sprun.pipeline {
      retry = { max_attempts = 3, backoff_ms = { 1 } },
      breaker = { failure_threshold = 10 },
    }
    vrun(function() return p:execute(fails()) end)
    local s = p:breaker():stats()
    assert.are.equal(3, s.failure_count)
  end)

  it("times out each attempt on its own", function()
    local calls, started = 0, {}
    local p = sprun.pipeline {
      timeout_ms = 50,
      retry = { max_attempts = 3, backoff_ms = { 10 } },
    }
    local v, err = vrun(function()
      local t0 = sprun.now()
      local a, b = p:execute(function()
        calls = calls + 1
        started[#started + 1] = sprun.now() - t0
        sprun.sleep(1000)
        return "late"
      end)
      return a, b, sprun.now() - t0
    end)
    assert.is_nil(v)
    assert.are.equal("timeout", err.kind)
    assert.is_true(err.details.retries_exhausted)
    assert.are.equal(3, err.details.attempts)
    assert.are.equal(3, calls)
    -- 50 ms each, 10 ms between: the attempts start at 0, 60 and 120.
    assert.are.same({ 0, 60, 120 }, started)
    assert_no_handles()
  end)

  it("gives the fallback the final error and the arguments", function()
    local seen
    local e = sprun.error("unavailable", "down")
    local p = sprun.pipeline {
      retry = { max_attempts = 2, backoff_ms = { 0 } },
      fallback = function(err, a, b)
        seen = { err = err, a = a, b = b }
        return "cached", a + b
      end,
    }
    local x, y = vrun(function()
      return p:execute(function() return nil, e end, 1, 2)
    end)
    assert.are.equal("cached", x)
    assert.are.equal(3, y)
    assert.are.equal("unavailable", seen.err.kind)
    assert.is_true(seen.err.details.retries_exhausted)
    assert.are.equal(2, seen.err.details.attempts)
    assert.is_nil(e.details) -- a copy was marked
    assert_no_handles()
  end)

  it("does not call the fallback on success", function()
    local p = sprun.pipeline { fallback = function() return "fb" end }
    assert.are.equal("ok", p:execute(function() return "ok" end))
  end)

  it("returns a raised error as an error object", function()
    local p = sprun.pipeline { retry = { max_attempts = 2, backoff_ms = { 0 },
                                         retriable_errors = "all" } }
    local calls = 0
    local v, err = p:execute(function()
      calls = calls + 1
      error("boom", 0)
    end)
    assert.is_nil(v)
    assert.are.equal("error", err.kind)
    assert.are.equal(2, calls)
  end)

  it("stops when the breaker is open without calling", function()
    local p = sprun.pipeline { breaker = { failure_threshold = 1,
                                           reset_timeout_ms = 60000 } }
    local calls = 0
    local f = function() calls = calls + 1; return nil, "unavailable" end
    p:execute(f)
    local v, err = p:execute(f)
    assert.is_nil(v)
    assert.are.equal("circuit_open", err.kind)
    assert.are.equal(1, calls)
  end)

  it("raises on misuse naming the key path", function()
    local cases = {
      { { retry = { max_attempts = 0 } }, "pipeline.new: option "
        .. "'retry.max_attempts' must be an integer >= 1, got 0" },
      { { retry = { max_atempts = 1 } }, "pipeline.new: unknown option "
        .. "'retry.max_atempts' (did you mean 'retry.max_attempts'?)" },
      { { breaker = { failure_threshold = -3 } }, "pipeline.new: option "
        .. "'breaker.failure_threshold' must be an integer >= 1, got -3" },
      { { bulkhead = { max_concurrent = 0 } }, "pipeline.new: option "
        .. "'bulkhead.max_concurrent' must be an integer >= 1, got 0" },
      { { retry = { budget = { ratio = -1 } } }, "pipeline.new: option "
        .. "'retry.budget.ratio' must be a number >= 0, got -1" },
      { { timout_ms = 5 }, "pipeline.new: unknown option 'timout_ms' "
        .. "(did you mean 'timeout_ms'?)" },
      { 5, "pipeline.new: options must be a table, got 5" },
      { { breaker = "db" }, "pipeline.new: option 'breaker' must be a "
        .. "circuit breaker or a table of options, got \"db\"" },
      { { fallback = 1 }, "pipeline.new: option 'fallback' must be a "
        .. "function, got 1" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(pipeline.new, c[1])
      assert.is_false(ok)
      assert.are.equal(c[2], err)
    end
    assert.has_error(function() sprun.pipeline {}:execute(5) end,
                     "pipeline.execute: fn must be a function, got 5")
  end)

  it("takes breaker and bulkhead objects and retry policies", function()
    local cb = sprun.circuit_breaker.start_link { name = "shared" }
    local bh = bulkhead.new { max_concurrent = 1 }
    local rp = sprun.retry_policy.new { max_attempts = 4, backoff_ms = { 0 } }
    local p = sprun.pipeline { breaker = cb, bulkhead = bh, retry = rp }
    assert.are.equal(cb, p:breaker())
    assert.are.equal(bh, p:bulkhead())
    assert.are.equal(rp, p:retry_policy())
    local _, err = p:execute(fails())
    assert.are.equal(4, err.details.attempts)
  end)
end)

describe("sprun.bulkhead", function()
  it("holds 1,000 callers to max_concurrent and max_queue", function()
    local bh = bulkhead.new { name = "b", max_concurrent = 10,
                              max_queue = 100 }
    local p = sprun.pipeline { bulkhead = bh }
    local in_flight, max_seen, ok, full, order = 0, 0, 0, 0, {}
    vrun(function()
      local tasks = {}
      for i = 1, 1000 do
        tasks[i] = sprun.spawn(function()
          local v, err = p:execute(function()
            in_flight = in_flight + 1
            if in_flight > max_seen then max_seen = in_flight end
            order[#order + 1] = i
            sprun.sleep(10)
            in_flight = in_flight - 1
            return i
          end)
          if v then
            ok = ok + 1
          else
            assert(err.kind == "bulkhead_full", tostring(err))
            full = full + 1
          end
        end)
      end
      for i = 1, 1000 do tasks[i]:await() end
    end)
    assert.are.equal(10, max_seen)
    assert.are.equal(110, ok)
    assert.are.equal(1000 - 10 - 100, full)
    -- The queue is first come, first served.
    for i = 1, 110 do assert.are.equal(i, order[i]) end
    local s = bh:stats()
    assert.are.equal(0, s.in_flight)
    assert.are.equal(0, s.queued)
    assert.are.equal(10, s.max_in_flight)
    assert.are.equal(890, s.rejected_count)
    assert_no_handles()
  end)

  it("gives a slot back when the call raises or its task is cancelled",
     function()
    local bh = bulkhead.new { max_concurrent = 1, max_queue = 2 }
    vrun(function()
      assert.is_false(pcall(bh.call, bh, function() error("x") end))
      assert.are.equal(0, bh:stats().in_flight)
      local holder = sprun.spawn(bh.call, bh, function() sprun.sleep(100) end)
      sprun.sleep(1)
      local waiter = sprun.spawn(bh.call, bh, function() return 1 end)
      local third = sprun.spawn(bh.call, bh, function() return 3 end)
      sprun.sleep(1)
      assert.are.equal(2, bh:stats().queued)
      waiter:cancel()
      holder:await()
      assert.are.equal(3, third:await())
    end)
    assert.are.equal(0, bh:stats().in_flight)
    assert.are.equal(0, bh:stats().queued)
    assert_no_handles()
  end)

  it("refuses a queued call after max_wait_ms, to the millisecond, and "
     .. "keeps the queue's order for the others", function()
    local bh = bulkhead.new { name = "w", max_concurrent = 1, max_queue = 3,
                              max_wait_ms = 50 }
    local got = {}
    vrun(function()
      local t0 = sprun.now()
      local holder = sprun.spawn(bh.call, bh, function() sprun.sleep(80) end)
      sprun.sleep(0)
      local waiters = {}
      local queue_at = { 0, 40, 60 }
      for i = 1, 3 do
        waiters[i] = sprun.spawn(function()
          sprun.sleep(queue_at[i])
          local v, err = bh:call(function()
            got[#got + 1] = { i, sprun.now() - t0 }
            sprun.sleep(10)
            return i
          end)
          return v or err
        end)
      end
      holder:await()
      local r1 = waiters[1]:await()
      assert.are.equal("bulkhead_full", sprun.error_kind(r1))
      assert.are.equal(50, r1.details.waited_ms)
      -- Waiter 2 queued at 40, got the slot at 80; waiter 3 (at 60) got
      -- it at 90, within its 50 ms.
      assert.are.same({ 2, 3 }, { waiters[2]:await(), waiters[3]:await() })
    end)
    assert.are.same({ { 2, 80 }, { 3, 90 } }, got)
    local st = bh:stats()
    assert.are.same({ 1, 1, 0, 0, 50 }, { st.timed_out_count,
      st.rejected_count, st.in_flight, st.queued, st.max_wait_ms })
    assert_no_handles()
    local ok, err = pcall(bulkhead.new, { max_wait_ms = -1 })
    assert.is_false(ok)
    assert.matches("bulkhead.new: option 'max_wait_ms' must be a number "
                   .. ">= 0", err, 1, true)
  end)

  it("settles a call cancelled in its bulkhead queue with its breaker",
     function()
    local p = sprun.pipeline { name = "q", breaker = { failure_threshold = 5 },
                               bulkhead = { max_concurrent = 1,
                                            max_queue = 2 } }
    local results = {}
    vrun(function()
      local holder = sprun.spawn(p.execute, p, function()
        sprun.sleep(100)
        return "held"
      end)
      sprun.sleep(1)
      local waiter = sprun.spawn(p.execute, p, function() return "never" end)
      local third = sprun.spawn(p.execute, p, function() return "third" end)
      sprun.sleep(1)
      assert.are.equal(2, p:bulkhead():stats().queued)
      waiter:cancel()
      results = { holder:await(), third:await(), waiter:status() }
    end)
    assert_no_handles()
    assert.are.same({ "held", "third", "cancelled" }, results)
    local bs = p:bulkhead():stats()
    assert.are.same({ 0, 0 }, { bs.in_flight, bs.queued })
    -- Every admitted call was settled: 2 successes, and the cancelled one
    -- given back uncounted (a cancellation says nothing of the dependency).
    local st = p:breaker():stats()
    assert.are.same({ "closed", 2, 0 },
                    { st.state, st.total_successes, st.total_failures })
  end)

  it("rejects outside a task instead of queueing", function()
    local bh = bulkhead.new { max_concurrent = 1 }
    assert.are.equal(5, bh:call(function() return 5 end))
  end)

  it("does not count bulkhead_full as a failure of its breaker", function()
    local p = sprun.pipeline { breaker = { failure_threshold = 1 },
                               bulkhead = { max_concurrent = 1 } }
    vrun(function()
      local t = sprun.spawn(p.execute, p, function() sprun.sleep(10) end)
      sprun.sleep(1)
      local _, err = p:execute(function() end)
      assert.are.equal("bulkhead_full", err.kind)
      t:await()
    end)
    assert.are.equal("closed", p:breaker():state())
  end)
end)

describe("retry budget", function()
  it("keeps retries within ratio (+ the minimum) of 10,000 failing calls",
     function()
    local p = sprun.pipeline {
      name = "budgeted",
      retry = { max_attempts = 5, backoff_ms = { 0 },
                budget = { ratio = 0.2, min_retries_per_s = 3 } },
    }
    local calls, refused = 0, 0
    local e = sprun.error("unavailable", "down")
    vrun(function()
      for _ = 1, 10000 do
        local _, err = p:execute(function()
          calls = calls + 1
          return nil, e
        end)
        if err.details.budget_exhausted then
          refused = refused + 1
        end
      end
    end)
    local retries = calls - 10000
    -- The window is 10 s; virtual time never moved.
    assert.is_true(retries <= 0.2 * 10000 + 3 * 10, "retries: " .. retries)
    assert.is_true(retries >= 0.2 * 10000 - 1, "retries: " .. retries)
    assert.is_true(refused > 9000)
    assert.is_nil(e.details) -- never marked in place
    local s = p:stats().budget
    assert.are.equal(10000, s.first_attempts)
    assert.are.equal(retries, s.retries)
    assert_no_handles()
  end)

  it("lets retries through again as the window moves on", function()
    local p = sprun.pipeline {
      retry = { max_attempts = 2, backoff_ms = { 0 },
                budget = { ratio = 0, min_retries_per_s = 1, ttl_ms = 1000 } },
    }
    local calls = 0
    local f = function() calls = calls + 1; return nil, "unavailable" end
    vrun(function()
      p:execute(f)                   -- 2 calls: the reserve of 1 retry
      p:execute(f)                   -- 1 call: refused
      sprun.sleep(1100)
      p:execute(f)                   -- 2 calls again
    end)
    assert.are.equal(5, calls)
  end)
end)

describe("pipeline hedge and adaptive_limit stages", function()
  it("hedges each attempt after delay_ms: the first success wins, the "
     .. "loser is cancelled, both went through the breaker", function()
    local n, stopped = 0, nil
    local p = sprun.pipeline { name = "hp",
      hedge = { delay_ms = 50, max_hedges = 1 },
      breaker = { failure_threshold = 10 } }
    local v, at = vrun(function()
      local t0 = sprun.now()
      local r = p:execute(function()
        n = n + 1
        local me = n
        if not pcall(sprun.sleep, me == 1 and 500 or 10) then
          stopped = sprun.now() - t0
          error("not reached", 0)
        end
        return "attempt " .. me
      end)
      return r, sprun.now() - t0
    end)
    assert.are.same({ "attempt 2", 60, 60 }, { v, at, stopped })
    local s = p:stats()
    assert.are.same({ 50, 1 }, { s.hedge.delay_ms, s.hedge.max_hedges })
    assert.are.equal(1, s.breaker.total_successes)
    assert_no_handles()
  end)

  it("draws its hedges on the pipeline's retry budget", function()
    local n = 0
    local p = sprun.pipeline { name = "hb",
      hedge = { delay_ms = 10, max_hedges = 3 },
      retry = { max_attempts = 1,
                budget = { ratio = 0, min_retries_per_s = 0 } } }
    local v = vrun(function()
      return p:execute(function() n = n + 1 sprun.sleep(100) return n end)
    end)
    assert.are.same({ 1, 1 }, { v, n })
    -- Refused once: no more hedges are asked for after that.
    assert.are.equal(1, p:stats().budget.refused)
  end)

  it("refuses a call past the adaptive limit before the breaker sees it",
    function()
    local p = sprun.pipeline { name = "al",
      adaptive_limit = { min_limit = 1, max_limit = 1, initial_limit = 1 },
      breaker = { failure_threshold = 1 } }
    local errs = {}
    vrun(function()
      local a = sprun.spawn(function()
        return p:execute(function() sprun.sleep(50) return "a" end)
      end)
      sprun.sleep(1)
      local _, err = p:execute(function() return "b" end)
      errs[1] = err
      assert.are.equal("a", a:await())
    end)
    assert.are.equal("limit_exceeded", sprun.error_kind(errs[1]))
    local s = p:stats()
    assert.are.same({ "closed", 1, 1, 1 }, { s.breaker.state,
      s.adaptive_limit.rejected, s.adaptive_limit.successes,
      s.breaker.total_successes })
  end)

  it("names what is wrong in the stages' options", function()
    local function msg(o)
      local ok, e = pcall(sprun.pipeline, o)
      assert.is_false(ok)
      return e
    end
    assert.matches("pipeline.new: option 'hedge' must be a table of options "
                   .. "(delay_ms, max_hedges, hedge_on), got 5",
                   msg { hedge = 5 }, 1, true)
    assert.matches("option 'hedge.delay_ms' must be a number >= 0, got nil",
                   msg { hedge = {} }, 1, true)
    assert.matches("option 'hedge.max_hedges' must be an integer >= 1",
                   msg { hedge = { delay_ms = 1, max_hedges = 0 } }, 1, true)
    assert.matches("option 'adaptive_limit' must be an adaptive limit or a "
                   .. "table of options, got \"x\"",
                   msg { adaptive_limit = "x" }, 1, true)
    assert.matches("option 'adaptive_limit.algorithm'",
                   msg { adaptive_limit = { algorithm = "vegas" } }, 1, true)
  end)
end)

describe("pipeline rate_limit stage", function()
  it("refuses an attempt past the rate at once, or lets it wait up to "
     .. "max_wait_ms for its slot", function()
    local now_p = sprun.pipeline { name = "rl",
      rate_limit = { rate = 2, per_ms = 1000 },
      breaker = { failure_threshold = 1 } }
    local wait_p = sprun.pipeline { name = "rw",
      rate_limit = { rate = 10, per_ms = 1000, burst = 1, max_wait_ms = 150 } }
    local got = {}
    vrun(function()
      local t0 = sprun.now()
      for i = 1, 3 do got[i] = { now_p:execute(function() return i end) } end
      for i = 1, 3 do
        local v, err = wait_p:execute(function() return i end)
        got[#got + 1] = { v or sprun.error_kind(err), sprun.now() - t0 }
      end
    end)
    assert.are.same({ 1 }, got[1])
    assert.are.same({ 2 }, got[2])
    assert.is_nil(got[3][1])
    assert.are.equal("rate_limited", sprun.error_kind(got[3][2]))
    assert.are.equal(500, got[3][2].details.retry_after_ms)
    -- One slot per 100 ms, burst 1: at 0, then a wait of 100, then 100.
    assert.are.same({ { 1, 0 }, { 2, 100 }, { 3, 200 } },
                    { got[4], got[5], got[6] })
    local s = now_p:stats()
    assert.are.same({ "closed", 2, 1 }, { s.breaker.state,
      s.rate_limit.taken, s.rate_limit.rejected })
  end)

  it("names what is wrong in its options", function()
    local function msg(o)
      local ok, e = pcall(sprun.pipeline, o)
      assert.is_false(ok)
      return e
    end
    assert.matches("option 'rate_limit' must be a rate limiter or a table "
                   .. "of options, got 3", msg { rate_limit = 3 }, 1, true)
    assert.matches("option 'rate_limit.max_wait_ms' must be a number >= 0, "
                   .. "got -1", msg { rate_limit = { rate = 1,
                                                     max_wait_ms = -1 } },
                   1, true)
    assert.matches("option 'rate_limit.rate'",
                   msg { rate_limit = { rate = 0 } }, 1, true)
  end)
end)
