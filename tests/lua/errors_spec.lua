-- sprun.errors: error objects, kinds, and the codes of the C core.
local errors = require "sprun.errors"

describe("errors", function()
  it("makes error objects with kind, message, details and cause", function()
    local cause = errors.error("timeout")
    local e = errors.error("task_crashed", "worker died", { pid = 7 }, cause)
    assert.are.same({ "task_crashed", "worker died", { pid = 7 } },
                    { e.kind, e.message, e.details })
    assert.are.equal(cause, e.cause)
    assert.are.equal("task_crashed: worker died", tostring(e))
  end)

  it("prints just the kind of an error without a message", function()
    local e = errors.error("cancelled")
    assert.are.same({ "cancelled", nil, nil },
                    { e.kind, e.message, e.details })
    assert.are.equal("cancelled", tostring(e))
  end)

  it("keeps its identity when raised and caught", function()
    local e = errors.error("timeout", "slow")
    local ok, got = pcall(error, e)
    assert.are.same({ false, true }, { ok, rawequal(e, got) })
  end)

  it("gives the kind of a string, an error object or anything else",
    function()
      assert.are.same(
        { "timeout", "circuit_open", "error", "error", "error", "error" },
        { errors.kind("timeout"), errors.kind(errors.error("circuit_open")),
          errors.kind({ kind = "timeout" }), errors.kind(nil),
          errors.kind(42), errors.kind(false) })
    end)

  it("tells error objects from other values", function()
    assert.are.same({ true, false, false, false },
      { errors.is_error(errors.error("x")), errors.is_error({ kind = "x" }),
        errors.is_error("x"), errors.is_error(nil) })
  end)

  it("names the kinds sprun itself returns", function()
    assert.are.same({ "circuit_open", "timeout", "task_crashed", "cancelled",
                      "retries_exhausted", "invalid_argument" },
      { errors.CIRCUIT_OPEN, errors.TIMEOUT, errors.TASK_CRASHED,
        errors.CANCELLED, errors.RETRIES_EXHAUSTED,
        errors.INVALID_ARGUMENT })
  end)

  it("turns a C error code into an error object", function()
    local sp = require "sprun.ffi"
    local e = errors.from_code(sp.SP_ECIRCUITOPEN)
    assert.are.same({ "circuit_open", "circuit open",
                      { code = -3, name = "SP_ECIRCUITOPEN" } },
                    { e.kind, e.message, e.details })
    local nomem = errors.from_code(sp.SP_ENOMEM)
    assert.are.equal("out_of_memory: out of memory", tostring(nomem))
    assert.are.equal("error: unknown error", tostring(errors.from_code(-99)))
  end)
end)
