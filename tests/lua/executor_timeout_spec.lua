-- sprun.executor.execute_with_timeout: the operation's values and errors,
-- a crash's traceback, and a timeout that cancels the operation for real:
-- its timers, child tasks, processes (and their process groups) and
-- sockets. Timing is checked exactly in virtual time; the process and
-- socket tests use real time (a child's exit is real I/O).
local sprun = require "sprun"
local helpers = require "helpers"

local ex = sprun.executor
local vrun, assert_no_handles, pack =
  helpers.vrun, helpers.assert_no_handles, helpers.pack
local proc_state = helpers.proc_state

-- Waits (up to about `ms`) until the process no longer runs: gone, or a
-- zombie. Returns its last state.
local function wait_stopped(pid, ms)
  helpers.wait_until(function() return not helpers.alive(pid) end, ms)
  return (proc_state(pid))
end

describe("executor", function()
  describe("execute_with_timeout", function()
    it("returns the operation's values on success, nils included", function()
      local res = pack(vrun(function()
        return ex.execute_with_timeout(function(x)
          sprun.sleep(10)
          return x, nil, false, nil
        end, { timeout_ms = 100 }, "v")
      end))
      assert_no_handles()
      assert.are.same({ n = 4, "v", nil, false, nil }, res)
    end)

    it("returns the operation's own nil, err unchanged", function()
      local mine = sprun.error("unavailable", "down")
      local r, err = ex.execute_with_timeout(function() return nil, mine end,
        { timeout_ms = 100 })
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal(mine, err)
    end)

    it("gives kind task_crashed with the error and traceback in details",
      function()
        local function inner_failing_function()
          error("disk on fire", 0)
        end
        local r, err = vrun(function()
          return ex.execute_with_timeout(function()
            sprun.sleep(5)
            inner_failing_function()
          end, { timeout_ms = 100 })
        end)
        assert_no_handles()
        assert.is_nil(r)
        assert.are.equal("task_crashed", err.kind)
        assert.are.equal("disk on fire", err.message)
        assert.are.equal("disk on fire", err.details.error)
        local tb = err.details.traceback
        assert.are.equal(1, tb:find("disk on fire\nstack traceback:\n", 1,
                                    true))
        assert.truthy(tb:find("inner_failing_function", 1, true))
        assert.truthy(tb:find("executor_timeout_spec.lua", 1, true))
      end)

    it("keeps a raised table as details.error", function()
      local raised = { code = 42 }
      local _, err = ex.execute_with_timeout(function() error(raised) end,
        { timeout_ms = 100 })
      assert_no_handles()
      assert.are.equal("task_crashed", err.kind)
      assert.are.equal(raised, err.details.error)
    end)

    it("cancels the operation for real: its timers and child tasks stop",
      function()
        local reached, child_reached = false, false
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            sprun.spawn(function()
              sprun.sleep(10000)
              child_reached = true
            end)
            sprun.sleep(10000)
            reached = true
          end, { timeout_ms = 300 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        -- The loop ended at 300: no timer of the operation was left.
        assert.are.equal(300, elapsed)
        assert.is_false(reached)
        assert.is_false(child_reached)
      end)

    it("kills a `sleep 30` started with process.run inside the operation, "
       .. "and reaps it", function()
      local dir = helpers.tmpdir()
      local pidfile = dir .. "/pid"
      local t0 = sprun.hrtime()
      -- The timeout leaves sh ample time to start and write its pid.
      local r, err, after = sprun.run(function()
        local a, b = ex.execute_with_timeout(function()
          return sprun.process.run { "sh", "-c",
            "echo $$ > " .. helpers.shell_quote(pidfile) .. "; exec sleep 30" }
        end, { timeout_ms = 1000 })
        return a, b, sprun.now()
      end)
      local took_ms = (sprun.hrtime() - t0) / 1e6
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.are.equal(1000, err.details.timeout_ms)
      assert.is_number(after)
      assert.is_true(took_ms < 10000, "took " .. took_ms .. " ms")
      local pid = tonumber((helpers.read_file(pidfile):gsub("%s+", "")))
      helpers.rmrf(dir)
      assert.is_number(pid)
      -- Reaped by the time sprun.run returned: no process, not even a zombie.
      assert.is_nil(proc_state(pid))
      assert.are_not.equal(0, os.execute("kill -0 " .. pid .. " 2>/dev/null"))
    end)

    it("kills a worker started with process.spawn inside the operation",
      function()
        local pid
        local _, err = sprun.run(function()
          return ex.execute_with_timeout(function()
            local w = assert(sprun.process.spawn { "sh", "-c",
              "echo ready; exec sleep 30" })
            pid = w:pid()
            assert(w:read_line() == "ready")
            return w:wait()
          end, { timeout_ms = 300 })
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        assert.is_number(pid)
        assert.is_nil(proc_state(pid))
      end)

    it("kills the child's whole process group", function()
      local dir = helpers.tmpdir()
      local pidfile = dir .. "/pid"
      -- The timeout leaves sh ample time to start and write the pid.
      local _, err = sprun.run(function()
        return ex.execute_with_timeout(function()
          return sprun.process.run { "sh", "-c", "sleep 30 & echo $! > "
            .. helpers.shell_quote(pidfile) .. "; wait" }
        end, { timeout_ms = 1000 })
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      local pid = tonumber((helpers.read_file(pidfile):gsub("%s+", "")))
      helpers.rmrf(dir)
      -- The grandchild is not ours to reap: it must not run any more (gone,
      -- or a zombie left to whoever adopted it).
      local st = wait_stopped(pid, 2000)
      assert.is_true(st == nil or st == "Z", "state " .. tostring(st))
    end)

    it("closes the operation's sockets", function()
      local server_saw
      local _, err = sprun.run(function()
        local server = assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
          conn:write("hello\n")
          local line, e = conn:read_line()
          server_saw = line or sprun.error_kind(e)
        end))
        local got
        -- The timeout leaves ample time to connect and read "hello".
        local a, b = ex.execute_with_timeout(function()
          local conn = assert(sprun.tcp.connect("127.0.0.1", server.port))
          got = conn:read_line()
          conn:read_line() -- the server sends nothing more: blocks
        end, { timeout_ms = 1000 })
        assert(got == "hello", got)
        -- Give the handler the time to see the end of the stream.
        local deadline = sprun.now() + 10000
        while not server_saw and sprun.now() < deadline do
          sprun.sleep(5)
        end
        server:close()
        return a, b
      end)
      assert_no_handles()
      assert.are.equal("timeout", err.kind)
      assert.are.equal("closed", server_saw)
    end)

    it("lets the outer of two nested timeouts win when it is shorter",
      function()
        local inner_err
        local _, err, elapsed = vrun(function()
          local t0 = sprun.now()
          local a, b = ex.execute_with_timeout(function()
            local r, e = ex.execute_with_timeout(function()
              sprun.sleep(5000)
              return "x"
            end, { timeout_ms = 1000 })
            inner_err = e
            return r, e
          end, { timeout_ms = 100 })
          return a, b, sprun.now() - t0
        end)
        assert_no_handles()
        assert.are.equal("timeout", err.kind)
        assert.are.equal(100, err.details.timeout_ms)
        assert.are.equal(100, elapsed)
        -- The inner call never returned: its task was cancelled in its wait.
        assert.is_nil(inner_err)
      end)

    it("times out an operation that swallows its cancellation", function()
      local second
      local r, err, elapsed = vrun(function()
        local t0 = sprun.now()
        local a, b = ex.execute_with_timeout(function()
          pcall(sprun.sleep, 5000)
          -- Cancelled: any further wait raises at once.
          local ok, e = pcall(sprun.sleep, 10)
          second = { ok, sprun.error_kind(e) }
          return "swallowed"
        end, { timeout_ms = 100 })
        return a, b, sprun.now() - t0
      end)
      assert_no_handles()
      assert.is_nil(r)
      assert.are.equal("timeout", err.kind)
      assert.are.equal(100, elapsed)
      assert.are.same({ false, "cancelled" }, second)
    end)

    it("returns at once when timeout_ms = 0 and the operation does not "
       .. "wait", function()
      assert.are.equal("quick", ex.execute_with_timeout(function()
        return "quick"
      end, { timeout_ms = 0 }))
      assert_no_handles()
      local _, err = vrun(function()
        return ex.execute_with_timeout(function() sprun.sleep(1) end,
                                       { timeout_ms = 0 })
      end)
      assert.are.equal("timeout", err.kind)
    end)
  end)
end)
