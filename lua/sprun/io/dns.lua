-- Name lookups as tasks see them.
--
--   local addrs, err = sprun.dns.resolve("localhost", { family = "inet" })
--   -- addrs = { "127.0.0.1" }; err.kind == "dns_failed" for a bad name
--
-- A lookup runs getaddrinfo on libuv's thread pool (runtime/loop/dns.c),
-- so the loop never blocks; the addresses come in the resolver's order,
-- each once. A numeric address is its own answer, without a lookup. The
-- lookup is cancellable: a cancelled or timed-out one returns at once,
-- and a lookup the pool already runs has its result dropped when it ends.
--
-- getaddrinfo does not say how long an answer may be kept (no TTL), so no
-- cache is kept unless asked: `cache_ms` keeps an answer that long, in a
-- table of at most CACHE_MAX names per loop run (sprun.http asks for a
-- short one, its `dns_cache_ms`).

local core = require "sprun.core"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local clock = require "sprun.clock"
local tables = require "sprun.tables"

local type = type
local pcall = pcall
local error = error
local setmetatable = setmetatable
local format = string.format
local find = string.find
local gmatch = string.gmatch
local now = clock.now
local copy = tables.copy

local EV_DNS = core.EV_DNS
local WAKE_TIMER = kernel.WAKE_TIMER

local CACHE_MAX = 1024

local _M = {}

local Lookup = {}
Lookup.__index = Lookup

function Lookup:_event(kind, status, count, data)
  if kind == EV_DNS then
    self.status, self.data = status, data or ""
    self.req = nil
    kernel.wake(self)
  end
end

function Lookup:_abort()
  if self.req then
    self.req:cancel()
    self.req = nil
  end
end

-- The kind of address `host` is written as: "inet", "inet6" or nil (a
-- name).
local function numeric(host)
  if find(host, "^%d+%.%d+%.%d+%.%d+$") then
    return "inet"
  end
  if find(host, ":", 1, true) and find(host, "^[%x:.]+$") then
    return "inet6"
  end
  return nil
end
_M.numeric = numeric

local function failed(host, reason, code)
  return errors.error("dns_failed", format("%s: %s", host, reason),
                      { host = host, code = code })
end

-- The answers kept for cache_ms, by family and name, for the running
-- loop only (a new run starts empty).
local cache, cached, cache_loop = {}, 0, nil

local function cache_get(key, loop)
  if cache_loop ~= loop then
    cache, cached, cache_loop = {}, 0, loop
    return nil
  end
  local e = cache[key]
  if e and e.expires > now() then
    return e.addrs
  end
  return nil
end

local function cache_put(key, addrs, ms)
  if cached >= CACHE_MAX then
    cache, cached = {}, 0
  end
  if cache[key] == nil then
    cached = cached + 1
  end
  cache[key] = { addrs = addrs, expires = now() + ms }
end

-- The lookup itself, in a task: the addresses or nil, err. `timeout_ms`
-- may be nil (no limit).
local function lookup(host, family, timeout_ms)
  local task = kernel.current()
  local self = setmetatable({ status = nil }, Lookup)
  self.token = kernel.new_token(self)
  local req, ename, emsg = kernel.loop():dns_resolve(host, family,
                                                      self.token)
  if req == nil then
    kernel.free_token(self.token)
    return nil, failed(host, emsg, ename)
  end
  self.req = req
  kernel.own(task, self)
  if timeout_ms then
    kernel.arm(task, timeout_ms)
  end
  local ok, why = true, nil
  while self.status == nil do
    ok, why = pcall(kernel.block, self, task)
    if not ok or (why == WAKE_TIMER and self.status == nil) then
      break
    end
  end
  if timeout_ms then
    kernel.disarm(task)
  end
  kernel.disown(task, self)
  self:_abort()
  kernel.free_token(self.token)
  if not ok then
    error(why, 0)
  end
  if self.status == nil then
    return nil, errors.error(errors.TIMEOUT, format(
      "dns: the lookup of %s did not finish within %d ms", host, timeout_ms),
      { host = host, timeout_ms = timeout_ms })
  end
  if self.status ~= 0 then
    return nil, failed(host, core.uv_strerror(self.status),
                       core.uv_err_name(self.status))
  end
  local addrs = {}
  for a in gmatch(self.data, "[^\n]+") do
    addrs[#addrs + 1] = a
  end
  return addrs
end

-- In a task: resolve with an already checked family and limits (for
-- sprun.tcp and sprun.http). The addresses (a list of its own) or nil,
-- err.
function _M.lookup(host, family, timeout_ms, cache_ms)
  local kind = numeric(host)
  if kind then
    if family ~= "any" and family ~= kind then
      return nil, failed(host, format("is an %s address, not %s", kind,
                                      family))
    end
    return { host }
  end
  local key
  if cache_ms and cache_ms > 0 then
    key = family .. " " .. host
    local hit = cache_get(key, kernel.loop())
    if hit then
      return copy(hit)
    end
  end
  local addrs, err = lookup(host, family, timeout_ms)
  if addrs and key then
    cache_put(key, copy(addrs), cache_ms)
  end
  return addrs, err
end

local parse_resolve = options.parser("dns.resolve", {
  family = { "choice", values = { "any", "inet", "inet6" }, default = "any" },
  timeout_ms = { "integer", min = 0, limit = check.MS_MAX },
  cache_ms = { "integer", min = 0, limit = check.MS_MAX, default = 0 },
})

-- Resolves `host` to its addresses: a list of numeric addresses, or nil,
-- err (kind "dns_failed", or "timeout" past timeout_ms). opts: { family
-- = "any" | "inet" | "inet6", timeout_ms, cache_ms = 0 }.
function _M.resolve(host, opts)
  if type(host) ~= "string" or host == "" then
    check.arg_error("dns.resolve", "host", "must be a non-empty string", host)
  end
  local o = parse_resolve(opts)
  kernel.check_caller("dns.resolve")
  return sched.in_task(_M.lookup, host, o.family, o.timeout_ms, o.cache_ms)
end

return _M
