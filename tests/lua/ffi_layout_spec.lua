-- lua/sprun/ffi.lua declares the structs of sprun.h field by field; the C
-- module reports what the compiler laid out. They must agree exactly.
local sp = require "sprun.ffi"
local core = require "sprun.core"
local ffi = sp.ffi

describe("the FFI declarations", function()
  local layout = core.layout()

  it("cover every struct the C module describes", function()
    local names = {}
    for name in pairs(layout) do names[#names + 1] = name end
    table.sort(names)
    assert.are.same({ "sp_adaptive_config_t", "sp_adaptive_t",
      "sp_breaker_bucket_t", "sp_breaker_config_t", "sp_breaker_t",
      "sp_health_config_t", "sp_health_t", "sp_rate_config_t",
      "sp_rate_state_t", "sp_rate_t", "sp_retry_config_t",
      "sp_retry_t", "sp_worker_stats_t" }, names)
  end)

  for name, s in pairs(layout) do
    it("lay out " .. name .. " as the C compiler does", function()
      assert.are.equal(s.size, ffi.sizeof(name))
      local offsets, n = {}, 0
      for field in pairs(s.offsets) do
        offsets[field] = ffi.offsetof(name, field)
        n = n + 1
      end
      assert.is_true(n >= 3)
      assert.are.same(s.offsets, offsets)
    end)
  end

  it("give the constants of sprun.h", function()
    assert.are.same({ -1, -3, -8, 1, 2, 4, 256, 0, 1, 2, 64, 4 },
      { sp.SP_EINVAL, sp.SP_ECIRCUITOPEN, sp.SP_EFULL, sp.SP_BREAKER_OPENED,
        sp.SP_BREAKER_HALF_OPENED, sp.SP_BREAKER_CLOSED,
        sp.SP_BREAKER_IGNORED, sp.SP_OUTCOME_SUCCESS, sp.SP_OUTCOME_FAILURE,
        sp.SP_BREAKER_STATE_HALF_OPEN, sp.SP_RETRY_MAX_BACKOFF,
        sp.SP_JITTER_DECORRELATED })
  end)

  it("reach the C functions", function()
    assert.are.equal("SP_ENOENT", ffi.string(sp.C.sp_err_name(-6)))
    assert.are.equal("half_open",
                     ffi.string(sp.C.sp_breaker_state_name(2)))
  end)

  it("can be loaded twice without redefining a type", function()
    package.loaded["sprun.ffi"] = nil
    local again = require "sprun.ffi"
    package.loaded["sprun.ffi"] = sp
    assert.are.equal(sp.SP_EFULL, again.SP_EFULL)
  end)
end)
