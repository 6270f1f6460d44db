-- require "sprun": the module table, time, and the modules on their own.
local sprun = require "sprun"

describe("sprun", function()
  it("gathers the modules, which are also requirable on their own",
    function()
      for _, name in ipairs { "circuit_breaker", "health_monitor",
                              "retry_policy", "errors" } do
        assert.are.equal(require("sprun." .. name), sprun[name], name)
      end
      assert.are.equal(sprun.errors.error, sprun.error)
      assert.are.equal(sprun.errors.kind, sprun.error_kind)
    end)

  it("has the version of the C core and of sprun.core", function()
    assert.are.equal("0.1.0", sprun.version)
    assert.are.equal(sprun.version, require("sprun.core").version)
  end)

  it("gives monotonic time in whole ms and in ns", function()
    local ms1, ns1 = sprun.now(), sprun.hrtime()
    local x = 0
    for i = 1, 1e6 do x = x + i end
    local ms2, ns2 = sprun.now(), sprun.hrtime()
    assert.are.same({ 0, 0 }, { ms1 % 1, ms2 % 1 })
    assert.is_true(ms2 >= ms1 and ns2 > ns1)
    -- Both read the same clock: now() is a whole ms of a time between two
    -- hrtime() reads around it.
    local before = sprun.hrtime()
    local ms = sprun.now()
    local after = sprun.hrtime()
    assert.is_true(ms >= math.floor(before / 1e6) and ms <= after / 1e6,
                   ("ns %d, ms %d, ns %d"):format(before, ms, after))
    assert.is_true(x > 0)
  end)

  it("makes error objects and reads their kind", function()
    local e = sprun.error("timeout", "took 5000 ms", { timeout_ms = 5000 })
    assert.are.same({ "timeout", "timeout", "timeout: took 5000 ms" },
                    { sprun.error_kind(e), e.kind, tostring(e) })
  end)
end)
