-- sprun.executor.execute_with_fallback: fn's values when it succeeds, the
-- fallback's on a failure (returned or raised), fallback_on choosing the
-- failures, the arguments both get, a cancellation never handed over, and
-- its misuse.
local sprun = require "sprun"
local h = require "helpers"

local ex = sprun.executor

describe("executor.execute_with_fallback", function()
  it("returns fn's values when it succeeds, nils included", function()
    local called = false
    local r = h.pack(ex.execute_with_fallback(function(a, b)
      return a, nil, b
    end, function() called = true end, nil, 1, 2))
    assert.are.same({ n = 3, 1, nil, 2 }, r)
    assert.is_false(called)
  end)

  it("hands a returned error and the arguments to the fallback", function()
    local got
    local v, w = ex.execute_with_fallback(function()
      return nil, sprun.error("unavailable", "down")
    end, function(err, a, b)
      got = { sprun.error_kind(err), a, b }
      return "cached", a
    end, nil, "x", "y")
    assert.are.same({ "cached", "x" }, { v, w })
    assert.are.same({ "unavailable", "x", "y" }, got)
  end)

  it("hands a raise over as an error of kind 'error' with the value",
    function()
    local err = select(2, ex.execute_with_fallback(function()
      error({ code = 7 })
    end, function(e) return nil, e end))
    assert.are.equal("error", sprun.error_kind(err))
    assert.are.same({ code = 7 }, err.details.value)
  end)

  it("leaves the failures fallback_on says no to as they are", function()
    local on = function(err) return sprun.error_kind(err) == "timeout" end
    local r, err = ex.execute_with_fallback(function()
      return nil, sprun.error("bad_input", "mine")
    end, function() return "fallback" end, { fallback_on = on })
    assert.is_nil(r)
    assert.are.equal("bad_input", sprun.error_kind(err))
    assert.are.equal("fallback", ex.execute_with_fallback(function()
      return nil, sprun.error("timeout", "slow")
    end, function() return "fallback" end, { fallback_on = on }))
  end)

  it("never hands a cancellation to the fallback", function()
    local reached = false
    h.run_tasks(function()
      local t = sprun.spawn(function()
        return ex.execute_with_fallback(function() sprun.sleep(1000) end,
          function() reached = true return "no" end)
      end)
      sprun.sleep(5)
      t:cancel()
      local _, err = t:await()
      assert.are.equal("cancelled", sprun.error_kind(err))
    end)
    assert.is_false(reached)
  end)

  it("names what is wrong in its arguments", function()
    local function msg(...)
      local ok, e = pcall(ex.execute_with_fallback, ...)
      assert.is_false(ok)
      return e
    end
    assert.matches("executor.execute_with_fallback: fn must be a function, "
                   .. "got nil", msg(nil, print), 1, true)
    assert.matches("executor.execute_with_fallback: fallback must be a "
                   .. "function, got 3", msg(print, 3), 1, true)
    assert.matches("executor.execute_with_fallback: option 'fallback_on' "
                   .. "must be a function, got true",
                   msg(print, print, { fallback_on = true }), 1, true)
    assert.matches("executor.execute_with_fallback: unknown option 'bogus'",
                   msg(print, print, { bogus = 1 }), 1, true)
  end)
end)
