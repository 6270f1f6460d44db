-- Rate windows (count, time) and manual states of sprun.circuit_breaker,
-- through the Lua API: literal times with the clock option, virtual time
-- for the time window, validation messages and telemetry events.
local sprun = require "sprun"
local cb_mod = require "sprun.circuit_breaker"
local telemetry = require "sprun.telemetry"
local h = require "helpers"

local function fail() return nil, "down" end
local function ok() return "ok" end

-- A breaker on a clock the test sets: t.now.
local function breaker(opts)
  local t = { now = 0 }
  opts.name = opts.name or "w"
  opts.clock = function() return t.now end
  return cb_mod.start_link(opts), t
end

describe("circuit_breaker rate windows", function()
  it("keeps the consecutive mode when no window is given", function()
    local cb = breaker { failure_threshold = 2 }
    cb:call(fail); cb:call(ok); cb:call(fail)
    assert.are.equal("closed", cb:state())
    cb:call(fail)
    assert.are.equal("open", cb:state())
    assert.is_nil(cb:stats().window_calls)
  end)

  it("opens a count window exactly when the failure rate reaches it",
     function()
    local cb = breaker { window = { type = "count", size = 10 },
                         failure_rate = 0.3, min_calls = 10 }
    for _ = 1, 7 do cb:call(ok) end
    cb:call(fail); cb:call(fail)
    local s = cb:stats()
    assert.are.equal("closed", s.state)
    assert.are.equal(9, s.window_calls)
    assert.are.equal(2, s.window_failures)
    assert.are.equal(2 / 9, s.failure_rate)
    cb:call(fail) -- 3 of 10
    s = cb:stats()
    assert.are.equal("open", s.state)
    assert.are.equal("failure_rate", s.open_reason)
    assert.are.equal(3, s.failure_count)
    assert.are.equal(0, s.window_calls)
  end)

  it("waits for min_calls, and uses the documented defaults", function()
    local cb = breaker { window = { type = "count" } }
    for _ = 1, 9 do cb:call(fail) end
    assert.are.equal("closed", cb:state())
    cb:call(fail) -- the 10th call: min_calls defaults to 10
    assert.are.equal("open", cb:state())
    local s = cb:stats()
    assert.are.same({ "count", 100, 10, 0.5, 1.0 },
      { s.window_type, s.window_size, s.min_calls, s.failure_rate_threshold,
        s.slow_call_rate_threshold })
    assert.is_nil(s.slow_call_ms)
  end)

  it("evicts the oldest call of a full count ring", function()
    local cb = breaker { window = { type = "count", size = 4 },
                         min_calls = 4, failure_rate = 0.75 }
    cb:call(fail); cb:call(fail); cb:call(ok); cb:call(ok)
    cb:call(fail) -- evicts a failure: 2 of 4
    cb:call(fail) -- evicts a failure: 2 of 4
    assert.are.equal("closed", cb:state())
    assert.are.equal(2, cb:stats().window_failures)
    cb:call(fail) -- evicts a success: 3 of 4
    assert.are.equal("open", cb:state())
  end)

  it("times calls with the clock and opens on the slow-call rate", function()
    local cb, t = breaker { window = { type = "count", size = 10 },
                            min_calls = 4, failure_rate = 1,
                            slow_call_ms = 100, slow_call_rate = 0.5 }
    local function takes(ms)
      return function() t.now = t.now + ms; return "done" end
    end
    assert.are.equal("done", cb:call(takes(99)))
    cb:call(takes(100))
    cb:call(takes(0))
    local s = cb:stats()
    assert.are.equal(1, s.window_slow_calls)
    assert.are.equal(1 / 3, s.slow_call_rate)
    assert.are.equal(100, s.slow_call_ms)
    cb:call(takes(250)) -- 2 slow of 4
    s = cb:stats()
    assert.are.equal("open", s.state)
    assert.are.equal("slow_call_rate", s.open_reason)
  end)

  it("expires the buckets of a time window", function()
    local cb, t = breaker { window = { type = "time", size_ms = 1000,
                                       buckets = 10 },
                            min_calls = 3, failure_rate = 0.5 }
    t.now = 50; cb:call(fail)
    t.now = 150; cb:call(fail)
    t.now = 999
    assert.are.equal(2, cb:stats().window_calls)
    t.now = 1000
    local s = cb:stats()
    assert.are.equal(1, s.window_calls)
    assert.are.equal(1000, s.window_size_ms)
    assert.are.equal(10, s.window_buckets)
    cb:call(ok); t.now = 1050; cb:call(ok)
    t.now = 1100; cb:call(fail) -- the failure of 150 left: 1 of 3
    assert.are.equal("closed", cb:state())
    t.now = 1150; cb:call(fail) -- 2 of 4
    assert.are.equal("open", cb:state())
  end)

  it("runs a time window on virtual time", function()
    local states = h.run_tasks({ clock = "virtual" }, function()
      local cb = cb_mod.start_link { name = "v", reset_timeout_ms = 5000,
        window = { type = "time", size_ms = 60000, buckets = 6 },
        min_calls = 2, slow_call_ms = 1000, slow_call_rate = 1 }
      local out = {}
      cb:call(fail)
      sprun.sleep(60000) -- the failure leaves the window
      out[#out + 1] = cb:stats().window_calls
      cb:call(fail)
      out[#out + 1] = cb:state()
      -- Two slow calls (virtual sleeps) open it on the slow-call rate.
      sprun.sleep(60000)
      cb:call(function() sprun.sleep(1500) return 1 end)
      cb:call(function() sprun.sleep(1000) return 1 end)
      out[#out + 1] = cb:state()
      out[#out + 1] = cb:stats().open_reason
      sprun.sleep(5000)
      out[#out + 1] = cb:state()
      return out
    end)
    assert.are.same({ 0, "closed", "open", "slow_call_rate", "half_open" },
                    states)
  end)

  it("probes half-open as before and closes with an empty window",
     function()
    local cb, t = breaker { window = { type = "count", size = 5 },
                            min_calls = 2, reset_timeout_ms = 100 }
    cb:call(fail); cb:call(fail)
    assert.are.equal("open", cb:state())
    t.now = 100
    assert.are.equal("half_open", cb:state())
    cb:call(ok)
    assert.are.equal("closed", cb:state())
    cb:call(fail)
    assert.are.equal("closed", cb:state())
    assert.are.equal(1, cb:stats().window_calls)
  end)

  it("emits opened with the rate as the reason", function()
    local seen = {}
    telemetry.attach("bw-opened", { "snakepit", "circuit_breaker", "opened" },
      function(_, m, md) seen[#seen + 1] = { m.failure_count, md.reason } end)
    local cb = breaker { window = { type = "count", size = 4 },
                         min_calls = 2 }
    cb:call(ok); cb:call(fail)
    telemetry.detach("bw-opened")
    assert.are.same({ { 1, "failure_rate" } }, seen)
  end)

  describe("validation", function()
    local F = "circuit_breaker.start_link: "
    for _, case in ipairs {
      { { window = 5 }, "option 'window' must be a table, got 5" },
      { { window = { type = "sliding" } },
        "option 'window.type' must be \"count\" or \"time\", got \"sliding\"" },
      { { window = {} }, "option 'window.type' must be \"count\" or \"time\", "
        .. "got nil" },
      { { window = { type = "count", size = 0 } },
        "option 'window.size' must be an integer >= 1, got 0" },
      { { window = { type = "count", size = 100001 } },
        "option 'window.size' must be an integer between 1 and 100000, got "
        .. "100001" },
      { { window = { type = "count", size_ms = 10 } },
        "option 'window.size_ms' is not a key of a count window (valid keys: "
        .. "type, size), got 10" },
      { { window = { type = "time", size = 10 } },
        "option 'window.size' is not a key of a time window (valid keys: "
        .. "type, size_ms, buckets), got 10" },
      { { window = { type = "time", size_ms = 0 } },
        "option 'window.size_ms' must be an integer >= 1, got 0" },
      { { window = { type = "time", buckets = 1.5 } },
        "option 'window.buckets' must be an integer >= 1, got 1.5" },
      { { window = { type = "time", buckets = 1001, size_ms = 1001000 } },
        "option 'window.buckets' must be an integer between 1 and 1000, got "
        .. "1001" },
      { { window = { type = "time", size_ms = 1000, buckets = 3 } },
        "option 'window.size_ms' must be a multiple of window.buckets (3), "
        .. "got 1000" },
      { { window = { type = "count" }, failure_rate = 1.5 },
        "option 'failure_rate' must be a number between 0 and 1, got 1.5" },
      { { window = { type = "count" }, failure_rate = "half" },
        "option 'failure_rate' must be a number between 0 and 1, got \"half\"" },
      { { window = { type = "count" }, min_calls = 0 },
        "option 'min_calls' must be an integer >= 1, got 0" },
      { { window = { type = "count" }, slow_call_ms = 0 },
        "option 'slow_call_ms' must be an integer >= 1, got 0" },
      { { window = { type = "count" }, slow_call_rate = -0.5 },
        "option 'slow_call_rate' must be a number between 0 and 1, got -0.5" },
      { { failure_rate = 0.5 },
        "option 'failure_rate' is only read by a rate window (give option "
        .. "'window'), got 0.5" },
      { { slow_call_ms = 100 },
        "option 'slow_call_ms' is only read by a rate window (give option "
        .. "'window'), got 100" },
      { { windo = {} }, "unknown option 'windo' (did you mean 'window'?)" },
    } do
      it(case[2], function()
        local opts = case[1]
        opts.name = "v"
        local okk, err = pcall(cb_mod.start_link, opts)
        assert.is_false(okk)
        assert.are.equal(F .. case[2], err:gsub("^[^:]*:%d+: ", ""))
      end)
    end
  end)
end)

describe("circuit_breaker manual states", function()
  local seen
  before_each(function()
    seen = {}
    for _, e in ipairs { "forced_open", "disabled", "isolated", "closed",
                         "opened" } do
      telemetry.attach("bw-" .. e, { "snakepit", "circuit_breaker", e },
        function(event, _, md)
          seen[#seen + 1] = event[3] .. " " .. md.pool
        end)
    end
  end)
  after_each(function()
    for _, e in ipairs { "forced_open", "disabled", "isolated", "closed",
                         "opened" } do
      telemetry.detach("bw-" .. e)
    end
  end)

  it("force_open rejects until reset, with no half-open", function()
    local cb, t = breaker { name = "m", reset_timeout_ms = 10 }
    cb:force_open()
    cb:force_open() -- already: no second event
    assert.are.equal("forced_open", cb:state())
    local v, err = cb:call(ok)
    assert.is_nil(v)
    assert.are.equal("circuit_open", sprun.error_kind(err))
    t.now = 1e6
    assert.are.equal("forced_open", cb:state())
    assert.is_false(cb:allow())
    assert.are.equal(1, cb:stats().rejected_count)
    cb:reset()
    assert.are.equal("closed", cb:state())
    assert.are.equal("ok", cb:call(ok))
    assert.are.same({ "forced_open m", "closed m" }, seen)
  end)

  it("disable admits and counts but never opens", function()
    local cb = breaker { name = "m", failure_threshold = 1 }
    cb:disable()
    for _ = 1, 5 do assert.are.same({ nil, "down" }, { cb:call(fail) }) end
    assert.is_true(cb:allow())
    local s = cb:stats()
    assert.are.equal("disabled", s.state)
    assert.are.equal(5, s.total_failures)
    assert.are.equal(5, s.failure_count)
    cb:reset()
    cb:call(fail)
    assert.are.same({ "disabled m", "closed m", "opened m" }, seen)
  end)

  it("isolate rejects and counts nothing", function()
    local cb = breaker { name = "m" }
    cb:isolate()
    assert.are.equal("isolated", cb:state())
    assert.is_nil((cb:call(ok)))
    cb:record_failure()
    local s = cb:stats()
    assert.are.equal(0, s.rejected_count)
    assert.are.equal(0, s.total_failures)
    cb:force_open()
    cb:reset()
    assert.are.same({ "isolated m", "forced_open m", "closed m" }, seen)
  end)

  it("reports manual states to the test hook and to prometheus states",
     function()
    local hooked = {}
    cb_mod._on_transition = function(_, what) hooked[#hooked + 1] = what end
    local cb = breaker { name = "m" }
    cb:disable(); cb:isolate(); cb:force_open(); cb:reset()
    cb_mod._on_transition = nil
    assert.are.same({ "disabled", "isolated", "forced_open", "closed" },
                    hooked)
  end)

  it("works on a rate window, which reset empties", function()
    local cb = breaker { name = "m", window = { type = "count", size = 10 },
                         min_calls = 2 }
    cb:call(fail)
    cb:disable()
    for _ = 1, 20 do cb:call(fail) end
    assert.are.equal(10, cb:stats().window_calls)
    assert.are.equal("disabled", cb:state())
    cb:reset()
    assert.are.equal(0, cb:stats().window_calls)
    cb:call(fail); cb:call(fail)
    assert.are.equal("open", cb:state())
  end)
end)
