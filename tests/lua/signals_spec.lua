-- SIGINT and SIGTERM sent to the sprun executable: every task is
-- cancelled, its cleanups run, its child processes are killed, and sprun
-- exits 130 / 143. The script is started in the background from a shell,
-- signalled once it printed "ready", and waited for.
local h = require "helpers"

-- Runs `body` as a script with sprun (extra options before the script),
-- sends it `sig` once it printed a line "ready" (at most 5 s later), and
-- returns { code, stdout, stderr }.
local function run_signalled(dir, body, sig, opts)
  local path = h.write_file(dir .. "/script.lua", body)
  local out, err = dir .. "/out", dir .. "/err"
  local q = h.shell_quote
  local cmd = table.concat({
    q(h.sprun) .. " " .. (opts or "") .. " " .. q(path) .. " >" .. q(out)
      .. " 2>" .. q(err) .. " & pid=$!",
    "i=0",
    "while ! grep -qsx ready " .. q(out) .. " && [ $i -lt 500 ]; do",
    "  sleep 0.01; i=$((i+1))",
    "done",
    "kill -" .. sig .. " $pid",
    "wait $pid",
    "echo $?",
  }, "\n")
  local r = h.run(cmd)
  assert(r.code == 0 and r.stderr == "", "the shell failed: " .. r.stderr)
  return {
    code = tonumber(r.stdout:match("(%d+)%s*$")),
    stdout = h.read_file(out),
    stderr = h.read_file(err),
  }
end

-- The lines of s, sorted (cleanups of different tasks run in no set
-- order).
local function sorted_lines(s)
  local lines = {}
  for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
  table.sort(lines)
  return lines
end

local function gone(pid)
  local state, ppid = h.proc_state(pid)
  return state == nil or (state == "Z" and ppid ~= h.getpid())
end

-- A script: a child process, a spawned task and the main task, each with a
-- cleanup that prints; prints "child <pid>" and "ready", then sleeps.
local SCRIPT = [[
local sp = require "sprun"
local p = sp.process.spawn{ "sleep", "30" }
sp.spawn(function()
  local ok, err = pcall(sp.sleep, 60000)
  print("task cleanup: " .. tostring(ok) .. " " .. sp.error_kind(err))
  error(err, 0)
end)
print("child " .. p:pid())
print("ready")
io.stdout:flush()
local ok, err = pcall(sp.sleep, 60000)
print("main cleanup: " .. tostring(ok) .. " " .. sp.error_kind(err))
]]

describe("sprun executable and signals", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function()
    h.rmrf(dir)
    assert.are.same({}, h.live_children())
  end)

  for _, case in ipairs { { "INT", 130 }, { "TERM", 143 } } do
    local sig, status = case[1], case[2]
    it("SIG" .. sig .. " cancels every task, runs their cleanups, kills the "
      .. "child and exits " .. status, function()
      local r = run_signalled(dir, SCRIPT, sig)
      assert.are.equal(status, r.code)
      assert.are.equal("", r.stderr)
      local child = tonumber(r.stdout:match("^child (%d+)\n"))
      assert.is_number(child)
      assert.are.same({ "child " .. child, "main cleanup: false cancelled",
        "ready", "task cleanup: false cancelled" }, sorted_lines(r.stdout))
      assert.is_true(gone(child), "the child process still runs")
    end)
  end

  it("a signal after the main chunk returned cancels the tasks left",
    function()
      local r = run_signalled(dir, [[
local sp = require "sprun"
sp.spawn(function()
  local ok, err = pcall(sp.sleep, 60000)
  print("late task cleanup: " .. sp.error_kind(err))
end)
print("ready")
io.stdout:flush()
return 0
]], "INT")
      assert.are.same({ code = 130, stdout = "ready\nlate task cleanup: "
        .. "cancelled\n", stderr = "" }, r)
    end)

  it("cancels a task blocked in a process wait and kills the child",
    function()
      local r = run_signalled(dir, [[
local sp = require "sprun"
local p = sp.process.spawn{ "sh", "-c", "sleep 30 & echo $!; wait" }
local grandchild = p:read_line()
print("child " .. p:pid() .. " " .. grandchild)
print("ready")
io.stdout:flush()
local st, err = p:wait()
print("wait returned " .. tostring(st) .. " " .. tostring(err))
]], "TERM")
      assert.are.equal(143, r.code)
      assert.are.equal("", r.stderr)
      local child, grandchild = r.stdout:match("^child (%d+) (%d+)\nready\n$")
      assert.is_not_nil(child, r.stdout)
      assert.is_true(gone(tonumber(child)))
      assert.is_true(h.wait_until(function() return gone(tonumber(grandchild))
        end), "the child's own child still runs")
    end)

  it("cancels a task blocked in a TCP read", function()
    local r = run_signalled(dir, [[
local sp = require "sprun"
local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
  local v, err = conn:read()
  print("server saw " .. sp.error_kind(err))
end)
local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
print("ready")
io.stdout:flush()
local ok, err = pcall(c.read, c)
print("client read: " .. tostring(ok) .. " " .. sp.error_kind(err))
]], "INT")
    assert.are.equal(130, r.code)
    assert.are.equal("", r.stderr)
    -- The server task is cancelled too (it is waiting in its read).
    assert.are.same({ "client read: false cancelled", "ready" },
      sorted_lines(r.stdout))
  end)

  it("exits 130 even if the script swallows the cancellation and returns 0;"
    .. " its next wait raises it again", function()
      local r = run_signalled(dir, [[
local sp = require "sprun"
print("ready")
io.stdout:flush()
pcall(sp.sleep, 60000)
local ok, err = pcall(sp.sleep, 1)
print("second wait: " .. tostring(ok) .. " " .. sp.error_kind(err))
return 0
]], "INT")
      assert.are.same({ code = 130, stdout = "ready\nsecond wait: false "
        .. "cancelled\n", stderr = "" }, r)
    end)

  it("works in virtual time while a child process runs", function()
    local r = run_signalled(dir, [[
local sp = require "sprun"
local p = sp.process.spawn{ "sleep", "30" }
print("ready")
io.stdout:flush()
local ok, err = pcall(p.wait, p)
print("cleanup " .. p:pid() .. " " .. sp.error_kind(err))
]], "TERM", "--virtual-time")
    assert.are.equal(143, r.code)
    local pid = tonumber(r.stdout:match("cleanup (%d+) cancelled\n$"))
    assert.is_number(pid, r.stdout)
    assert.is_true(gone(pid))
  end)

  it("without a signal the same script ends normally", function()
    local r = h.sprun_run { "-e", [[
local sp = require "sprun"
local p = sp.process.spawn{ "sleep", "0.01" }
print(p:wait().code)
]] }
    assert.are.same({ code = 0, stdout = "0\n", stderr = "" }, r)
  end)
end)
