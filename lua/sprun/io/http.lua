-- HTTP requests as tasks see them.
--
--   local r, err = sprun.http.get("http://127.0.0.1:8080/health",
--                                 { timeout_ms = 2000 })
--   -- r = { status = 200, headers = { ["content-type"] = "..." }, body,
--   --       http_version = "1.1", retry_after_ms, timings = {...} }
--
-- A request runs on the loop's connection pool (runtime/loop/http.c, on
-- libcurl's multi interface): connections are reused across requests,
-- HTTP/2 over TLS where the server offers it. The host name is resolved
-- by sprun.dns and handed to curl, so nothing blocks and a request is
-- cancellable at every point: a task cancelled (or timed out by
-- execute_with_timeout, a pipeline or a batch) mid-request aborts the
-- transfer and closes its connection at once.
--
-- Outcomes: any response is a result, whatever its status, unless
-- raise_for_status asks for status >= 400 to be an error (kind
-- "http_error", the response in details.response). Otherwise nil, err
-- with kind "timeout", "connect_timeout", "connection_refused",
-- "unreachable", "connect_failed", "dns_failed", "tls_failed", "reset",
-- "too_large", "stalled", "bad_response", "http_failed" or "cancelled".
--
-- The trap: a request is owned by the task that made it, and its C side
-- is freed as soon as the result is read; the body of a streamed response
-- (on_body) is taken in the task, between waits, never from curl.

local core = require "sprun.core"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local dns = require "sprun.io.dns"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local clock = require "sprun.clock"
local telemetry = require "sprun.telemetry"

local type = type
local pcall = pcall
local each_key = next -- never `pairs` in a loop: see tables.lua
local error = error
local setmetatable = setmetatable
local tostring = tostring
local concat = table.concat
local format = string.format
local find = string.find
local upper = string.upper
local ceil = math.ceil
local now = clock.now
local hrtime = clock.hrtime

local enabled = telemetry.enabled
local emit = telemetry.emit
local REQUEST_EVENT = "sprun.http.request"

local EV_HTTP_BODY = core.EV_HTTP_BODY
local WAKE_TIMER = kernel.WAKE_TIMER
-- How long past timeout_ms sprun gives up on a transfer curl has not
-- ended itself (curl's own timeout normally ends it first, with its
-- message).
local BACKSTOP_MS = 50
local EV_HTTP_DONE = core.EV_HTTP_DONE

local MiB = 1024 * 1024
-- What a streamed response may hold before on_body has taken it.
local STREAM_HOLD = MiB

local _M = {}

local VERSIONS = { ["1.1"] = 1, ["2"] = 2, h2c = 3 }

-- URLs parsed by curl's own parser (core.url_parse), kept: a request's
-- URL is read by its check, its lookup, its origin and its event. At
-- most URL_CACHE_MAX are kept; past that the table starts over.
local URL_CACHE_MAX = 1024
local url_scheme, url_host, url_port, url_why = {}, {}, {}, {}
local urls_kept = 0

-- scheme, host (IPv6 without brackets), port; or nil, why.
local function parse_url(url)
  local scheme = url_scheme[url]
  if scheme then
    return scheme, url_host[url], url_port[url]
  end
  local why = url_why[url]
  if why then
    return nil, why
  end
  if urls_kept >= URL_CACHE_MAX then
    url_scheme, url_host, url_port, url_why = {}, {}, {}, {}
    urls_kept = 0
  end
  urls_kept = urls_kept + 1
  local host, port
  scheme, host, port = core.url_parse(url)
  if scheme == nil then
    url_why[url] = host
    return nil, host
  end
  url_scheme[url], url_host[url], url_port[url] = scheme, host, port
  return scheme, host, port
end
_M._parse_url = parse_url

--- Options ----------------------------------------------------------------

local function check_headers(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "table" then
    return "must be a table of header names to values"
  end
  for k, val in each_key, v do
    if type(k) ~= "string" or not find(k, "^[!#$%%&'*+.^_`|~%w-]+$") then
      return "must have header names made of token characters",
             "headers", check.describe(k)
    end
    local list = type(val) == "table" and val or { val }
    for i = 1, #list do
      local s = list[i]
      if type(s) ~= "string" and type(s) ~= "number" then
        return "must map each name to a string (or a list of strings)",
               "headers." .. k, check.describe(s)
      end
      if find(tostring(s), "[\r\n]") then
        return "must not hold CR or LF in a value", "headers." .. k,
               check.describe(s)
      end
    end
  end
  return nil
end

local function check_stall(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "table" then
    return "must be a table { min_bytes_per_s, for_ms }"
  end
  for k in each_key, v do
    if k ~= "min_bytes_per_s" and k ~= "for_ms" then
      return "has no option " .. check.describe(k)
             .. " (min_bytes_per_s and for_ms are)", "stall"
    end
  end
  local b, f = v.min_bytes_per_s, v.for_ms
  if type(b) ~= "number" or b < 1 or b % 1 ~= 0 then
    return "must be an integer >= 1", "stall.min_bytes_per_s",
           check.describe(b)
  end
  if type(f) ~= "number" or f < 1000 or f % 1 ~= 0 or f > check.MS_MAX then
    return "must be an integer >= 1000 (measured in whole seconds)",
           "stall.for_ms", check.describe(f)
  end
  return nil
end

local function check_tls(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "table" then
    return "must be a table { verify, ca_file }"
  end
  for k in each_key, v do
    if k ~= "verify" and k ~= "ca_file" then
      return "has no option " .. check.describe(k)
             .. " (verify and ca_file are)", "tls"
    end
  end
  if v.verify ~= nil and type(v.verify) ~= "boolean" then
    return "must be a boolean", "tls.verify", check.describe(v.verify)
  end
  if v.ca_file ~= nil and (type(v.ca_file) ~= "string" or v.ca_file == "") then
    return "must be a path", "tls.ca_file", check.describe(v.ca_file)
  end
  return nil
end

local function check_url(v)
  if type(v) ~= "string" or v == "" then
    return "must be an http:// or https:// URL"
  end
  local scheme, why = parse_url(v)
  if scheme == nil then
    return "must be an http:// or https:// URL (" .. why .. ")"
  end
  return nil
end

local function check_method(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "string" or not find(v, "^[!#$%%&'*+.^_`|~%w-]+$") then
    return "must be an HTTP method (a token such as \"GET\")"
  end
  return nil
end

local SPEC = {
  url = { check = check_url, required = true },
  method = { check = check_method },
  headers = { check = check_headers },
  body = { check = function(v)
    if v ~= nil and type(v) ~= "string" then
      return "must be a string"
    end
  end },
  timeout_ms = { "integer", min = 1, limit = check.MS_MAX },
  -- One deadline for the request and, through a client, all its retries.
  deadline_ms = { "integer", min = 1, limit = check.MS_MAX },
  connect_timeout_ms = { "integer", min = 1, limit = check.MS_MAX },
  stall = { check = check_stall },
  max_body_bytes = { "integer", min = 1, limit = 2 ^ 40, default = 64 * MiB },
  http_version = { "choice", values = { "1.1", "2", "h2c" }, default = "2" },
  tls = { check = check_tls },
  raise_for_status = { "choice", values = { true, false }, default = false },
  on_body = { "function" },
  family = { "choice", values = { "any", "inet", "inet6" }, default = "any" },
  dns_cache_ms = { "integer", min = 0, limit = check.MS_MAX, default = 1000 },
}
_M.SPEC = SPEC

-- A parser of request options per API function (for its messages).
local parsers = {}
function _M._parser(fname)
  local p = parsers[fname]
  if p == nil then
    p = options.parser(fname, SPEC)
    parsers[fname] = p
  end
  return p
end
local parse_request = _M._parser("http.request")

--- The request in a task -----------------------------------------------------

local Request = {}
Request.__index = Request

function Request:_event(kind)
  if kind == EV_HTTP_DONE then
    self.done = true
    kernel.wake(self)
  elseif kind == EV_HTTP_BODY then
    kernel.wake(self)
  end
end

function Request:_abort()
  if self.req then
    self.req:close()
    self.req = nil
  end
end

-- The CURLOPT_RESOLVE entries each loop's pool holds, by "host:port"
-- (curl keeps them until replaced), recorded once a request carrying one
-- ended: a request whose answer is the same passes none.
local given = setmetatable({}, { __mode = "k" })

local function bracket(a)
  if find(a, ":", 1, true) then
    return "[" .. a .. "]"
  end
  return a
end

local function header_list(h)
  if h == nil then
    return nil
  end
  local out = {}
  for k, v in each_key, h do
    if type(v) == "table" then
      for i = 1, #v do
        out[#out + 1] = k .. ": " .. tostring(v[i])
      end
    else
      out[#out + 1] = k .. ": " .. tostring(v)
    end
  end
  return out
end

local function fail(kind, o, method, msg, details)
  details = details or {}
  details.url, details.method = o.url, method
  return errors.error(kind, format("%s %s: %s", method, o.url, msg), details)
end

-- Waits for the request's end, handing streamed bytes to on_body
-- between waits. Raises what a cancel or on_body raised, the request
-- closed first.
local function await(self, task, on_body)
  while true do
    if on_body then
      local chunk = self.req:take_body()
      while chunk do
        local ok, err = pcall(on_body, chunk)
        if not ok then
          self:_abort()
          error(err, 0)
        end
        chunk = self.req and self.req:take_body()
      end
    end
    if self.done then
      return
    end
    local ok, why = pcall(kernel.block, self, task)
    if not ok then
      self:_abort()
      error(why, 0)
    end
    if why == WAKE_TIMER and not self.done then
      self:_abort()
      self.overdue = true
      return
    end
  end
end

-- "scheme://host:port" of a parsed URL.
local function origin(scheme, host, port)
  if find(host, ":", 1, true) then
    host = "[" .. host .. "]"
  end
  return scheme .. "://" .. host .. ":" .. port
end
_M._origin = origin

-- sprun.http.request: one per request that reached the network (a name
-- that did not resolve included), at the debug level.
local function report(o, method, status, outcome, timings)
  local scheme, host, port = parse_url(o.url)
  emit(REQUEST_EVENT, {
    status = status, duration_ms = timings.total, dns_ms = timings.dns,
    connect_ms = timings.connect, tls_ms = timings.tls,
    ttfb_ms = timings.ttfb,
  }, { method = method, url = o.url, origin = origin(scheme, host, port),
       outcome = outcome })
end

-- The outcome, reported first when someone listens.
local function done(o, method, r, err, timings)
  if enabled[REQUEST_EVENT] then
    report(o, method, r and r.status or (err.details and err.details.status)
           or 0, r and "ok" or errors.kind(err), timings)
  end
  return r, err
end

local START = {}

local function perform(o)
  local task = kernel.current()
  local t0 = hrtime()
  local method = o.method and upper(o.method) or "GET"
  local _, host, port = parse_url(o.url)
  -- The total deadline, capped by the task's (sprun.deadline).
  local limit = kernel.capped(o.timeout_ms, 1)
  local dl = o.deadline_ms
  if dl and not (limit and limit <= dl) then
    limit = dl
  end
  local deadline = limit and now() + limit
  local loop = kernel.loop()
  local resolve, key, mine
  local dns_ms = 0
  if not dns.numeric(host) then
    local addrs, err = dns.lookup(host, o.family, limit,
                                  o.dns_cache_ms)
    if addrs == nil then
      local t = { dns = (hrtime() - t0) / 1e6, connect = 0, tls = 0,
                  ttfb = 0 }
      t.total = t.dns
      if errors.kind(err) == errors.TIMEOUT then
        err = fail(errors.TIMEOUT, o, method, format(
          "no answer within %d ms (the name %s was still being resolved)",
          limit, host), { timeout_ms = limit })
      end
      return done(o, method, nil, err, t)
    end
    for i = 1, #addrs do
      addrs[i] = bracket(addrs[i])
    end
    key = host .. ":" .. port
    resolve = key .. ":" .. concat(addrs, ",")
    mine = given[loop]
    if mine == nil then
      mine = {}
      given[loop] = mine
    end
    if mine[key] == resolve then
      resolve = nil
    end
    dns_ms = (hrtime() - t0) / 1e6
  end
  local left = deadline and deadline - now()
  if left and left <= 0 then
    return nil, fail(errors.TIMEOUT, o, method, format(
      "no answer within %d ms", limit), { timeout_ms = limit })
  end
  local stall, tls, on_body = o.stall, o.tls, o.on_body
  local self = setmetatable({ done = false }, Request)
  self.token = kernel.new_token(self)
  -- One table for every start: C copies what it reads before it returns.
  local c = START
  c.method, c.url, c.headers = method, o.url, header_list(o.headers)
  c.body, c.resolve, c.timeout_ms = o.body, resolve, left
  c.connect_timeout_ms = o.connect_timeout_ms
  c.low_speed_bytes = stall and stall.min_bytes_per_s or nil
  c.low_speed_s = stall and ceil(stall.for_ms / 1000) or nil
  c.max_body_bytes = on_body and STREAM_HOLD or o.max_body_bytes
  c.version = VERSIONS[o.http_version]
  c.verify = not tls or tls.verify ~= false
  c.ca_file = tls and tls.ca_file or nil
  c.stream = on_body ~= nil
  local req, ename, emsg = loop:http_request(c, self.token)
  c.headers, c.body, c.resolve = nil, nil, nil
  if req == nil then
    kernel.free_token(self.token)
    return nil, fail("http_failed", o, method, emsg, { code = ename })
  end
  self.req = req
  kernel.own(task, self)
  if left then
    kernel.arm(task, left + BACKSTOP_MS)
  end
  local ok, err = pcall(await, self, task, on_body)
  if left then
    kernel.disarm(task)
  end
  kernel.disown(task, self)
  if not ok then
    kernel.free_token(self.token)
    error(err, 0)
  end
  if self.overdue then
    kernel.free_token(self.token)
    local t = { dns = dns_ms, connect = 0, tls = 0, ttfb = 0,
                total = (hrtime() - t0) / 1e6 }
    return done(o, method, nil, fail(errors.TIMEOUT, o, method, format(
      "no complete answer within %d ms", limit),
      { timings = t, timeout_ms = limit }), t)
  end
  -- A request that ended was started, so curl has the entry it carried
  -- (a cancelled one may not have got that far).
  if resolve then
    mine[key] = resolve
  end
  local kind, msg, status, version, headers, body, retry_after, connect,
        tls_ms, ttfb, total = req:result()
  req:close()
  self.req = nil
  kernel.free_token(self.token)
  local timings = {
    dns = dns_ms, connect = connect, tls = tls_ms > 0 and tls_ms - connect
    or 0, ttfb = ttfb, total = dns_ms + total,
  }
  if kind then
    if kind == "connect_timeout" and (o.connect_timeout_ms == nil
        or o.connect_timeout_ms >= left) then
      kind = errors.TIMEOUT
    end
    if kind == errors.TIMEOUT and limit then
      msg = format("no complete answer within %d ms (%s)", limit, msg)
    end
    return done(o, method, nil, fail(kind, o, method, msg, {
      timings = timings, timeout_ms = limit,
      status = status > 0 and status or nil,
    }), timings)
  end
  local r = {
    status = status, headers = headers, body = on_body and "" or body,
    http_version = version,
    retry_after_ms = retry_after and retry_after * 1000 or nil,
    timings = timings, url = o.url, method = method,
  }
  if o.raise_for_status and status >= 400 then
    return done(o, method, nil, fail("http_error", o, method,
      format("status %d", status), { status = status, response = r,
      retry_after_ms = r.retry_after_ms }), timings)
  end
  return done(o, method, r, nil, timings)
end

--- The API ----------------------------------------------------------------

-- In a task: the request of options already parsed (for clients).
_M._perform = perform

local function run(fname, o, method)
  if method then
    o.method = method
  end
  kernel.check_caller(fname)
  return sched.in_task(perform, o)
end

-- request{ method = "GET", url, headers, body, timeout_ms,
-- connect_timeout_ms, stall = { min_bytes_per_s, for_ms }, max_body_bytes,
-- http_version = "2" | "1.1" | "h2c", tls = { verify = true, ca_file },
-- raise_for_status, on_body, family, dns_cache_ms } -> response, or nil,
-- err.
function _M.request(opts)
  if type(opts) ~= "table" then
    check.arg_error("http.request", "options", "must be a table", opts)
  end
  return run("http.request", parse_request(opts))
end

local function shortcut(name, method, with_body)
  local fname = "http." .. name
  local parse = _M._parser(fname)
  return function(url, a, b)
    local opts, body
    if with_body then
      body, opts = a, b
    else
      opts = a
    end
    if opts ~= nil and type(opts) ~= "table" then
      check.arg_error(fname, "options", "must be a table", opts)
    end
    local o = {}
    if opts then
      for k, v in each_key, opts do
        o[k] = v
      end
    end
    o.url = url
    if body ~= nil then
      o.body = body
    end
    return run(fname, parse(o), method)
  end
end

-- get(url, opts), head(url, opts), delete(url, opts); post(url, body,
-- opts), put(url, body, opts).
_M.get = shortcut("get", "GET")
_M.head = shortcut("head", "HEAD")
_M.delete = shortcut("delete", "DELETE")
_M.post = shortcut("post", "POST", true)
_M.put = shortcut("put", "PUT", true)

-- sprun.http.client{...} (io/http_client.lua, which builds on this
-- file), loaded at its first use.
setmetatable(_M, { __index = function(t, k)
  if k == "client" then
    local client = require("sprun.io.http_client").client
    rawset(t, "client", client)
    return client
  end
end })

-- The loop's pool now: { running, live, sockets, polls } (for tests and
-- stats).
function _M.pool_stats()
  local loop = kernel.loop()
  local running, live, sockets, polls = loop:http_stats()
  return { running = running, live = live, sockets = sockets, polls = polls }
end

return _M
