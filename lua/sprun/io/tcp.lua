-- TCP connections and local servers as tasks see them.
--
--   local conn, err = sprun.tcp.connect("127.0.0.1", 8080, { timeout_ms = 500 })
--   conn:write("PING\n"); local line = conn:read_line(); conn:close()
--
--   local server = sprun.tcp.listen("127.0.0.1", 0, function(conn) ... end)
--   print(server.port); server:wait()
--
-- A socket reads only while a task waits for data (what the peer sends
-- meanwhile stays in the kernel), so memory stays bounded and virtual time
-- can move while connections are idle. A socket belongs to the task that
-- opened it; cancelling the task closes it. A connection is a stream
-- (io/stream.lua). The trap: a reader that is cancelled while the socket
-- stays open must stop the reading too, unless someone else still waits
-- for data: a socket that reads for nobody buffers without bound and
-- holds the virtual clock to the real one.

local core = require "sprun.core"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local stream = require "sprun.io.stream"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local dns = require "sprun.io.dns"
local clock = require "sprun.clock"

local type = type
local pcall = pcall
local tostring = tostring
local error = error
local setmetatable = setmetatable
local format = string.format
local max = math.max
local now = clock.now

local EV_TCP_CONNECT = core.EV_TCP_CONNECT
local EV_TCP_DATA = core.EV_TCP_DATA
local EV_TCP_ACCEPT = core.EV_TCP_ACCEPT
local EV_CLOSED = core.EV_CLOSED
local WAKE_TIMER = kernel.WAKE_TIMER

-- The listen backlog. With a short queue, a burst of clients overflows it
-- and the kernel drops the handshake's last ACK (or, with SYN cookies,
-- forgets the connection): a client that waits for the server to speak
-- first then waits forever on a connection the server never accepted.
-- The kernel caps this at net.core.somaxconn (4096 since Linux 5.4).
local BACKLOG = 4096

local _M = {}

local Conn = {}
Conn.__index = Conn

local Server = {}
Server.__index = Server

-- libuv error names to error kinds a retry policy can name.
local KINDS = {
  ECONNREFUSED = "connection_refused",
  ETIMEDOUT = "timeout",
  ECONNRESET = "connection_reset",
  EPIPE = "connection_closed",
  ENOTCONN = "connection_closed",
  EADDRINUSE = "address_in_use",
  EADDRNOTAVAIL = "address_not_available",
  EINVAL = "invalid_address",
  ENETUNREACH = "unreachable",
  EHOSTUNREACH = "unreachable",
}

local function io_error(what, name, msg)
  return errors.error(KINDS[name] or "io_error", format("%s: %s", what, msg),
                      { code = name })
end

local current = kernel.need_task

local function new_conn(handle, owner)
  local self = setmetatable({
    handle = handle, buf = {}, eof = false, closed = false, writers = {},
    owner = owner, reading = false,
  }, Conn)
  self.token = kernel.new_token(self)
  if handle then
    handle:set_token(self.token)
  end
  kernel.own(owner, self)
  return self
end

function Conn:_event(kind, a, b, data)
  if kind == EV_TCP_DATA then
    if a < 0 then
      self.read_error = a
      self.eof = true
    elseif data == nil or #data == 0 then
      self.eof = true
    else
      stream.push(self, data)
    end
    kernel.wake(self)
  elseif kind == EV_TCP_CONNECT then
    self.connect_result = a
    kernel.wake(self)
  else
    stream.event(self, kind, a)
  end
end

function Conn:_abort()
  self:close()
end

-- Methods check self with check.self straight from their own body (a
-- helper in between would add a frame, and the error would point at this
-- file instead of the caller's line).
local CONN = "a TCP connection"

-- For stream.read_line and read: waits until data is buffered or the
-- stream ended, reading only meanwhile (see the trap above).
function Conn:_fill(task)
  if not self.reading then
    self.reading = true
    self.handle:read_start()
  end
  local ok, err = pcall(kernel.block, self, task)
  local idle = not ok and not kernel.has_waiters(self)
  if #self.buf > 0 or self.eof or self.closed or idle then
    self.reading = false
    if not self.closed then
      self.handle:read_stop()
    end
  end
  if not ok then
    error(err, 0)
  end
end

function Conn:_end_error()
  if self.read_error then
    return errors.error("connection_reset", "the connection failed while reading")
  end
  return errors.error("closed", "the connection is closed")
end

-- Returns the next data received (at most `max` bytes when given), or nil,
-- err (kind "closed") once the peer closed the connection.
function Conn:read(max)
  check.self(self, Conn, "tcp.read", CONN)
  if max ~= nil then
    check.integer("tcp.read", "max", max, 1, check.MS_MAX)
  end
  local task = current("tcp.read")
  while #self.buf == 0 do
    if self.eof or self.closed then
      return nil, self:_end_error()
    end
    self:_fill(task)
  end
  return stream.take(self, max)
end

-- Returns the next line without its "\n" (or "\r\n"); at the end of the
-- stream, what is left, then nil, err (kind "closed").
function Conn:read_line()
  check.self(self, Conn, "tcp.read_line", CONN)
  local task = current("tcp.read_line")
  return stream.read_line(self, task)
end

-- Sends data; true once the kernel took it, or nil, err.
function Conn:write(data)
  check.self(self, Conn, "tcp.write", CONN)
  if type(data) ~= "string" then
    check.arg_error("tcp.write", "data", "must be a string", data)
  end
  local task = current("tcp.write")
  if self.closed then
    return nil, self:_end_error()
  end
  local ok, ename, emsg = stream.write(self, task, data)
  if not ok then
    return nil, io_error("write", ename, emsg)
  end
  return true
end

-- Closes the connection; a task waiting to read gets nil, err. Idempotent.
function Conn:close()
  check.self(self, Conn, "tcp.close", CONN)
  stream.close(self)
  return true
end

local parse_connect = options.parser("tcp.connect", {
  timeout_ms = { "number", min = 0, limit = check.MS_MAX },
})

-- One connect to one numeric address, within `ms` (nil: no limit);
-- `what` names it in errors ("host:port").
local function connect_addr(what, addr, port, ms, timeout_ms)
  local task = kernel.current()
  local self = new_conn(nil, task)
  local handle, ename, emsg = kernel.loop():tcp_connect(addr, port,
                                                        self.token)
  if handle == nil then
    kernel.free_token(self.token)
    kernel.disown(task, self)
    return nil, io_error("connect to " .. what, ename, emsg)
  end
  self.handle = handle
  if ms then
    kernel.arm(task, ms)
  end
  while self.connect_result == nil do
    local ok, why = pcall(kernel.block, self, task)
    if not ok then
      self:close()
      error(why, 0)
    end
    if why == WAKE_TIMER and self.connect_result == nil then
      self:close()
      return nil, errors.error(errors.TIMEOUT, format(
        "connect to %s did not finish within %d ms", what, timeout_ms),
        { timeout_ms = timeout_ms })
    end
  end
  kernel.disarm(task)
  if self.connect_result ~= 0 then
    local r = self.connect_result
    self:close()
    return nil, io_error("connect to " .. what, core.uv_err_name(r),
                         core.uv_strerror(r))
  end
  return self
end

-- Resolves the host (sprun.dns) and tries its addresses in order until
-- one connects, all within timeout_ms (capped by the task's deadline).
local function connect_in_task(host, port, o)
  local what = format("%s:%d", host, port)
  local limit = kernel.capped(o.timeout_ms)
  local deadline = limit and now() + limit
  local addrs, err = dns.lookup(host, "any", limit)
  if addrs == nil then
    return nil, err
  end
  for i = 1, #addrs do
    local left = deadline and max(0, deadline - now())
    local conn
    conn, err = connect_addr(what, addrs[i], port, left, limit)
    if conn or errors.kind(err) == errors.TIMEOUT then
      return conn, err
    end
  end
  return nil, err
end

-- Connects to a numeric address or a host name (resolved by sprun.dns,
-- its addresses tried in order); returns a connection or nil, err (kind
-- "connection_refused", "timeout", "dns_failed", ...).
function _M.connect(host, port, opts)
  -- Checked here, not in a helper: misuse is reported at the user's line.
  if type(host) ~= "string" or host == "" then
    check.arg_error("tcp.connect", "host", "must be a non-empty string", host)
  end
  check.integer("tcp.connect", "port", port, 1, 65535)
  local o = parse_connect(opts)
  kernel.check_caller("tcp.connect")
  return sched.in_task(connect_in_task, host, port, o)
end

-- An inherited descriptor (a pool worker's channel, fd 3) as a
-- connection owned by the calling task (internal: sprun.pool.serve):
-- the connection, or nil, err.
function _M._open_fd(fd)
  local task = current("tcp.open_fd")
  local conn = new_conn(nil, task)
  local handle, ename, emsg = kernel.loop():pipe_open(fd, conn.token)
  if handle == nil then
    kernel.disown(task, conn)
    kernel.free_token(conn.token)
    return nil, io_error("open fd " .. fd, ename, emsg)
  end
  conn.handle = handle
  return conn
end

--- Servers ---------------------------------------------------------------

local function serve(server, conn)
  local ok, err = pcall(server.handler, conn)
  conn:close()
  if not ok then
    error(err, 0)
  end
end

function Server:_event(kind, a, b, data, handle)
  if kind == EV_TCP_ACCEPT then
    if self.closed then
      handle:close()
      return
    end
    local conn = new_conn(handle, nil)
    local task = kernel.spawn(self.owner, serve, self, conn)
    -- A failed handler is reported at once: the server owner never awaits it.
    kernel.detach(task)
    kernel.own(task, conn)
  elseif kind == EV_CLOSED then
    kernel.free_token(self.token)
  end
end

function Server:_abort()
  self:close()
end

-- Stops accepting connections; connections already open go on.
function Server:close()
  check.self(self, Server, "tcp.server.close", "a TCP server")
  stream.close(self)
  return true
end

-- Waits until the server is closed (by close() or a cancellation).
function Server:wait()
  check.self(self, Server, "tcp.server.wait", "a TCP server")
  local task = current("tcp.server.wait")
  while not self.closed do
    kernel.block(self, task)
  end
  return true
end

-- Listens on host:port (a name listens on its first address; port 0
-- picks a free one, see server.port) and runs
-- handler(conn) as a new task for every connection, closing the
-- connection when the handler returns.
function _M.listen(host, port, handler)
  if type(host) ~= "string" or host == "" then
    check.arg_error("tcp.listen", "host", "must be a non-empty string", host)
  end
  check.integer("tcp.listen", "port", port, 0, 65535)
  check.func("tcp.listen", "handler", handler)
  local task = current("tcp.listen")
  local addrs, err = dns.lookup(host, "any")
  if addrs == nil then
    return nil, err
  end
  local self = setmetatable({ handler = handler, owner = task, closed = false },
                            Server)
  self.token = kernel.new_token(self)
  local handle, bound, emsg = kernel.loop():tcp_listen(addrs[1], port,
                                                       BACKLOG, self.token)
  if handle == nil then
    kernel.free_token(self.token)
    return nil, io_error(format("listen on %s:%d", host, port), bound, emsg)
  end
  self.handle, self.port = handle, bound
  kernel.own(task, self)
  return self
end

_M.Connection = Conn
_M.Server = Server

return _M
