-- sprun.retry_policy: attempts, delays, jitter, seeds, retriable errors.
local retry_policy = require "sprun.retry_policy"
local errors = require "sprun.errors"

local SAMPLES = 10000

-- n delays for `attempt`, with their min, max and mean.
local function sample(p, attempt, n)
  local lo, hi, sum, all_whole = math.huge, -math.huge, 0, true
  for _ = 1, n do
    local d = p:backoff_for_attempt(attempt)
    lo, hi, sum = math.min(lo, d), math.max(hi, d), sum + d
    all_whole = all_whole and d % 1 == 0
  end
  return lo, hi, sum / n, all_whole
end

describe("retry_policy", function()
  describe("new", function()
    it("fills in the documented defaults", function()
      local c = retry_policy.new():config()
      assert.are.equal("number", type(c.seed))
      c.seed = nil
      assert.are.same({
        max_attempts = 3, backoff_ms = { 100, 200, 400, 800, 1600 },
        max_backoff_ms = 30000, jitter = false, jitter_factor = 0.25,
        retriable_errors = { "timeout", "unavailable", "connection_refused",
                             "worker_crash" },
        backoff = "list", base_backoff_ms = 100, multiplier = 2,
      }, c)
    end)

    it("gives copies from config() that do not change the policy",
      function()
        local p = retry_policy.new { backoff_ms = { 10, 20 } }
        local c = p:config()
        c.backoff_ms[1] = 999
        c.retriable_errors[1] = "boom"
        assert.are.equal(10, p:backoff_for_attempt(1))
        assert.is_false(p:retry_for_error("boom"))
        assert.are.same({ 10, 20 }, p:config().backoff_ms)
      end)

    it("does not keep the caller's tables", function()
      local list, kinds = { 10, 20 }, { "timeout" }
      local p = retry_policy.new { backoff_ms = list,
                                   retriable_errors = kinds }
      list[1], kinds[1] = 999, "boom"
      assert.are.equal(10, p:backoff_for_attempt(1))
      assert.is_true(p:retry_for_error("timeout"))
      assert.is_false(p:retry_for_error("boom"))
    end)
  end)

  describe("should_retry", function()
    it("allows max_attempts calls in all", function()
      local p = retry_policy.new { max_attempts = 3 }
      assert.are.same({ true, true, false, false },
        { p:should_retry(1), p:should_retry(2), p:should_retry(3),
          p:should_retry(4) })
    end)

    it("never retries with max_attempts 1", function()
      assert.is_false(retry_policy.new { max_attempts = 1 }:should_retry(1))
    end)
  end)

  describe("backoff_for_attempt", function()
    it("follows the list and repeats its last value past the end",
      function()
        local p = retry_policy.new {}
        local got = {}
        for attempt = 1, 7 do
          got[attempt] = p:backoff_for_attempt(attempt)
        end
        assert.are.same({ 100, 200, 400, 800, 1600, 1600, 1600 }, got)
        assert.are.equal(1600, p:backoff_for_attempt(4294967295))
      end)

    it("caps every delay at max_backoff_ms", function()
      local p = retry_policy.new { backoff_ms = { 100, 5000 },
                                   max_backoff_ms = 1000 }
      assert.are.same({ 100, 1000, 1000 }, { p:backoff_for_attempt(1),
        p:backoff_for_attempt(2), p:backoff_for_attempt(3) })
    end)

    it("grows exponentially from base_backoff_ms by multiplier", function()
      local p = retry_policy.new { backoff = "exponential",
        base_backoff_ms = 50, multiplier = 3, max_backoff_ms = 10000 }
      local got = {}
      for attempt = 1, 7 do
        got[attempt] = p:backoff_for_attempt(attempt)
      end
      assert.are.same({ 50, 150, 450, 1350, 4050, 10000, 10000 }, got)
      assert.are.equal(10000, p:backoff_for_attempt(4294967295))
    end)

    it("gives whole ms", function()
      local p = retry_policy.new { backoff_ms = { 10.7 } }
      assert.are.equal(10, p:backoff_for_attempt(1))
    end)
  end)

  describe("jitter", function()
    it("true spreads over delay +- delay * jitter_factor", function()
      local p = retry_policy.new { jitter = true, seed = 1 }
      local lo, hi, mean, whole = sample(p, 2, SAMPLES)
      assert.is_true(whole)
      assert.is_true(lo >= 150 and lo < 155, "min " .. lo)
      assert.is_true(hi <= 250 and hi > 245, "max " .. hi)
      assert.is_true(math.abs(mean - 199.5) < 2, "mean " .. mean)
    end)

    it("follows jitter_factor", function()
      local p = retry_policy.new { jitter = true, jitter_factor = 0.5,
                                   backoff_ms = { 1000 }, seed = 2 }
      local lo, hi, mean = sample(p, 1, SAMPLES)
      assert.is_true(lo >= 500 and lo < 510, "min " .. lo)
      assert.is_true(hi <= 1500 and hi > 1490, "max " .. hi)
      assert.is_true(math.abs(mean - 999.5) < 15, "mean " .. mean)
      local none = retry_policy.new { jitter = true, jitter_factor = 0,
                                      backoff_ms = { 1000 } }
      local nlo, nhi = sample(none, 1, 100)
      assert.are.same({ 1000, 1000 }, { nlo, nhi })
    end)

    it('"full" spreads over [0, delay]', function()
      local p = retry_policy.new { jitter = "full", seed = 3 }
      local lo, hi, mean, whole = sample(p, 3, SAMPLES)
      assert.is_true(whole)
      assert.is_true(lo >= 0 and lo < 5, "min " .. lo)
      assert.is_true(hi <= 400 and hi > 395, "max " .. hi)
      assert.is_true(math.abs(mean - 199.5) < 5, "mean " .. mean)
    end)

    it('"equal" spreads over [delay / 2, delay]', function()
      local p = retry_policy.new { jitter = "equal", seed = 4 }
      local lo, hi, mean, whole = sample(p, 3, SAMPLES)
      assert.is_true(whole)
      assert.is_true(lo >= 200 and lo < 203, "min " .. lo)
      assert.is_true(hi <= 400 and hi > 397, "max " .. hi)
      assert.is_true(math.abs(mean - 299.5) < 3, "mean " .. mean)
    end)

    it('"decorrelated" spreads over [base, previous * 3], capped',
      function()
        local p = retry_policy.new { jitter = "decorrelated", seed = 5,
          backoff_ms = { 100 }, max_backoff_ms = 5000 }
        local lo, hi, previous = math.huge, -math.huge, 100
        for i = 1, SAMPLES do
          -- A new series starts from the base every 8 attempts.
          local attempt = (i - 1) % 8 + 1
          if attempt == 1 then previous = 100 end
          local d = p:backoff_for_attempt(attempt)
          -- The generator keeps the previous delay before it was rounded
          -- down to whole ms, so 3 * previous may be up to 2 ms short.
          assert.is_true(d >= 100 and d <= math.min(5000, previous * 3 + 2),
                         ("delay %d after %d"):format(d, previous))
          lo, hi, previous = math.min(lo, d), math.max(hi, d), d
        end
        assert.is_true(lo < 105, "min " .. lo)
        assert.are.equal(5000, hi)
      end)

    it("never exceeds max_backoff_ms nor goes below 0", function()
      for _, mode in ipairs { true, "full", "equal", "decorrelated" } do
        local p = retry_policy.new { jitter = mode, jitter_factor = 1,
          backoff_ms = { 1000 }, max_backoff_ms = 1000, seed = 6 }
        local lo, hi = sample(p, 1, SAMPLES)
        assert.is_true(lo >= 0 and hi <= 1000, tostring(mode))
        assert.is_true(hi > 990, tostring(mode) .. " max " .. hi)
      end
    end)

    it("gives the same delays for the same seed", function()
      local a = retry_policy.new { jitter = "full", seed = 42 }
      local b = retry_policy.new { jitter = "full", seed = 42 }
      local c = retry_policy.new { jitter = "full", seed = 43 }
      local da, db, dc = {}, {}, {}
      for i = 1, 100 do
        da[i] = a:backoff_for_attempt(i % 5 + 1)
        db[i] = b:backoff_for_attempt(i % 5 + 1)
        dc[i] = c:backoff_for_attempt(i % 5 + 1)
      end
      assert.are.same(da, db)
      assert.are_not.same(da, dc)
      local again = retry_policy.new(a:config())
      assert.are.equal(da[1], again:backoff_for_attempt(2))
    end)

    it("seeds each policy made without a seed differently", function()
      local a = retry_policy.new { jitter = "full" }
      local b = retry_policy.new { jitter = "full" }
      assert.are_not.equal(a:config().seed, b:config().seed)
      local same = true
      for _ = 1, 20 do
        same = same and a:backoff_for_attempt(5) == b:backoff_for_attempt(5)
      end
      assert.is_false(same)
    end)
  end)

  describe("retry_for_error", function()
    it("retries the kinds listed, as strings or error objects", function()
      local p = retry_policy.new {}
      assert.are.same({ true, true, true, true, false, false, false },
        { p:retry_for_error("timeout"),
          p:retry_for_error(errors.error("unavailable", "503")),
          p:retry_for_error("connection_refused"),
          p:retry_for_error("worker_crash"),
          p:retry_for_error("boom"),
          p:retry_for_error({ kind = "timeout" }),
          p:retry_for_error(nil) })
    end)

    it('retries any failure with "all"', function()
      local p = retry_policy.new { retriable_errors = "all" }
      assert.are.same({ true, true, true },
        { p:retry_for_error("boom"), p:retry_for_error({}),
          p:retry_for_error(nil) })
      assert.are.equal("all", p:config().retriable_errors)
    end)

    it("lets a function decide, as a boolean", function()
      local seen = {}
      local p = retry_policy.new { retriable_errors = function(err)
        seen[#seen + 1] = err
        if err == "yes" then return 1 end
      end }
      assert.are.same({ true, false },
                      { p:retry_for_error("yes"), p:retry_for_error("no") })
      assert.are.same({ "yes", "no" }, seen)
    end)

    it("retries nothing with an empty list", function()
      local p = retry_policy.new { retriable_errors = {} }
      assert.is_false(p:retry_for_error("timeout"))
    end)
  end)

  describe("methods", function()
    it("are callable as functions of the module", function()
      local p = retry_policy.new { max_attempts = 2 }
      assert.is_true(retry_policy.should_retry(p, 1))
      assert.are.equal(200, retry_policy.backoff_for_attempt(p, 2))
      assert.is_true(retry_policy.retry_for_error(p, "timeout"))
      assert.are.equal(2, retry_policy.config(p).max_attempts)
    end)
  end)
end)
