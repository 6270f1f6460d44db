-- sprun.process: run and spawn children from tasks; timeouts and
-- cancellation kill them (the pid is gone afterwards), output that arrives
-- early is kept, lines are split across chunk boundaries. Every run checks
-- that no handle is left open (h.run_tasks) and every test that no child
-- process is left.
local h = require "helpers"
local sp = require "sprun"
local sched = require "sprun.sched"

local run = h.run_tasks
local kind = sp.error_kind

-- A process that is gone: not running any more, and reaped (a zombie
-- reparented to init counts as gone: it is no longer ours to reap).
local function gone(pid)
  local state, ppid = h.proc_state(pid)
  return state == nil or (state == "Z" and ppid ~= h.getpid())
end

local wait_for = h.wait_for

describe("sprun.process", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function()
    h.rmrf(dir)
    assert.are.same({}, h.live_children())
  end)

  describe("run", function()
    it("returns code, stdout, stderr and pid; signal is nil", function()
      local r = run(function()
        return sp.process.run{ "sh", "-c", "echo out; echo err >&2; exit 7" }
      end)
      assert.is_number(r.pid)
      assert.is_true(r.pid > 1)
      r.pid = nil
      assert.are.same({ code = 7, stdout = "out\n", stderr = "err\n" }, r)
      assert.is_nil(r.signal)
    end)

    it("stderr = 'inherit' sends it to sprun's stderr, 'null' drops it; "
       .. "either way r.stderr is nil", function()
      local r = h.sprun_run { "-e", [[
local sprun = require "sprun"
for _, mode in ipairs { "inherit", "null", "pipe" } do
  local r = sprun.process.run { "sh", "-c", "echo out; echo err-" .. mode
                                .. " >&2", stderr = mode }
  print(mode, (r.stdout:gsub("\n", "")), (tostring(r.stderr):gsub("\n", "")))
end]] }
      assert.are.same({ code = 0, stderr = "err-inherit\n",
        stdout = "inherit\tout\tnil\nnull\tout\tnil\npipe\tout\terr-pipe\n" },
        r)
    end)

    it("a child killed by a signal has signal set and no code", function()
      local r = run(function()
        return sp.process.run{ "sh", "-c", "echo before; kill -SEGV $$" }
      end)
      assert.are.same({ "SIGSEGV", nil, "before\n" },
        { r.signal, r.code, r.stdout })
    end)

    it("writes the stdin string and closes it", function()
      local r = run(function()
        return sp.process.run{ "sh", "-c", "cat; echo; echo done",
          stdin = "line1\nline2" }
      end)
      assert.are.same({ 0, "line1\nline2\ndone\n" }, { r.code, r.stdout })
    end)

    it("passes a large stdin and collects a large stdout whole", function()
      local input = string.rep("0123456789abcdef", 65536) -- 1 MiB
      local r = run(function()
        local a = sp.process.run{ "wc", "-c", stdin = input }
        local b = sp.process.run{ "head", "-c", "3000000", "/dev/zero" }
        return { a.stdout, #b.stdout, b.stdout == string.rep("\0", 3000000) }
      end)
      assert.are.same({ "1048576\n", 3000000, true }, r)
    end)

    it("lays env over the inherited environment; false removes", function()
      local r = run(function()
        return sp.process.run{ "sh", "-c",
          'echo "$SPRUN_T1|${HOME+home set}|$SPRUN_T2"',
          env = { SPRUN_T1 = "one", HOME = false, SPRUN_T2 = 2 } }
      end)
      assert.are.equal("one||2\n", r.stdout)
    end)

    it("runs in cwd", function()
      local r = run(function()
        return sp.process.run{ "pwd", cwd = dir }
      end)
      local real = h.run("cd " .. h.shell_quote(dir) .. " && pwd -P").stdout
      assert.are.equal(real, r.stdout)
    end)

    it("a missing program: nil, err kind not_found", function()
      local v, err = run(function()
        return sp.process.run{ "sprun-no-such-program-xyz", "a" }
      end)
      assert.is_nil(v)
      assert.are.equal("not_found", kind(err))
      assert.are.equal("not_found: cannot run sprun-no-such-program-xyz: "
        .. "no such file or directory", tostring(err))
    end)

    it("a file that cannot be executed: nil, err kind spawn_failed",
      function()
        local path = h.write_file(dir .. "/noexec.sh", "#!/bin/sh\necho x\n")
        local v, err = run(function() return sp.process.run{ path } end)
        assert.is_nil(v)
        assert.are.equal("spawn_failed", kind(err))
        assert.are.equal("EACCES", err.details.code)
      end)

    it("timeout_ms kills the child: nil, timeout, and the pid is gone",
      function()
        -- The timeout leaves sh ample time to start and print "partial".
        local t0 = sp.hrtime()
        local v, err = run(function()
          return sp.process.run{ "sh", "-c", "echo partial; exec sleep 30",
            timeout_ms = 1000 }
        end)
        local ms = (sp.hrtime() - t0) / 1e6
        assert.is_nil(v)
        assert.are.equal("timeout", kind(err))
        assert.are.equal("timeout: sh did not finish within 1000 ms (killed)",
          tostring(err))
        assert.are.same({ 1000, "partial\n", "" }, { err.details.timeout_ms,
          err.details.stdout, err.details.stderr })
        assert.is_true(ms >= 999 and ms < 10000, "took " .. ms .. " ms")
        assert.is_true(gone(err.details.pid), "the child still exists")
      end)

    it("timeout_ms kills the child's whole process group", function()
      -- The timeout leaves sh ample time to start and print the pid.
      local v, err = run(function()
        return sp.process.run{ "sh", "-c", "sleep 30 & echo $!; wait",
          timeout_ms = 1000 }
      end)
      assert.is_nil(v)
      assert.are.equal("timeout", kind(err))
      local grandchild = tonumber(err.details.stdout)
      assert.is_number(grandchild)
      assert.is_true(h.wait_until(function() return gone(grandchild) end),
        "the grandchild still runs")
      assert.is_true(gone(err.details.pid))
    end)

    it("a child that ends in time returns its result, timer disarmed",
      function()
        local r = run(function()
          local res = sp.process.run{ "echo", "quick", timeout_ms = 5000 }
          local t = sp.now()
          sp.sleep(20)
          return { res.stdout, res.code, sp.now() - t >= 20 }
        end)
        assert.are.same({ "quick\n", 0, true }, r)
      end)

    it("works outside a loop (runs one for the call)", function()
      local r = sp.process.run{ "echo", "plain" }
      assert.are.equal("plain\n", r.stdout)
      assert.are.equal(0, sched.last_run.handles)
    end)

    it("rejects bad options at once, at the caller's line", function()
      local function at_line(f)
        local line = debug.getinfo(f, "S").linedefined
        local ok, err = pcall(f)
        assert.is_false(ok)
        return (err:gsub("^.*process_spec%.lua:" .. line .. ": ", "here: "))
      end
      assert.are.equal("here: process.run: the command (element 1) must be a "
        .. "non-empty string, got nil",
        at_line(function() sp.process.run{} end))
      assert.are.equal("here: process.run: unknown option 'timeout' (did you "
        .. "mean 'timeout_ms'?)",
        at_line(function() sp.process.run{ "echo", timeout = 5 } end))
      assert.are.equal("here: process.run: option 'timeout_ms' must be a "
        .. "number >= 0, got -1",
        at_line(function() sp.process.run{ "echo", timeout_ms = -1 } end))
      assert.are.equal("here: process.spawn: option 'env.A' must map names "
        .. "to strings, numbers or false, got table",
        at_line(function() sp.process.spawn{ "true", env = { A = {} } } end))
    end)
  end)

  describe("spawn", function()
    it("talks to a worker over stdin and stdout", function()
      local r = run(function()
        local p = sp.process.spawn{ "cat", stdin = true }
        local got = {}
        for _, msg in ipairs { "one", "two", "three" } do
          assert(p:write(msg .. "\n"))
          got[#got + 1] = p:read_line()
        end
        p:close_stdin()
        local line, err = p:read_line()
        local st = p:wait()
        return { got, line, kind(err), st.code, st.signal, st.pid == p:pid() }
      end)
      assert.are.same({ { "one", "two", "three" }, nil, "eof", 0, nil, true },
        r)
    end)

    it("read_line joins lines across chunks and strips \\r\\n", function()
      local lines = run(function()
        local p = sp.process.spawn{ "sh", "-c", "printf ab; sleep 0.03; "
          .. "printf 'c\\r\\nd'; sleep 0.03; printf 'e\\n\\nlast'" }
        local got = {}
        for i = 1, 5 do
          local line, err = p:read_line()
          got[i] = line or ("<" .. kind(err) .. ">")
        end
        p:wait()
        return got
      end)
      assert.are.same({ "abc", "de", "", "last", "<eof>" }, lines)
    end)

    it("keeps output and exit that arrive while the task sleeps", function()
      local r = run(function()
        local p = sp.process.spawn{ "sh", "-c",
          "echo first; echo second; echo err >&2; exit 5", stderr = "pipe" }
        local pid = p:pid()
        wait_for("the child to exit", function() return not h.alive(pid) end)
        local a = p:read_line()
        local st = p:wait()
        local b = p:read_line()
        local c, err = p:read_line()
        return { a, b, c, kind(err), st.code, p:read_stderr() }
      end)
      assert.are.same({ "first", "second", nil, "eof", 5, "err\n" }, r)
    end)

    it("a reader task and a task waiting for the exit share one process",
      function()
        local r = run(function()
          local p = sp.process.spawn{ "sh", "-c",
            "sleep 0.03; echo a; sleep 0.03; echo b; exit 3" }
          local reader = sp.spawn(function()
            local lines = {}
            while true do
              local line = p:read_line()
              if not line then break end
              lines[#lines + 1] = line
            end
            return table.concat(lines, ",")
          end)
          local waiters = {}
          for i = 1, 2 do
            waiters[i] = sp.spawn(function() return p:wait().code end)
          end
          return { reader:await(), waiters[1]:await(), waiters[2]:await() }
        end)
        assert.are.same({ "a,b", 3, 3 }, r)
      end)

    it("read returns what is buffered, and '' when nothing is", function()
      local r = run(function()
        local p = sp.process.spawn{ "printf", "abc\ndef" }
        local st = p:wait()
        return { p:read(), p:read(), st.code }
      end)
      assert.are.same({ "abc\ndef", "", 0 }, r)
    end)

    it("stdout is a pipe; stderr goes to sprun's stderr unless asked "
       .. "for; stdin is /dev/null unless asked for", function()
      local r = h.sprun_run { "-e", [[
local sprun = require "sprun"
local p = sprun.process.spawn { "sh", "-c",
  "echo to-stderr >&2; cat; echo out-$?" }
print(p:read_line())
print(p:wait().code)
local ok, err = pcall(function() local _ = p:read_stderr() end)
print(ok, err)]] }
      assert.are.same({ code = 0, stderr = "to-stderr\n", stdout =
        "out-0\n0\nfalse\t(command line):6: process.read_stderr: the "
        .. "process has no stderr pipe (spawn it with stderr = \"pipe\")\n" },
        r)
    end)

    it("stderr = 'pipe' keeps it for read_stderr, which takes what "
       .. "arrived", function()
      local got = run(function()
        local p = sp.process.spawn { "sh", "-c",
          "echo one >&2; echo ready; read x; echo two >&2", stdin = true,
          stderr = "pipe" }
        assert.are.equal("ready", p:read_line())
        sp.sleep(20)
        local first = p:read_stderr()
        p:write("go\n")
        assert.are.same({ code = 0, pid = p:pid() }, p:wait())
        return { first, p:read_stderr(), p:read_stderr() }
      end)
      assert.are.same({ "one\n", "two\n", "" }, got)
    end)

    it("kill sends a signal to the child; wait reports it", function()
      local r = run(function()
        local p = sp.process.spawn{ "sleep", "30" }
        local ok = p:kill("SIGTERM")
        local st = p:wait()
        return { ok, st.code, st.signal }
      end)
      assert.are.same({ true, nil, "SIGTERM" }, r)
    end)

    it("kill by number, and after exit: nil, err kind closed", function()
      local r = run(function()
        local p = sp.process.spawn{ "sleep", "30", stdin = true }
        assert(p:kill(9))
        local st = p:wait()
        local v, err = p:kill()
        local w, werr = p:write("x")
        return { st.signal, v, kind(err), w, kind(werr) }
      end)
      assert.are.same({ "SIGKILL", nil, "closed", nil, "closed" }, r)
    end)

    it("write to a child spawned without stdin = true is misuse, at the "
       .. "caller's line", function()
      local ok, err = pcall(run, function()
        local p = sp.process.spawn{ "sleep", "30" }
        local ok2, e = pcall(function() p:write("x") end)
        p:kill("SIGKILL")
        p:wait()
        error(e, 0)
      end)
      assert.is_false(ok)
      assert.matches("process_spec.lua:%d+: process.write: the process has "
        .. "no stdin pipe %(spawn it with stdin = true%)$", err)
    end)

    it("kill rejects an unknown signal", function()
      run(function()
        local p = sp.process.spawn{ "true" }
        assert.has_error(function() p:kill("SIGBOGUS") end,
          'process.kill: signal must be a signal name such as "SIGTERM" or '
          .. 'its number, got "SIGBOGUS"')
        p:wait()
      end)
    end)

    it("outside a task raises", function()
      assert.has_error(function() sp.process.spawn{ "true" } end,
        "process.spawn: must be called from a task (inside sprun.run or a "
        .. "script run by sprun)")
    end)
  end)

  describe("cancellation", function()
    it("cancelling a task blocked in wait kills and reaps the child",
      function()
        local pid
        local t0 = sp.hrtime()
        local r = run(function()
          local t = sp.spawn(function()
            local p = sp.process.spawn{ "sleep", "30" }
            pid = p:pid()
            return p:wait()
          end)
          sp.sleep(30)
          assert(h.alive(pid), "the child should run before the cancel")
          local c = t:cancel()
          local v, err = t:await()
          return { c, v, kind(err), t:status() }
        end)
        assert.are.same({ true, nil, "cancelled", "cancelled" }, r)
        assert.is_number(pid)
        assert.is_nil(h.proc_state(pid)) -- not running, not a zombie
        assert.are.equal(1, h.run("kill -0 " .. pid .. " 2>/dev/null").code)
        assert.is_true((sp.hrtime() - t0) / 1e6 < 3000)
      end)

    it("cancelling a task blocked in read_line kills the child", function()
      local pid
      local r = run(function()
        local ready = false
        local t = sp.spawn(function()
          local p = sp.process.spawn{ "sh", "-c", "echo ready; exec sleep 30" }
          pid = p:pid()
          local first = p:read_line()
          ready = first == "ready"
          return first, p:read_line()
        end)
        -- Blocked in its second read_line from here on.
        wait_for('the task to read "ready"', function() return ready end)
        t:cancel()
        return { select(2, t:await()).kind, t:status() }
      end)
      assert.are.same({ "cancelled", "cancelled" }, r)
      assert.is_nil(h.proc_state(pid))
    end)

    it("cancelling a task blocked in process.run kills the child", function()
      local pid
      run(function()
        local t = sp.spawn(function()
          return sp.process.run{ "sh", "-c", "echo $$; exec sleep 30" }
        end)
        -- The child's pid, from its own process table entry once the shell
        -- has become sleep.
        wait_for("the child to exec sleep", function()
          for _, line in ipairs(h.live_children()) do
            if line:match(" sleep ") then pid = tonumber(line:match("^%d+")) end
          end
          return pid ~= nil
        end)
        t:cancel()
        local v, err = t:await()
        assert(v == nil and kind(err) == "cancelled")
      end)
      assert.is_number(pid)
      assert.is_nil(h.proc_state(pid))
    end)

    it("cancelling a task blocked writing to a full pipe kills the child",
      function()
        local pid
        local r = run(function()
          local t = sp.spawn(function()
            local p = sp.process.spawn{ "sleep", "30", stdin = true }
            pid = p:pid()
            -- Never read: the write cannot finish.
            return p:write(string.rep("x", 4 * 1024 * 1024))
          end)
          wait_for("the task to block in its write",
            function() return t:status() == "waiting" end)
          t:cancel()
          local _, err = t:await()
          return kind(err)
        end)
        assert.are.equal("cancelled", r)
        assert.is_nil(h.proc_state(pid))
      end)

    it("a task that ends without waiting leaves its child open (a leak "
      .. "the run reports, and closing the loop kills)", function()
      local pid
      sp.run(function()
        local p = sp.process.spawn{ "sleep", "30" }
        pid = p:pid()
      end)
      assert.are.equal(1, sched.last_run.handles)
      assert.is_nil(h.proc_state(pid))
    end)

    it("a timeout due while the exit waits to be seen wakes the task once",
      function()
        local r = run(function()
          local t = sp.spawn(function()
            local res, err = sp.process.run{ "sh", "-c",
              "sleep 0.02; echo hi", timeout_ms = 40 }
            local t1 = sp.now()
            -- A stale second wake-up would end this sleep at once.
            sp.sleep(50)
            return res and res.stdout or kind(err), sp.now() - t1
          end)
          sp.sleep(0)
          -- Block the loop past the deadline: the output, the exit and the
          -- timer are all seen in one step.
          local t0 = sp.hrtime()
          while sp.hrtime() - t0 < 150e6 do end
          return { t:await() }
        end)
        assert.is_true(r[1] == "hi\n" or r[1] == "timeout", tostring(r[1]))
        assert.is_true(r[2] >= 50 and r[2] < 5000, "slept " .. r[2])
      end)
  end)

  describe("in virtual time", function()
    it("real I/O works and the clock follows the real time meanwhile",
      function()
        local t0 = sp.hrtime()
        local r = run({ clock = "virtual" }, function()
          local v0 = sp.now()
          local log = {}
          sp.spawn(function()
            sp.sleep(3600000)
            log[#log + 1] = "hour"
          end)
          local res = sp.process.run{ "sh", "-c", "sleep 0.1; echo io" }
          log[#log + 1] = "process " .. res.stdout:gsub("\n", "")
          local during = sp.now() - v0
          return { log = log, during = during }
        end)
        assert.are.same({ "process io", "hour" }, r.log)
        assert.is_true(r.during >= 90 and r.during < 3000,
          "virtual ms during the I/O: " .. r.during)
        assert.is_true((sp.hrtime() - t0) / 1e6 < 3000)
      end)

    it("a process timeout still fires around a child that hangs",
      function()
        local t0 = sp.hrtime()
        local v, err = run({ clock = "virtual" }, function()
          return sp.process.run{ "sleep", "30", timeout_ms = 100 }
        end)
        local ms = (sp.hrtime() - t0) / 1e6
        assert.is_nil(v)
        assert.are.equal("timeout", kind(err))
        assert.is_true(ms >= 90 and ms < 3000, "took " .. ms)
        assert.is_nil(h.proc_state(err.details.pid))
      end)
  end)
end)
