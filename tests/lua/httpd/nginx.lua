-- A real nginx (Debian's, /usr/sbin/nginx) for the HTTP client's specs,
-- started from inside a running sprun task and stopped by the spec:
--
--   local nginx = require "httpd.nginx"
--   local srv = nginx.start { tls = true, h2c = true,
--                             files = { ["hello.txt"] = "hello\n" } }
--   client:get(srv:url("/hello.txt"))          -- HTTP/1.1, keep-alive
--   client:get(srv:url("/small", "tls"))       -- HTTPS, h2 or 1.1 by ALPN
--   client:get(srv:url("/small", "h2c"))       -- HTTP/2 prior knowledge
--   srv:stop()
--
-- Everything lives in a temporary directory (the config, the docroot,
-- the logs, the certificate); nginx listens on 127.0.0.1 only, on ports
-- picked free, with `daemon off` and a master process, as a child of
-- sprun.process.spawn: its whole process group goes when stop() kills it,
-- when the task that started it is cancelled, or when the run ends.
--
-- The trap: a port seen free may be taken before nginx binds it, and
-- nginx then retries for 2.5 s before it gives up. start() reads the
-- error log while it waits: a failed bind() there means new ports and a
-- new nginx at once, and the server counts as up only once every port
-- accepts and the master says it started its workers.

local sprun = require "sprun"
local sched = require "sprun.sched"
local fault = require "httpd.fault_server"
local ffi = require "ffi"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local concat = table.concat
local format = string.format
local find = string.find
local sub = string.sub

pcall(ffi.cdef, "unsigned getuid(void);")

local _M = {}

local Server = {}
Server.__index = Server

_M.NGINX = "/usr/sbin/nginx"

-- nginx, openssl and curl run as they are, without what a sanitizer
-- build preloads into the processes the specs start.
local ENV = { LD_PRELOAD = false }

-- The statuses /status/NNN returns; a redirect (3xx) points to /small.
_M.STATUSES = { 200, 201, 202, 204, 301, 302, 303, 307, 308, 400, 401,
                403, 404, 405, 408, 409, 410, 413, 418, 429, 500, 501, 502,
                503, 504 }

local OPTIONS = {
  tls = "boolean", h2c = "boolean", workers = "number",
  large_bytes = "number", files = "table", log_level = "string",
  limit_rate = "string", start_ms = "number", grace_ms = "number",
}

local FINISHED = { done = true, failed = true, cancelled = true }

local LEVELS = { debug = 1, info = 2, notice = 3, warn = 4, error = 5,
                 crit = 6, alert = 7, emerg = 8 }

local function read_file(path)
  local f = io.open(path, "rb")
  if f == nil then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

-- Runs a command to its end; raises (naming `what`) if it fails.
local function run(what, args)
  args.env = ENV
  args.timeout_ms = args.timeout_ms or 10000
  local r, err = sprun.process.run(args)
  if r == nil then
    error(format("httpd.nginx: %s: %s", what, tostring(err)), 0)
  end
  if r.code ~= 0 then
    error(format("httpd.nginx: %s failed (%s): %s", what,
                 r.signal or ("exit " .. tostring(r.code)), r.stderr), 0)
  end
  return r
end

-- n distinct ports that were free a moment ago: all bound at once (so
-- none repeats), then let go.
local function free_ports(n)
  local servers, ports = {}, {}
  for i = 1, n do
    servers[i] = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
    ports[i] = servers[i].port
  end
  for i = 1, n do
    servers[i]:close()
  end
  return ports
end

-- A quoted nginx config string.
local function q(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function config(self)
  local d = self.dir
  local out = {
    "daemon off;",
    "master_process on;",
    "worker_processes " .. self.workers .. ";",
    -- As root, nginx's workers would run as nobody, who cannot read the
    -- temporary directory.
    ffi.C.getuid() == 0 and "user root;" or "",
    "pid " .. q(d .. "/nginx.pid") .. ";",
    "error_log " .. q(self.error_log) .. " " .. self.log_level .. ";",
    "events { worker_connections 4096; }",
    "http {",
    "  log_format fixture '$connection $connection_requests $server_port "
      .. "$server_protocol $request_method \"$request_uri\" $status "
      .. "$body_bytes_sent';",
    "  access_log " .. q(self.access_log_file) .. " fixture;",
    "  client_body_temp_path " .. q(d .. "/tmp/body") .. ";",
    "  proxy_temp_path " .. q(d .. "/tmp/proxy") .. ";",
    "  fastcgi_temp_path " .. q(d .. "/tmp/fastcgi") .. ";",
    "  uwsgi_temp_path " .. q(d .. "/tmp/uwsgi") .. ";",
    "  scgi_temp_path " .. q(d .. "/tmp/scgi") .. ";",
    "  types { text/plain txt; text/html html; application/json json; "
      .. "application/octet-stream bin; }",
    "  default_type application/octet-stream;",
    "  sendfile on;",
    "  keepalive_requests 100000;",
    "  keepalive_timeout 65;",
    "  server {",
    "    listen 127.0.0.1:" .. self.port .. ";",
  }
  local function add(line)
    out[#out + 1] = line
  end
  if self.tls_port then
    add("    listen 127.0.0.1:" .. self.tls_port .. " ssl http2;")
    add("    ssl_certificate " .. q(self.cert_file) .. ";")
    add("    ssl_certificate_key " .. q(self.key_file) .. ";")
    add("    ssl_protocols TLSv1.2 TLSv1.3;")
  end
  if self.h2c_port then
    add("    listen 127.0.0.1:" .. self.h2c_port .. " http2;")
  end
  add("    server_name localhost;")
  add("    root " .. q(self.docroot) .. ";")
  add('    location = /small { default_type text/plain; return 200 "ok\\n"; }')
  for _, code in ipairs(_M.STATUSES) do
    local body
    if code >= 300 and code < 400 then
      body = " /small"
    elseif code ~= 204 then
      body = ' "' .. code .. '\\n"'
    end
    add(format("    location = /status/%d { default_type text/plain; "
               .. "return %d%s; }", code, code, body or ""))
  end
  add("    location /upload/ { dav_methods PUT DELETE; "
      .. "create_full_put_path on; client_max_body_size 0; }")
  add("    location /limited/ { alias " .. q(self.docroot .. "/") .. "; "
      .. "limit_rate " .. self.limit_rate .. "; }")
  add("  }")
  add("}")
  return concat(out, "\n") .. "\n"
end

--- Starting ------------------------------------------------------------------

local function kill_and_reap(proc, grace_ms)
  proc:kill("SIGTERM")
  local waiter = sprun.spawn(function()
    return proc:wait()
  end)
  if not waiter:await(grace_ms) then
    proc:kill("SIGKILL")
    proc:wait()
  end
end

local function log_text(self)
  return read_file(self.error_log) or ""
end

-- Waits until the nginx just spawned serves: "up", or "bind" (a port was
-- taken), "exited" or "timeout".
local function wait_up(self, proc)
  local exited = sprun.spawn(function()
    return proc:wait()
  end)
  local pending = { self.port }
  pending[#pending + 1] = self.tls_port
  pending[#pending + 1] = self.h2c_port
  local deadline = sprun.now() + self.start_ms
  local see_start = LEVELS[self.log_level] <= LEVELS.notice
  local outcome
  while outcome == nil do
    local log = log_text(self)
    if find(log, "bind() to ", 1, true) then
      outcome = "bind"
    elseif FINISHED[exited:status()] then
      outcome = "exited"
    else
      for i = #pending, 1, -1 do
        local c = sprun.tcp.connect("127.0.0.1", pending[i],
                                    { timeout_ms = 200 })
        if c then
          c:close()
          table.remove(pending, i)
        end
      end
      if #pending == 0 and (not see_start
                            or find(log, "start worker process", 1, true)) then
        outcome = "up"
      elseif sprun.now() > deadline then
        outcome = "timeout"
      else
        sprun.sleep(5)
      end
    end
  end
  exited:cancel()
  return outcome
end

local function check_options(opts)
  if type(opts) ~= "table" then
    error("nginx.start: options must be a table, got " .. type(opts), 3)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if want == nil then
      error("nginx.start: unknown option '" .. tostring(k) .. "'", 3)
    end
    if type(v) ~= want then
      error(format("nginx.start: option '%s' must be a %s, got %s", k, want,
                   type(v)), 3)
    end
  end
  if opts.log_level and not LEVELS[opts.log_level] then
    error("nginx.start: option 'log_level' must be an nginx level such as "
          .. "\"info\", got " .. opts.log_level, 3)
  end
  for name, v in pairs(opts.files or {}) do
    if type(name) ~= "string" or type(v) ~= "string" or name == ""
       or find(name, "..", 1, true) or sub(name, 1, 1) == "/" then
      error("nginx.start: option 'files' must map relative paths to "
            .. "strings, got " .. tostring(name), 3)
    end
  end
end

-- Lays out the directory: the docroot with its files (and large.bin), the
-- temp paths, the certificate.
local function lay_out(self, opts)
  local d = self.dir
  run("mkdir", { "mkdir", "-p", self.docroot .. "/upload", d .. "/tmp" })
  for name, data in pairs(opts.files or {}) do
    local sub_dir = name:match("^(.*)/[^/]*$")
    if sub_dir then
      run("mkdir", { "mkdir", "-p", self.docroot .. "/" .. sub_dir })
    end
    write_file(self.docroot .. "/" .. name, data)
  end
  if opts.large_bytes then
    write_file(self.docroot .. "/large.bin", fault.body(opts.large_bytes))
  end
  if opts.tls then
    self.cert_file, self.key_file = d .. "/cert.pem", d .. "/key.pem"
    self.ca_file = self.cert_file
    run("openssl req", {
      "openssl", "req", "-x509", "-newkey", "ec",
      "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
      "-subj", "/CN=localhost",
      "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-keyout", self.key_file, "-out", self.cert_file,
    })
  end
end

-- Spawns nginx on fresh ports until one comes up (a port taken meanwhile
-- means another try); raises with the error log if none does.
local function launch(self, opts)
  for _ = 1, 5 do
    local ports = free_ports(1 + (opts.tls and 1 or 0) + (opts.h2c and 1 or 0))
    self.port = ports[1]
    self.tls_port = opts.tls and ports[2] or nil
    self.h2c_port = opts.h2c and ports[opts.tls and 3 or 2] or nil
    write_file(self.conf, config(self))
    write_file(self.error_log, "")
    local proc, err = sprun.process.spawn {
      _M.NGINX, "-p", self.dir .. "/", "-c", self.conf, "-e", self.error_log,
      env = ENV, stderr = "pipe",
    }
    if proc == nil then
      error("httpd.nginx: cannot start nginx: " .. tostring(err), 0)
    end
    local ok, outcome = pcall(wait_up, self, proc)
    if not ok then
      kill_and_reap(proc, 200)
      error(outcome, 0)
    end
    if outcome == "up" then
      self.proc, self.pid = proc, proc:pid()
      return
    end
    kill_and_reap(proc, 200)
    if outcome ~= "bind" then
      error(format("httpd.nginx: nginx did not come up within %d ms (%s); "
                   .. "stderr:\n%s\nerror log:\n%s", self.start_ms, outcome,
                   proc:read_stderr(), log_text(self)), 0)
    end
  end
  error("httpd.nginx: every port tried was taken; error log:\n"
        .. log_text(self), 0)
end

-- Starts nginx (from a task; see the top). opts: { tls (false): an HTTPS
-- port, h2 and http/1.1 by ALPN; h2c (false): an HTTP/2 port without TLS
-- (prior knowledge); workers (1); large_bytes: /large.bin of that many
-- bytes of fault_server.body; files: { ["path"] = "content" } in the
-- docroot; log_level ("info"); limit_rate ("256k") for /limited/;
-- start_ms (5000); grace_ms (2000, from SIGTERM to SIGKILL in stop) }.
-- Returns the server; raises, with nginx's error log, if it does not
-- come up within start_ms.
function _M.start(opts)
  opts = opts or {}
  check_options(opts)
  local self = setmetatable({
    workers = opts.workers or 1, log_level = opts.log_level or "info",
    limit_rate = opts.limit_rate or "256k", start_ms = opts.start_ms or 5000,
    grace_ms = opts.grace_ms or 2000, large_bytes = opts.large_bytes,
    stopped = false,
  }, Server)
  self.dir = run("mktemp", { "mktemp", "-d", "/tmp/sprun-nginx.XXXXXX" })
                .stdout:gsub("%s+$", "")
  local d = self.dir
  self.docroot, self.conf = d .. "/www", d .. "/nginx.conf"
  self.error_log, self.access_log_file = d .. "/error.log", d .. "/access.log"
  local ok, err = pcall(function()
    lay_out(self, opts)
    launch(self, opts)
  end)
  if not ok then
    self:stop()
    error(err, 2)
  end
  if self.tls_port then
    -- For curl --resolve and CURLOPT_RESOLVE: localhost is 127.0.0.1 only.
    self.resolve = "localhost:" .. self.tls_port .. ":127.0.0.1"
  end
  return self
end

--- The server -----------------------------------------------------------------

-- The URL of `path` on the plain port (which = nil or "http"), the TLS
-- port ("tls": https://localhost:PORT, the certificate's name;
-- "tls_ip": https://127.0.0.1:PORT, its IP SAN) or the h2c port ("h2c").
function Server:url(path, which)
  path = path or "/"
  if sub(path, 1, 1) ~= "/" then
    path = "/" .. path
  end
  if which == nil or which == "http" then
    return "http://127.0.0.1:" .. self.port .. path
  elseif which == "tls" or which == "tls_ip" then
    if not self.tls_port then
      error("nginx.url: the server was started without tls = true", 2)
    end
    local host = which == "tls" and "localhost" or "127.0.0.1"
    return "https://" .. host .. ":" .. self.tls_port .. path
  elseif which == "h2c" then
    if not self.h2c_port then
      error("nginx.url: the server was started without h2c = true", 2)
    end
    return "http://127.0.0.1:" .. self.h2c_port .. path
  end
  error("nginx.url: which must be \"http\", \"tls\", \"tls_ip\" or \"h2c\", "
        .. "got " .. tostring(which), 2)
end

-- The error log so far.
function Server:error_log_text()
  return log_text(self)
end

-- The access log so far, one entry per request: { connection (nginx's
-- connection serial number: two requests on one connection share it),
-- requests (the request's number on its connection), port, protocol
-- ("HTTP/1.1", "HTTP/2.0"), method, uri, status, bytes (body sent) }.
function Server:access_log()
  local list = {}
  for line in (read_file(self.access_log_file) or ""):gmatch("[^\n]+") do
    local c, n, port, proto, method, uri, status, bytes = line:match(
      '^(%d+) (%d+) (%d+) (%S+) (%S+) "(.-)" (%d+) (%d+)$')
    if c then
      list[#list + 1] = {
        connection = tonumber(c), requests = tonumber(n),
        port = tonumber(port), protocol = proto, method = method, uri = uri,
        status = tonumber(status), bytes = tonumber(bytes),
      }
    end
  end
  return list
end

-- Stops nginx: SIGTERM to its process group, SIGKILL after grace_ms,
-- waits until it is reaped, then removes the directory. Idempotent.
-- Outside a run (an after_each), only the directory is removed: the end
-- of the run killed nginx already.
function Server:stop()
  if self.stopped then
    return true
  end
  self.stopped = true
  local ours = self.dir and find(self.dir, "^/tmp/sprun%-nginx%.[%w]+$")
  if sched.current() == nil then
    if ours then
      os.execute("rm -rf '" .. self.dir .. "'")
    end
    return true
  end
  if self.proc then
    kill_and_reap(self.proc, self.grace_ms)
  end
  if ours then
    run("rm -rf", { "rm", "-rf", self.dir })
  end
  return true
end

return _M
