-- One worker process of a pool (internal): starting it with its channel,
-- reading its messages, writing its requests once per turn, logging its
-- output, and ending it. The pool (pool/init.lua) decides what to send it
-- and what its death means; this file hands it the events:
--
--   pool:_ready(w)           the worker said { ready = true }
--   pool:_message(w, msg)    any other message (a decoded table)
--   pool:_violation(w, why)  a message that breaks the protocol
--   pool:_exit(w, code, signal)
--
-- A worker holds virtual time (it is real I/O in flight) while it starts
-- and while a request is in flight on it, never while it only waits for
-- work.
--
-- The trap: every event comes from the loop's dispatch, outside any task;
-- nothing here may wait, and an error would end the loop, so what runs
-- user-supplied data is protected.

local process = require "sprun.io.process"
local protocol = require "sprun.pool.protocol"
local barrier = require "sprun.pool.barrier"
local kernel = require "sprun.sched.kernel"
local clock = require "sprun.clock"

local concat = table.concat
local find = string.find
local sub = string.sub
local format = string.format
local match = string.match
local tonumber = tonumber
local each_key = next -- never `pairs` in a loop: see tables.lua
local tostring = tostring
local setmetatable = setmetatable
local io_stderr = io.stderr
local open = io.open

local _M = {}

local Worker = {}
Worker.__index = Worker
_M.Worker = Worker

-- The lines kept of a worker's stderr, for the pool_failed error.
local TAIL = 20
-- A line of output longer than this is logged in pieces.
local MAX_LINE = 64 * 1024

-- Logs one line of a worker's output as [pool/worker_N] line.
local function log_line(w, stream, line)
  io_stderr:write(w.prefix, line, "\n")
  if stream == "stderr" then
    local tail = w.tail
    tail.n = tail.n + 1
    tail[(tail.n - 1) % TAIL + 1] = line
  end
  w.pool:_output(w, stream, line)
end

-- Splits a chunk of output into lines; what follows the last newline
-- waits for the rest of its line (nil data: the stream ended).
local function output(w, stream, data)
  local key = stream == "stdout" and "out_rest" or "err_rest"
  local rest = w[key]
  if data == nil then
    if rest then
      w[key] = nil
      log_line(w, stream, rest)
    end
    return
  end
  if rest then
    data = rest .. data
    w[key] = nil
  end
  local at = 1
  local nl = find(data, "\n", at, true)
  while nl do
    log_line(w, stream, (sub(data, at, nl - 1):gsub("\r$", "")))
    at = nl + 1
    nl = find(data, "\n", at, true)
  end
  if at <= #data then
    local left = sub(data, at)
    if #left > MAX_LINE then
      log_line(w, stream, left)
    else
      w[key] = left
    end
  end
  io_stderr:flush()
end

-- The stderr lines kept, oldest first.
function Worker:stderr_tail()
  local tail, out = self.tail, {}
  local first = tail.n > TAIL and tail.n - TAIL + 1 or 1
  for i = first, tail.n do
    out[#out + 1] = tail[(i - 1) % TAIL + 1]
  end
  return out
end

-- Starts worker generation `gen` of `slot` for `pool` (its options `o`);
-- returns the worker, or nil and the spawn error.
function _M.start(pool, slot, gen, o)
  local w = setmetatable({
    pool = pool, slot = slot, gen = gen, id = slot.id,
    prefix = "[" .. pool._name .. "/" .. slot.id .. "] ",
    state = "starting", inflight = {}, n = 0, served = 0,
    out = {}, nout = 0, flushing = false, held = false,
    tail = { n = 0 }, violations = 0, started_at = clock.now(),
    oom_before = barrier.oom_kills(),
  }, Worker)
  w.max_requests = o.max_requests and (o.max_requests + (o.max_requests_jitter
    and math.random(0, o.max_requests_jitter) or 0)) or nil
  w.reader = protocol.reader(o.protocol,
    function(msg)
      if w.ready_at == nil then
        if msg.ready ~= true then
          return pool:_violation(w, "a message before { ready = true }")
        elseif w.state == "starting" then
          return pool:_ready(w)
        end
        -- Ready too late: it is being stopped already.
        return
      end
      return pool:_message(w, msg)
    end,
    function(why, text)
      pool:_violation(w, why .. ": " .. sub(text, 1, 200))
    end,
    function(why)
      pool:_violation(w, why, true)
    end)
  local stdio = o.channel == "stdio"
  local hooks = {
    channel = function(data)
      if data then
        w.reader:feed(data)
      end
    end,
    stdout = function(data)
      if stdio then
        if data then
          w.reader:feed(data)
        end
      else
        output(w, "stdout", data)
      end
    end,
    stderr = function(data) output(w, "stderr", data) end,
    exit = function(code, signal)
      output(w, "stdout", nil)
      output(w, "stderr", nil)
      w:hold(false)
      w.state = "exited"
      pool:_exit(w, code, signal)
    end,
  }
  local env = {}
  for k, v in each_key, o.env or {} do
    env[k] = v
  end
  env.SPRUN_POOL = pool._name
  env.SPRUN_WORKER_ID = slot.id
  env.SPRUN_CHANNEL = o.channel
  env.SPRUN_PROTOCOL = o.protocol
  if env.PYTHONUNBUFFERED == nil then
    env.PYTHONUNBUFFERED = "1"
  end
  if _M.python_path then
    local pp = env.PYTHONPATH
    if pp == nil then
      pp = os.getenv("PYTHONPATH")
    end
    env.PYTHONPATH = pp and pp ~= "" and pp .. ":" .. _M.python_path
                     or _M.python_path
  end
  local proc, err = process._spawn_hooked(nil, o.cmd, {
    env = env, cwd = o.cwd, stdin = stdio, stderr = "pipe",
    channel = not stdio,
  }, hooks)
  if proc == nil then
    return nil, err
  end
  w.proc, w.pid = proc, proc:pid()
  w.write = stdio and proc._stdin_write or proc._channel_write
  w:hold(true)
  return w
end

-- Holds virtual time (the worker is I/O in flight), or lets it go.
function Worker:hold(on)
  if on ~= self.held and not self.proc.closed then
    self.held = on
    self.proc.handle:await(on)
  end
end

-- Writes what was queued this turn, in one piece.
local function flush(w)
  w.flushing = false
  local n = w.nout
  if n == 0 or w.state == "exited" then
    return
  end
  local data = n == 1 and w.out[1] or concat(w.out, "", 1, n)
  for i = 1, n do
    w.out[i] = nil
  end
  w.nout = 0
  local ok, err = w.write(w.proc, data)
  if not ok then
    -- The worker is gone or going: its exit says what became of the
    -- requests in flight.
    w.write_error = err
  end
end

-- Queues a framed message for the end of this turn.
function Worker:send(frame)
  local n = self.nout + 1
  self.nout = n
  self.out[n] = frame
  if not self.flushing then
    self.flushing = true
    kernel.at_turn_end(flush, self)
  end
end

-- Ends the process with `sig` (default SIGKILL), saying why (the class of
-- its death when the reason is a failure: "timeout", ...).
function Worker:kill(reason, sig)
  if self.state == "exited" then
    return
  end
  -- No request goes to it any more.
  self.state = "stopping"
  self.kill_reason = self.kill_reason or reason
  self.proc:kill(sig or "SIGKILL")
end

-- The worker's resident memory in MiB, read from /proc, or nil.
function Worker:rss_mb()
  local f = open("/proc/" .. tostring(self.pid) .. "/status")
  if f == nil then
    return nil
  end
  local kb = match(f:read("*a") or "", "VmRSS:%s*(%d+)")
  f:close()
  return kb and tonumber(kb) / 1024 or nil
end

function Worker:__tostring()
  return format("%s (pid %s, %s)", self.prefix, tostring(self.pid),
                self.state)
end

return _M
