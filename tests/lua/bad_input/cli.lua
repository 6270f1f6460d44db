-- Bad-input cases (see bad_input_spec.lua) of the sprun executable: bad
-- options, scripts that do not load, raise or return odd exit values, and
-- bad --telemetry and --metrics destinations.
local METRICS = "sprun: option '--metrics' must be HOST:PORT with a port "
  .. "from 1 to 65535, got '%s' (see sprun -h)\n"
local STATUS = "sprun: the script returned %s: an exit status must be a "
  .. "whole number from 0 to 255\n"

return {
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
    argv = { "--virtual-time" }, code = 2, stderr1 = "sprun: no script "
      .. "given (give the path of a Lua file, or -e CODE)" },
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
  { id = "cli: sprun.run with a virtual clock inside the script",
    argv = { "$DIR/nested.lua" }, code = 1,
    stderr1 = "sprun: $DIR/nested.lua:1: sprun.run: option 'clock' cannot "
      .. "be \"virtual\" inside a running loop whose clock is real" },
  { id = "cli: empty script", argv = { "$DIR/empty.lua" }, code = 0,
    stderr = "" },
  { id = "cli: return 256 is misuse, exit 2",
    argv = { "$DIR/ret256.lua" }, code = 2, stderr = STATUS:format("256") },
  { id = "cli: return -1 is misuse, exit 2", argv = { "$DIR/retneg.lua" },
    code = 2, stderr = STATUS:format("-1") },
  { id = "cli: return nan is misuse, exit 2", argv = { "$DIR/retnan.lua" },
    code = 2, stderr = STATUS:format("nan") },
  { id = "cli: return 1e300 is misuse, exit 2",
    argv = { "$DIR/rethuge.lua" }, code = 2, stderr = STATUS:format("1e+300") },
  { id = "cli: return 3.7 is misuse, exit 2", argv = { "$DIR/retfrac.lua" },
    code = 2, stderr = STATUS:format("3.7") },
  { id = "cli: --telemetry without a value",
    argv = { "--telemetry" }, code = 2, stderr = "sprun: option "
      .. "'--telemetry' needs a destination: stderr, stdout or a file "
      .. "(see sprun -h)\n" },
  { id = "cli: --telemetry= empty",
    argv = { "--telemetry=", "x.lua" }, code = 2, stderr = "sprun: option "
      .. "'--telemetry' needs a destination: stderr, stdout or a file "
      .. "(see sprun -h)\n" },
  { id = "cli: --telemetry to a directory that does not exist",
    argv = { "--telemetry=$DIR/no/such/dir/t.jsonl", "$DIR/empty.lua" },
    code = 2, stderr = "sprun: --telemetry: $DIR/no/such/dir/t.jsonl: No "
      .. "such file or directory\n" },
  { id = "cli: --metrics without a value",
    argv = { "--metrics" }, code = 2, stderr = METRICS:format("") },
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
}
