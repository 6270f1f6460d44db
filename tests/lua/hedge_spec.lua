-- executor.execute_hedged: hedges start after delay_ms (exactly, under
-- virtual time) or at once after a failure hedge_on accepts; the first
-- success wins and every loser is cancelled for real, which the last
-- specs show by pid (its child process is gone), by socket (the server
-- sees its connection close, and this process holds no more descriptors
-- than before) and by HTTP transfer (the server's handler sees the client
-- go); a budget that refuses means no hedge; misuse is named.
local sprun = require "sprun"
local h = require "helpers"
local fault = require "httpd.fault_server"

local ex = sprun.executor
local vrun = h.vrun

local function down(what) return nil, sprun.error("unavailable", what) end

local open_fds = h.open_fds

describe("executor.execute_hedged", function()
  it("starts a hedge after delay_ms; the first success wins and the "
     .. "others are cancelled at once", function()
    local starts, stopped, events = {}, {}, {}
    for _, e in ipairs { "started", "won" } do
      sprun.telemetry.attach("hedge_" .. e, { "sprun", "hedge", e },
        function(_, m) events[#events + 1] = { e, m.attempt, m.after_ms,
                                               m.cancelled } end)
    end
    local v, at = vrun(function()
      local t0, n = sprun.now(), 0
      local r = ex.execute_hedged(function(x)
        n = n + 1
        local me = n
        starts[me] = sprun.now() - t0
        local ok = pcall(sprun.sleep, ({ 1000, 70, 10 })[me])
        if not ok then
          stopped[me] = sprun.now() - t0
          error("cancelled attempts do not get here", 0)
        end
        return x .. me
      end, { delay_ms = 50, max_hedges = 2, name = "h1" }, "attempt ")
      return r, sprun.now() - t0
    end)
    for _, e in ipairs { "started", "won" } do
      sprun.telemetry.detach("hedge_" .. e)
    end
    -- 1 at 0 (1000 ms), 2 at 50 (70 ms), 3 at 100 (10 ms): 3 wins at 110.
    assert.are.same({ "attempt 3", 110 }, { v, at })
    assert.are.same({ 0, 50, 100 }, starts)
    assert.are.same({ 110, 110 }, { stopped[1], stopped[2] })
    assert.are.same({ { "started", 2, 50 }, { "started", 3, 100 },
                      { "won", 3, nil, 2 } }, events)
    h.assert_no_handles()
  end)

  it("a first attempt done before delay_ms starts no hedge", function()
    local n = 0
    local v = vrun(function()
      return ex.execute_hedged(function() n = n + 1 sprun.sleep(49)
        return "fast" end, { delay_ms = 50 })
    end)
    assert.are.same({ "fast", 1 }, { v, n })
  end)

  it("hedges at once after a failure hedge_on accepts, not after one it "
     .. "refuses; all failed is the last failure with details.hedges",
    function()
    local starts = {}
    local r, err = vrun(function()
      local t0, n = sprun.now(), 0
      return ex.execute_hedged(function()
        n = n + 1
        starts[n] = sprun.now() - t0
        sprun.sleep(5)
        return down("no " .. n)
      end, { delay_ms = 100, max_hedges = 3 })
    end)
    assert.is_nil(r)
    assert.are.same({ 0, 5, 10, 15 }, starts)
    assert.are.same({ "no 4", 3 }, { err.message, err.details.hedges })
    local calls = 0
    r, err = vrun(function()
      return ex.execute_hedged(function()
        calls = calls + 1
        return nil, sprun.error("bad_input", "mine")
      end, { delay_ms = 100, max_hedges = 3,
             hedge_on = function(e) return e.kind ~= "bad_input" end })
    end)
    assert.are.same({ 1, "bad_input", 0 }, { calls, err.kind,
                                             err.details.hedges })
  end)

  it("draws its hedges on the budget of its name: one that refuses means "
     .. "no hedge, never a wait", function()
    local n = 0
    local v, at = vrun(function()
      local t0 = sprun.now()
      local r = ex.execute_hedged(function()
        n = n + 1
        sprun.sleep(200)
        return n
      end, { delay_ms = 50, max_hedges = 2, name = "no_room",
             budget = { ratio = 0, min_retries_per_s = 0 } })
      return r, sprun.now() - t0
    end)
    assert.are.same({ 1, 1, 200 }, { v, n, at })
  end)

  it("kills a loser's child process and closes its socket, by pid and by "
     .. "descriptor", function()
    local pids, server_saw_close = {}, false
    local before
    h.run_tasks(function()
      local server = assert(sprun.tcp.listen("127.0.0.1", 0, function(c)
        while c:read() do end
        server_saw_close = true
      end))
      -- The loop's watchdog starts with its first child: counted before.
      assert(sprun.process.run { "true" })
      sprun.sleep(10)
      before = open_fds()
      local n = 0
      local v = ex.execute_hedged(function()
        n = n + 1
        local me = n
        local conn = assert(sprun.tcp.connect("127.0.0.1", server.port))
        local p = assert(sprun.process.spawn { "sh", "-c",
                                               "echo $$; exec sleep 30" })
        pids[me] = tonumber(p:read_line())
        if me == 1 then
          p:wait() -- until it is killed
        end
        p:kill("SIGKILL")
        p:wait()
        conn:close()
        return "hedge " .. me
      end, { delay_ms = 100 })
      assert.are.equal("hedge 2", v)
      -- Returned once the loser stopped: its process got SIGKILL then,
      -- not 30 s later.
      h.wait_for("the loser's process gone", function()
        return not h.alive(pids[1])
      end, 1000)
      h.wait_for("the server sees the loser's connection close",
                 function() return server_saw_close end, 2000)
      assert.are.equal(before, (open_fds()))
      server:close()
    end)
    assert.is_number(pids[1])
    assert.is_false(h.alive(pids[2]))
  end)

  it("aborts a loser's HTTP transfer", function()
    h.run_tasks(function()
      local fs = fault.start()
      local urls = { fs:url("/never"), fs:url("/ok") }
      local n = 0
      local t0 = sprun.now()
      local r = ex.execute_hedged(function()
        n = n + 1
        return sprun.http.get(urls[n], { timeout_ms = 30000 })
      end, { delay_ms = 100 })
      assert.are.equal(200, r.status)
      -- The hedge to the same origin is not held behind the hung request
      -- (libcurl's PIPEWAIT is for https only).
      local took = sprun.now() - t0
      assert.is_true(took < 5000, tostring(took))
      h.wait_for("the /never handler sees its client go", function()
        return fs.open <= 1
      end, 2000)
      assert.are.equal(1, fs.hits["/never"])
      fs:close()
    end)
  end)

  it("names what is wrong", function()
    local function msg(...)
      local ok, e = pcall(ex.execute_hedged, ...)
      assert.is_false(ok)
      return e
    end
    local fn = function() end
    assert.matches("executor.execute_hedged: fn must be a function, got nil",
                   msg(nil, { delay_ms = 1 }), 1, true)
    assert.matches("executor.execute_hedged: option 'delay_ms' must be a "
                   .. "number >= 0, got nil", msg(fn, {}), 1, true)
    assert.matches("executor.execute_hedged: option 'max_hedges' must be an "
                   .. "integer >= 1, got 0",
                   msg(fn, { delay_ms = 1, max_hedges = 0 }), 1, true)
    assert.matches("executor.execute_hedged: option 'hedge_on' must be a "
                   .. "function, got 3",
                   msg(fn, { delay_ms = 1, hedge_on = 3 }), 1, true)
    assert.matches("executor.execute_hedged: option 'budget' must be a "
                   .. "table of retry budget options",
                   msg(fn, { delay_ms = 1, budget = 0.1 }), 1, true)
    assert.matches("executor.execute_hedged.budget: option 'ratio' must be "
                   .. "a number >= 0",
                   msg(fn, { delay_ms = 1, budget = { ratio = -1 } }), 1,
                   true)
  end)
end)
