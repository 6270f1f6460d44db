-- python/sprun_worker.py, the Python side of sprun.pool's protocol: its own
-- unittest suite (tests/python), which starts real workers on both
-- channels and both framings, run with the Python 3 that `make deps`
-- installs.
local h = require "helpers"

describe("the Python worker helper", function()
  it("passes its unittest suite on fd 3 and stdio, ndjson and lp4", function()
    local r = h.run("cd " .. h.shell_quote(h.root .. "/tests/python")
      -- Nothing of sprun runs in there: no sanitizer preload (make check).
      .. " && env -u LD_PRELOAD python3 -m unittest -v test_sprun_worker 2>&1")
    local ran = tonumber(r.stdout:match("\nRan (%d+) tests? in"))
    assert(r.code == 0 and r.stdout:match("\nOK\n"),
           "python3 -m unittest failed:\n" .. r.stdout)
    -- Every mixed-in channel/framing class ran: 4 x the shared tests.
    for _, class in ipairs { "Fd3NdjsonTests", "Fd3Lp4Tests",
                             "StdioNdjsonTests", "StdioLp4Tests" } do
      assert.is_truthy(r.stdout:find("(test_sprun_worker." .. class .. ".",
                                     1, true), class .. " did not run")
    end
    assert.is_true(ran >= 90, "only " .. tostring(ran) .. " tests ran")
  end)
end)
