-- The fixtures of the bad-input table (bad_input_spec.lua and its cases in
-- bad_input/*.lua): the objects the cases misuse, the sockets and processes
-- they make inside their own run, and the scratch files of the CLI and
-- policy-file cases.
local sprun = require "sprun"

local cbm = sprun.circuit_breaker
local hmm = sprun.health_monitor
local rpm = sprun.retry_policy
local proc = sprun.process
local tcp = sprun.tcp

local M = {}

local function noop() end

local MS_RANGE = "must be a number between 0 and 9007199254740992"

-- Objects the cases misuse. A task and a breaker from a run that is over,
-- a table that looks like a breaker, a callable table.
local cb = cbm.start_link { name = "cb" }
local hm = hmm.start_link {}
local rp = rpm.new {}
local old_task = sprun.run(function() return sprun.spawn(function()
  return "old", 2 end) end)
local old_cb = sprun.run(function()
  return cbm.start_link { name = "from-an-earlier-run" } end)
local lookalike = setmetatable({ _b = cb._b, _name = "fake" },
                               { __index = cbm })
local callable = setmetatable({}, { __call = function() return 1 end })

-- Things made inside the case's own run (each case runs its own loop), and
-- closed or finished before the case uses them.
local function server()
  return assert(tcp.listen("127.0.0.1", 0, function(c) c:read() end))
end

local function closed_conn()
  local s = server()
  local c = assert(tcp.connect("127.0.0.1", s.port))
  c:close()
  s:close()
  return c
end

local function open_conn(ctx)
  local s = server()
  local c = assert(tcp.connect("127.0.0.1", s.port))
  ctx[#ctx + 1] = function() c:close(); s:close() end
  return c
end

local function exited_proc(cmd)
  local p = assert(proc.spawn(cmd or { "true" }))
  p:wait()
  return p
end

local function free_port()
  local s = server()
  local port = s.port
  s:close()
  return port
end

-- The scratch files of the CLI and policy-file cases ($DIR/name): the spec
-- writes them into a fresh directory, and sets M.dir to it, before the
-- cases run.
local FILES = {
  ["syntax.lua"] = "local x = \nprint(\n",
  ["binary.lua"] = "\1\2\3garbage",
  ["bytecode.lua"] = "\27LJ\2garbage",
  ["empty.lua"] = "",
  ["ret256.lua"] = "return 256",
  ["retneg.lua"] = "return -1",
  ["retnan.lua"] = "return 0/0",
  ["rethuge.lua"] = "return 1e300",
  ["retfrac.lua"] = "return 3.7",
  ["badtostring.lua"] =
    'error(setmetatable({}, { __tostring = function() error("x") end }))',
  ["errnil.lua"] = "error(nil)",
  ["yield.lua"] = "coroutine.yield()\nprint('after')\n",
  ["sleepneg.lua"] = 'local s = require("sprun")\ns.sleep(-1)\n',
  ["nested.lua"] = 'require("sprun").run({ clock = "virtual" }, '
    .. 'function() end)\n',
  ["pol_syntax.lua"] = "return {\n",
  ["pol_notable.lua"] = "return 42\n",
  ["pol_badkey.lua"] =
    "return { pipelines = { p = { retry = { max_attempts = 0 } } } }\n",
  ["pol_unknown.lua"] =
    "return { breakers = { db = { failure_treshold = 3 } } }\n",
  ["pol_section.lua"] = "return { breakerz = {} }\n",
  ["pol_raise.lua"] = 'error("boom")\n',
  ["pol_ref.lua"] =
    'return { pipelines = { p = { breaker = "nosuch" } } }\n',
}

-- The call of a policy-file case: sprun.policy.load of the file `name`.
local function load_policy(name)
  return function() return sprun.policy.load, M.dir .. "/" .. name end
end

M.noop = noop
M.MS_RANGE = MS_RANGE
M.cb, M.hm, M.rp = cb, hm, rp
M.old_task, M.old_cb = old_task, old_cb
M.lookalike, M.callable = lookalike, callable
M.server, M.closed_conn, M.open_conn = server, closed_conn, open_conn
M.exited_proc, M.free_port = exited_proc, free_port
M.FILES = FILES
M.load_policy = load_policy

return M
