-- sprun.executor misused: the exact message, raised at the caller's line,
-- for a fn, cb, fns or option that is wrong, in every executor function;
-- and nothing runs when the arguments are wrong.
local sprun = require "sprun"
local circuit_breaker = require "sprun.circuit_breaker"
local retry_policy = require "sprun.retry_policy"
local h = require "helpers"

local ex = sprun.executor
local assert_no_handles = h.assert_no_handles

describe("executor", function()
  describe("misuse", function()
    local cb = circuit_breaker.start_link { name = "m" }
    local function f() end

    -- The message without the position, and checks that the position is
    -- the caller's line (this file), not the executor's.
    local function message(fn, ...)
      local ok, e = pcall(fn, ...)
      assert.is_false(ok)
      local where, msg = e:match("^([^:]+):%d+: (.*)$")
      assert.are.equal("executor_misuse_spec.lua",
                       where and where:match("[^/]+$"),
                       "raised at " .. tostring(where) .. ": " .. e)
      return msg
    end

    it("names a fn that is not a function", function()
      assert.are.equal(
        "executor.execute_with_retry: fn must be a function, got 42",
        message(function() ex.execute_with_retry(42) end))
      assert.are.equal(
        'executor.execute_with_timeout: fn must be a function, got "f"',
        message(function() ex.execute_with_timeout("f", { timeout_ms = 1 })
        end))
      assert.are.equal(
        "executor.execute_with_circuit_breaker: fn must be a function, got nil",
        message(function() ex.execute_with_circuit_breaker(cb, nil) end))
      assert.are.equal(
        "executor.execute_with_protection: fn must be a function, got true",
        message(function() ex.execute_with_protection(cb, true) end))
      assert.are.equal(
        "executor.execute_async: fn must be a function, got nil",
        message(function() ex.execute_async() end))
    end)

    it("names a cb that is not a breaker", function()
      assert.are.equal("executor.execute_with_circuit_breaker: cb must be a "
        .. "circuit breaker, got table",
        message(function() ex.execute_with_circuit_breaker({}, f) end))
      assert.are.equal("executor.execute_with_protection: cb must be a "
        .. "circuit breaker, got nil",
        message(function() ex.execute_with_protection(nil, f) end))
    end)

    it("requires timeout_ms", function()
      assert.are.equal("executor.execute_with_timeout: option 'timeout_ms' "
        .. "must be a number >= 0, got nil",
        message(function() ex.execute_with_timeout(f, {}) end))
      assert.are.equal("executor.execute_with_timeout: options must be a "
        .. "table, got nil",
        message(function() ex.execute_with_timeout(f) end))
      assert.are.equal("executor.execute_with_timeout: option 'timeout_ms' "
        .. "must be a number >= 0, got -1",
        message(function() ex.execute_with_timeout(f, { timeout_ms = -1 })
        end))
    end)

    it("names the closest option to an unknown one", function()
      assert.are.equal("executor.execute_with_timeout: unknown option "
        .. "'timeout' (did you mean 'timeout_ms'?)",
        message(function() ex.execute_with_timeout(f, { timeout = 5 }) end))
      assert.are.equal("executor.execute_with_retry: unknown option "
        .. "'max_attemps' (did you mean 'max_attempts'?)",
        message(function() ex.execute_with_retry(f, { max_attemps = 3 }) end))
      assert.are.equal("executor.execute_batch: unknown option "
        .. "'max_concurency' (did you mean 'max_concurrency'?)",
        message(function() ex.execute_batch({}, { max_concurency = 2 }) end))
      assert.are.equal("executor.execute_with_protection: unknown option "
        .. "'backof_ms' (did you mean 'backoff_ms'?)",
        message(function()
          ex.execute_with_protection(cb, f, { backof_ms = { 1 } })
        end))
    end)

    it("checks option values", function()
      assert.are.equal("executor.execute_batch: option 'max_concurrency' "
        .. "must be an integer >= 1, got 0",
        message(function() ex.execute_batch({ f }, { max_concurrency = 0 })
        end))
      assert.are.equal("executor.execute_with_retry: option 'policy' must be "
        .. "a retry policy (retry_policy.new), got table",
        message(function() ex.execute_with_retry(f, { policy = {} }) end))
    end)

    it("refuses policy options beside a policy", function()
      local p = retry_policy.new {}
      assert.are.equal("executor.execute_with_retry: option 'max_attempts' "
        .. "cannot be given with 'policy' (set it in retry_policy.new)",
        message(function()
          ex.execute_with_retry(f, { policy = p, max_attempts = 5 })
        end))
      assert.are.equal("executor.execute_with_protection: option "
        .. "'backoff_ms' cannot be given with 'policy' (set it in "
        .. "retry_policy.new)",
        message(function()
          ex.execute_with_protection(cb, f, { policy = p, backoff_ms = { 1 },
                                              seed = 3 })
        end))
      -- operation and pool name the call, not the policy.
      assert.are.equal("ok", ex.execute_with_retry(function() return "ok" end,
        { policy = p, operation = "fetch", pool = "api" }))
      assert_no_handles()
    end)

    it("requires fns to be a list of functions", function()
      assert.are.equal('executor.execute_batch: fns must be a list of '
        .. 'functions, got "x"',
        message(function() ex.execute_batch("x") end))
      assert.are.equal("executor.execute_batch: fns must be a list of "
        .. "functions, got nil",
        message(function() ex.execute_batch() end))
      assert.are.equal("executor.execute_batch: fns[2] must be a function, "
        .. "got 1",
        message(function() ex.execute_batch({ f, 1 }) end))
      assert.are.equal('executor.execute_batch: fns must be a list of '
        .. 'functions, got key "x"',
        message(function() ex.execute_batch({ f, x = f }) end))
      assert.are.equal("executor.execute_batch: fns[2] must be a function, "
        .. "got nil",
        message(function() ex.execute_batch({ f, nil, f }) end))
    end)

    it("runs nothing when the arguments are wrong", function()
      local ran = false
      local function g() ran = true end
      pcall(ex.execute_batch, { g, 1 })
      pcall(ex.execute_with_retry, g, { max_attemps = 3 })
      pcall(ex.execute_with_timeout, g, {})
      pcall(ex.execute_with_protection, {}, g)
      assert.is_false(ran)
    end)
  end)
end)
