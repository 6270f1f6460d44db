-- The bad-input table: every kind of wrong input sprun is given, in one
-- place, across the sprun executable (CLI), the constructors and methods
-- of each module, the scheduler, processes, sockets and the executor.
--
-- Each case is data: an id, the input, and the exact outcome: for the CLI
-- the exit status and the exact stderr (its first line when a traceback
-- follows); for the library the exact error raised (with no position: the
-- API function is called straight from pcall, so an error raised at the
-- caller's level carries none, and one raised from inside sprun would name
-- a sprun file) or the exact `nil, err` returned. No case may crash, hang
-- (the CLI runs under `timeout`, the loop under a watchdog) or leak (no
-- handle left open, no child process left).
--
-- Cases marked `also` are also in the spec named there; the others are
-- this table's own (at least 60, checked below).
--
-- Policy files: the cases below are the table's view of them; the spec
-- of sprun.policy (policy_spec) has the full list of bad policy files.
local sprun = require "sprun"
local sched = require "sprun.sched"
local h = require "helpers"

local ex = sprun.executor
local cbm = sprun.circuit_breaker
local hmm = sprun.health_monitor
local rpm = sprun.retry_policy
local proc = sprun.process
local tcp = sprun.tcp

local function noop() end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- The list of valid options a constructor names after an unknown one, as
-- it names it today (options get added; the cases below check that an
-- object given as options is named by its first field, then this list).
local function valid_options(fn, opts)
  local _, err = pcall(fn, opts)
  return assert(err:match("%(valid options: (.*)%)$"), err)
end
local CB_OPTIONS = valid_options(cbm.start_link, { name = "x", zzzz = 1 })
local RP_OPTIONS = valid_options(rpm.new, { zzzz = 1 })
local MS_RANGE = "must be a number between 0 and 9007199254740992"
local METRICS = "sprun: option '--metrics' must be HOST:PORT with a port "
  .. "from 1 to 65535, got '%s' (see sprun -h)\n"

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

--- The table ----------------------------------------------------------------
-- CLI cases: argv (with $DIR for a scratch directory holding the files of
-- FILES), code, and stderr (exact) or stderr1 (the exact first line, a
-- traceback follows). Library cases: call() returns the function and its
-- arguments; raises = the exact message, or returns = the values (an error
-- object as its tostring). task = true runs it inside a loop.

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
  ["nested.lua"] = 'require("sprun").run(function() end)\n',
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

-- The directory of FILES, set up before the cases run.
local DIR

local function load_policy(name)
  return function() return sprun.policy.load, DIR .. "/" .. name end
end

local cases = {
  -- Policy files -------------------------------------------------------------
  { id = "policyfile: --policy with a bad value",
    argv = { "--policy", "$DIR/pol_badkey.lua", "-e", "print(1)" }, code = 2,
    stderr = "sprun: --policy: $DIR/pol_badkey.lua: pipelines.p.retry."
      .. "max_attempts must be an integer >= 1, got 0\n" },
  { id = "policyfile: --policy without a file",
    argv = { "--policy" }, code = 2,
    stderr = "sprun: option '--policy' needs a file (see sprun -h)\n" },
  { id = "policyfile: path not a string",
    call = function() return sprun.policy.load, 42 end,
    raises = "policy.load: path must be a non-empty string, got 42" },
  { id = "policyfile: syntax error",
    call = load_policy("pol_syntax.lua"),
    returns = { nil, "policy_error: $DIR/pol_syntax.lua:2: unexpected "
      .. "symbol near '<eof>'" } },
  { id = "policyfile: does not return a table",
    call = load_policy("pol_notable.lua"),
    returns = { nil, "policy_error: $DIR/pol_notable.lua: the file must "
      .. "return a table, got 42" } },
  { id = "policyfile: value out of range",
    call = load_policy("pol_badkey.lua"),
    returns = { nil, "policy_error: $DIR/pol_badkey.lua: pipelines.p.retry."
      .. "max_attempts must be an integer >= 1, got 0" } },
  { id = "policyfile: misspelt option",
    call = load_policy("pol_unknown.lua"),
    returns = { nil, "policy_error: $DIR/pol_unknown.lua: breakers.db: "
      .. "unknown key 'failure_treshold' (did you mean 'failure_threshold'?)" } },
  { id = "policyfile: misspelt section",
    call = load_policy("pol_section.lua"),
    returns = { nil, "policy_error: $DIR/pol_section.lua: unknown key "
      .. "'breakerz' (did you mean 'breakers'?)" } },
  { id = "policyfile: the file raises",
    call = load_policy("pol_raise.lua"),
    returns = { nil, "policy_error: $DIR/pol_raise.lua:1: boom" } },
  { id = "policyfile: names a breaker that does not exist",
    call = load_policy("pol_ref.lua"),
    returns = { nil, "policy_error: $DIR/pol_ref.lua: pipelines.p.breaker "
      .. "names no breaker \"nosuch\" (breakers: none defined)" } },
  -- The sprun executable ---------------------------------------------------
  { id = "cli: missing script", also = "cli_spec",
    argv = { "$DIR/nosuch.lua" }, code = 2,
    stderr = "sprun: cannot open $DIR/nosuch.lua: No such file or "
      .. "directory\n" },
  { id = "cli: directory as script", also = "cli_spec",
    argv = { "$DIR" }, code = 2,
    stderr = "sprun: cannot run $DIR: it is a directory\n" },
  { id = "cli: syntax error", also = "cli_spec",
    argv = { "$DIR/syntax.lua" }, code = 1,
    stderr = "sprun: $DIR/syntax.lua:3: unexpected symbol near '<eof>'\n" },
  { id = "cli: unknown long option", also = "cli_spec",
    argv = { "--frobnicate", "x.lua" }, code = 2,
    stderr = "sprun: unknown option '--frobnicate' (see sprun -h)\n" },
  { id = "cli: unknown short option",
    argv = { "-x" }, code = 2,
    stderr = "sprun: unknown option '-x' (see sprun -h)\n" },
  { id = "cli: misspelt option",
    argv = { "--virtual-times", "x.lua" }, code = 2,
    stderr = "sprun: unknown option '--virtual-times' (see sprun -h)\n" },
  { id = "cli: empty script name",
    argv = { "" }, code = 2,
    stderr = "sprun: the script name is empty (give the path of a Lua "
      .. "file, or -e CODE)\n" },
  { id = "cli: a script named like an option after --",
    argv = { "--", "-e" }, code = 2,
    stderr = "sprun: cannot open -e: No such file or directory\n" },
  { id = "cli: an option but no script",
    argv = { "--virtual-time" }, code = 2, stderr1 = "usage: sprun [options] "
      .. "script.lua [args...]" },
  { id = "cli: -e without code", also = "cli_spec",
    argv = { "-e" }, code = 2,
    stderr = "sprun: option '-e' needs an argument (see sprun -h)\n" },
  { id = "cli: -e with a syntax error",
    argv = { "-e", "x =" }, code = 1,
    stderr = "sprun: (command line):1: unexpected symbol near '<eof>'\n" },
  { id = "cli: binary garbage as script",
    argv = { "$DIR/binary.lua" }, code = 1,
    stderr = "sprun: $DIR/binary.lua:1: unexpected symbol near 'char(1)'\n" },
  { id = "cli: foreign bytecode as script",
    argv = { "$DIR/bytecode.lua" }, code = 1,
    stderr = "sprun: $DIR/bytecode.lua: cannot load incompatible bytecode\n" },
  { id = "cli: error(nil) in the script",
    argv = { "$DIR/errnil.lua" }, code = 1,
    stderr1 = "sprun: (error object is a nil value)" },
  { id = "cli: an error whose __tostring raises",
    argv = { "$DIR/badtostring.lua" }, code = 1,
    stderr1 = "sprun: (error object is a table value)" },
  { id = "cli: coroutine.yield in the main task",
    argv = { "$DIR/yield.lua" }, code = 1,
    stderr1 = "sprun: task 1 called coroutine.yield outside a sprun wait "
      .. "(use sprun.sleep, an await or an I/O call)" },
  { id = "cli: misuse in the script names the script's line",
    argv = { "$DIR/sleepneg.lua" }, code = 1,
    stderr1 = "sprun: $DIR/sleepneg.lua:2: sprun.sleep: ms must be a number "
      .. ">= 0, got -1" },
  { id = "cli: sprun.run inside the script",
    argv = { "$DIR/nested.lua" }, code = 1,
    stderr1 = "sprun: $DIR/nested.lua:1: sprun.run: a loop is already "
      .. "running; use sprun.spawn inside it" },
  { id = "cli: empty script", argv = { "$DIR/empty.lua" }, code = 0,
    stderr = "" },
  { id = "cli: return 256 exits 0 (low 8 bits)",
    argv = { "$DIR/ret256.lua" }, code = 0, stderr = "" },
  { id = "cli: return -1 exits 255", argv = { "$DIR/retneg.lua" },
    code = 255, stderr = "" },
  { id = "cli: return nan exits 1", argv = { "$DIR/retnan.lua" },
    code = 1, stderr = "" },
  { id = "cli: return 1e300 exits 1", argv = { "$DIR/rethuge.lua" },
    code = 1, stderr = "" },
  { id = "cli: return 3.7 exits 3", argv = { "$DIR/retfrac.lua" },
    code = 3, stderr = "" },
  { id = "cli: --telemetry without a value",
    argv = { "--telemetry" }, code = 2, stderr = "sprun: option "
      .. "'--telemetry' needs a value after '=' (see sprun -h)\n" },
  { id = "cli: --telemetry= empty",
    argv = { "--telemetry=", "x.lua" }, code = 2, stderr = "sprun: option "
      .. "'--telemetry' needs a destination: stderr, stdout or a file "
      .. "(see sprun -h)\n" },
  { id = "cli: --telemetry to a directory that does not exist",
    argv = { "--telemetry=$DIR/no/such/dir/t.jsonl", "$DIR/empty.lua" },
    code = 2, stderr = "sprun: --telemetry: $DIR/no/such/dir/t.jsonl: No "
      .. "such file or directory\n" },
  { id = "cli: --metrics without a value",
    argv = { "--metrics" }, code = 2, stderr = "sprun: option '--metrics' "
      .. "needs a value after '=' (see sprun -h)\n" },
  { id = "cli: --metrics= empty", argv = { "--metrics=", "x.lua" },
    code = 2, stderr = METRICS:format("") },
  { id = "cli: --metrics without a port", argv = { "--metrics=localhost",
    "x.lua" }, code = 2, stderr = METRICS:format("localhost") },
  { id = "cli: --metrics without a host", argv = { "--metrics=:9090",
    "x.lua" }, code = 2, stderr = METRICS:format(":9090") },
  { id = "cli: --metrics port 0", argv = { "--metrics=127.0.0.1:0",
    "x.lua" }, code = 2, stderr = METRICS:format("127.0.0.1:0") },
  { id = "cli: --metrics port 65536", argv = { "--metrics=127.0.0.1:65536",
    "x.lua" }, code = 2, stderr = METRICS:format("127.0.0.1:65536") },
  { id = "cli: --metrics negative port", argv = { "--metrics=127.0.0.1:-1",
    "x.lua" }, code = 2, stderr = METRICS:format("127.0.0.1:-1") },
  { id = "cli: --metrics port with a sign", argv = {
    "--metrics=127.0.0.1:+80", "x.lua" }, code = 2,
    stderr = METRICS:format("127.0.0.1:+80") },
  { id = "cli: --metrics port not a number", argv = {
    "--metrics=127.0.0.1:9x", "x.lua" }, code = 2,
    stderr = METRICS:format("127.0.0.1:9x") },
  { id = "cli: --metrics IPv6 without brackets", argv = {
    "--metrics=::1:9090", "x.lua" }, code = 2,
    stderr = METRICS:format("::1:9090") },
  { id = "cli: --metrics host of 70 characters", argv = {
    "--metrics=" .. ("h"):rep(70) .. ":80", "x.lua" }, code = 2,
    stderr = METRICS:format(("h"):rep(70) .. ":80") },
  { id = "cli: --metrics on an address that is not an IP",
    argv = { "--metrics=256.0.0.1:9090", "$DIR/empty.lua" }, code = 2,
    stderr = "sprun: --metrics=256.0.0.1:9090: listen on 256.0.0.1:9090: "
      .. "invalid argument\n" },

  -- circuit_breaker -------------------------------------------------------
  { id = "breaker: reset_timeout_ms nan",
    call = function() return cbm.start_link, { name = "x",
      reset_timeout_ms = 0 / 0 } end,
    raises = "circuit_breaker.start_link: option 'reset_timeout_ms' must be "
      .. "an integer >= 0, got nan" },
  { id = "breaker: failure_threshold -inf",
    call = function() return cbm.start_link, { name = "x",
      failure_threshold = -math.huge } end,
    raises = "circuit_breaker.start_link: option 'failure_threshold' must "
      .. "be an integer >= 1, got -inf" },
  { id = "breaker: half_open_max_calls 2^32",
    call = function() return cbm.start_link, { name = "x",
      half_open_max_calls = 2 ^ 32 } end,
    raises = "circuit_breaker.start_link: option 'half_open_max_calls' must "
      .. "be an integer between 0 and 4294967295, got 4294967296" },
  { id = "breaker: name a table",
    call = function() return cbm.start_link, { name = {} } end,
    raises = "circuit_breaker.start_link: option 'name' must be a non-empty "
      .. "string, got table" },
  { id = "breaker: is_failure a string",
    call = function() return cbm.start_link, { name = "x",
      is_failure = "yes" } end,
    raises = "circuit_breaker.start_link: option 'is_failure' must be a "
      .. 'function, got "yes"' },
  { id = "breaker: a retry policy as its options",
    call = function() return cbm.start_link, rp end,
    raises = "circuit_breaker.start_link: unknown option '_options' "
      .. "(valid options: " .. CB_OPTIONS .. ")" },
  { id = "breaker: failure_threshold -3", also = "validation_spec",
    call = function() return cbm.start_link, { name = "x",
      failure_threshold = -3 } end,
    raises = "circuit_breaker.start_link: option 'failure_threshold' must "
      .. "be an integer >= 1, got -3" },
  { id = "breaker.call: a breaker as the operation",
    call = function() return cbm.call, cb, cb end,
    raises = "circuit_breaker.call: fn must be a function, got table" },
  { id = "breaker.call: a callable table as the operation",
    call = function() return cbm.call, cb, callable end,
    raises = "circuit_breaker.call: fn must be a function, got table" },
  { id = "breaker.call: a retry policy as self",
    call = function() return cbm.call, rp, noop end,
    raises = "circuit_breaker.call: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.call: a table that looks like a breaker",
    call = function() return cbm.call, lookalike, noop end,
    raises = "circuit_breaker.call: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.stats: a health monitor as self",
    call = function() return cbm.stats, hm end,
    raises = "circuit_breaker.stats: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker.reset: a finished task as self",
    call = function() return cbm.reset, old_task end,
    raises = "circuit_breaker.reset: self must be a circuit breaker, got "
      .. "table" },
  { id = "breaker: reset_timeout_ms 2^53 opens inside a loop", task = true,
    call = function()
      local b = cbm.start_link { name = "far", failure_threshold = 1,
                                 reset_timeout_ms = 2 ^ 53 }
      return function()
        local _, err = b:call(function() return nil, "down" end)
        return err, b:state()
      end
    end,
    returns = { "down", "open" } },

  -- health_monitor ---------------------------------------------------------
  { id = "monitor: max_crashes 1.5",
    call = function() return hmm.start_link, { max_crashes = 1.5 } end,
    raises = "health_monitor.start_link: option 'max_crashes' must be an "
      .. "integer >= 1, got 1.5" },
  { id = "monitor: crash_window_ms 0",
    call = function() return hmm.start_link, { crash_window_ms = 0 } end,
    raises = "health_monitor.start_link: option 'crash_window_ms' must be "
      .. "an integer >= 1, got 0" },
  { id = "monitor: crash_window_ms nan",
    call = function() return hmm.start_link, { crash_window_ms = 0 / 0 } end,
    raises = "health_monitor.start_link: option 'crash_window_ms' must be "
      .. "an integer >= 1, got nan" },
  { id = "monitor: max_workers 0",
    call = function() return hmm.start_link, { max_workers = 0 } end,
    raises = "health_monitor.start_link: option 'max_workers' must be an "
      .. "integer >= 1, got 0" },
  { id = "monitor: clock a string",
    call = function() return hmm.start_link, { clock = "now" } end,
    raises = "health_monitor.start_link: option 'clock' must be a function, "
      .. 'got "now"' },
  { id = "monitor: pool empty",
    call = function() return hmm.start_link, { pool = "" } end,
    raises = "health_monitor.start_link: option 'pool' must be a non-empty "
      .. 'string, got ""' },
  { id = "monitor: max_crashes 0", also = "validation_spec",
    call = function() return hmm.start_link, { max_crashes = 0 } end,
    raises = "health_monitor.start_link: option 'max_crashes' must be an "
      .. "integer >= 1, got 0" },
  { id = "monitor.stats: a breaker as self",
    call = function() return hmm.stats, cb end,
    raises = "health_monitor.stats: self must be a health monitor, got "
      .. "table" },
  { id = "monitor.record_crash: a retry policy as self",
    call = function() return hmm.record_crash, rp, "w" end,
    raises = "health_monitor.record_crash: self must be a health monitor, "
      .. "got table" },
  { id = "monitor.record_crash: a function as worker id",
    call = function() return hmm.record_crash, hm, noop end,
    raises = "health_monitor.record_crash: worker_id must be a string or a "
      .. "number, got function" },
  { id = "monitor.record_crash: info true",
    call = function() return hmm.record_crash, hm, "w", true end,
    raises = "health_monitor.record_crash: info must be a table or nil, got "
      .. "true" },
  { id = "monitor.worker_health: no worker id",
    call = function() return hmm.worker_health, hm end,
    raises = "health_monitor.worker_health: worker_id must be a string or a "
      .. "number, got nil" },
  { id = "monitor: check_interval_ms 2^53 inside a loop", task = true,
    call = function()
      local m = hmm.start_link { check_interval_ms = 2 ^ 53 }
      return function()
        return m:record_crash("w"), m:stats().total_crashes
      end
    end,
    returns = { true, 1 } },

  -- retry_policy -----------------------------------------------------------
  { id = "policy: max_attempts nan",
    call = function() return rpm.new, { max_attempts = 0 / 0 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer >= "
      .. "1, got nan" },
  { id = "policy: max_attempts 2^32",
    call = function() return rpm.new, { max_attempts = 2 ^ 32 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer "
      .. "between 1 and 4294967295, got 4294967296" },
  { id = "policy: a nan delay",
    call = function() return rpm.new, { backoff_ms = { 0 / 0 } } end,
    raises = "retry_policy.new: option 'backoff_ms[1]' must be a number >= "
      .. "0, got nan" },
  { id = "policy: an infinite delay",
    call = function() return rpm.new, { backoff_ms = { 1, math.huge } } end,
    raises = "retry_policy.new: option 'backoff_ms[2]' " .. MS_RANGE
      .. ", got inf" },
  { id = "policy: multiplier nan",
    call = function() return rpm.new, { multiplier = 0 / 0 } end,
    raises = "retry_policy.new: option 'multiplier' must be a number >= 1, "
      .. "got nan" },
  { id = "policy: an empty error kind",
    call = function() return rpm.new, { retriable_errors = { "" } } end,
    raises = "retry_policy.new: option 'retriable_errors[1]' must be a "
      .. 'non-empty string, got ""' },
  { id = "policy: seed past 2^53",
    call = function() return rpm.new, { seed = 2 ^ 53 + 2 } end,
    raises = "retry_policy.new: option 'seed' must be an integer between 0 "
      .. "and 9007199254740992, got 9007199254740994" },
  { id = "policy: jitter \"none\"",
    call = function() return rpm.new, { jitter = "none" } end,
    raises = "retry_policy.new: option 'jitter' must be false, true, "
      .. '"full", "equal" or "decorrelated", got "none"' },
  { id = "policy: a policy as its options",
    call = function() return rpm.new, rp end,
    raises = "retry_policy.new: unknown option '_options' (valid options: "
      .. RP_OPTIONS .. ")" },
  { id = "policy: max_attempts 0", also = "validation_spec",
    call = function() return rpm.new, { max_attempts = 0 } end,
    raises = "retry_policy.new: option 'max_attempts' must be an integer >= "
      .. "1, got 0" },
  { id = "policy.should_retry: attempt nan",
    call = function() return rpm.should_retry, rp, 0 / 0 end,
    raises = "retry_policy.should_retry: attempt must be an integer >= 1, "
      .. "got nan" },
  { id = "policy.backoff_for_attempt: attempt -1",
    call = function() return rpm.backoff_for_attempt, rp, -1 end,
    raises = "retry_policy.backoff_for_attempt: attempt must be an integer "
      .. ">= 1, got -1" },
  { id = "policy.should_retry: a breaker as self",
    call = function() return rpm.should_retry, cb, 1 end,
    raises = "retry_policy.should_retry: self must be a retry policy, got "
      .. "table" },
  { id = "policy.retry_for_error: a monitor as self",
    call = function() return rpm.retry_for_error, hm, "timeout" end,
    raises = "retry_policy.retry_for_error: self must be a retry policy, "
      .. "got table" },

  -- errors -------------------------------------------------------------------
  { id = "errors: an empty kind",
    call = function() return sprun.error, "" end,
    raises = 'errors.error: kind must be a non-empty string, got ""' },
  { id = "errors: a number as kind",
    call = function() return sprun.error, 5 end,
    raises = "errors.error: kind must be a non-empty string, got 5" },
  { id = "errors: a table as message",
    call = function() return sprun.error, "k", {} end,
    raises = "errors.error: message must be a string or nil, got table" },

  -- The scheduler and tasks ---------------------------------------------------
  { id = "sleep: nan",
    call = function() return sprun.sleep, 0 / 0 end,
    raises = "sprun.sleep: ms must be a number >= 0, got nan" },
  { id = "sleep: a string",
    call = function() return sprun.sleep, "10" end,
    raises = 'sprun.sleep: ms must be a number >= 0, got "10"' },
  { id = "sleep: inf",
    call = function() return sprun.sleep, math.huge end,
    raises = "sprun.sleep: ms " .. MS_RANGE .. ", got inf" },
  { id = "sleep: 2^53 + 2 in a task", task = true,
    call = function() return sprun.sleep, 2 ^ 53 + 2 end,
    raises = "sprun.sleep: ms " .. MS_RANGE .. ", got 9007199254740994" },
  { id = "sleep: -1", also = "sched_spec",
    call = function() return sprun.sleep, -1 end,
    raises = "sprun.sleep: ms must be a number >= 0, got -1" },
  { id = "sleep: from a coroutine of a task's own", task = true,
    call = function()
      return function()
        return coroutine.resume(coroutine.create(function()
          return pcall(sprun.sleep, 1)
        end))
      end
    end,
    returns = { true, false, "sprun.sleep: called from a coroutine that is "
      .. "not a sprun task" } },
  { id = "spawn: no function",
    call = function() return sprun.spawn, nil end,
    raises = "sprun.spawn: fn must be a function, got nil" },
  { id = "spawn: outside a loop",
    call = function() return sprun.spawn, noop end,
    raises = "sprun.spawn: no loop is running (start one with sprun.run)" },
  { id = "run: a number",
    call = function() return sprun.run, 5 end,
    raises = "sprun.run: fn must be a function, got 5" },
  { id = "run: clock \"fake\"",
    call = function() return sprun.run, { clock = "fake" }, noop end,
    raises = 'sprun.run: option \'clock\' must be "real" or "virtual", got '
      .. '"fake"' },
  { id = "run: option clok",
    call = function() return sprun.run, { clok = "virtual" }, noop end,
    raises = "sprun.run: unknown option 'clok' (did you mean 'clock'?)" },
  { id = "run: options but no function",
    call = function() return sprun.run, { clock = "virtual" } end,
    raises = "sprun.run: fn must be a function, got nil" },
  { id = "run: inside a running loop", task = true,
    call = function() return sprun.run, noop end,
    raises = "sprun.run: a loop is already running; use sprun.spawn inside "
      .. "it" },
  { id = "task.await: nil as self",
    call = function() return sched.Task.await, nil end,
    raises = "task.await: self must be a task, got nil" },
  { id = "task.await: timeout -1",
    call = function() return old_task.await, old_task, -1 end,
    raises = "task.await: timeout_ms must be a number >= 0, got -1" },
  { id = "task.await: timeout a string",
    call = function() return old_task.await, old_task, "5" end,
    raises = 'task.await: timeout_ms must be a number >= 0, got "5"' },
  { id = "task.await: itself", task = true,
    call = function() local me = sched.current(); return me.await, me end,
    raises = "task.await: a task cannot await itself" },
  { id = "task.status: a breaker as self",
    call = function() return sched.Task.status, cb end,
    raises = "task.status: self must be a task, got table" },
  { id = "task.cancel: a table as self",
    call = function() return sched.Task.cancel, {} end,
    raises = "task.cancel: self must be a task, got table" },
  { id = "task from a finished run: await gives its values",
    call = function() return old_task.await, old_task end,
    returns = { "old", 2 } },
  { id = "task from a finished run: await inside another run", task = true,
    call = function() return old_task.await, old_task, 5 end,
    returns = { "old", 2 } },
  { id = "task from a finished run: cancel is refused",
    call = function() return old_task.cancel, old_task end,
    returns = { false } },

  -- The executor ------------------------------------------------------------
  { id = "execute_with_retry: no function", call = function()
      return ex.execute_with_retry, nil end,
    raises = "executor.execute_with_retry: fn must be a function, got nil" },
  { id = "execute_with_retry: options a number", call = function()
      return ex.execute_with_retry, noop, 5 end,
    raises = "executor.execute_with_retry: options must be a table, got 5" },
  { id = "execute_with_retry: a breaker as policy", call = function()
      return ex.execute_with_retry, noop, { policy = cb } end,
    raises = "executor.execute_with_retry: option 'policy' must be a retry "
      .. "policy (retry_policy.new), got table" },
  { id = "execute_with_retry: a table as policy", call = function()
      return ex.execute_with_retry, noop, { policy = {} } end,
    raises = "executor.execute_with_retry: option 'policy' must be a retry "
      .. "policy (retry_policy.new), got table" },
  { id = "execute_with_retry: policy and max_attempts", call = function()
      return ex.execute_with_retry, noop, { policy = rp, max_attempts = 2 }
    end,
    raises = "executor.execute_with_retry: option 'max_attempts' cannot be "
      .. "given with 'policy' (set it in retry_policy.new)" },
  { id = "execute_with_retry: option max_attempt", call = function()
      return ex.execute_with_retry, noop, { max_attempt = 2 } end,
    raises = "executor.execute_with_retry: unknown option 'max_attempt' "
      .. "(did you mean 'max_attempts'?)" },
  { id = "execute_with_circuit_breaker: a retry policy as breaker",
    call = function() return ex.execute_with_circuit_breaker, rp, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a breaker look-alike",
    call = function()
      return ex.execute_with_circuit_breaker, lookalike, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a finished task as breaker",
    call = function()
      return ex.execute_with_circuit_breaker, old_task, noop end,
    raises = "executor.execute_with_circuit_breaker: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_circuit_breaker: a string as operation",
    call = function() return ex.execute_with_circuit_breaker, cb, "f" end,
    raises = "executor.execute_with_circuit_breaker: fn must be a function, "
      .. 'got "f"' },
  { id = "execute_with_circuit_breaker: a breaker from an earlier run",
    task = true,
    call = function() return ex.execute_with_circuit_breaker, old_cb,
      function() return "still works" end end,
    returns = { "still works" } },
  { id = "execute_with_timeout: no options", call = function()
      return ex.execute_with_timeout, noop end,
    raises = "executor.execute_with_timeout: options must be a table, got "
      .. "nil" },
  { id = "execute_with_timeout: no timeout_ms", call = function()
      return ex.execute_with_timeout, noop, {} end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' must be a "
      .. "number >= 0, got nil" },
  { id = "execute_with_timeout: timeout_ms nan", call = function()
      return ex.execute_with_timeout, noop, { timeout_ms = 0 / 0 } end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' must be a "
      .. "number >= 0, got nan" },
  { id = "execute_with_timeout: timeout_ms past 2^53", call = function()
      return ex.execute_with_timeout, noop, { timeout_ms = 2 ^ 53 + 2 } end,
    raises = "executor.execute_with_timeout: option 'timeout_ms' "
      .. MS_RANGE .. ", got 9007199254740994" },
  { id = "execute_with_timeout: option timeout", call = function()
      return ex.execute_with_timeout, noop, { timeout = 5 } end,
    raises = "executor.execute_with_timeout: unknown option 'timeout' (did "
      .. "you mean 'timeout_ms'?)" },
  { id = "execute_with_timeout: a closed connection as operation",
    task = true, call = function()
      return ex.execute_with_timeout, closed_conn(), { timeout_ms = 5 } end,
    raises = "executor.execute_with_timeout: fn must be a function, got "
      .. "table" },
  { id = "execute_with_timeout: from a coroutine of a task's own",
    task = true,
    call = function()
      return function()
        return coroutine.resume(coroutine.create(function()
          return pcall(ex.execute_with_timeout, noop, { timeout_ms = 5 })
        end))
      end
    end,
    returns = { true, false, "executor.execute_with_timeout: called from a "
      .. "coroutine that is not a sprun task" } },
  { id = "execute_with_timeout: timeout_ms 2^53 in a task", task = true,
    call = function() return ex.execute_with_timeout,
      function() return "in time" end, { timeout_ms = 2 ^ 53 } end,
    returns = { "in time" } },
  { id = "execute_batch: no list", call = function()
      return ex.execute_batch, nil end,
    raises = "executor.execute_batch: fns must be a list of functions, got "
      .. "nil" },
  { id = "execute_batch: a number in the list", call = function()
      return ex.execute_batch, { noop, 5 } end,
    raises = "executor.execute_batch: fns[2] must be a function, got 5" },
  { id = "execute_batch: a hole in the list", call = function()
      return ex.execute_batch, { noop, nil, noop } end,
    raises = "executor.execute_batch: fns[2] must be a function, got nil" },
  { id = "execute_batch: a map, not a list", call = function()
      return ex.execute_batch, { a = noop } end,
    raises = 'executor.execute_batch: fns must be a list of functions, got '
      .. 'key "a"' },
  { id = "execute_batch: an exited process in the list", task = true,
    call = function() return ex.execute_batch, { exited_proc() } end,
    raises = "executor.execute_batch: fns[1] must be a function, got table" },
  { id = "execute_batch: max_concurrency 0", call = function()
      return ex.execute_batch, { noop }, { max_concurrency = 0 } end,
    raises = "executor.execute_batch: option 'max_concurrency' must be an "
      .. "integer >= 1, got 0" },
  { id = "execute_batch: max_concurrency 1.5", call = function()
      return ex.execute_batch, { noop }, { max_concurrency = 1.5 } end,
    raises = "executor.execute_batch: option 'max_concurrency' must be an "
      .. "integer >= 1, got 1.5" },
  { id = "execute_batch: timeout_ms -1", call = function()
      return ex.execute_batch, { noop }, { timeout_ms = -1 } end,
    raises = "executor.execute_batch: option 'timeout_ms' must be a number "
      .. ">= 0, got -1" },
  { id = "execute_batch: option max_concurency", call = function()
      return ex.execute_batch, { noop }, { max_concurency = 2 } end,
    raises = "executor.execute_batch: unknown option 'max_concurency' (did "
      .. "you mean 'max_concurrency'?)" },
  { id = "execute_with_protection: a retry policy as breaker",
    call = function() return ex.execute_with_protection, rp, noop end,
    raises = "executor.execute_with_protection: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_protection: a monitor as breaker",
    call = function() return ex.execute_with_protection, hm, noop end,
    raises = "executor.execute_with_protection: cb must be a circuit "
      .. "breaker, got table" },
  { id = "execute_with_protection: a breaker as policy",
    call = function() return ex.execute_with_protection, cb, noop,
      { policy = cb } end,
    raises = "executor.execute_with_protection: option 'policy' must be a "
      .. "retry policy (retry_policy.new), got table" },
  { id = "execute_with_protection: operation a number",
    call = function() return ex.execute_with_protection, cb, noop,
      { operation = 5 } end,
    raises = "executor.execute_with_protection: option 'operation' must be "
      .. "a non-empty string, got 5" },
  { id = "execute_with_protection: a callable table as operation",
    call = function() return ex.execute_with_protection, cb, callable end,
    raises = "executor.execute_with_protection: fn must be a function, got "
      .. "table" },
  { id = "execute_async: no function",
    call = function() return ex.execute_async, nil end,
    raises = "executor.execute_async: fn must be a function, got nil" },

  -- Processes -------------------------------------------------------------
  { id = "process.run: no options",
    call = function() return proc.run, nil end,
    raises = "process.run: options must be a table, got nil" },
  { id = "process.run: no command",
    call = function() return proc.run, {} end,
    raises = "process.run: the command (element 1) must be a non-empty "
      .. "string, got nil" },
  { id = "process.run: a number as command",
    call = function() return proc.run, { 5 } end,
    raises = "process.run: the command (element 1) must be a non-empty "
      .. "string, got 5" },
  { id = "process.run: timeout_ms -1",
    call = function() return proc.run, { "sh", timeout_ms = -1 } end,
    raises = "process.run: option 'timeout_ms' must be a number >= 0, got "
      .. "-1" },
  { id = "process.run: stdin a number",
    call = function() return proc.run, { "sh", stdin = 5 } end,
    raises = "process.run: option 'stdin' must be a string (written then "
      .. "closed) or a boolean (a pipe), got 5" },
  { id = "process.run: a table in env",
    call = function() return proc.run, { "sh", env = { A = {} } } end,
    raises = "process.run: option 'env.A' must map names to strings, "
      .. "numbers or false, got table" },
  { id = "process.run: '=' in an env name",
    call = function() return proc.run, { "sh", env = { ["A=B"] = "x" } } end,
    raises = "process.run: option 'env' must be a table of NAME = value, "
      .. 'got key "A=B"' },
  { id = "process.run: cwd empty",
    call = function() return proc.run, { "sh", cwd = "" } end,
    raises = "process.run: option 'cwd' must be a non-empty string, got "
      .. '""' },
  { id = "process.run: option foo",
    call = function() return proc.run, { "sh", foo = 1 } end,
    raises = "process.run: unknown option 'foo' (valid options: cwd, env, "
      .. "stdin, timeout_ms)" },
  { id = "process.run: a table as argument",
    call = function() return proc.run, { "sh", {} } end,
    raises = "process.run: argument 1 must be a string or a number, got "
      .. "table" },
  { id = "process.run: a fractional key",
    call = function() return proc.run, { "sh", [1.5] = "x" } end,
    raises = "process.run: arguments must be a list, got key 1.5" },
  { id = "process.run: a program that does not exist", task = true,
    call = function() return proc.run, { "/nonexistent/cmd" } end,
    returns = { nil, "not_found: cannot run /nonexistent/cmd: no such file "
      .. "or directory" } },
  { id = "process.run: a cwd that does not exist", task = true,
    call = function() return proc.run, { "true", cwd = "/nonexistent" } end,
    returns = { nil, "not_found: cannot run true in /nonexistent: no such "
      .. "file or directory" } },
  { id = "process.spawn: outside a loop",
    call = function() return proc.spawn, { "sh" } end,
    raises = "process.spawn: must be called from a task (inside sprun.run "
      .. "or a script run by sprun)" },
  { id = "process.spawn: timeout_ms (run has it, spawn has not)",
    call = function() return proc.spawn, { "sh", timeout_ms = 5 } end,
    raises = "process.spawn: unknown option 'timeout_ms' (valid options: "
      .. "cwd, env, stdin)" },
  { id = "process.wait: a breaker as self",
    call = function() return proc.Process.wait, cb end,
    raises = "process.wait: self must be a process, got table" },
  { id = "process.kill: a retry policy as self",
    call = function() return proc.Process.kill, rp end,
    raises = "process.kill: self must be a process, got table" },
  { id = "process.kill: an unknown signal", task = true,
    call = function() local p = exited_proc()
      return p.kill, p, "SIGFOO" end,
    raises = 'process.kill: signal must be a signal name such as "SIGTERM" '
      .. 'or its number, got "SIGFOO"' },
  { id = "process.kill: signal 0", task = true,
    call = function() local p = exited_proc(); return p.kill, p, 0 end,
    raises = 'process.kill: signal must be a signal name such as "SIGTERM" '
      .. "or its number, got 0" },
  { id = "process.write: a number", task = true,
    call = function() local p = exited_proc(); return p.write, p, 5 end,
    raises = "process.write: data must be a string, got 5" },
  { id = "process.write: to an exited process", task = true,
    call = function() local p = exited_proc(); return p.write, p, "x" end,
    returns = { nil, "closed: the process has exited" } },
  { id = "process.kill: an exited process", task = true,
    call = function() local p = exited_proc(); return p.kill, p end,
    returns = { nil, "closed: the process has exited" } },
  { id = "process.read_line: an exited process", task = true,
    call = function() local p = exited_proc(); return p.read_line, p end,
    returns = { nil, "eof: the process's output has ended" } },
  { id = "process.wait: a second time", task = true,
    call = function()
      local p = exited_proc { "sh", "-c", "exit 4" }
      return function() return p:wait().code end
    end,
    returns = { 4 } },
  { id = "process.write: spawned without a stdin pipe", task = true,
    call = function()
      local p = assert(proc.spawn { "sleep", "5" })
      return function()
        local v, err = p:write("x")
        p:kill("SIGKILL")
        p:wait()
        return v, err
      end
    end,
    returns = { nil, "closed: the process has no stdin pipe (spawn it with "
      .. "stdin = true)" } },
  { id = "process.write: after close_stdin", task = true,
    call = function()
      local p = assert(proc.spawn { "cat", stdin = true })
      return function()
        p:close_stdin()
        local v, err = p:write("x")
        p:wait()
        return v, err
      end
    end,
    returns = { nil, "closed: the process's stdin is closed" } },

  -- Sockets ----------------------------------------------------------------
  { id = "tcp.connect: no host",
    call = function() return tcp.connect, nil, 80 end,
    raises = "tcp.connect: host must be a non-empty string, got nil" },
  { id = "tcp.connect: port 0",
    call = function() return tcp.connect, "127.0.0.1", 0 end,
    raises = "tcp.connect: port must be an integer >= 1, got 0" },
  { id = "tcp.connect: port 70000",
    call = function() return tcp.connect, "127.0.0.1", 70000 end,
    raises = "tcp.connect: port must be an integer between 1 and 65535, got "
      .. "70000" },
  { id = "tcp.connect: port 1.5",
    call = function() return tcp.connect, "127.0.0.1", 1.5 end,
    raises = "tcp.connect: port must be an integer >= 1, got 1.5" },
  { id = "tcp.connect: port a string",
    call = function() return tcp.connect, "127.0.0.1", "80" end,
    raises = 'tcp.connect: port must be an integer >= 1, got "80"' },
  { id = "tcp.connect: option timeout",
    call = function() return tcp.connect, "127.0.0.1", 80, { timeout = 5 } end,
    raises = "tcp.connect: unknown option 'timeout' (did you mean "
      .. "'timeout_ms'?)" },
  { id = "tcp.connect: timeout_ms -1",
    call = function() return tcp.connect, "127.0.0.1", 80,
      { timeout_ms = -1 } end,
    raises = "tcp.connect: option 'timeout_ms' must be a number >= 0, got "
      .. "-1" },
  { id = "tcp.connect: a host name (names are not resolved)", task = true,
    call = function() return tcp.connect, "not-an-ip", 80 end,
    returns = { nil, "invalid_address: connect to not-an-ip:80: invalid "
      .. "argument" } },
  { id = "tcp.connect: a port nobody listens on", task = true,
    call = function()
      local port = free_port()
      return function()
        local c, err = tcp.connect("127.0.0.1", port)
        return c, tostring(err):gsub(":%d+:", ":PORT:")
      end
    end,
    returns = { nil, "connection_refused: connect to 127.0.0.1:PORT: "
      .. "connection refused", 1 } },
  { id = "tcp.listen: empty host",
    call = function() return tcp.listen, "", 0, noop end,
    raises = 'tcp.listen: host must be a non-empty string, got ""' },
  { id = "tcp.listen: port -1",
    call = function() return tcp.listen, "127.0.0.1", -1, noop end,
    raises = "tcp.listen: port must be an integer >= 0, got -1" },
  { id = "tcp.listen: no handler",
    call = function() return tcp.listen, "127.0.0.1", 0, nil end,
    raises = "tcp.listen: handler must be a function, got nil" },
  { id = "tcp.listen: outside a loop",
    call = function() return tcp.listen, "127.0.0.1", 0, noop end,
    raises = "tcp.listen: must be called from a task (inside sprun.run or a "
      .. "script run by sprun)" },
  { id = "tcp.listen: a port in use", task = true,
    call = function()
      local s = server()
      return function()
        local v, err = tcp.listen("127.0.0.1", s.port, noop)
        s:close()
        return v, tostring(err):gsub(":%d+:", ":PORT:")
      end
    end,
    returns = { nil, "address_in_use: listen on 127.0.0.1:PORT: address "
      .. "already in use", 1 } },
  { id = "tcp.read: max 0", task = true,
    call = function(ctx) local c = open_conn(ctx); return c.read, c, 0 end,
    raises = "tcp.read: max must be an integer >= 1, got 0" },
  { id = "tcp.write: nil", task = true,
    call = function(ctx) local c = open_conn(ctx); return c.write, c, nil end,
    raises = "tcp.write: data must be a string, got nil" },
  { id = "tcp.read: a breaker as self",
    call = function() return tcp.Connection.read, cb end,
    raises = "tcp.read: self must be a TCP connection, got table" },
  { id = "tcp.close: a server as self", task = true,
    call = function(ctx)
      local s = server()
      ctx[#ctx + 1] = function() s:close() end
      return tcp.Connection.close, s
    end,
    raises = "tcp.close: self must be a TCP connection, got table" },
  { id = "tcp.server.close: a connection as self", task = true,
    call = function(ctx) return tcp.Server.close, open_conn(ctx) end,
    raises = "tcp.server.close: self must be a TCP server, got table" },
  { id = "tcp.write: a closed connection", task = true,
    call = function() local c = closed_conn(); return c.write, c, "x" end,
    returns = { nil, "closed: the connection is closed" } },
  { id = "tcp.read: a closed connection", task = true,
    call = function() local c = closed_conn(); return c.read, c end,
    returns = { nil, "closed: the connection is closed" } },
  { id = "tcp.read_line: a closed connection", task = true,
    call = function() local c = closed_conn(); return c.read_line, c end,
    returns = { nil, "closed: the connection is closed" } },
  { id = "tcp.close: a second time", task = true,
    call = function() local c = closed_conn(); return c.close, c end,
    returns = { true } },
  { id = "tcp.server.wait: a closed server", task = true,
    call = function() local s = server(); s:close(); return s.wait, s end,
    returns = { true } },
}

--- Running the table ----------------------------------------------------------

local function subst(s, dir)
  return (s:gsub("%$DIR", function() return dir end))
end

-- h.run_tasks with a watchdog (a background timer, which never keeps the
-- loop alive): a case still running after 5 s is cancelled and fails.
local function run_guarded(fn)
  local hung = false
  local r = pack(pcall(h.run_tasks, function()
    sched.after(5000, function()
      hung = true
      for t in pairs(sched._sched().all) do t:cancel() end
    end)
    return fn()
  end))
  assert(not hung, "the case hung: cancelled after 5000 ms")
  if not r[1] then
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end

-- pcall(fn, args...) from call(ctx), then the closers the case left in
-- ctx. Returns the packed results.
local function attempt(case)
  local ctx = {}
  local f = pack(case.call(ctx))
  local r = pack(pcall(f[1], unpack(f, 2, f.n)))
  for i = #ctx, 1, -1 do ctx[i]() end
  return r
end

local function shown(r)
  local out = { n = r.n - 1 }
  for i = 2, r.n do
    local v = r[i]
    out[i - 1] = type(v) == "table" and tostring(v) or v
  end
  return out
end

describe("bad input", function()
  local dir

  setup(function()
    dir = h.tmpdir()
    DIR = dir
    for name, body in pairs(FILES) do
      h.write_file(dir .. "/" .. name, body)
    end
  end)

  teardown(function()
    h.rmrf(dir)
  end)

  after_each(function()
    assert.is_nil(sched.running())
    assert.are.same({}, h.live_children())
  end)

  it("the table has at least 60 cases of its own, unique ids, and cases "
    .. "in every area", function()
    local AREAS = {
      cli = "cli", breaker = "objects", monitor = "objects",
      policy = "objects", errors = "objects", policyfile = "policy files", sleep = "scheduler",
      spawn = "scheduler", run = "scheduler", task = "scheduler",
      execute = "executor", process = "I/O", tcp = "I/O",
    }
    local ids, own, by_area = {}, 0, {}
    for _, case in ipairs(cases) do
      assert.is_nil(ids[case.id], case.id)
      ids[case.id] = true
      if case.also == nil then own = own + 1 end
      local area = AREAS[case.id:match("^(%a+)")]
      assert.is_not_nil(area, case.id)
      by_area[area] = (by_area[area] or 0) + 1
    end
    assert.is_true(own >= 60, own .. " cases of its own")
    assert.are.same({ cli = 39, objects = 44, scheduler = 22, executor = 34,
                      ["I/O"] = 50, ["policy files"] = 10 }, by_area)
  end)

  for _, case in ipairs(cases) do
    it(case.id, function()
      if case.argv then
        local words = { "timeout 10", h.shell_quote(h.sprun) }
        for _, a in ipairs(case.argv) do
          words[#words + 1] = h.shell_quote(subst(a, dir))
        end
        local r = h.run(table.concat(words, " "))
        if case.stderr then
          assert.are.same({ code = case.code,
                            stderr = subst(case.stderr, dir) },
                          { code = r.code, stderr = r.stderr })
        else
          assert.are.same({ code = case.code,
                            stderr1 = subst(case.stderr1, dir) },
                          { code = r.code,
                            stderr1 = r.stderr:match("^[^\n]*") })
          if case.code == 1 then
            assert.matches("\nstack traceback:\n", r.stderr, 1, true)
          end
        end
        return
      end
      local r
      if case.task then
        r = run_guarded(function() return attempt(case) end)
      else
        r = attempt(case)
      end
      if case.raises then
        assert.are.same({ false, case.raises }, { r[1], r[2] })
      else
        assert.is_true(r[1], tostring(r[2]))
        local want = { n = #case.returns }
        for i = 1, table.maxn(case.returns) do
          local v = case.returns[i]
          want[i] = type(v) == "string" and subst(v, dir) or v
        end
        want.n = math.max(want.n, table.maxn(case.returns))
        assert.are.same(want, shown(r))
      end
    end)
  end
end)

