-- sprun.circuit_breaker: outcomes, states, timing, generations, hooks.
local circuit_breaker = require "sprun.circuit_breaker"
local errors = require "sprun.errors"
local sprun = require "sprun"

-- A breaker driven by a clock the test sets: t.now.
local function breaker(opts)
  local t = { now = 0 }
  opts.name = opts.name or "test"
  opts.clock = function() return t.now end
  return circuit_breaker.start_link(opts), t
end

local function fail() return nil, "boom" end
local function succeed() return "ok" end

describe("circuit_breaker", function()
  describe("start_link", function()
    it("starts closed with the documented defaults", function()
      local cb = circuit_breaker.start_link { name = "python_pool" }
      assert.are.same({
        name = "python_pool", state = "closed", failure_count = 0,
        success_count = 0, failure_threshold = 5, half_open_calls = 0,
        consecutive_failures = 0, consecutive_successes = 0,
        half_open_in_flight = 0,
        reset_timeout_ms = 30000, half_open_max_calls = 1, opened_at_ms = 0,
        rejected_count = 0, total_successes = 0, total_failures = 0,
        ignored_count = 0,
      }, cb:stats())
      assert.are.equal("python_pool", cb:name())
    end)

    it("keeps the options given", function()
      local cb = breaker { failure_threshold = 7, reset_timeout_ms = 250,
                           half_open_max_calls = 3 }
      local s = cb:stats()
      assert.are.same({ 7, 250, 3 }, { s.failure_threshold,
        s.reset_timeout_ms, s.half_open_max_calls })
    end)

    it("gives separate breakers separate state", function()
      local a = breaker { failure_threshold = 1 }
      local b = breaker { failure_threshold = 1 }
      a:call(fail)
      assert.are.same({ "open", "closed" }, { a:state(), b:state() })
    end)
  end)

  describe("call on a closed breaker", function()
    it("returns every value of a success, nils in the middle included",
      function()
        local cb = breaker {}
        local n = select("#", cb:call(function() return 1, nil, 3, nil end))
        assert.are.equal(4, n)
        local a, b, c, d = cb:call(function() return 1, nil, 3, nil end)
        assert.are.same({ 1, nil, 3, nil }, { a, b, c, d })
        assert.are.equal(0, select("#", cb:call(function() end)))
      end)

    it("passes its extra arguments to the operation, nils included",
      function()
        local cb = breaker {}
        local n, a, b, c = cb:call(function(...)
          return select("#", ...), ...
        end, 1, nil, "three")
        assert.are.same({ 3, 1, nil, "three" }, { n, a, b, c })
      end)

    it("returns a failure by return unchanged and counts it", function()
      local cb = breaker {}
      local e = errors.error("timeout", "slow")
      local r, err, extra = cb:call(function() return nil, e, "x" end)
      assert.are.equal(nil, r)
      assert.are.equal(e, err)
      assert.are.equal("x", extra)
      local r2, err2 = cb:call(function() return false, "bad" end)
      assert.are.same({ false, "bad" }, { r2, err2 })
      assert.are.equal(2, cb:stats().failure_count)
    end)

    it("counts nil or false without an error as a success", function()
      local cb = breaker {}
      assert.are.equal(nil, cb:call(function() return nil end))
      assert.are.equal(false, cb:call(function() return false end))
      assert.are.equal(false, cb:call(function() return false, nil end))
      local s = cb:stats()
      assert.are.same({ 0, 3 }, { s.failure_count, s.success_count })
    end)

    it("re-raises the same error value and counts a failure", function()
      local cb = breaker {}
      local e = { code = 42 }
      local ok, got = pcall(cb.call, cb, function() error(e) end)
      assert.is_false(ok)
      assert.are.equal(e, got)
      ok, got = pcall(cb.call, cb, function() error("plain", 0) end)
      assert.are.same({ false, "plain" }, { ok, got })
      assert.are.equal(2, cb:stats().failure_count)
    end)

    it("prepends no position of its own to a raised string", function()
      local cb = breaker {}
      local function op() error("boom") end
      local _, direct = pcall(op)
      local _, through = pcall(cb.call, cb, op)
      assert.are.equal(direct, through)
    end)

    it("opens after failure_threshold consecutive failures", function()
      local cb, t = breaker { failure_threshold = 3 }
      t.now = 1000
      cb:call(fail)
      cb:call(fail)
      assert.are.equal("closed", cb:state())
      cb:call(fail)
      local s = cb:stats()
      assert.are.same({ "open", 3, 1000 },
                      { s.state, s.failure_count, s.opened_at_ms })
    end)

    it("starts counting again after a success", function()
      local cb = breaker { failure_threshold = 3 }
      cb:call(fail)
      cb:call(fail)
      cb:call(succeed)
      assert.are.equal(0, cb:stats().consecutive_failures)
      -- Snakepit's failure_count counts every failure since it closed.
      assert.are.equal(2, cb:stats().failure_count)
      cb:call(fail)
      cb:call(fail)
      assert.are.equal("closed", cb:state())
      cb:call(fail)
      assert.are.equal("open", cb:state())
    end)

    it("opens on the first failure with failure_threshold 1", function()
      local cb = breaker { failure_threshold = 1 }
      cb:call(succeed)
      assert.are.equal("closed", cb:state())
      cb:call(fail)
      assert.are.equal("open", cb:state())
    end)
  end)

  describe("call on an open breaker", function()
    it("rejects without running the operation", function()
      local cb = breaker { failure_threshold = 1 }
      cb:call(fail)
      local ran = 0
      local r, err = cb:call(function() ran = ran + 1 end)
      assert.are.equal(nil, r)
      assert.are.equal(0, ran)
      assert.are.equal("circuit_open", err.kind)
      assert.are.equal("circuit_open", errors.kind(err))
      assert.is_true(errors.is_error(err))
      assert.are.equal("circuit_open: circuit breaker 'test' is open",
                       tostring(err))
      assert.are.same({ name = "test" }, err.details)
    end)

    it("returns the same error object at every rejection", function()
      local cb = breaker { failure_threshold = 1 }
      cb:call(fail)
      local _, e1 = cb:call(succeed)
      local _, e2 = cb:call(succeed)
      assert.are.equal(e1, e2)
      assert.are.equal(2, cb:stats().rejected_count)
    end)

    it("turns half-open reset_timeout_ms after it opened, not before",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 500 }
        t.now = 1000
        cb:call(fail)
        t.now = 1499
        assert.are.equal("open", cb:state())
        assert.is_false(cb:allow())
        t.now = 1500
        assert.are.equal("half_open", cb:state())
      end)

    it("measures the timeout from opening, whatever was rejected since",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 100 }
        cb:call(fail)
        for now = 10, 90, 10 do
          t.now = now
          assert.are.equal(nil, (cb:call(succeed)))
        end
        t.now = 100
        assert.are.equal("ok", cb:call(succeed))
        assert.are.equal("closed", cb:state())
      end)
  end)

  -- call() admits and records in Lua, without the C state machine, in two
  -- cases of consecutive mode: a closed breaker's successes and an open
  -- breaker's rejections. These pin what they must do as C would.
  describe("call's fast paths", function()
    it("admit under a closed breaker only while it is closed", function()
      local cb = breaker { failure_threshold = 2 }
      assert.are.equal("ok", cb:call(succeed))
      cb:call(fail)
      assert.are.same({ "closed", 1, 0 }, { cb:state(),
        cb:stats().consecutive_failures, cb:stats().consecutive_successes })
      assert.are.equal("ok", cb:call(succeed))
      local s = cb:stats()
      assert.are.same({ 0, 1, 2, 1, 1, 2 }, {
        s.consecutive_failures, s.consecutive_successes, s.total_successes,
        s.total_failures, s.failure_count, s.success_count })
    end)

    it("saturate the counters as C does", function()
      local cb = breaker {}
      local b = cb._b
      b.success_count = 0xffffffff
      b.total_successes = 0xffffffffffffffffULL
      cb:call(succeed)
      assert.are.equal(0xffffffff, b.success_count)
      assert.is_true(b.total_successes == 0xffffffffffffffffULL)
      b.success_count = 0xfffffffe
      cb:call(succeed)
      assert.are.equal(0xffffffff, b.success_count)

      local open = breaker { failure_threshold = 1, reset_timeout_ms = 100 }
      open:call(fail)
      open._b.rejected_count = 0xffffffffffffffffULL
      assert.are.equal(nil, (open:call(succeed)))
      assert.is_true(open._b.rejected_count == 0xffffffffffffffffULL)
    end)

    it("count a late success as ignored, not as a success", function()
      local cb = breaker { failure_threshold = 1 }
      local r = cb:call(function()
        cb:record_failure() -- opens it: this call is now late
        return "late"
      end)
      assert.are.equal("late", r)
      local st = cb:stats()
      assert.are.same({ "open", 1, 0 },
                      { st.state, st.ignored_count, st.total_successes })
    end)

    it("reject with a fractional clock exactly as the C breaker would",
      function()
        -- C takes the time in whole ms: 1099.9 is 1099, still inside the
        -- 100 ms reset timeout of a breaker opened at 1000.
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 100 }
        t.now = 1000.5
        cb:call(fail)
        assert.are.equal(1000, tonumber(cb._b.opened_at_ms))
        t.now = 1099.9
        assert.are.equal(nil, (cb:call(succeed)))
        assert.are.equal(1, cb:stats().rejected_count)
        t.now = 1100
        assert.are.equal("ok", cb:call(succeed))
      end)

    it("reject while the clock is back before the opening", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 100 }
      t.now = 5000
      cb:call(fail)
      t.now = 10
      assert.are.equal(nil, (cb:call(succeed)))
      assert.are.same({ "open", 1 },
                      { cb:state(), cb:stats().rejected_count })
    end)

    it("find call on the breaker itself and check self as before", function()
      local cb = breaker {}
      assert.are.equal(circuit_breaker.call, cb.call)
      assert.has_error(function() circuit_breaker.call({}, succeed) end,
        "circuit_breaker.call: self must be a circuit breaker, got table")
      assert.has_error(function() circuit_breaker.call(5, succeed) end,
        "circuit_breaker.call: self must be a circuit breaker, got 5")
    end)
  end)

  describe("half-open", function()
    it("closes after one successful probe by default", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10 }
      cb:call(fail)
      t.now = 10
      assert.are.equal("ok", cb:call(succeed))
      local s = cb:stats()
      assert.are.same({ "closed", 0, 0 },
                      { s.state, s.failure_count, s.half_open_calls })
    end)

    it("re-opens on a failed probe and restarts the timeout", function()
      local cb, t = breaker { failure_threshold = 2, reset_timeout_ms = 10 }
      cb:call(fail)
      cb:call(fail)
      t.now = 15
      assert.are.same({ nil, "boom" }, { cb:call(fail) })
      local s = cb:stats()
      -- What opened it again is this one probe; since it last closed,
      -- three failures.
      assert.are.same({ "open", 15, 1, 3 }, { s.state, s.opened_at_ms,
                      s.consecutive_failures, s.failure_count })
      t.now = 24
      assert.are.equal("open", cb:state())
      t.now = 25
      assert.are.equal("half_open", cb:state())
    end)

    it("re-opens on a raised error in a probe", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10 }
      cb:call(fail)
      t.now = 10
      assert.is_false(pcall(cb.call, cb, function() error("x") end))
      assert.are.equal("open", cb:state())
    end)

    it("admits one probe at a time with half_open_max_calls 1", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10 }
      cb:call(fail)
      t.now = 10
      local inner_r, inner_err
      local r = cb:call(function()
        assert.are.equal(1, cb:stats().half_open_calls)
        assert.is_false(cb:allow())
        inner_r, inner_err = cb:call(succeed)
        return "probe"
      end)
      assert.are.equal("probe", r)
      assert.are.equal(nil, inner_r)
      assert.are.equal("circuit_open", inner_err.kind)
      assert.are.equal("closed", cb:state())
    end)

    it("needs 3 successful probes and admits 3 at once with "
       .. "half_open_max_calls 3", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                              half_open_max_calls = 3 }
      cb:call(fail)
      t.now = 10
      local seen = {}
      local function probe(depth)
        return cb:call(function()
          seen[#seen + 1] = cb:stats().half_open_calls
          if depth < 4 then
            local r, err = probe(depth + 1)
            seen[#seen + 1] = r or err.kind
          end
          return "probe" .. depth
        end)
      end
      assert.are.equal("probe1", probe(1))
      -- Three probes ran, the fourth was rejected; the third success closed.
      assert.are.same({ 1, 2, 3, "circuit_open", "probe3", "probe2" }, seen)
      assert.are.equal("closed", cb:state())
    end)

    it("stays half-open until the last of 3 sequential probes", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                              half_open_max_calls = 3 }
      cb:call(fail)
      t.now = 10
      cb:call(succeed)
      cb:call(succeed)
      local s = cb:stats()
      assert.are.same({ "half_open", 2, 0, 2 }, { s.state,
        s.consecutive_successes, s.half_open_in_flight, s.half_open_calls })
      cb:call(succeed)
      assert.are.equal("closed", cb:state())
    end)

    it("closes as soon as the timeout ends with half_open_max_calls 0",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                                half_open_max_calls = 0 }
        cb:call(fail)
        t.now = 9
        assert.are.equal(nil, (cb:call(succeed)))
        t.now = 10
        assert.are.equal("closed", cb:state())
        assert.are.equal("ok", cb:call(succeed))
      end)

    it("gives back the permit of a probe whatever its outcome", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
        is_failure = function(err) return err ~= "not_found" end }
      cb:call(fail)
      t.now = 10
      assert.are.same({ nil, "not_found" },
                      { cb:call(function() return nil, "not_found" end) })
      local s = cb:stats()
      assert.are.same({ "half_open", 0, 1 },
                      { s.state, s.half_open_in_flight, s.half_open_calls })
      assert.is_true(cb:allow())
    end)
  end)

  describe("late results", function()
    it("ignores a success admitted while closed that ends after the "
       .. "breaker opened and turned half-open", function()
      local cb, t = breaker { failure_threshold = 2, reset_timeout_ms = 100 }
      local r = cb:call(function()
        cb:call(fail)
        cb:call(fail)
        t.now = 100
        assert.are.equal("half_open", cb:state())
        return "late"
      end)
      assert.are.equal("late", r)
      local s = cb:stats()
      assert.are.same({ "half_open", 1, 0 },
                      { s.state, s.ignored_count, s.total_successes })
    end)

    it("ignores a failure admitted before a reset", function()
      local cb = breaker { failure_threshold = 1 }
      local r, err = cb:call(function()
        cb:reset()
        return nil, "late failure"
      end)
      assert.are.same({ nil, "late failure" }, { r, err })
      local s = cb:stats()
      assert.are.same({ "closed", 0, 1 },
                      { s.state, s.failure_count, s.ignored_count })
    end)

    it("ignores a failed probe that ends after another probe closed it",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                                half_open_max_calls = 2 }
        cb:call(fail)
        t.now = 10
        cb:call(function()
          cb:call(succeed)
          cb:call(succeed)
          assert.are.equal("closed", cb:state())
          return nil, "late"
        end)
        local s = cb:stats()
        assert.are.same({ "closed", 0, 1 },
                        { s.state, s.failure_count, s.ignored_count })
      end)
  end)

  describe("is_failure", function()
    it("keeps an excluded error from the count but returns it", function()
      local given = {}
      local cb = breaker { failure_threshold = 1, is_failure = function(err)
        given[#given + 1] = err
        return err ~= "not_found"
      end }
      assert.are.same({ nil, "not_found" },
                      { cb:call(function() return nil, "not_found" end) })
      local ok, e = pcall(cb.call, cb, function() error("not_found", 0) end)
      assert.are.same({ false, "not_found" }, { ok, e })
      assert.are.equal("closed", cb:state())
      cb:call(fail)
      assert.are.equal("open", cb:state())
      assert.are.same({ "not_found", "not_found", "boom" }, given)
    end)

    it("is not asked about successes", function()
      local asked = 0
      local cb = breaker { is_failure = function() asked = asked + 1 end }
      cb:call(succeed)
      assert.are.equal(0, asked)
    end)

    it("counts a failure when the predicate itself raises", function()
      local cb = breaker { failure_threshold = 1,
                           is_failure = function() error("bad predicate") end }
      cb:call(fail)
      assert.are.equal("open", cb:state())
    end)
  end)

  describe("allow", function()
    it("reserves nothing", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10 }
      assert.is_true(cb:allow())
      cb:call(fail)
      assert.is_false(cb:allow())
      t.now = 10
      assert.is_true(cb:allow())
      assert.is_true(cb:allow())
      assert.are.equal(0, cb:stats().half_open_calls)
    end)
  end)

  describe("record_success and record_failure", function()
    it("count like call outcomes", function()
      local cb, t = breaker { failure_threshold = 2, reset_timeout_ms = 10 }
      cb:record_failure()
      cb:record_success()
      cb:record_failure()
      assert.are.equal("closed", cb:state())
      t.now = 3
      cb:record_failure()
      local s = cb:stats()
      assert.are.same({ "open", 3, 3, 1 }, { s.state, s.opened_at_ms,
        s.total_failures, s.total_successes })
      t.now = 13
      cb:record_success()
      assert.are.equal("closed", cb:state())
    end)
  end)

  describe("reset", function()
    it("closes and zeroes every count but success_count, as Snakepit does",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10 }
        cb:call(succeed)
        cb:call(fail)
        t.now = 10
        cb:call(succeed)
        cb:call(fail)
        cb:reset()
        assert.are.same({
          name = "test", state = "closed", failure_count = 0,
          success_count = 2, failure_threshold = 1, half_open_calls = 0,
          consecutive_failures = 0, consecutive_successes = 0,
          half_open_in_flight = 0,
          reset_timeout_ms = 10, half_open_max_calls = 1,
          opened_at_ms = 0, rejected_count = 0, total_successes = 0,
          total_failures = 0, ignored_count = 0,
        }, cb:stats())
        assert.are.equal("ok", cb:call(succeed))
        assert.are.equal(3, cb:stats().success_count)
      end)
  end)

  describe("stats, field by field as Snakepit means them", function()
    it("success_count counts every success and is never reset: "
       .. "record_success then record_failure gives 1", function()
      local cb = breaker {}
      cb:record_success()
      cb:record_failure()
      local s = cb:stats()
      assert.are.same({ 1, 1, 0, 1 }, { s.success_count, s.failure_count,
        s.consecutive_successes, s.consecutive_failures })
    end)

    it("failure_count counts every failure since the breaker last closed, "
       .. "in every state", function()
      local cb, t = breaker { failure_threshold = 3, reset_timeout_ms = 10 }
      for _, f in ipairs { fail, succeed, fail, fail, fail } do cb:call(f) end
      local s = cb:stats()
      assert.are.same({ "open", 4, 3 },
                      { s.state, s.failure_count, s.consecutive_failures })
      cb:record_failure() -- a late one, while open: it counts
      assert.are.equal(5, cb:stats().failure_count)
      t.now = 10
      cb:call(succeed) -- the probe closes it: a new count
      s = cb:stats()
      assert.are.same({ "closed", 0, 0 },
                      { s.state, s.failure_count, s.consecutive_failures })
    end)

    it("half_open_calls counts the probes admitted since it went half-open; "
       .. "half_open_in_flight those still running", function()
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                              half_open_max_calls = 2 }
      cb:call(fail)
      t.now = 10
      local during
      cb:call(function()
        cb:call(function()
          during = cb:stats()
          return "inner"
        end)
        return "outer"
      end)
      assert.are.same({ 2, 2 }, { during.half_open_calls,
                                  during.half_open_in_flight })
      assert.are.equal("closed", cb:state())
      assert.are.same({ 0, 0 }, { cb:stats().half_open_calls,
                                  cb:stats().half_open_in_flight })
    end)
  end)

  describe("transitions", function()
    local events
    before_each(function()
      events = {}
      circuit_breaker._on_transition = function(cb, event, failures)
        events[#events + 1] = cb:name() .. " " .. event .. " " .. failures
      end
    end)
    after_each(function() circuit_breaker._on_transition = nil end)

    it("reports each transition once, in order", function()
      local cb, t = breaker { failure_threshold = 2, reset_timeout_ms = 10 }
      cb:call(fail)
      cb:call(fail)
      cb:call(fail)
      t.now = 10
      cb:state()
      cb:state()
      cb:call(fail)
      t.now = 20
      cb:call(succeed)
      cb:reset()
      cb:record_failure()
      cb:record_failure()
      cb:reset()
      -- Each with the failures since the breaker last closed (Snakepit's
      -- failure_count): the failed probe makes 3.
      assert.are.same({ "test opened 2", "test half_open 2", "test opened 3",
        "test half_open 3", "test closed 0", "test opened 2",
        "test closed 0" }, events)
    end)

    it("reports half_open then closed with half_open_max_calls 0",
      function()
        local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 5,
                                half_open_max_calls = 0 }
        cb:record_failure()
        t.now = 5
        assert.is_true(cb:allow())
        assert.are.same({ "test opened 1", "test half_open 0",
                          "test closed 0" }, events)
      end)

    it("reports nothing for an ignored late result", function()
      local cb = breaker { failure_threshold = 1 }
      cb:call(function() cb:reset() return nil, "late" end)
      assert.are.same({}, events)
    end)
  end)

  describe("methods", function()
    it("are callable as functions of the module", function()
      local cb = breaker { failure_threshold = 1 }
      assert.are.equal("ok", circuit_breaker.call(cb, succeed))
      circuit_breaker.record_failure(cb)
      assert.are.equal("open", circuit_breaker.state(cb))
      assert.is_false(circuit_breaker.allow(cb))
      circuit_breaker.reset(cb)
      circuit_breaker.record_success(cb)
      assert.are.equal(1, circuit_breaker.stats(cb).total_successes)
      assert.are.equal("test", circuit_breaker.name(cb))
    end)
  end)

  describe("the default clock", function()
    it("is sprun.now()", function()
      local cb = circuit_breaker.start_link { name = "real",
                                              failure_threshold = 1 }
      local before = sprun.now()
      cb:call(fail)
      local after = sprun.now()
      local at = cb:stats().opened_at_ms
      assert.is_true(at >= before and at <= after)
      assert.are.equal(0, at % 1)
    end)
  end)

  it("gives the permit of a cancelled call back uncounted, raised or "
     .. "returned", function()
    local cb = sprun.circuit_breaker.start_link { name = "cancelled",
                                                  failure_threshold = 1 }
    require("helpers").vrun(function()
      local t = sprun.spawn(function()
        return cb:call(function() sprun.sleep(1000) end)
      end)
      sprun.sleep(1)
      t:cancel()
      t:await()
      cb:call(function()
        return nil, sprun.error("cancelled", "the caller gave up")
      end)
    end)
    local s = cb:stats()
    assert.are.same({ "closed", 0, 0 }, { cb:state(), s.total_failures,
                                          s.total_successes })
    cb:call(function() return nil, sprun.error("unavailable", "down") end)
    assert.are.equal("open", cb:state())
  end)
end)
