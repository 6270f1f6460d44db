-- The sprun executable: options, exit codes, error output, arg, paths.
local h = require "helpers"

local function script(dir, name, body)
  return h.write_file(dir .. "/" .. name, body)
end

describe("sprun executable", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  it("prints a closed breaker's state (-e)", function()
    local r = h.sprun_run { "-e", 'local sp = require "sprun"; local cb = '
      .. 'sp.circuit_breaker.start_link{name = "x", failure_threshold = 2}; '
      .. 'print(cb:state())' }
    assert.are.same({ code = 0, stdout = "closed\n", stderr = "" }, r)
  end)

  it("-v prints the version of sprun and LuaJIT", function()
    local r = h.sprun_run { "-v" }
    assert.are.equal(0, r.code)
    assert.matches("^sprun %d+%.%d+%.%d+ %(LuaJIT 2%.1", r.stdout)
  end)

  it("-h prints the usage on stdout and exits 0", function()
    local r = h.sprun_run { "-h" }
    assert.are.equal(0, r.code)
    assert.matches("^usage: sprun %[options%] script%.lua", r.stdout)
    assert.are.equal("", r.stderr)
  end)

  it("with no script prints the usage on stderr and exits 2", function()
    local r = h.sprun_run {}
    assert.are.equal(2, r.code)
    assert.matches("^usage: sprun", r.stderr)
  end)

  it("rejects an unknown option with one line, exit 2", function()
    local r = h.sprun_run { "--frobnicate", "x.lua" }
    assert.are.same({ code = 2, stdout = "",
      stderr = "sprun: unknown option '--frobnicate' (see sprun -h)\n" }, r)
  end)

  it("rejects -e without code, exit 2", function()
    local r = h.sprun_run { "-e" }
    assert.are.same({ code = 2, stdout = "",
      stderr = "sprun: option '-e' needs an argument (see sprun -h)\n" }, r)
  end)

  it("a missing script exits 2 with one line", function()
    local r = h.sprun_run { dir .. "/nosuch.lua" }
    assert.are.same({ code = 2, stdout = "", stderr = "sprun: cannot open "
      .. dir .. "/nosuch.lua: No such file or directory\n" }, r)
  end)

  it("a directory as script exits 2 with one line", function()
    local r = h.sprun_run { dir }
    assert.are.same({ code = 2, stdout = "",
      stderr = "sprun: cannot run " .. dir .. ": it is a directory\n" }, r)
  end)

  it("an uncaught error prints file:line and a traceback, exit 1", function()
    local p = script(dir, "boom.lua", "local x = 1\nlocal function f()\n"
      .. "  error(\"boom\")\nend\nf()\n")
    local r = h.sprun_run { p }
    assert.are.equal(1, r.code)
    assert.are.equal("", r.stdout)
    local first = r.stderr:match("^[^\n]*")
    assert.are.equal("sprun: " .. p .. ":3: boom", first)
    assert.matches("\nstack traceback:\n", r.stderr, 1, true)
    assert.matches(p .. ":3: in function 'f'", r.stderr, 1, true)
    assert.matches(p .. ":5: in main chunk", r.stderr, 1, true)
  end)

  it("an error object is printed with its __tostring", function()
    local r = h.sprun_run { "-e",
      'error(require("sprun").error("timeout", "too slow"))' }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: timeout: too slow", r.stderr:match("^[^\n]*"))
    assert.matches("stack traceback:", r.stderr, 1, true)
  end)

  it("a non-string error names its type", function()
    local r = h.sprun_run { "-e", "error({})" }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: (error object is a table value)",
      r.stderr:match("^[^\n]*"))
  end)

  it("a syntax error names file:line, exit 1", function()
    local p = script(dir, "syntax.lua", "local x = \nprint(\n")
    local r = h.sprun_run { p }
    assert.are.equal(1, r.code)
    assert.matches("^sprun: " .. p:gsub("%p", "%%%0")
      .. ":3: unexpected symbol near '<eof>'\n$", r.stderr)
  end)

  it("a numeric return value is the exit status", function()
    local p = script(dir, "ret.lua", "return 7")
    assert.are.equal(7, h.sprun_run({ p }).code)
    assert.are.equal(3, h.sprun_run({ "-e", "return 3" }).code)
    assert.are.equal(0, h.sprun_run({ "-e", "return 'x'" }).code)
  end)

  it("sets arg and ... as luajit does", function()
    local p = script(dir, "args.lua",
      "print(arg[0], arg[1], arg[2], #arg, select('#', ...), ...)")
    local r = h.sprun_run { p, "a", "b c" }
    assert.are.equal(0, r.code)
    assert.are.equal(p .. "\ta\tb c\t2\t2\ta\tb c\n", r.stdout)
    assert.are.equal(h.sprun, h.run("cd / && " .. h.shell_quote(h.sprun)
      .. " -e 'print(arg[-2])' | cat").stdout:gsub("\n$", ""))
  end)

  it("runs the script in a coroutine", function()
    local r = h.sprun_run { "-e",
      "print(coroutine.running() ~= nil and coroutine.status(coroutine.running()))" }
    assert.are.equal("running\n", r.stdout)
  end)

  it("finds its Lua library from any directory without LUA_PATH", function()
    local r = h.run("cd / && env -u LUA_PATH -u LUA_CPATH "
      .. h.shell_quote(h.sprun) .. " -e 'print(require(\"sprun\").version)'")
    assert.are.equal(0, r.code)
    assert.matches("^%d+%.%d+%.%d+\n$", r.stdout)
  end)
end)
