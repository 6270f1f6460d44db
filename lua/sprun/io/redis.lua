-- Redis connections as tasks see them: commands over sprun.tcp, RESP read
-- and written by libhiredis (runtime/lua/lresp.c).
--
--   local r = assert(sprun.redis.connect { url = "redis://127.0.0.1:6379/0",
--                                          timeout_ms = 200 })
--   r:call("SET", "k", "v")                     --> "OK"
--   r:call("GET", "k")                          --> "v"
--   r:pipeline { { "INCR", "n" }, { "GET", "n" } } --> { 1, "1" }
--   r:close()
--
-- Values: a bulk or status reply is a string, an integer a number, a nil
-- reply false, an array a list (its nils false, its errors { err = msg }).
-- An error reply is nil, err of kind "redis_error" (the reply's text in
-- the message, its first word in details.code: "NOSCRIPT", "WRONGTYPE"...).
-- url: redis://[[user]:password@]host[:port][/db]; AUTH and SELECT are
-- sent on connect. Host names go through sprun.dns.
--
-- The rule: one command (or pipeline) at a time per connection; callers
-- from other tasks wait their turn. The trap: a call that times out or is
-- cancelled leaves the connection in an unknown place of the protocol, so
-- the connection is closed then; later calls get kind "closed".

local core = require "sprun.core"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local tcp = require "sprun.io.tcp"
local stream = require "sprun.io.stream"
local errors = require "sprun.errors"
local check = require "sprun.check"
local options = require "sprun.options"
local clock = require "sprun.clock"

local type = type
local pcall = pcall
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local select = select
local unpack = unpack
local concat = table.concat
local format = string.format
local match = string.match
local now = clock.now
local resp_command = core.resp_command

local _M = {}

local Redis = {}
Redis.__index = Redis

local WHAT = "a Redis connection"

-- redis://[[user]:password@]host[:port][/db] -> host, port, user,
-- password, db; or nil, why.
function _M.parse_url(url)
  if type(url) ~= "string" then
    return nil, "must be a redis:// URL"
  end
  local rest = match(url, "^redis://(.*)$")
  if rest == nil then
    return nil, "must be a redis:// URL"
  end
  local auth, hostpart = match(rest, "^([^@/]*)@(.*)$")
  if auth == nil then
    hostpart = rest
  end
  local user, password
  if auth then
    user, password = match(auth, "^([^:]*):(.*)$")
    if user == nil then
      return nil, "must give the password as :password@ (or user:password@)"
    end
    if user == "" then
      user = nil
    end
  end
  local hostport, db = match(hostpart, "^([^/]*)/?(.*)$")
  local host, port = match(hostport, "^%[(.+)%]:?(%d*)$")
  if host == nil then
    host, port = match(hostport, "^([^:]+):?(%d*)$")
  end
  if host == nil then
    return nil, "has no host"
  end
  port = port ~= "" and tonumber(port) or 6379
  if port < 1 or port > 65535 then
    return nil, "has a port out of range"
  end
  if db ~= "" and not match(db, "^%d+$") then
    return nil, "has a database that is not a number"
  end
  return host, port, user, password, db ~= "" and tonumber(db) or nil
end

local function failed(kind, msg, details)
  return errors.error(kind, "redis: " .. msg, details)
end

local function reply_error(text)
  return errors.error("redis_error", text, { code = match(text, "^(%S+)") })
end

-- Reads one reply: value or nil, err. Waits at most until `deadline`
-- (loop ms, or nil).
local function read_reply(self, task, deadline)
  local reader, conn = self.reader, self.conn
  while true do
    local kind, v = reader:next()
    if kind == "error" then
      return nil, reply_error(v)
    elseif kind == "protocol" then
      self:close()
      return nil, failed("bad_reply", v)
    elseif kind == "nil" then
      return false
    elseif kind then
      return v
    end
    if #conn.buf > 0 then
      reader:feed(stream.take_all(conn))
    elseif conn.eof or conn.closed then
      self:close()
      return nil, failed("closed", "the connection closed")
    else
      if deadline and now() >= deadline then
        return nil, "timeout"
      end
      conn:_fill(task)
    end
  end
end

-- Sends `payload` and reads `n` replies, within self.timeout_ms; a
-- timeout or a cancel closes the connection. Returns the replies as a
-- list of { ok, value } pairs (ok false: value is the error), or nil, err.
local function exchange(self, payload, n)
  local task = kernel.need_task("redis.call")
  if self.closed then
    return nil, failed("closed", "the connection is closed")
  end
  -- One exchange at a time: the replies come in the order of the writes.
  while self.busy do
    kernel.block(self, task)
  end
  self.busy = true
  local ms = self.timeout_ms
  local deadline = ms and now() + ms
  if ms then
    kernel.arm(task, ms)
  end
  local ok, out, err = pcall(function()
    local wok, werr = self.conn:write(payload)
    if not wok then
      self:close()
      return nil, failed(errors.kind(werr) == "closed" and "closed"
                         or "connection_reset", tostring(werr))
    end
    local list = {}
    for i = 1, n do
      local v, e = read_reply(self, task, deadline)
      if e == "timeout" then
        self:close()
        return nil, errors.error(errors.TIMEOUT, format(
          "redis: no reply within %d ms", ms), { timeout_ms = ms })
      elseif v == nil and errors.kind(e) ~= "redis_error" then
        return nil, e
      end
      if v == nil then
        list[i] = { false, e }
      else
        list[i] = { true, v }
      end
    end
    return list
  end)
  if ms then
    kernel.disarm(task)
  end
  self.busy = false
  kernel.wake(self)
  if not ok then
    self:close()
    error(out, 0)
  end
  return out, err
end

-- Sends one command (its arguments: strings or numbers); returns the
-- reply's value or nil, err.
function Redis:call(...)
  check.self(self, Redis, "redis.call", WHAT)
  if select("#", ...) == 0 then
    check.arg_error("redis.call", "command", "must be given", nil)
  end
  local list, err = exchange(self, resp_command(...), 1)
  if list == nil then
    return nil, err
  end
  local r = list[1]
  if r[1] then
    return r[2]
  end
  return nil, r[2]
end

-- Sends the commands in one write and reads their replies: a list, one
-- entry per command, its value or { err = error } for an error reply; or
-- nil, err when the exchange itself failed.
function Redis:pipeline(cmds)
  check.self(self, Redis, "redis.pipeline", WHAT)
  if type(cmds) ~= "table" or #cmds == 0 then
    check.arg_error("redis.pipeline", "commands",
                    "must be a non-empty list of commands", cmds)
  end
  local parts = {}
  for i = 1, #cmds do
    local c = cmds[i]
    if type(c) ~= "table" or #c == 0 then
      check.arg_error("redis.pipeline", "commands[" .. i .. "]",
                      "must be a non-empty list of arguments", c)
    end
    parts[i] = resp_command(unpack(c))
  end
  local list, err = exchange(self, concat(parts), #cmds)
  if list == nil then
    return nil, err
  end
  local out = {}
  for i = 1, #list do
    local r = list[i]
    if r[1] then
      out[i] = r[2]
    else
      out[i] = { err = r[2] }
    end
  end
  return out
end

-- Closes the connection; idempotent.
function Redis:close()
  check.self(self, Redis, "redis.close", WHAT)
  if not self.closed then
    self.closed = true
    self.conn:close()
    self.reader:close()
    kernel.wake(self)
  end
  return true
end

function Redis:_abort()
  self:close()
end

-- For what outlives the task that connected (sprun.fleet's sync, a task
-- per interval): the connection then belongs to no task, and whoever
-- holds it closes it.
function Redis:_detach()
  kernel.disown(self.owner, self)
  kernel.disown(self.conn.owner, self.conn)
  self.conn.owner = nil
  self.owner = nil
end

local parse_connect = options.parser("redis.connect", {
  url = { check = function(v)
    if v == nil then
      return nil
    end
    local host, why = _M.parse_url(v)
    if host == nil then
      return why
    end
  end },
  host = { "string" },
  port = { "integer", min = 1, limit = 65535 },
  user = { "string" },
  password = { "string" },
  db = { "integer", min = 0, limit = 1e6 },
  timeout_ms = { "integer", min = 1, limit = check.MS_MAX, default = 1000 },
})

local function connect_in_task(o)
  local host, port, user, password, db = o.host, o.port or 6379, o.user,
                                         o.password, o.db
  if o.url then
    local uh, up, uu, upw, udb = _M.parse_url(o.url)
    host, port = o.host or uh, o.port or up
    user, password, db = o.user or uu, o.password or upw, o.db or udb
  end
  host = host or "127.0.0.1"
  local conn, err = tcp.connect(host, port, { timeout_ms = o.timeout_ms })
  if conn == nil then
    return nil, err
  end
  local self = setmetatable({
    conn = conn, reader = core.resp_reader(), timeout_ms = o.timeout_ms,
    closed = false, busy = false, host = host, port = port,
    owner = kernel.current(),
  }, Redis)
  kernel.own(self.owner, self)
  if password then
    local ok, e
    if user then
      ok, e = self:call("AUTH", user, password)
    else
      ok, e = self:call("AUTH", password)
    end
    if not ok then
      self:close()
      return nil, e
    end
  end
  if db and db ~= 0 then
    local ok, e = self:call("SELECT", db)
    if not ok then
      self:close()
      return nil, e
    end
  end
  return self
end

-- Connects: { url = "redis://...", or host, port, user, password, db;
-- timeout_ms = 1000 (connect and every call) } -> connection or nil, err.
function _M.connect(opts)
  local o = parse_connect(opts)
  kernel.check_caller("redis.connect")
  return sched.in_task(connect_in_task, o)
end

_M.Connection = Redis

return _M
