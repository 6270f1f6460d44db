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

  it("with no script says so, prints the usage on stderr and exits 2",
    function()
      local r = h.sprun_run {}
      assert.are.equal(2, r.code)
      assert.matches("^sprun: no script given %(give the path of a Lua "
                     .. "file, or %-e CODE%)\n\nusage: sprun", r.stderr)
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

  it("a misuse error's traceback starts at the caller's line, without "
     .. "sprun's own frames", function()
    local p = script(dir, "misuse.lua", "local sprun = require 'sprun'\n"
      .. "local cb = sprun.circuit_breaker.start_link { name = 'db' }\n"
      .. "local function f()\n  cb.call(function() end)\nend\nf()\n")
    local r = h.sprun_run { p }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: " .. p .. ":4: circuit_breaker.call: self must "
      .. "be a circuit breaker, got function (did you mean cb:call(...)?)\n"
      .. "stack traceback:\n"
      .. "\t" .. p .. ":4: in function 'f'\n"
      .. "\t" .. p .. ":6: in main chunk\n", r.stderr)
  end)

  it("a misuse inside a task: task_crashed's traceback starts at the "
     .. "caller's line", function()
    local p = script(dir, "task_misuse.lua", "local sprun = require 'sprun'\n"
      .. "local t = sprun.spawn(function()\n  sprun.sleep(-1)\nend)\n"
      .. "local _, err = t:await()\nio.write(err.details.traceback)\n")
    local r = h.sprun_run { p }
    assert.are.same({ code = 0, stderr = "", stdout = p .. ":3: sprun.sleep: "
      .. "ms must be a number >= 0, got -1\nstack traceback:\n"
      .. "\t" .. p .. ":3: in function <" .. p .. ":2>" }, r)
  end)

  it("an error object is printed with its __tostring", function()
    local r = h.sprun_run { "-e",
      'error(require("sprun").error("timeout", "too slow"))' }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: timeout: too slow", r.stderr:match("^[^\n]*"))
    assert.matches("stack traceback:", r.stderr, 1, true)
  end)

  it("a plain table raised is shown by its fields, not its address",
    function()
    local r = h.sprun_run { "-e", "error({ code = 42, why = 'x' })" }
    assert.are.equal(1, r.code)
    assert.are.equal('sprun: { code = 42, why = "x" }',
      r.stderr:match("^[^\n]*"))
    assert.matches("stack traceback:", r.stderr, 1, true)
  end)

  it("any other non-string error names its type", function()
    local r = h.sprun_run { "-e", "error(print)" }
    assert.are.equal(1, r.code)
    assert.are.equal("sprun: (error object is a function value)",
      r.stderr:match("^[^\n]*"))
  end)

  it("a syntax error names file:line, exit 1", function()
    local p = script(dir, "syntax.lua", "local x = \nprint(\n")
    local r = h.sprun_run { p }
    assert.are.equal(1, r.code)
    assert.matches("^sprun: " .. p:gsub("%p", "%%%0")
      .. ":3: unexpected symbol near '<eof>'\n$", r.stderr)
  end)

  it("a returned whole number from 0 to 255 is the exit status", function()
    local p = script(dir, "ret.lua", "return 7")
    assert.are.equal(7, h.sprun_run({ p }).code)
    assert.are.same({ code = 3, stdout = "", stderr = "" },
                    h.sprun_run({ "-e", "return 3" }))
    assert.are.same({ code = 255, stdout = "", stderr = "" },
                    h.sprun_run({ "-e", "return 255" }))
  end)

  it("true or nothing exits 0; false, or nil and an error, exits 1 and "
     .. "prints the error", function()
    assert.are.same({ code = 0, stdout = "", stderr = "" },
                    h.sprun_run({ "-e", "return true" }))
    assert.are.same({ code = 0, stdout = "", stderr = "" },
                    h.sprun_run({ "-e", "return nil" }))
    assert.are.same({ code = 1, stdout = "", stderr = "" },
                    h.sprun_run({ "-e", "return false" }))
    assert.are.same({ code = 1, stdout = "", stderr = "sprun: timeout: too "
                      .. "slow\n" }, h.sprun_run({ "-e", "return nil, "
                      .. "require('sprun').error('timeout', 'too slow')" }))
    assert.are.same({ code = 1, stdout = "", stderr = "sprun: no\n" },
                    h.sprun_run({ "-e", "return false, 'no'" }))
  end)

  it("any other returned value is misuse: exit 2 with one line", function()
    assert.are.same({ code = 2, stdout = "", stderr = "sprun: the script "
      .. "returned \"x\": return a number from 0 to 255, true, false or "
      .. "nil, err\n" }, h.sprun_run({ "-e", "return 'x'" }))
    assert.are.same({ code = 2, stdout = "", stderr = "sprun: the script "
      .. "returned 300: an exit status must be a whole number from 0 to "
      .. "255\n" }, h.sprun_run({ "-e", "return 300" }))
  end)

  it("takes every option with a value both as --opt VALUE and --opt=VALUE",
    function()
      for _, argv in ipairs {
        { "--telemetry", "stderr", "--telemetry-level", "warning",
          "--shutdown-grace-ms", "100", "-e", "print(1)" },
        { "--telemetry=stderr", "--telemetry-level=warning",
          "--shutdown-grace-ms=100", "-e", "print(1)" },
      } do
        assert.are.same({ code = 0, stdout = "1\n", stderr = "" },
                        h.sprun_run(argv))
      end
      local pol = script(dir, "p.lua", "return { breakers = { db = {} } }")
      for _, argv in ipairs { { "--policy", pol }, { "--policy=" .. pol } } do
        argv[#argv + 1] = "-e"
        argv[#argv + 1] = "print(require('sprun').policy.default():path())"
        assert.are.same({ code = 0, stdout = pol .. "\n", stderr = "" },
                        h.sprun_run(argv))
      end
    end)

  it("--trace writes the run's trace at its end, also after an error; "
     .. "--trace-buffer bounds it", function()
    local cjson = require "cjson"
    local code = "local s = require('sprun'); local cb = "
      .. "s.circuit_breaker.start_link { name = 'db', failure_threshold = 1,"
      .. " reset_timeout_ms = 500 }; cb:call(function() return nil, 'e' end);"
      .. " s.sleep(600); cb:call(function() return 1 end)"
    local function states(doc)
      local out = {}
      for _, e in ipairs(doc.traceEvents) do
        if e.ph == "C" then out[#out + 1] = e.args.state .. "@" .. e.ts end
      end
      return table.concat(out, " ")
    end
    local path = dir .. "/t.json"
    local r = h.sprun_run { "--virtual-time", "--trace", path, "-e", code }
    assert.are.same({ code = 0, stdout = "", stderr = "" }, r)
    local doc = cjson.decode(h.read_file(path))
    -- Opened at 0, half-open at the reset timeout, closed by the probe.
    assert.are.equal("2@0 1@500000 0@600000", states(doc))
    assert.are.equal(0, doc.otherData.dropped_events)
    -- Two events kept: the last transition's instant and counter are the
    -- closed ones; the rest was dropped and counted.
    r = h.sprun_run { "--virtual-time", "--trace=" .. path,
                      "--trace-buffer=2", "-e", code }
    assert.are.equal(0, r.code)
    doc = cjson.decode(h.read_file(path))
    assert.are.equal(doc.otherData.recorded + doc.otherData.dropped_events,
                     7)
    assert.are.equal(2, doc.otherData.recorded)
    r = h.sprun_run { "--trace", path, "-e", code .. "; error('boom')" }
    assert.are.equal(1, r.code)
    doc = cjson.decode(h.read_file(path))
    assert.matches("^2@%d+ 1@%d+ 0@%d+$", states(doc))
  end)

  it("--trace and --trace-buffer refuse what they cannot use", function()
    local function stderr_of(args)
      local r = h.sprun_run(args)
      assert.are.equal(2, r.code)
      return r.stderr
    end
    assert.are.equal("sprun: option '--trace' needs a file (see sprun -h)\n",
                     stderr_of { "--trace" })
    assert.are.equal("sprun: option '--trace' needs a file (see sprun -h)\n",
                     stderr_of { "--trace=", "-e", "" })
    for _, bad in ipairs { "0", "1.5", "x", "10000001" } do
      assert.are.equal("sprun: option '--trace-buffer' must be a whole "
        .. "number from 1 to 10000000, got '" .. bad .. "' (see sprun -h)\n",
        stderr_of { "--trace-buffer", bad, "-e", "" })
    end
    assert.are.equal("sprun: --trace: cannot write " .. dir
      .. "/no/t.json: No such file or directory\n",
      stderr_of { "--trace", dir .. "/no/t.json", "-e", "print(1)" })
  end)

  it("--telemetry-level sets what the sinks write", function()
    local code = "local cb = require('sprun').circuit_breaker.start_link "
      .. "{ name = 'x', failure_threshold = 1 }; cb:call(function() return "
      .. "nil, 'e' end); cb:reset()"
    local r = h.sprun_run { "--telemetry-level", "warning", "--log-events",
                            "-e", code }
    assert.are.same({ code = 0, stdout = "", stderr = "[warning] circuit "
      .. "breaker OPENED pool=x failures=1\n" }, r)
    r = h.sprun_run { "--log-events", "-e", code }
    assert.are.equal("[warning] circuit breaker OPENED pool=x failures=1\n"
      .. "[info] circuit breaker CLOSED pool=x\n", r.stderr)
    assert.are.same({ code = 2, stdout = "", stderr = "sprun: option "
      .. "'--telemetry-level' must be debug, info or warning, got 'loud' "
      .. "(see sprun -h)\n" }, h.sprun_run { "--telemetry-level", "loud",
                                            "-e", "" })
    assert.are.equal(2, h.sprun_run({ "--shutdown-grace-ms", "-5", "-e",
                                      "" }).code)
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
