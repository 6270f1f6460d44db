-- Bad-input cases (see bad_input_spec.lua) of I/O: processes (sprun.process
-- run and spawn, and the methods of a process, exited ones included) and
-- sockets (sprun.tcp connect and listen, connections and servers, closed
-- ones included).
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local proc = sprun.process
local tcp = sprun.tcp
local noop, cb, rp = fx.noop, fx.cb, fx.rp
local server, closed_conn, open_conn = fx.server, fx.closed_conn, fx.open_conn
local exited_proc, free_port = fx.exited_proc, fx.free_port

return {
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
      .. "stderr, stdin, timeout_ms)" },
  { id = "process.run: stderr 'file'",
    call = function() return proc.run, { "sh", stderr = "file" } end,
    raises = "process.run: option 'stderr' must be \"pipe\", \"inherit\" or "
      .. "\"null\", got \"file\"" },
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
      .. "cwd, env, stderr, stdin)" },
  { id = "process.read_stderr: spawned without a stderr pipe is misuse",
    task = true,
    call = function() local p = exited_proc(); return p.read_stderr, p end,
    raises = "process.read_stderr: the process has no stderr pipe (spawn it "
      .. "with stderr = \"pipe\")" },
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
    call = function()
      local p = exited_proc { "true", stdin = true }
      return p.write, p, "x"
    end,
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
  { id = "process.write: spawned without a stdin pipe is misuse",
    task = true,
    call = function(ctx)
      local p = assert(proc.spawn { "sleep", "5" })
      ctx[#ctx + 1] = function() p:kill("SIGKILL"); p:wait() end
      return p.write, p, "x"
    end,
    raises = "process.write: the process has no stdin pipe (spawn it with "
      .. "stdin = true)" },
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
  { id = "tcp.connect: a host name that does not resolve", task = true,
    call = function() return tcp.connect, "not-an-ip.invalid", 80 end,
    returns = { nil, "dns_failed: not-an-ip.invalid: unknown node or "
      .. "service" } },
  { id = "tcp.connect: a numeric address that is not one", task = true,
    call = function() return tcp.connect, "300.1.2.3", 80 end,
    returns = { nil, "invalid_address: connect to 300.1.2.3:80: invalid "
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
