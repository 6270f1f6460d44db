-- A small HTTP/1.1 server for what sprun serves itself (the Prometheus
-- endpoint): GET and HEAD of a few paths, one request per connection.
--
--   local server = http_server.listen(host, port, {
--     request_timeout_ms = 5000,
--     handler = function(path) return body, content_type end, -- nil: 404
--     on_abort = function() ... end,  -- the owner task was cancelled
--   })
--
-- Each connection runs as a task of the listener's owner: the request
-- head is read (at most MAX_HEAD bytes, within request_timeout_ms), then
-- answered with Connection: close. A malformed head is answered 400, a
-- method other than GET or HEAD 405, a path the handler does not know
-- 404, and a handler that raises 500.
--
-- The trap: an idle or slow client must never hold the loop (or the
-- process) open for long, so the head is read by a child task awaited
-- with the timeout, which cancels the read (and closes nothing else) when
-- it runs out.

local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local tcp = require "sprun.io.tcp"

local pcall = pcall
local find = string.find
local sub = string.sub
local gsub = string.gsub
local match = string.match
local upper = string.upper
local format = string.format

local _M = {}

local MAX_HEAD = 8192

local REASONS = {
  [200] = "OK", [400] = "Bad Request", [404] = "Not Found",
  [405] = "Method Not Allowed", [500] = "Internal Server Error",
}

-- The request head (up to the blank line), or nil, why.
local function read_head(conn)
  local buf = ""
  while true do
    local s = find(buf, "\r?\n\r?\n")
    if s and s <= MAX_HEAD then
      return sub(buf, 1, s - 1)
    end
    if #buf > MAX_HEAD then
      return nil, "too large"
    end
    local data = conn:read(4096)
    if data == nil then
      return nil, "closed"
    end
    buf = buf .. data
  end
end

local TOKEN = "^[%w!#$%%&'*+.^_`|~-]+$"

-- status, method, path of a request head; status 400 when malformed.
local function parse_head(head)
  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = (gsub(line, "\r$", ""))
  end
  local method, target, major = match(lines[1] or "",
                                      "^(%S+) (%S+) HTTP/(%d)%.%d$")
  if method == nil or not find(method, TOKEN) or major ~= "1" then
    return 400
  end
  local has_host = false
  for i = 2, #lines do
    local field = match(lines[i], "^([^:]*):")
    if field == nil or not find(field, TOKEN) then
      return 400
    end
    has_host = has_host or upper(field) == "HOST"
  end
  if not has_host and lines[1]:sub(-3) == "1.1" then
    return 400
  end
  local path = match(target, "^https?://[^/]*(/.*)$") or target
  if sub(path, 1, 1) ~= "/" then
    return 400
  end
  path = match(path, "^[^?#]*")
  return 200, method, path
end

local function respond(conn, status, body, head_only, content_type, extra)
  local text = format("HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                      .. "Content-Length: %d\r\nConnection: close\r\n%s\r\n",
                      status, REASONS[status],
                      content_type or "text/plain; charset=utf-8", #body,
                      extra or "")
  if not head_only then
    text = text .. body
  end
  conn:write(text)
end

local function serve_request(o, conn)
  local reader = sched.spawn(read_head, conn)
  kernel.quiet(reader)
  local head, why = reader:await(o.request_timeout_ms)
  if head == nil then
    if why == "too large" then
      respond(conn, 400, "request head too large\n")
    end
    return
  end
  local status, method, path = parse_head(head)
  if status ~= 200 then
    return respond(conn, 400, "bad request\n")
  end
  if method ~= "GET" and method ~= "HEAD" then
    return respond(conn, 405, "method not allowed\n", false, nil,
                   "Allow: GET, HEAD\r\n")
  end
  local body, content_type = o.handler(path)
  if body == nil then
    return respond(conn, 404, "not found\n", method == "HEAD")
  end
  respond(conn, 200, body, method == "HEAD", content_type)
end

-- Listens on host:port (0: a free port, see server.port) from the
-- current task; returns the sprun.tcp server, or nil, err.
function _M.listen(host, port, o)
  local server, err = tcp.listen(host, port, function(conn)
    local ok, e = pcall(serve_request, o, conn)
    if not ok then
      -- A cancellation (the server's task is stopping) goes on up; any
      -- other failure is answered, never raised into the loop.
      kernel.reraise_cancel(e)
      pcall(respond, conn, 500, "internal error\n")
    end
  end)
  if server == nil then
    return nil, err
  end
  if o.on_abort then
    -- Cancelling the task that owns the server closes it: its owner hears
    -- of it too.
    local abort = server._abort
    server._abort = function(self)
      abort(self)
      o.on_abort()
    end
  end
  return server
end

return _M
