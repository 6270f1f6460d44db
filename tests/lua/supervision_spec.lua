-- Process supervision: no child of sprun outlives it, whichever way sprun
-- ends (the script returns, raises, calls os.exit; SIGINT, SIGTERM,
-- SIGHUP; SIGKILL), grandchildren in a child's group included; a shutdown
-- always ends (a second signal, or the grace period); and what the child
-- sees of the shim it is started through: nothing.
--
-- Every process is found by its pid or its process group, never by name.
local sprun = require "sprun"
local h = require "helpers"

-- Starts `cmd` (sprun, its options, a script and its arguments), reads
-- its "ready" line (the pids of the groups it started), and returns the
-- process and those pids.
local function start(cmd)
  cmd.stdin, cmd.stderr = true, "pipe"
  local p = assert(sprun.process.spawn(cmd))
  local line = assert(p:read_line())
  local pids = {}
  for pid in line:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  assert(line:match("^ready"), line)
  return p, pids
end

-- The groups of `pids` that still have a live process after `limit_ms`.
local function left_after(pids, limit_ms)
  local left = {}
  h.wait_until(function()
    left = {}
    for _, pid in ipairs(pids) do
      local m = h.group_members(pid)
      if #m > 0 then left[#left + 1] = table.concat(m, "; ") end
    end
    return #left == 0
  end, limit_ms)
  return left
end

-- A script with three live groups: a process.spawn, a shell whose
-- grandchild stays in its group, and a process.run in a task of its own
-- (its shell writes its pid to a file first). `mode` says how it ends.
local SCRIPT = [[
local sprun = require "sprun"
local mode, dir = arg[1], arg[2]
local a = assert(sprun.process.spawn { "sleep", "100" })
local g = assert(sprun.process.spawn { "sh", "-c",
  "sleep 101 & echo $!; wait" })
local grandchild = assert(g:read_line())
local runner = sprun.spawn(function()
  return sprun.process.run { "sh", "-c", "echo $$ > " .. dir
    .. "/run.pid; exec sleep " .. (mode == "return" and "0.2" or "102") }
end)
local f
while true do
  f = io.open(dir .. "/run.pid")
  if f and f:read("*l") then break end
  sprun.sleep(5)
end
f:seek("set")
local run_pid = f:read("*l")
f:close()
print("ready " .. a:pid() .. " " .. g:pid() .. " " .. run_pid .. " "
      .. grandchild)
io.stdout:flush()
if mode == "return" then
  return 0
elseif mode == "error" then
  error("the script failed")
elseif mode == "exit" then
  os.exit(3)
end
sprun.sleep(1e9)
]]

describe("no child outlives sprun", function()
  local dir, script
  before_each(function()
    dir = h.tmpdir()
    script = h.write_file(dir .. "/children.lua", SCRIPT)
  end)
  after_each(function() h.rmrf(dir) end)

  for _, c in ipairs {
    { "return", nil, 0 },
    { "error", nil, 1 },
    { "exit", nil, 3 },
    { "wait", "SIGINT", 130 },
    { "wait", "SIGTERM", 143 },
    { "wait", "SIGHUP", 129 },
    { "wait", "SIGKILL", nil, "SIGKILL" },
  } do
    local mode, sig, code, killed = c[1], c[2], c[3], c[4]
    it("when " .. (sig and "it gets " .. sig or "the script ends by "
       .. mode) .. ": every group is gone within 1 s", function()
      local status, left
      h.run_tasks(function()
        local p, pids = start { h.sprun, script, mode, dir }
        assert.are.equal(4, #pids)
        if sig then
          sprun.sleep(50)
          assert(p:kill(sig))
        end
        status = p:wait()
        -- The grandchild is in the shell's group: its group is the shell's.
        left = left_after({ pids[1], pids[2], pids[3] }, 1000)
        assert.is_false(h.alive(pids[4]), "grandchild " .. pids[4])
      end)
      assert.are.same({}, left)
      assert.are.same({ code, killed }, { status.code, status.signal })
    end)
  end
end)

describe("a shutdown always ends", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  -- A task that catches every cancellation and waits again.
  local CATCH_ALL = [[
local sprun = require "sprun"
print("ready")
io.stdout:flush()
while true do
  pcall(sprun.sleep, 1000)
end
]]

  it("a task that keeps catching the cancellation is stopped at the end "
     .. "of the grace period, and named", function()
    local script = h.write_file(dir .. "/catch.lua", CATCH_ALL)
    local r
    h.run_tasks(function()
      local p = start { h.sprun, "--shutdown-grace-ms", "400", script }
      assert(p:kill("SIGINT"))
      local t0 = sprun.now()
      local st = p:wait()
      r = { code = st.code, ms = sprun.now() - t0 }
    end)
    assert.are.equal(130, r.code)
    assert.is_true(r.ms >= 350 and r.ms < 1500, r.ms .. " ms")
  end)

  it("says which task keeps running after it was cancelled", function()
    local script = h.write_file(dir .. "/catch.lua", CATCH_ALL)
    local r = h.run(h.shell_quote(h.sprun) .. " --shutdown-grace-ms 300 "
      .. h.shell_quote(script) .. " & pid=$!; sleep 0.3; kill -INT $pid; "
      .. "wait $pid")
    assert.are.equal(130, r.code)
    assert.are.equal("ready\n", r.stdout)
    assert.are.equal("sprun: task 1 was cancelled but keeps waiting (1000 "
      .. "waits since): something catches the cancellation (a pcall around "
      .. "a wait?)\nsprun: tasks still running 300 ms after SIGINT; killing "
      .. "what is left and exiting\n", r.stderr)
  end)

  for _, second in ipairs { "SIGINT", "SIGTERM" } do
    it("a second signal (SIGINT, then " .. second .. ") kills what is left "
       .. "and exits at once", function()
      local r
      h.run_tasks(function()
        local p, child
        -- A child of the catch-all task, to see it go too.
        local script = h.write_file(dir .. "/catch2.lua", [[
local sprun = require "sprun"
local c = assert(sprun.process.spawn { "sleep", "100" })
print("ready " .. c:pid())
io.stdout:flush()
while true do
  pcall(sprun.sleep, 1000)
end
]])
        p, child = start { h.sprun, script }
        assert(p:kill("SIGINT"))
        sprun.sleep(300)
        assert(p:kill(second))
        local t0 = sprun.now()
        local st = p:wait()
        r = { code = st.code, ms = sprun.now() - t0,
              left = left_after(child, 1000) }
      end)
      -- The first signal's status.
      assert.are.equal(130, r.code)
      assert.is_true(r.ms < 200, r.ms .. " ms")
      assert.are.same({}, r.left)
    end)
  end
end)

describe("os.exit under sprun", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  it("cancels every task, lets their cleanup run, kills the children and "
     .. "exits with the code", function()
    local script = h.write_file(dir .. "/exit.lua", [[
local sprun = require "sprun"
local c = assert(sprun.process.spawn { "sleep", "100" })
sprun.spawn(function()
  local _, err = pcall(sprun.sleep, 1e9)
  print("cleanup: " .. sprun.error_kind(err))
end)
sprun.sleep(10)
print("ready " .. c:pid())
io.stdout:flush()
os.exit(3)
print("not reached")
]])
    local r
    h.run_tasks(function()
      local p, child = start { h.sprun, script }
      local st = p:wait()
      r = { code = st.code, rest = p:read(), left = left_after(child, 1000) }
    end)
    assert.are.same({ code = 3, rest = "cleanup: cancelled\n", left = {} }, r)
  end)

  it("true, false and a status outside 0..255 exit as os.exit does",
    function()
    for _, c in ipairs { { "true", 0 }, { "false", 1 }, { "300", 44 },
                         { "", 0 } } do
      local r = h.sprun_run { "-e", "os.exit(" .. c[1] .. ")" }
      assert.are.same({ c[2], "", "" }, { r.code, r.stdout, r.stderr },
                      "os.exit(" .. c[1] .. ")")
    end
  end)

  it("a task that keeps running after os.exit is stopped at the end of "
     .. "the grace period, with the code", function()
    local r = h.sprun_run { "--shutdown-grace-ms", "200", "-e", [[
local sprun = require "sprun"
sprun.spawn(function() while true do pcall(sprun.sleep, 1000) end end)
sprun.sleep(10)
os.exit(7)]] }
    assert.are.same({ 7, "" }, { r.code, r.stdout })
    assert.matches("sprun: tasks still running 200 ms after os.exit; "
      .. "killing what is left and exiting\n$", r.stderr)
  end)
end)

describe("the shim children start through", function()
  it("changes nothing the child sees: argv[0], its arguments, the "
     .. "environment, its parent, its exit status", function()
    local r = h.run_tasks(function()
      return sprun.process.run { "sh", "-c", 'printf "%s|%s|%s|%s" "$0" "$1" '
        .. '"$SPRUN_T" "$(tr "\\0" " " < /proc/$$/cmdline)"; exit 7',
        "zero", "one", env = { SPRUN_T = "x y" } }
    end)
    assert.are.same({ 7, "zero|one|x y|sh -c printf \"%s|%s|%s|%s\" \"$0\" "
      .. "\"$1\" \"$SPRUN_T\" \"$(tr \"\\0\" \" \" < /proc/$$/cmdline)\"; exit "
      .. "7 zero one " }, { r.code, r.stdout })
  end)

  it("is the process sprun sees: its pid, its parent sprun, the signal "
     .. "that ends it", function()
    local pid, state_parent, st
    h.run_tasks(function()
      local p = assert(sprun.process.spawn { "sleep", "30" })
      pid = p:pid()
      h.wait_for("the sleep to be exec'd", function()
        local f = io.open("/proc/" .. pid .. "/cmdline")
        local s = f and f:read("*a")
        if f then f:close() end
        return s == "sleep\0" .. "30\0"
      end)
      state_parent = select(2, h.proc_state(pid))
      p:kill("SIGSEGV")
      st = p:wait()
    end)
    assert.are.equal(h.getpid(), state_parent)
    assert.are.same({ pid = pid, signal = "SIGSEGV" }, st)
  end)
end)

describe("an app that embeds sprun under plain luajit", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  local env = "LUA_PATH=" .. h.shell_quote(h.root .. "/lua/?.lua;"
    .. h.root .. "/lua/?/init.lua;;") .. " LUA_CPATH="
    .. h.shell_quote(h.build .. "/lib/lua/5.1/?.so;;")

  local HOST = [[
local sprun = require "sprun"
sprun.run(function()
  local a = assert(sprun.process.spawn { "sleep", "100" })
  local g = assert(sprun.process.spawn { "sh", "-c", "sleep 101 & echo $!; wait" })
  local grandchild = g:read_line()
  print("ready " .. a:pid() .. " " .. g:pid() .. " " .. grandchild)
  io.stdout:flush()
  if arg[1] == "exit" then os.exit(4) end
  sprun.sleep(1e9)
end)
]]

  for _, c in ipairs { { "exit", nil, 4 }, { "wait", "SIGKILL" } } do
    it("loses no child when the host " .. (c[2] and "is killed with "
       .. c[2] or "calls os.exit"), function()
      local host = h.write_file(dir .. "/host.lua", HOST)
      local status, left, grandchild_alive
      h.run_tasks(function()
        local p, pids = start { "sh", "-c", "exec env " .. env
          .. " luajit " .. h.shell_quote(host) .. " " .. c[1] }
        if c[2] then
          assert(p:kill(c[2]))
        end
        status = p:wait()
        left = left_after({ pids[1], pids[2] }, 1000)
        grandchild_alive = h.alive(pids[3])
      end)
      assert.are.same({}, left)
      assert.is_false(grandchild_alive)
      assert.are.same({ c[3], c[2] }, { status.code, status.signal })
    end)
  end

  it("with sprun.run{ signals = true }, os.exit shuts down as under sprun",
    function()
    local host = h.write_file(dir .. "/host2.lua", [[
local sprun = require "sprun"
sprun.run({ signals = true }, function()
  sprun.spawn(function()
    local _, err = pcall(sprun.sleep, 1e9)
    print("cleanup: " .. sprun.error_kind(err))
  end)
  sprun.sleep(5)
  os.exit(6)
end)
print("not reached")
]])
    local r = h.run("env " .. env .. " luajit " .. h.shell_quote(host))
    assert.are.same({ 6, "cleanup: cancelled\n", "" },
                    { r.code, r.stdout, r.stderr })
  end)

  it("with sprun.run{ signals = true }, SIGINT cancels the tasks, then "
     .. "exits 130 as sprun does", function()
    local host = h.write_file(dir .. "/host3.lua", [[
local sprun = require "sprun"
sprun.run({ signals = true }, function()
  print("ready")
  io.stdout:flush()
  local _, err = pcall(sprun.sleep, 1e9)
  print("cleanup: " .. sprun.error_kind(err))
end)
print("not reached")
]])
    local r
    h.run_tasks(function()
      local p = start { "sh", "-c", "exec env " .. env .. " luajit "
                        .. h.shell_quote(host) }
      assert(p:kill("SIGINT"))
      local st = p:wait()
      r = { st.code, p:read() }
    end)
    assert.are.same({ 130, "cleanup: cancelled\n" }, r)
  end)
end)
