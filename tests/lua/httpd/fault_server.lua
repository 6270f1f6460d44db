-- A fault-injecting HTTP/1.1 server for the HTTP client's specs, on
-- sprun.tcp, in the same run as the client under test:
--
--   local fault = require "httpd.fault_server"
--   local fs = fault.start()                 -- inside sprun.run
--   client:get(fs:url("/drip?bytes=10&ms=50"))
--   print(fs.connections, fs.requests, fs.hits["/drip"])
--   fs:close()
--
-- Every route is a path; its parameters come in the query string. The
-- normal routes keep the connection alive (HTTP/1.1), any route closes it
-- after answering with `close=1`. The faulty ones are listed in ROUTES
-- below, each with what it does to the client.
--
-- The rule: every handler ends when its client goes or the server is
-- closed, so that a run ends as soon as the client is done. The trap: a
-- handler that only sleeps (slow headers, a drip) does not see its client
-- go, so it never sleeps on its own: pause() reads the connection
-- meanwhile, and a read that ends cuts the pause short. close() also
-- cancels every handler still running.

local sprun = require "sprun"
local sched = require "sprun.sched"
local cjson = require "cjson"
local ffi = require "ffi"
local bit = require "bit"

local type = type
local pairs = pairs
local pcall = pcall
local error = error
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local concat = table.concat
local find = string.find
local sub = string.sub
local gsub = string.gsub
local lower = string.lower
local match = string.match
local format = string.format
local ceil = math.ceil

local _M = {}

local Server = {}
Server.__index = Server

-- The longest request line or header line read; past it the request is
-- refused (400), so a client sending no newline cannot grow a buffer
-- without bound.
local LINE_MAX = 64 * 1024

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [206] = "Partial Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [304] = "Not Modified", [307] = "Temporary Redirect",
  [308] = "Permanent Redirect", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout",
  [409] = "Conflict", [410] = "Gone", [413] = "Content Too Large",
  [418] = "I'm a teapot", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [501] = "Not Implemented",
  [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

--- The body pattern -----------------------------------------------------

-- A body of n bytes made of 16-byte lines, each spelling its own offset
-- in hex ("00000000000a0b0\n" starts at byte 0xa0b0), so that a chunk
-- lost, doubled or moved is seen at once. /big and nginx's large.bin
-- (httpd.nginx) are made of it.
local SUFFIXES = {}
for i = 0, 4095 do
  SUFFIXES[i + 1] = format("%04x\n", i * 16)
end

function _M.body(n)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then
    error("fault_server.body: n must be an integer >= 0, got " .. tostring(n),
          2)
  end
  local parts = {}
  for b = 0, ceil(n / 65536) - 1 do
    local prefix = format("%011x", b)
    parts[b + 1] = prefix .. concat(SUFFIXES, prefix)
  end
  return sub(concat(parts), 1, n)
end

--- Reading and writing a connection --------------------------------------

-- A connection as the handlers see it: what was read and not parsed yet
-- (`buf`), whether the client's side ended (`eof`), and the bytes read
-- and written so far (reset() recognizes the socket by them).
local function new_peer(fs, conn)
  return { fs = fs, conn = conn, buf = "", eof = false, received = 0,
           sent = 0 }
end

-- Reads the next chunk into p.buf; false once the client's side ended
-- (or the connection was closed here).
local function fill(p)
  if p.eof then
    return false
  end
  local data = p.conn:read()
  if data == nil then
    p.eof = true
    return false
  end
  p.received = p.received + #data
  p.buf = p.buf .. data
  return true
end

-- The next line without its "\r\n", or nil at the end (or "too_long").
local function read_line(p)
  while true do
    local nl = find(p.buf, "\n", 1, true)
    if nl then
      local line = sub(p.buf, 1, nl - 1)
      p.buf = sub(p.buf, nl + 1)
      return (gsub(line, "\r$", ""))
    end
    if #p.buf > LINE_MAX then
      return nil, "too_long"
    end
    if not fill(p) then
      return nil
    end
  end
end

-- Exactly n bytes, or nil if the client's side ended first. A large body
-- is gathered as a list of chunks, not by concatenating each to the rest.
local function read_bytes(p, n)
  if #p.buf >= n then
    local s = sub(p.buf, 1, n)
    p.buf = sub(p.buf, n + 1)
    return s
  end
  local parts, have = { p.buf }, #p.buf
  p.buf = ""
  while have < n do
    local data = p.conn:read()
    if data == nil then
      p.eof = true
      return nil
    end
    p.received = p.received + #data
    parts[#parts + 1] = data
    have = have + #data
  end
  local s = concat(parts)
  if have > n then
    p.buf = sub(s, n + 1)
    s = sub(s, 1, n)
  end
  return s
end

local function send(p, s)
  local ok = p.conn:write(s)
  if ok then
    p.sent = p.sent + #s
  end
  return ok
end

-- Waits ms, or less if the client goes (or the server is closed) first:
-- true if the handler should go on. A task reads the connection
-- meanwhile; what it reads stays in p.buf for the next request.
local function pause(p, ms)
  if p.eof then
    return false
  end
  if ms <= 0 then
    return true
  end
  local watcher = sprun.spawn(function()
    while fill(p) do
    end
    return "gone"
  end)
  -- A wait that times out cancels the watcher; the data the socket holds
  -- stays in its buffer.
  return (watcher:await(ms)) ~= "gone"
end

--- A TCP reset -------------------------------------------------------------

-- sprun.tcp can only close a socket (a FIN). A reset is made with
-- SO_LINGER {on, 0} set on the socket before it is closed: the kernel
-- then sends a RST instead of a FIN. sprun.tcp does not give the socket's
-- descriptor, so reset() looks for it among the process's descriptors:
-- a TCP socket whose local port is the server's, connected, and whose
-- kernel counts (TCP_INFO: bytes received, bytes acked by the peer) are
-- exactly what this connection read and wrote. Waiting for the acks also
-- means nothing is left unsent, which a RST would drop. When no single
-- socket matches within a second (another connection with the very same
-- history), the connection is closed plainly (a FIN).
local SOL_SOCKET, SO_LINGER = 1, 13
local IPPROTO_TCP, TCP_INFO = 6, 11
-- struct tcp_info (linux/tcp.h): tcpi_bytes_acked and tcpi_bytes_received
-- are the two __u64 at these offsets (Linux 4.1 and later).
local TCPI_BYTES_ACKED, TCPI_BYTES_RECEIVED, TCPI_SIZE = 120, 128, 232

-- Each declaration on its own: another spec may have declared some
-- already, and one that fails must not keep the others out.
for _, decl in ipairs {
  "int getsockname(int fd, void *addr, unsigned *len);",
  "int getpeername(int fd, void *addr, unsigned *len);",
  "int getsockopt(int fd, int level, int name, void *val, unsigned *len);",
  "int setsockopt(int fd, int level, int name, const void *val, unsigned len);",
  "void *opendir(const char *name);",
  "void *readdir(void *dir);",
  "int closedir(void *dir);",
  [[struct sprun_httpd_sockaddr_in {
      uint16_t family; uint16_t port; uint32_t addr; char zero[8]; };]],
  "struct sprun_httpd_linger { int onoff; int linger; };",
  -- glibc's struct dirent on 64-bit Linux.
  [[struct sprun_httpd_dirent { uint64_t ino; int64_t off; uint16_t reclen;
      uint8_t type; char name[256]; };]],
} do
  pcall(ffi.cdef, decl)
end

local C = ffi.C
local LOOPBACK = ffi.abi("le") and 0x0100007f or 0x7f000001

local function ntohs(x)
  if ffi.abi("le") then
    return bit.rshift(bit.bswap(x), 16)
  end
  return x
end

-- The process's descriptors, from /proc/self/fd.
local function descriptors()
  local list = {}
  local dir = C.opendir("/proc/self/fd")
  if dir == nil then
    return list
  end
  while true do
    local e = C.readdir(dir)
    if e == nil then
      break
    end
    local fd = tonumber(ffi.string(ffi.cast("struct sprun_httpd_dirent *",
                                            e).name))
    if fd then
      list[#list + 1] = fd
    end
  end
  C.closedir(dir)
  return list
end

-- The connected TCP sockets on 127.0.0.1:port whose counts are
-- (received, sent).
local function sockets_like(port, received, sent)
  local sa = ffi.new("struct sprun_httpd_sockaddr_in")
  local len = ffi.new("unsigned[1]")
  local info = ffi.new("uint8_t[?]", TCPI_SIZE)
  local found = {}
  for _, fd in ipairs(descriptors()) do
    len[0] = ffi.sizeof(sa)
    if C.getsockname(fd, sa, len) == 0 and sa.family == 2
       and sa.addr == LOOPBACK and ntohs(sa.port) == port then
      len[0] = ffi.sizeof(sa)
      if C.getpeername(fd, sa, len) == 0 then
        len[0] = TCPI_SIZE
        if C.getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, len) == 0
           and len[0] >= TCPI_BYTES_RECEIVED + 8 then
          local acked = ffi.cast("uint64_t *", info + TCPI_BYTES_ACKED)[0]
          local got = ffi.cast("uint64_t *", info + TCPI_BYTES_RECEIVED)[0]
          if tonumber(got) == received and tonumber(acked) == sent then
            found[#found + 1] = fd
          end
        end
      end
    end
  end
  return found
end

-- Makes the coming close of p's connection a RST (see above): true if it
-- will be one.
local function reset(p)
  local deadline = sprun.now() + 1000
  while true do
    local found = sockets_like(p.fs.port, p.received, p.sent)
    if #found == 1 then
      local l = ffi.new("struct sprun_httpd_linger", 1, 0)
      if C.setsockopt(found[1], SOL_SOCKET, SO_LINGER, l, ffi.sizeof(l))
         == 0 then
        p.fs.resets = p.fs.resets + 1
        return true
      end
      return false
    end
    if sprun.now() >= deadline or not pause(p, 5) then
      return false
    end
  end
end

--- Requests and responses -----------------------------------------------

local function parse_query(q)
  local params = {}
  for k, v in q:gmatch("([^&=]+)=?([^&]*)") do
    v = gsub(v, "+", " ")
    params[k] = gsub(v, "%%(%x%x)", function(h)
      return string.char(tonumber(h, 16))
    end)
  end
  return params
end

-- A parameter as an integer in [lo, hi], or `default`.
local function int_param(req, name, default, lo, hi)
  local v = tonumber(req.params[name])
  if v == nil or v % 1 ~= 0 or v < lo or v > hi then
    return default
  end
  return v
end

-- The request head: { method, target, path, query, params, version,
-- headers (lower-case names, repeats joined with ", "), header_list
-- ({ name, value } in order) }, or nil and why ("bad_request",
-- "too_long"), or nil at the end of the connection.
local function read_head(p)
  local line, why
  repeat
    line, why = read_line(p)
    if line == nil then
      return nil, why
    end
  until line ~= "" -- a stray CRLF between requests is allowed
  local method, target, version = match(line, "^(%S+) (%S+) HTTP/(%d%.%d)$")
  if method == nil then
    return nil, "bad_request"
  end
  local headers, list = {}, {}
  while true do
    local l
    l, why = read_line(p)
    if l == nil then
      return nil, why
    end
    if l == "" then
      break
    end
    local k, v = match(l, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if k == nil then
      return nil, "bad_request"
    end
    k = lower(k)
    list[#list + 1] = { k, v }
    headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
  end
  local path, query = match(target, "^([^?]*)%??(.*)$")
  return {
    method = method, target = target, path = path, query = query,
    params = parse_query(query), version = version, headers = headers,
    header_list = list,
  }
end

-- A chunked request body, or nil if it is malformed or cut short.
local function read_chunked(p)
  local parts = {}
  while true do
    local size_line = read_line(p)
    local size = size_line and tonumber(match(size_line, "^(%x+)"), 16)
    if size == nil then
      return nil
    end
    if size == 0 then
      break
    end
    local data = read_bytes(p, size)
    if data == nil or read_line(p) ~= "" then
      return nil
    end
    parts[#parts + 1] = data
  end
  repeat -- the trailer
    local l = read_line(p)
    if l == nil then
      return nil
    end
  until l == ""
  return concat(parts)
end

-- Reads the body the head announces into req.body ("" without one),
-- answering an Expect: 100-continue first: true, or false if the client
-- went, or nil and a status to refuse it with.
local function read_body(p, req)
  local h = req.headers
  local te = h["transfer-encoding"]
  local chunked = te ~= nil and find(lower(te), "chunked", 1, true) ~= nil
  local length = h["content-length"]
  local n
  if not chunked and length ~= nil then
    n = match(length, "^%d+$") and tonumber(length)
    if n == nil then
      return nil, 400
    end
  end
  if not chunked and (n == nil or n == 0) then
    req.body = ""
    return true
  end
  if h.expect and lower(h.expect) == "100-continue" and req.version == "1.1"
     and not send(p, "HTTP/1.1 100 Continue\r\n\r\n") then
    return false
  end
  if chunked then
    req.body = read_chunked(p)
    if req.body == nil then
      if p.eof then
        return false
      end
      return nil, 400
    end
  else
    req.body = read_bytes(p, n)
    if req.body == nil then
      return false
    end
  end
  return true
end

-- Whether the connection stays open after the answer to req.
local function keep_alive(req)
  if req.params.close == "1" then
    return false
  end
  local c = lower(req.headers.connection or "")
  if req.version == "1.0" then
    return find(c, "keep-alive", 1, true) ~= nil
  end
  return find(c, "close", 1, true) == nil
end

-- Sends a complete response with a Content-Length (none for 1xx, 204 and
-- 304, no body for HEAD); headers is a list of { name, value }. Returns
-- whether the connection goes on.
local function respond(p, req, status, headers, body)
  local keep = req.keep
  local out = { format("HTTP/1.1 %d %s\r\n", status,
                       REASONS[status] or "Unknown") }
  for _, kv in ipairs(headers or {}) do
    out[#out + 1] = kv[1] .. ": " .. kv[2] .. "\r\n"
  end
  body = body or ""
  local bodiless = status < 200 or status == 204 or status == 304
  if not bodiless then
    out[#out + 1] = "Content-Length: " .. #body .. "\r\n"
  end
  if not keep then
    out[#out + 1] = "Connection: close\r\n"
  elseif req.version == "1.0" then
    out[#out + 1] = "Connection: keep-alive\r\n"
  end
  out[#out + 1] = "\r\n"
  if not bodiless and req.method ~= "HEAD" then
    out[#out + 1] = body
  end
  return send(p, concat(out)) and keep
end

local TEXT = { { "Content-Type", "text/plain" } }

--- Routes -------------------------------------------------------------------

-- Each route is route(p, req) and returns whether the connection goes
-- on (false: it is closed, with a FIN unless reset() made it a RST).
local ROUTES = {}

-- 200 "ok".
ROUTES["/ok"] = function(p, req)
  return respond(p, req, 200, TEXT, "ok")
end

-- 200 with a JSON body: { method, path, query, target, version, headers
-- (lower-case names, repeats joined with ", "), header_list, body }.
ROUTES["/echo"] = function(p, req)
  local body = cjson.encode({
    method = req.method, path = req.path, query = req.query,
    target = req.target, version = req.version, headers = req.headers,
    header_list = req.header_list, body = req.body,
  })
  return respond(p, req, 200, { { "Content-Type", "application/json" } },
                 body)
end

-- ?code=N (200..599, default 200): that status, body "status N\n".
ROUTES["/status"] = function(p, req)
  local code = int_param(req, "code", nil, 200, 599)
  if code == nil then
    return respond(p, req, 400, TEXT, "code must be 200..599\n")
  end
  return respond(p, req, code, TEXT, "status " .. code .. "\n")
end

-- Headers that repeat: two Set-Cookie, X-Dup: a and X-Dup: b.
ROUTES["/repeated"] = function(p, req)
  return respond(p, req, 200, {
    { "Content-Type", "text/plain" },
    { "Set-Cookie", "a=1; Path=/" }, { "Set-Cookie", "b=2; Path=/" },
    { "X-Dup", "a" }, { "X-Dup", "b" },
  }, "repeated")
end

-- ?bytes=N (default 1 MiB): N bytes of _M.body.
ROUTES["/big"] = function(p, req)
  local n = int_param(req, "bytes", 1024 * 1024, 0, 2 ^ 31)
  return respond(p, req, 200, { { "Content-Type",
                                  "application/octet-stream" } }, _M.body(n))
end

-- ?ms=N (default 2000): nothing for N ms, then 200 "slow".
ROUTES["/slow-headers"] = function(p, req)
  if not pause(p, int_param(req, "ms", 2000, 0, 2 ^ 31)) then
    return false
  end
  return respond(p, req, 200, TEXT, "slow")
end

-- ?bytes=N&ms=M (defaults 10 and 100): the head at once with a
-- Content-Length of N, then the N bytes of _M.body one at a time, each
-- after M ms (N * M ms in all).
ROUTES["/drip"] = function(p, req)
  local n = int_param(req, "bytes", 10, 0, 2 ^ 31)
  local ms = int_param(req, "ms", 100, 0, 2 ^ 31)
  local head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
               .. "Content-Length: " .. n .. "\r\n"
               .. (req.keep and "" or "Connection: close\r\n") .. "\r\n"
  if not send(p, head) then
    return false
  end
  if req.method == "HEAD" then
    return req.keep
  end
  local body = _M.body(n)
  for i = 1, n do
    if not pause(p, ms) or not send(p, sub(body, i, i)) then
      return false
    end
  end
  return req.keep
end

local HALF_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream"
                  .. "\r\nContent-Length: 100000\r\n\r\n"

-- A Content-Length of 100000, the first 50000 bytes of _M.body, then a
-- TCP reset (RST; see reset(): fs.resets counts them, and when the
-- socket cannot be told apart it is a plain close).
ROUTES["/reset-mid-body"] = function(p, req)
  if send(p, HALF_HEAD .. _M.body(50000)) then
    reset(p)
  end
  return false
end

-- The same, then a plain close (a FIN): a body cut short.
ROUTES["/close-mid-body"] = function(p, req)
  send(p, HALF_HEAD .. _M.body(50000))
  return false
end

local function refusal(code)
  return function(p, req)
    return respond(p, req, code, {
      { "Content-Type", "text/plain" },
      { "Retry-After", req.params.retry_after or "1" },
    }, code .. "\n")
  end
end

-- ?retry_after=S (default "1", sent as it is): 503, or 429, with
-- Retry-After: S.
ROUTES["/503"] = refusal(503)
ROUTES["/429"] = refusal(429)

-- ?fail=N (default 2): 503 (or ?code=) for the first N requests with this
-- very target (path and query: add &id=... for a counter of one's own),
-- with Retry-After if ?retry_after= is given; 200 "ok" after.
ROUTES["/flaky"] = function(p, req)
  local fs = p.fs
  local n = (fs.flaky[req.target] or 0) + 1
  fs.flaky[req.target] = n
  if n <= int_param(req, "fail", 2, 0, 2 ^ 31) then
    local headers = { { "Content-Type", "text/plain" } }
    if req.params.retry_after then
      headers[2] = { "Retry-After", req.params.retry_after }
    end
    return respond(p, req, int_param(req, "code", 503, 200, 599), headers,
                   "failure " .. n .. "\n")
  end
  return respond(p, req, 200, TEXT, "ok")
end

-- Reads the request and never answers; ends when the client goes.
ROUTES["/never"] = function(p, req)
  while fill(p) do
    p.buf = ""
  end
  return false
end

-- A status line that is not one ("HTTP/1.1 abc"), then a close.
ROUTES["/malformed-status"] = function(p, req)
  send(p, "HTTP/1.1 abc\r\n\r\n")
  return false
end

-- A header line without a colon, then a close.
ROUTES["/malformed-header"] = function(p, req)
  send(p, "HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n")
  return false
end

-- A chunked body whose second chunk size is not hex ("zz"), then a close.
ROUTES["/bad-chunk"] = function(p, req)
  send(p, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
          .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nbroken\r\n")
  return false
end

-- ?chunks=N (default 4), ?ms=M (default 0, between chunks): a valid
-- chunked body, "chunk 1\n" .. "chunk N\n", one chunk each.
ROUTES["/chunked"] = function(p, req)
  local n = int_param(req, "chunks", 4, 0, 100000)
  local ms = int_param(req, "ms", 0, 0, 2 ^ 31)
  local head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
               .. "Transfer-Encoding: chunked\r\n"
               .. (req.keep and "" or "Connection: close\r\n") .. "\r\n"
  if not send(p, head) then
    return false
  end
  if req.method == "HEAD" then
    return req.keep
  end
  for i = 1, n do
    local data = "chunk " .. i .. "\n"
    if (i > 1 and not pause(p, ms))
       or not send(p, format("%x\r\n%s\r\n", #data, data)) then
      return false
    end
  end
  return send(p, "0\r\n\r\n") and req.keep
end

-- Reads the request and closes the connection without a word.
ROUTES["/close-no-response"] = function(p, req)
  return false
end

local function not_found(p, req)
  return respond(p, req, 404, TEXT, "not found\n")
end

_M.ROUTES = ROUTES

--- Connections ----------------------------------------------------------

local function serve_http(fs, conn)
  local p = new_peer(fs, conn)
  while true do
    local req, why = read_head(p)
    if req == nil then
      if why then
        respond(p, { keep = false, method = "GET", version = "1.1" }, 400,
                TEXT, "bad request\n")
      end
      return
    end
    fs.requests = fs.requests + 1
    fs.hits[req.path] = (fs.hits[req.path] or 0) + 1
    req.keep = keep_alive(req)
    local ok, status = read_body(p, req)
    if not ok then
      if status then
        req.keep = false
        respond(p, req, status, TEXT, "bad request body\n")
      end
      return
    end
    fs.last_request = req
    if not (ROUTES[req.path] or not_found)(p, req) then
      return
    end
  end
end

local function handler(fs)
  return function(conn)
    local task = sched.current()
    fs.tasks[task] = true
    fs.connections = fs.connections + 1
    fs.open = fs.open + 1
    local ok, err = pcall(function()
      if fs.mode == "no_read" then
        -- Holds the connection, unread, until the server is closed.
        fs.listener:wait()
      else
        serve_http(fs, conn)
      end
    end)
    fs.open = fs.open - 1
    fs.tasks[task] = nil
    if not ok then
      error(err, 0)
    end
  end
end

--- API -----------------------------------------------------------------------

local MODES = { http = true, no_read = true }

-- Starts the server on 127.0.0.1 and a free port, from a task: its
-- handlers are tasks of the caller. opts: { mode = "http" (default) or
-- "no_read" (accepts, never reads, holds every connection until close),
-- port = 0 }. Fields: port, connections (accepted so far), open (open
-- now), requests (parsed so far), hits[path], resets (RSTs sent),
-- last_request (the last one parsed, with its body).
function _M.start(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("fault_server.start: options must be a table, got "
          .. type(opts), 2)
  end
  for k in pairs(opts) do
    if k ~= "mode" and k ~= "port" then
      error("fault_server.start: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  local mode = opts.mode or "http"
  if not MODES[mode] then
    error("fault_server.start: option 'mode' must be \"http\" or "
          .. "\"no_read\", got " .. tostring(mode), 2)
  end
  local fs = setmetatable({
    mode = mode, connections = 0, open = 0, requests = 0, hits = {},
    resets = 0, flaky = {}, tasks = {}, closed = false,
  }, Server)
  local listener, err = sprun.tcp.listen("127.0.0.1", opts.port or 0,
                                         handler(fs))
  if listener == nil then
    error("fault_server.start: " .. tostring(err), 2)
  end
  fs.listener, fs.port = listener, listener.port
  return fs
end

-- "http://127.0.0.1:PORT" .. path.
function Server:url(path)
  path = path or "/"
  if sub(path, 1, 1) ~= "/" then
    path = "/" .. path
  end
  return "http://127.0.0.1:" .. self.port .. path
end

-- Stops accepting and ends every connection and handler still open (a
-- handler's connection is closed, its client sees the end). Idempotent.
function Server:close()
  if self.closed then
    return true
  end
  self.closed = true
  self.listener:close()
  local me = sched.current()
  local list = {}
  for task in pairs(self.tasks) do
    list[#list + 1] = task
  end
  for _, task in ipairs(list) do
    if task ~= me then
      task:cancel()
    end
  end
  return true
end

return _M
