-- Child processes as tasks see them.
--
--   local r = sprun.process.run{ "sh", "-c", "echo hi", timeout_ms = 1000 }
--   -- r = { code = 0, signal = nil, stdout = "hi\n", stderr = "", pid = ... }
--
--   local w = sprun.process.spawn{ "python3", "-u", "worker.py", stdin = true }
--   w:write("job\n"); local line = w:read_line(); w:kill("SIGTERM"); w:wait()
--
-- Each child runs in its own process group, and belongs to the task that
-- started it: cancelling that task (a timeout, a batch, Ctrl-C) kills the
-- whole group and reaps it. Output that arrives before anyone reads it is
-- kept; stdout is a stream (io/stream.lua) and stdin its writer. The
-- trap: a child's exit is reported only after its output pipes reached
-- end of file, so `wait` never returns before the last line was read into
-- the buffers.

local core = require "sprun.core"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local stream = require "sprun.io.stream"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local telemetry = require "sprun.telemetry"
local clock = require "sprun.clock"
local ffi = require "ffi"

local type = type
local pcall = pcall
local each_key = next -- never `pairs` in a loop: see tables.lua
local tostring = tostring
local error = error
local setmetatable = setmetatable
local concat = table.concat
local find = string.find
local format = string.format
local match = string.match
local now = clock.now
local enabled = telemetry.enabled
local emit = telemetry.emit

local EV_PROC_STDOUT = core.EV_PROC_STDOUT
local EV_PROC_STDERR = core.EV_PROC_STDERR
local EV_PROC_CHANNEL = core.EV_PROC_CHANNEL
local EV_PROC_EXIT = core.EV_PROC_EXIT
local EV_CLOSED = core.EV_CLOSED
local WAKE_TIMER = kernel.WAKE_TIMER

pcall(ffi.cdef, "extern char **environ;")

local _M = {}

local Proc = {}
Proc.__index = Proc

-- The inherited environment with `env` laid over it (false removes a
-- variable), as a list of "K=V" strings.
local function environment(env)
  local vars, order = {}, {}
  local ep = ffi.C.environ
  local i = 0
  while ep[i] ~= nil do
    local kv = ffi.string(ep[i])
    local k = kv:match("^([^=]*)=")
    if k and vars[k] == nil then
      vars[k] = kv
      order[#order + 1] = k
    end
    i = i + 1
  end
  for k, v in each_key, env do
    if vars[k] == nil then
      order[#order + 1] = k
    end
    vars[k] = v ~= false and (k .. "=" .. tostring(v)) or false
  end
  local list = {}
  for j = 1, #order do
    if vars[order[j]] then
      list[#list + 1] = vars[order[j]]
    end
  end
  return list
end

local function check_env(v)
  if type(v) ~= "table" then
    return "must be a table of NAME = value"
  end
  for k, x in each_key, v do
    if type(k) ~= "string" or k == "" or find(k, "=", 1, true) then
      return "must be a table of NAME = value", "env", "key " .. check.describe(k)
    end
    local t = type(x)
    if t ~= "string" and t ~= "number" and x ~= false then
      return "must map names to strings, numbers or false", "env." .. k,
             check.describe(x)
    end
  end
end

_M._check_env = check_env

local function check_stdin(v)
  if type(v) == "string" or type(v) == "boolean" then
    return nil
  end
  return "must be a string (written then closed) or a boolean (a pipe)"
end

-- Where the child's stderr goes: "pipe" (kept, returned by run and read
-- with read_stderr), "inherit" (sprun's own stderr) or "null". run keeps
-- it by default; a long-lived worker's goes to sprun's stderr.
local function opt_spec(with_timeout)
  local spec = {
    stdin = { check = check_stdin },
    env = { check = check_env },
    cwd = { "string" },
    stderr = { "choice", values = { "pipe", "inherit", "null" },
               default = with_timeout and "pipe" or "inherit" },
  }
  if with_timeout then
    spec.timeout_ms = { "number", min = 0, limit = check.MS_MAX }
  end
  return spec
end

-- Two parsers, each called straight from the API function so that misuse
-- is reported at the user's line: the first splits the command from the
-- named options, the second checks those.
local function make_parser(fname, with_timeout)
  local parse = options.parser(fname, opt_spec(with_timeout))
  return function(opts)
    if type(opts) ~= "table" then
      error(fname .. ": options must be a table, got " .. check.describe(opts), 3)
    end
    local cmd = opts[1]
    if type(cmd) ~= "string" or cmd == "" then
      error(fname .. ": the command (element 1) must be a non-empty string, got "
            .. check.describe(cmd), 3)
    end
    local args, named = { cmd }, {}
    for k, v in each_key, opts do
      if type(k) == "number" then
        if k % 1 ~= 0 or k < 1 or k > #opts then
          error(format("%s: arguments must be a list, got key %s", fname,
                       check.describe(k)), 3)
        end
        if type(v) ~= "string" and type(v) ~= "number" then
          error(format("%s: argument %d must be a string or a number, got %s",
                       fname, k - 1, check.describe(v)), 3)
        end
        args[k] = tostring(v)
      else
        named[k] = v
      end
    end
    return args, named
  end, parse
end

local parse_run, parse_run_opts = make_parser("process.run", true)
local parse_spawn, parse_spawn_opts = make_parser("process.spawn", false)

-- libuv gives ENOENT both for a missing program and a missing cwd, so
-- the message names the directory when there is one.
local function spawn_error(cmd, cwd, name, msg)
  local kind = name == "ENOENT" and "not_found" or "spawn_failed"
  local where = cwd and " in " .. cwd or ""
  return errors.error(kind, format("cannot run %s%s: %s", cmd, where, msg),
                      { code = name, command = cmd, cwd = cwd })
end

local current = kernel.need_task

-- Telemetry: sprun.process.started and sprun.process.exited, one pair
-- per child (the pool's workers included). With no handler each costs
-- one table lookup.

local STARTED_EVENT = "sprun.process.started"
local EXITED_EVENT = "sprun.process.exited"

-- A child in events: the basename of its program.
local function program_name(file)
  return match(file, "([^/]*)$")
end

-- The child is reaped: its exit (code or signal), or, for a child
-- killed by closing it (its task was cancelled, a timeout), the end of
-- its handle, after the SIGKILL that closing sends.
local function report_exit(self)
  if self.reported then
    return
  end
  self.reported = true
  if enabled[EXITED_EVENT] then
    local pid = self._pid
    emit(EXITED_EVENT, { pid = pid, lifetime_ms = now() - self.started_at,
                         code = self.code },
         { name = program_name(self.file), pid = pid,
           signal = self.signal or (not self.exited and "SIGKILL" or nil) })
  end
end

-- `hooks`, for the worker pool (internal): { stdout, stderr, channel =
-- function(data) (nil at the end), exit = function(code, signal) }, called
-- from the loop's dispatch as the events come, instead of buffering; they
-- must not wait. o.channel gives the child a socket pair on fd 3.
local function start(task, args, o, hooks)
  local self = setmetatable({
    buf = {}, err = {}, eof = false, err_eof = false,
    exited = false, closed = false, writers = {}, owner = task,
    stdin_pipe = o.stdin == true, no_stdin = o.stdin == nil or o.stdin == false,
    err_pipe = o.stderr == "pipe", hooks = hooks,
  }, Proc)
  self.token = kernel.new_token(self)
  local handle, pid, ename, emsg = kernel.loop():spawn({
    file = args[1], args = args, cwd = o.cwd,
    env = o.env and environment(o.env) or nil,
    stdin = o.stdin ~= nil and o.stdin ~= false, stderr = o.stderr,
    channel = o.channel or nil,
  }, self.token)
  if handle == nil then
    kernel.free_token(self.token)
    return nil, spawn_error(args[1], o.cwd, pid, ename or emsg)
  end
  self.handle, self._pid = handle, pid
  self.file, self.started_at = args[1], now()
  kernel.own(task, self)
  if enabled[STARTED_EVENT] then
    emit(STARTED_EVENT, { pid = pid }, { name = program_name(args[1]),
                                         pid = pid })
  end
  if type(o.stdin) == "string" then
    stream.write_detached(self, o.stdin)
    handle:close_stdin()
  end
  return self
end

-- The events of a child started with hooks.
local function hooked_event(self, kind, a, b, data)
  local hooks = self.hooks
  if kind == EV_PROC_CHANNEL then
    hooks.channel(data ~= nil and #data > 0 and data or nil)
  elseif kind == EV_PROC_STDOUT then
    self.eof = self.eof or data == nil or #data == 0
    hooks.stdout(not self.eof and data or nil)
  elseif kind == EV_PROC_STDERR then
    self.err_eof = self.err_eof or data == nil or #data == 0
    hooks.stderr(not self.err_eof and data or nil)
  elseif kind == EV_PROC_EXIT then
    self.exited = true
    if b ~= 0 then
      self.signal = core.signal_name(b) or tostring(b)
    else
      self.code = a
    end
    report_exit(self)
    stream.close(self)
    hooks.exit(self.code, self.signal)
  else
    if kind == EV_CLOSED then
      report_exit(self)
    end
    stream.event(self, kind, a)
  end
end

function Proc:_event(kind, a, b, data)
  if self.hooks then
    return hooked_event(self, kind, a, b, data)
  end
  if kind == EV_PROC_STDOUT then
    if data == nil or #data == 0 then
      self.eof = true
    else
      stream.push(self, data)
    end
    kernel.wake(self)
  elseif kind == EV_PROC_STDERR then
    if data == nil or #data == 0 then
      self.err_eof = true
    else
      self.err[#self.err + 1] = data
    end
  elseif kind == EV_PROC_EXIT then
    -- Exactly one of code and signal is set: a child killed by a signal
    -- has no exit code.
    self.exited = true
    if b ~= 0 then
      self.signal = core.signal_name(b) or tostring(b)
    else
      self.code = a
    end
    report_exit(self)
    stream.close(self)
  else
    if kind == EV_CLOSED then
      report_exit(self)
    end
    stream.event(self, kind, a)
  end
end

-- Waits, as `task`, for the child to change (output, exit), counting as
-- I/O in flight meanwhile: virtual time does not jump while a task waits
-- on a child, and does while the child only lives (an idle worker).
local function await_child(self, task)
  local n = (self.awaiting or 0) + 1
  self.awaiting = n
  if n == 1 and not self.closed then
    self.handle:await(true)
  end
  local ok, why = pcall(kernel.block, self, task)
  n = self.awaiting - 1
  self.awaiting = n
  if n == 0 and not self.closed then
    self.handle:await(false)
  end
  if not ok then
    error(why, 0)
  end
  return why
end

-- Called when the owning task is cancelled: kill the group and reap it.
function Proc:_abort()
  self.killed = true
  stream.close(self)
end

-- For stream.read_line: a reader waits for the child's next output.
function Proc:_fill(task)
  await_child(self, task)
end

function Proc:_end_error()
  return errors.error("eof", "the process's output has ended")
end

local function status(self)
  return { code = self.code, signal = self.signal, pid = self._pid }
end

-- Methods check self with check.self straight from their own body (a
-- helper in between would add a frame, and the error would point at this
-- file instead of the caller's line).
local PROC = "a process"

-- Waits for the child to exit: { code, signal, pid } (signal: "SIGSEGV" or
-- nil), or nil, err if it was killed because its task was cancelled.
function Proc:wait()
  check.self(self, Proc, "process.wait", PROC)
  local task = current("process.wait")
  while not self.exited do
    if self.killed then
      return nil, errors.error(errors.CANCELLED, "process was killed")
    end
    await_child(self, task)
  end
  return status(self)
end

-- The next line of the child's stdout without its newline; nil, err
-- (kind "eof") once the output has ended.
function Proc:read_line()
  check.self(self, Proc, "process.read_line", PROC)
  local task = current("process.read_line")
  return stream.read_line(self, task)
end

-- Everything the child wrote to stdout so far and not read yet.
function Proc:read()
  check.self(self, Proc, "process.read", PROC)
  return stream.take_all(self)
end

-- Everything the child wrote to stderr so far and not read yet (spawned
-- with stderr = "pipe").
function Proc:read_stderr()
  check.self(self, Proc, "process.read_stderr", PROC)
  if not self.err_pipe then
    error("process.read_stderr: the process has no stderr pipe (spawn it "
          .. "with stderr = \"pipe\")", 2)
  end
  local s = concat(self.err)
  self.err = {}
  return s
end

-- Writes to the child's stdin (spawned with stdin = true); true once
-- written, or nil, err.
function Proc:write(data)
  check.self(self, Proc, "process.write", PROC)
  if type(data) ~= "string" then
    check.arg_error("process.write", "data", "must be a string", data)
  end
  if self.no_stdin then
    -- A child spawned without a pipe to write to: misuse, named by the
    -- option that gives one.
    error("process.write: the process has no stdin pipe (spawn it with "
          .. "stdin = true)", 2)
  end
  local task = current("process.write")
  if self.closed then
    return nil, errors.error("closed", "the process has exited")
  end
  if not self.stdin_pipe then
    return nil, errors.error("closed", "the process's stdin is closed")
  end
  local ok, ename, emsg = stream.write(self, task, data)
  if not ok then
    return nil, errors.error("write_failed", emsg, { code = ename })
  end
  return true
end

function Proc:close_stdin()
  check.self(self, Proc, "process.close_stdin", PROC)
  if not self.closed then
    self.handle:close_stdin()
  end
  self.stdin_pipe = false
  return true
end

-- Sends a signal ("SIGTERM" by default, or a name or number) to the
-- child's process group.
function Proc:kill(sig)
  check.self(self, Proc, "process.kill", PROC)
  local signum = sig or "SIGTERM"
  if type(signum) == "string" then
    signum = core.signals[signum]
  end
  if type(signum) ~= "number" or core.signal_name(signum) == nil then
    check.arg_error("process.kill", "signal",
                    "must be a signal name such as \"SIGTERM\" or its number",
                    sig)
  end
  if self.closed then
    return nil, errors.error("closed", "the process has exited")
  end
  local ok, ename, emsg = self.handle:kill(signum)
  if not ok then
    return nil, errors.error("kill_failed", emsg, { code = ename })
  end
  return true
end

-- The child's process id (a method: the field is `_pid`).
function Proc:pid()
  return self._pid
end

--- API -----------------------------------------------------------------

-- What the child wrote to stderr, or nil when it went elsewhere.
local function stderr_text(self)
  if self.err_pipe then
    return concat(self.err)
  end
end

local function run_in_task(args, o)
  local task = kernel.current()
  local self, err = start(task, args, o)
  if self == nil then
    return nil, err
  end
  local limit = kernel.capped(o.timeout_ms)
  if limit then
    kernel.arm(task, limit)
  end
  while not self.exited do
    local why = await_child(self, task)
    if why == WAKE_TIMER and not self.exited then
      self:_abort()
      return nil, errors.error(errors.TIMEOUT, format(
        "%s did not finish within %d ms (killed)", args[1], limit), {
          timeout_ms = limit, pid = self._pid,
          stdout = stream.take_all(self), stderr = stderr_text(self),
        })
    end
  end
  kernel.disarm(task)
  local r = status(self)
  r.stdout = stream.take_all(self)
  r.stderr = stderr_text(self)
  return r
end

-- Runs a command to completion: { code, signal, stdout, stderr, pid }, or
-- nil, err (kind "not_found" or "spawn_failed" if it cannot start,
-- "timeout" if it ran past timeout_ms and was killed).
function _M.run(opts)
  local args, named = parse_run(opts)
  local o = parse_run_opts(named)
  kernel.check_caller("process.run")
  return sched.in_task(run_in_task, args, o)
end

-- Starts a long-lived child; returns a process object or nil, err.
function _M.spawn(opts)
  local args, named = parse_spawn(opts)
  local o = parse_spawn_opts(named)
  local task = current("process.spawn")
  return start(task, args, o)
end

_M.Process = Proc

-- Starts a child whose output goes to `hooks` (see start), owned by
-- `task`: for the worker pool. args: the command; o: { env, cwd, stdin
-- (boolean), stderr ("pipe" | "inherit" | "null"), channel (boolean) }.
-- Returns the process or nil, err.
function _M._spawn_hooked(task, args, o, hooks)
  return start(task, args, o, hooks)
end

-- Writes to the channel of a child spawned with o.channel, with no event
-- back: true, or nil, err.
local function written(ok, ename, emsg)
  if not ok then
    return nil, errors.error("write_failed", emsg, { code = ename })
  end
  return true
end

function Proc:_channel_write(data)
  if self.closed then
    return nil, errors.error("closed", "the process has exited")
  end
  return written(self.handle:channel_write(data))
end

-- Writes to the stdin pipe with no event back (the pool's stdio channel):
-- true, or nil, err.
function Proc:_stdin_write(data)
  if self.closed then
    return nil, errors.error("closed", "the process has exited")
  end
  return written(self.handle:write(data, 0))
end

return _M
