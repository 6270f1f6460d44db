-- scripts/pool_demo.lua (the second half of `make demo`): a pool of Python
-- workers that segfault, hang and leak, and the crash barrier's answer.
-- Which worker takes which request varies from run to run; what the
-- demo says about the requests does not.
local h = require "helpers"

describe("the pool demo", function()
  it("answers every request once, fails only the non-idempotent crashes, "
     .. "the hangs and the poison, and reaps every worker", function()
    local r = h.run("env -u LD_PRELOAD " .. h.shell_quote(h.sprun) .. " "
                    .. h.shell_quote(h.root .. "/scripts/pool_demo.lua"))
    assert(r.code == 0, r.stdout .. r.stderr)
    local lines = {}
    for l in r.stdout:gmatch("[^\n]+") do
      lines[#lines + 1] = l:gsub("^%[%s*%d+ ms%] ", "")
    end
    local failed = {}
    for _, l in ipairs(lines) do
      local i, kind = l:match("^request (%d+)[^:]*: ([%w_]+):")
      if i then failed[#failed + 1] = i .. " " .. kind end
    end
    table.sort(failed)
    -- 97 and 291 segfault (odd: not retried), 194 and 388 segfault on
    -- every worker (even: retried, then poison), 151 and 302 hang.
    assert.are.same({ "151 timeout", "194 poison_request",
      "291 worker_crash", "302 timeout", "388 poison_request",
      "97 worker_crash" }, failed)
    assert.matches("\n[^\n]*an idempotent request that segfaulted its "
                   .. "worker: survived on worker_%d\n", r.stdout)
    assert.matches("400 requests: 394 answered, 6 failed (worker_crash 2, "
                   .. "timeout 2, poison_request 2)", r.stdout, 1, true)
    local req, rep, errs, rec = r.stdout:match(
      "pool: requests (%d+) = replies (%d+) %+ errors (%d+);.-recycled "
      .. "(%d+) %(memory%)")
    assert.are.same({ 401, 395, 6 }, { tonumber(req), tonumber(rep),
                                       tonumber(errs) })
    assert.is_true(tonumber(rec) >= 1, "no worker was recycled for memory")
    assert.matches("pool stopped: every worker reaped\n$", r.stdout)
    assert.are.same({}, h.live_children())
  end)

  it("scripts/pool/worker.lua serves a pool as its header says", function()
    local sprun = require "sprun"
    local r = h.run_tasks(function()
      local pool = assert(sprun.pool.start { name = "lua", size = 2,
        concurrency = 8,
        cmd = { h.sprun, h.root .. "/scripts/pool/worker.lua" } })
      local ts = {}
      for i = 1, 8 do
        ts[i] = sprun.spawn(function() return pool:call("sleep", 100) end)
      end
      local slept = 0
      for i = 1, 8 do slept = slept + ts[i]:await() end
      local _, err = pool:call("lookup", "zz")
      local v = { pool:call("add", { 2, 3 }), pool:call("lookup", "b"),
                  err.kind, err.details.key, slept,
                  pool:call("run", { "echo", "hi" }) }
      pool:stop()
      return v
    end)
    assert.are.same({ 5, 2, "not_found", "zz", 800, "hi\n" }, r)
  end)

  it("scripts/pool/worker.py, run by hand, says it needs a pool", function()
    local r = h.run("PYTHONPATH=" .. h.shell_quote(h.root .. "/python")
      .. " python3 " .. h.shell_quote(h.root .. "/scripts/pool/worker.py")
      .. " 3<&-")
    assert.are_not.equal(0, r.code)
    assert.matches("SPRUN_CHANNEL is fd3 but file descriptor 3 is not open",
                   r.stderr, 1, true)
  end)
end)
