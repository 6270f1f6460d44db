-- HTTP clients with protection that fits HTTP (sprun.http.client).
--
--   local api = sprun.http.client{
--     base_url = "http://127.0.0.1:8080",
--     breaker_per_origin = { failure_threshold = 5, reset_timeout_ms = 10000 },
--     bulkhead_per_origin = { max_concurrent = 50 },
--     retry = { max_attempts = 3, backoff_ms = { 50, 100 } },
--   }
--   local r, err = api:get("/users/1")
--
-- Per origin (scheme://host:port), made at its first request: a circuit
-- breaker, named after the origin, and a bulkhead. An origin with nothing
-- in flight and no request for idle_origin_ms is forgotten, and at most
-- max_origins are kept (the longest idle goes first; one with requests in
-- flight never does). The order is retry(bulkhead(breaker(request))): a
-- full bulkhead is the caller's own limit and never counts against the
-- origin, and every attempt passes the breaker.
--
-- What counts: for the breaker, connection errors, timeouts and 5xx
-- (failure_statuses decides); never 4xx. Retries: only for idempotent
-- methods (GET, HEAD, PUT, DELETE, OPTIONS) unless retry.methods says
-- otherwise, on connection errors, timeouts, and 502/503/504/429
-- (retry.statuses), honouring Retry-After (never past the policy's
-- max_backoff_ms), within the retry budget (retry.budget). A response
-- whose status was retried in vain is returned as the response it is,
-- unless raise_for_status asks for an error.

local http = require "sprun.io.http"
local fleet_kind = require "sprun.fleet.kind"
local circuit_breaker = require "sprun.circuit_breaker"
local bulkhead = require "sprun.bulkhead"
local adaptive_limit = require "sprun.adaptive_limit"
local retry_policy = require "sprun.retry_policy"
local retry = require "sprun.retry"
local registry = require "sprun.telemetry.registry"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local clock = require "sprun.clock"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local inline = require "sprun.sched.inline"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local pcall = pcall
local setmetatable = setmetatable
local format = string.format
local find = string.find
local sub = string.sub
local upper = string.upper
local now = clock.now
local perform = http._perform

local _M = {}

local Client = {}
Client.__index = Client

local IDEMPOTENT = { "GET", "HEAD", "PUT", "DELETE", "OPTIONS" }
local RETRY_STATUSES = { 502, 503, 504, 429 }
local RETRY_KINDS = {
  timeout = true, connect_timeout = true, connection_refused = true,
  connect_failed = true, unreachable = true, reset = true, stalled = true,
  dns_failed = true,
}

local function set_of(list)
  local s = {}
  for i = 1, #list do
    s[list[i]] = true
  end
  return s
end

local function default_failure_status(status)
  return status >= 500
end

--- Options ----------------------------------------------------------------

local function list_of(what, test)
  return function(v)
    if v == nil then
      return nil
    end
    if type(v) ~= "table" or #v == 0 then
      return "must be a non-empty list of " .. what
    end
    for i = 1, #v do
      if not test(v[i]) then
        return "must be a list of " .. what, nil, check.describe(v[i])
      end
    end
    return nil
  end
end

local function is_status(v)
  return type(v) == "number" and v % 1 == 0 and v >= 100 and v <= 599
end

local function is_method(v)
  return type(v) == "string" and find(v, "^[%u]+$") ~= nil
end

local function table_or_nil(v)
  if v ~= nil and v ~= false and type(v) ~= "table" then
    return "must be a table of options, or false"
  end
  return nil
end

local function check_base_url(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "string" or http._parse_url(v) == nil then
    return "must be an http:// or https:// URL"
  end
  return nil
end

local function check_deadline_header(v)
  if v == nil then
    return nil
  end
  if type(v) ~= "string" or not find(v, "^[!#$%%&'*+.^_`|~%w-]+$") then
    return "must be a header name"
  end
  return nil
end

-- The request options a client may set for all of its requests.
local DEFAULTS = { "headers", "timeout_ms", "connect_timeout_ms", "stall",
                   "max_body_bytes", "http_version", "tls",
                   "raise_for_status", "family", "dns_cache_ms" }

local CLIENT_SPEC = {
  base_url = { check = check_base_url },
  breaker_per_origin = { check = table_or_nil },
  bulkhead_per_origin = { check = table_or_nil },
  adaptive_limit_per_origin = { check = table_or_nil },
  retry = { check = table_or_nil },
  failure_statuses = { "function" },
  deadline_header = { check = check_deadline_header },
  idle_origin_ms = { "integer", min = 1, limit = check.MS_MAX,
                     default = 300000 },
  max_origins = { "integer", min = 1, limit = 1e6, default = 1024 },
}
for i = 1, #DEFAULTS do
  CLIENT_SPEC[DEFAULTS[i]] = http.SPEC[DEFAULTS[i]]
end
local parse_client = options.parser("http.client", CLIENT_SPEC)

local parse_budget = options.parser("http.client.retry.budget",
                                    retry.BUDGET_SPEC)

local ANY = { check = function() return nil end }
local parse_retry = retry_policy._options_parser("http.client.retry", {
  methods = { check = list_of("upper-case method names", is_method) },
  statuses = { check = list_of("statuses (100 to 599)", is_status) },
  budget = ANY,
})

local BREAKER_KEYS = { name = true, clock = false }

--- Origins ----------------------------------------------------------------

local function origin_of(url)
  return http._origin(http._parse_url(url))
end

-- Forgets origins idle for idle_origin_ms, then the longest idle ones
-- while more than max_origins - 1 are kept. An origin in flight stays.
local function sweep(self, t)
  local idle_ms = self.idle_origin_ms
  for name, o in each_key, self.origins do
    if o.inflight == 0 and t - o.last_used >= idle_ms then
      self:_forget(name, o)
    end
  end
  while self.norigins >= self.max_origins do
    local oldest, oname
    for name, o in each_key, self.origins do
      if o.inflight == 0 and (oldest == nil or o.last_used < oldest.last_used)
      then
        oldest, oname = o, name
      end
    end
    if oldest == nil then
      return
    end
    self:_forget(oname, oldest)
  end
end

function Client:_forget(name, o)
  self.origins[name] = nil
  self.norigins = self.norigins - 1
  self.evicted = self.evicted + 1
  if o.breaker then
    registry.remove_breaker(o.breaker)
    local fleet = o.breaker._fleet
    if fleet ~= nil then
      fleet:leave(o.breaker)
    end
  end
end

function Client:_origin(name)
  local o = self.origins[name]
  local t = now()
  if o == nil then
    if t >= self.next_sweep or self.norigins >= self.max_origins then
      self.next_sweep = t + self.idle_origin_ms / 10
      sweep(self, t)
    end
    o = { inflight = 0, last_used = t, requests = 0 }
    if self.breaker_opts then
      local bo = { name = name }
      for k, v in each_key, self.breaker_opts do
        if BREAKER_KEYS[k] == nil then
          bo[k] = v
        end
      end
      local cb, err = circuit_breaker.start_link(bo)
      if cb == nil then
        error(err, 0)
      end
      o.breaker = cb
    end
    if self.bulkhead_opts then
      local bo = { name = name }
      for k, v in each_key, self.bulkhead_opts do
        if k ~= "name" then
          bo[k] = v
        end
      end
      o.bulkhead = bulkhead.new(bo)
    end
    if self.adaptive_opts then
      local ao = { name = name }
      for k, v in each_key, self.adaptive_opts do
        if k ~= "name" then
          ao[k] = v
        end
      end
      o.adaptive = adaptive_limit.new(ao)
    end
    self.origins[name] = o
    self.norigins = self.norigins + 1
  end
  o.last_used = t
  return o
end

--- A request --------------------------------------------------------------

local function status_error(r)
  return errors.error("http_error", format("%s %s: status %d", r.method,
    r.url, r.status), { status = r.status, response = r, url = r.url,
    method = r.method, retry_after_ms = r.retry_after_ms })
end

-- One attempt through the breaker: a status the breaker counts becomes
-- an error for it (the response in details), and back to a response for
-- the caller.
local function through_breaker(self, o)
  local r, err = perform(o)
  if r and self.failure_status(r.status) then
    return nil, status_error(r)
  end
  return r, err
end

local protected
local adaptive_take, adaptive_settle = adaptive_limit._take,
                                       adaptive_limit._settle

local function adaptive_values(ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

local function attempt(self, origin, o, start_ms)
  if self.deadline_header then
    -- What is left of the request's timeout, or of the task's deadline
    -- (sprun.deadline) if that comes first.
    local left = kernel.capped(o.timeout_ms
                               and o.timeout_ms - (now() - start_ms))
    if left and left < 1 then
      return nil, errors.error(errors.TIMEOUT, format(
        "%s %s: no time left (%s)", o.method, o.url, o.timeout_ms
        and format("timeout_ms %d", o.timeout_ms) or "the task's deadline"))
    end
    if left then
      o.headers[self.deadline_header] = format("%d", left)
    end
  end
  local al = origin.adaptive
  if al ~= nil then
    -- The origin's own safe concurrency: past it, refused at once.
    local permit, err = adaptive_take(al)
    if permit == nil then
      return nil, err
    end
    return adaptive_values(adaptive_settle(al, permit,
      pcall(protected, self, origin, o)))
  end
  return protected(self, origin, o)
end

-- The attempt through the origin's bulkhead and breaker.
protected = function(self, origin, o)
  local r, err
  local cb, bh = origin.breaker, origin.bulkhead
  if cb and bh then
    r, err = bh:call(cb.call, cb, through_breaker, self, o)
  elseif cb then
    r, err = cb:call(through_breaker, self, o)
  elseif bh then
    r, err = bh:call(through_breaker, self, o)
  else
    r, err = through_breaker(self, o)
  end
  if r and self.retry_statuses and self.retry_statuses[r.status] then
    return nil, status_error(r)
  end
  return r, err
end

-- The retry policy's question, for this client: the statuses asked for
-- and the connection errors and timeouts.
local function retriable(self, err)
  local kind = errors.kind(err)
  if kind == "http_error" then
    local d = err.details
    return d ~= nil and self.retry_statuses[d.status] == true
  end
  return RETRY_KINDS[kind] == true
end

-- The client's defaults with the caller's options laid over them (and
-- the url made absolute), to be parsed.
local function request_options(self, opts, path, body)
  local o = {}
  local given = opts or {}
  for i = 1, #DEFAULTS do
    local k = DEFAULTS[i]
    o[k] = self.defaults[k]
  end
  for k, v in each_key, given do
    o[k] = v
  end
  local dh, gh = self.defaults.headers, given.headers
  if dh or gh or self.deadline_header then
    local headers = {}
    for k, v in each_key, dh or {} do
      headers[k] = v
    end
    for k, v in each_key, gh or {} do
      headers[k] = v
    end
    o.headers = headers
  end
  if path ~= nil then
    o.url = path
  end
  if body ~= nil then
    o.body = body
  end
  if type(o.url) == "string" and self.base_url and sub(o.url, 1, 1) == "/"
  then
    o.url = self.base_url .. o.url
  end
  return o
end

-- The attempts of one request: retried when the policy and the method
-- allow it.
local function attempts(self, fname, origin, name, o, start_ms)
  local p = self.policy
  if p and self.retry_methods[o.method] then
    return retry.run(p, name, o.method, self.budget, fname, pcall, attempt,
                     self, origin, o, start_ms)
  end
  return attempt(self, origin, o, start_ms)
end

local function finish(origin, raise, ok, r, err)
  origin.inflight = origin.inflight - 1
  origin.last_used = now()
  if not ok then
    error(r, 0)
  end
  if r == nil and errors.kind(err) == "http_error" and not raise then
    local d = err.details
    if d and d.response then
      return d.response
    end
  end
  if r and raise and r.status >= 400 then
    return nil, status_error(r)
  end
  return r, err
end

-- deadline_ms: every attempt and backoff as a child cancelled at the
-- deadline; a backoff past it is not taken (retry.lua). Each attempt's
-- own deadline_ms is what is left (sprun.deadline), not the whole.
local function within_deadline(self, fname, origin, name, o, start_ms)
  local ms = o.deadline_ms
  o.deadline_ms = nil
  return retry.deadline_outcome(now() + ms, inline.run_child(ms, attempts,
    6, nil, nil, nil, { self, fname, origin, name, o, start_ms }))
end

local function run(self, fname, o)
  local name = origin_of(o.url)
  local origin = self:_origin(name)
  origin.inflight = origin.inflight + 1
  origin.requests = origin.requests + 1
  local raise = o.raise_for_status
  o.raise_for_status = false
  o.method = o.method and upper(o.method) or "GET"
  return finish(origin, raise, pcall(o.deadline_ms and within_deadline
                                     or attempts, self, fname, origin, name,
                                     o, now()))
end

--- The API ----------------------------------------------------------------

local CLIENT = "an HTTP client"

local parse_request = http._parser("http.client.request")

function Client:request(opts)
  check.self(self, Client, "http.client.request", CLIENT)
  if type(opts) ~= "table" then
    check.arg_error("http.client.request", "options", "must be a table",
                    opts)
  end
  local o = parse_request(request_options(self, opts))
  kernel.check_caller("http.client.request")
  return sched.in_task(run, self, "http.client.request", o)
end

local function shortcut(name, method, with_body)
  local fname = "http.client." .. name
  local parse = http._parser(fname)
  return function(self, path, a, b)
    check.self(self, Client, fname, CLIENT)
    if type(path) ~= "string" then
      check.arg_error(fname, "url", "must be a URL or a path", path)
    end
    local opts, body = a, nil
    if with_body then
      body, opts = a, b
    end
    if opts ~= nil and type(opts) ~= "table" then
      check.arg_error(fname, "options", "must be a table", opts)
    end
    local o = parse(request_options(self, opts, path, body))
    o.method = method
    kernel.check_caller(fname)
    return sched.in_task(run, self, fname, o)
  end
end

Client.get = shortcut("get", "GET")
Client.head = shortcut("head", "HEAD")
Client.delete = shortcut("delete", "DELETE")
Client.post = shortcut("post", "POST", true)
Client.put = shortcut("put", "PUT", true)

-- The breaker of an origin ("http://host:port", or any URL of it), or nil
-- when none is kept.
function Client:breaker(url)
  check.self(self, Client, "http.client.breaker", CLIENT)
  local ok, name = pcall(origin_of, url)
  local o = ok and self.origins[name]
  return o and o.breaker or nil
end

-- { origins = { [origin] = { inflight, requests, state } }, evicted,
-- budget }.
function Client:stats()
  check.self(self, Client, "http.client.stats", CLIENT)
  local out = { origins = {}, evicted = self.evicted, count = self.norigins }
  for name, o in each_key, self.origins do
    out.origins[name] = {
      inflight = o.inflight, requests = o.requests,
      state = o.breaker and o.breaker:state() or nil,
      limit = o.adaptive and o.adaptive:limit() or nil,
    }
  end
  if self.budget then
    out.budget = self.budget:stats()
  end
  return out
end

function _M.client(opts)
  local o = parse_client(opts or {})
  local self = setmetatable({
    base_url = o.base_url and (o.base_url:gsub("/+$", "")) or nil,
    breaker_opts = o.breaker_per_origin or nil,
    bulkhead_opts = o.bulkhead_per_origin or nil,
    adaptive_opts = o.adaptive_limit_per_origin or nil,
    failure_status = o.failure_statuses or default_failure_status,
    deadline_header = o.deadline_header,
    idle_origin_ms = o.idle_origin_ms,
    max_origins = o.max_origins,
    origins = {}, norigins = 0, evicted = 0, next_sweep = 0,
    defaults = {},
  }, Client)
  for i = 1, #DEFAULTS do
    self.defaults[DEFAULTS[i]] = opts and opts[DEFAULTS[i]]
  end
  if self.breaker_opts then
    -- Checked now, with the name every origin's breaker gets (outside
    -- any fleet: its own check is the option's, below).
    local probe = { name = "http.client" }
    for k, v in each_key, self.breaker_opts do
      if k ~= "fleet" then
        probe[k] = v
      end
    end
    local fleet = self.breaker_opts.fleet
    if fleet ~= nil and not fleet_kind.is_fleet(fleet) then
      error(options.message(options.error({ "breaker_per_origin", "fleet" },
        fleet_kind.check(fleet), check.describe(fleet)), "http.client"), 2)
    end
    local ok, cb = options.capture({ "breaker_per_origin" },
                                   circuit_breaker.start_link, probe)
    if not ok then
      error(options.message(cb, "http.client"), 2)
    end
    registry.remove_breaker(cb)
  end
  if self.bulkhead_opts then
    local ok, e = options.capture({ "bulkhead_per_origin" }, bulkhead.new,
                                  self.bulkhead_opts)
    if not ok then
      error(options.message(e, "http.client"), 2)
    end
  end
  if self.adaptive_opts then
    local ok, e = options.capture({ "adaptive_limit_per_origin" },
                                  adaptive_limit.new, self.adaptive_opts)
    if not ok then
      error(options.message(e, "http.client"), 2)
    end
  end
  self.retry_statuses = set_of(RETRY_STATUSES)
  if o.retry then
    local r = o.retry
    local ro = parse_retry(r)
    if r.retriable_errors == nil then
      ro.retriable_errors = function(err) return retriable(self, err) end
    end
    self.policy = retry_policy._from_options(ro)
    self.retry_methods = set_of(ro.methods or IDEMPOTENT)
    if ro.statuses then
      self.retry_statuses = set_of(ro.statuses)
    end
    self.budget = retry.budget(parse_budget(ro.budget or {}))
  else
    self.retry_methods = {}
  end
  return self
end

return _M
