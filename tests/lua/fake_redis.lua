-- A scripted fake Redis for the specs, on sprun.tcp, in the same run as
-- its clients: an in-memory store that answers exactly what sprun.fleet
-- sends (PING, AUTH, SELECT, SCRIPT LOAD/FLUSH/EXISTS, EVALSHA and the
-- commands its script calls), with its clock on sprun.now(), so that key
-- expiry and TIME follow virtual time.
--
--   local fake_redis = require "fake_redis"
--   local fake = fake_redis.start()          -- inside sprun.run
--   sprun.fleet.connect { redis = fake:url(), ... }
--   fake:set_mode("stall")  -- requests are read, nothing is answered
--   fake:set_mode("down")   -- every connection closed, new ones closed
--   fake:set_mode("pass")   -- answers again (a stall's backlog first)
--   fake:flush_scripts()    -- SCRIPT FLUSH: the next EVALSHA is NOSCRIPT
--   fake.counts.EVALSHA (commands by name, as clients sent them),
--   fake.script_counts.ZADD (as scripts called them), fake.evals (a log)
--   fake:dump(), fake:get(key), fake:ttl(key), fake:connections()
--   fake:command("HGET", k, f)  -- a command run here, as a client would
--   fake:close()
--
-- Commands: PING, AUTH, SELECT, SCRIPT LOAD|FLUSH|EXISTS, EVALSHA, TIME,
-- GET, SET (NX, XX, PX, EX), DEL, EXISTS, PEXPIRE, PTTL, KEYS, FLUSHALL,
-- HGET, HSET, HMGET, HINCRBY, HGETALL, HDEL, ZADD, ZREM, ZREMRANGEBYSCORE,
-- ZCARD, ZSCORE. A script runs (loadstring, once per SHA1 of its text)
-- with KEYS, ARGV, redis.call/pcall and the standard libraries; replies
-- convert as in Redis's Lua (a nil bulk is false, a status { ok = "OK" },
-- an error raises in redis.call; the script's result back to RESP: a
-- number truncated, a list up to its first nil, false a nil bulk).
--
-- fake.evals lists every EVALSHA the fake ran, in order: { node =
-- ARGV[1], time = its TIME in ms, keys = KEYS, argv = ARGV, reply = the
-- script's reply (a list of strings) or err = its error }.
--
-- The trap: a socket reads only while a task waits on it, and a socket
-- that reads holds the virtual clock to the real one (see sprun.io.tcp).
-- A server that waited on conn:read() for its clients all the time would
-- make virtual time crawl at the real speed. So the fake reads only on
-- demand: while a fake runs, every write (and close) of a connection that
-- is not the fake's own wakes the fake's connections, and each takes one
-- short read (a reader task cancelled after a loop step or two if nothing
-- came: a client's write that completed is in the fake's socket buffer
-- already, on loopback). For this, tcp.Connection.write and .close are
-- wrapped while a fake runs (put back when the last one closes): the
-- files under lua/ stay as they are. Between exchanges no socket reads,
-- and the clock jumps.
local sprun = require "sprun"
local core = require "sprun.core"
local tcp = require "sprun.io.tcp"
local kernel = require "sprun.sched.kernel"
local bit = require "bit"

local format = string.format
local concat = table.concat
local floor = math.floor

local _M = {}

local Fake = {}
Fake.__index = Fake

--- SHA1 (for SCRIPT LOAD, as Redis names scripts) -------------------------

local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rol, tobit, tohex = bit.rol, bit.tobit, bit.tohex
local lshift, rshift = bit.lshift, bit.rshift

local function be32(n)
  return string.char(band(rshift(n, 24), 255), band(rshift(n, 16), 255),
                     band(rshift(n, 8), 255), band(n, 255))
end

function _M.sha1(msg)
  local h0, h1, h2, h3, h4 = tobit(0x67452301), tobit(0xEFCDAB89),
    tobit(0x98BADCFE), tobit(0x10325476), tobit(0xC3D2E1F0)
  local ml = #msg
  local bits_hi = floor(ml * 8 / 4294967296)
  local bits_lo = (ml * 8) % 4294967296
  msg = msg .. "\128" .. string.rep("\0", (55 - ml) % 64)
        .. be32(bits_hi) .. be32(bits_lo)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = msg:byte(chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 79 do
      w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
    end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
      elseif i < 40 then
        f, k = bxor(b, c, d), 0x6ED9EBA1
      elseif i < 60 then
        f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
      else
        f, k = bxor(b, c, d), 0xCA62C1D6
      end
      local t = tobit(rol(a, 5) + f + e + tobit(k) + w[i])
      e, d, c, b, a = d, c, rol(b, 30), a, t
    end
    h0, h1 = tobit(h0 + a), tobit(h1 + b)
    h2, h3, h4 = tobit(h2 + c), tobit(h3 + d), tobit(h4 + e)
  end
  return tohex(h0, 8) .. tohex(h1, 8) .. tohex(h2, 8) .. tohex(h3, 8)
         .. tohex(h4, 8)
end

--- Replies ----------------------------------------------------------------
-- Inside the fake a reply is what Redis's Lua sees: a string (bulk), a
-- number (integer), false (nil bulk), { ok = s } (status), { err = s }
-- (error), or a list of replies (array).

local OK = { ok = "OK" }

local function err(msg)
  return { err = msg }
end

local function encode(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = "$" .. #v .. "\r\n" .. v .. "\r\n"
  elseif t == "number" then
    out[#out + 1] = format(":%d\r\n", v)
  elseif v == false or v == nil then
    out[#out + 1] = "$-1\r\n"
  elseif v == true then
    out[#out + 1] = ":1\r\n"
  elseif v.ok ~= nil then
    out[#out + 1] = "+" .. v.ok .. "\r\n"
  elseif v.err ~= nil then
    out[#out + 1] = "-" .. v.err .. "\r\n"
  else
    out[#out + 1] = "*" .. #v .. "\r\n"
    for i = 1, #v do
      encode(v[i], out)
    end
  end
  return out
end

function _M.encode(v)
  return concat(encode(v, {}))
end

-- A script's return value as Redis converts it (Lua -> RESP): a number
-- truncated to an integer, a table with ok or err as status or error, a
-- list up to its first nil, true as 1, false and nil as a nil bulk.
local function from_lua(v)
  local t = type(v)
  if t == "number" then
    return v >= 0 and floor(v) or -floor(-v)
  elseif t == "string" then
    return v
  elseif t == "boolean" then
    return v and 1 or false
  elseif t == "table" then
    if type(v.err) == "string" then
      return { err = v.err }
    elseif type(v.ok) == "string" then
      return { ok = v.ok }
    end
    local out, i = {}, 1
    while v[i] ~= nil do
      out[i] = from_lua(v[i])
      i = i + 1
    end
    return out
  end
  return false
end

--- The store ----------------------------------------------------------------

local WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind "
                  .. "of value"

-- The live entry of `key` in db, or nil (an expired one goes now).
-- Expired as Redis has it: once now > the expiry.
function Fake:_entry(db, key)
  local e = db[key]
  if e ~= nil and e.expire_at ~= nil and sprun.now() > e.expire_at then
    db[key] = nil
    self.expired = self.expired + 1
    return nil
  end
  return e
end

-- The entry of `key` of type `typ` (nil: none), or false if of another.
function Fake:_typed(db, key, typ)
  local e = self:_entry(db, key)
  if e == nil then
    return nil
  end
  if e.type ~= typ then
    return false
  end
  return e
end

-- The entry to write, made if missing; false if of another type.
function Fake:_make(db, key, typ)
  local e = self:_typed(db, key, typ)
  if e == nil then
    e = { type = typ, value = {}, n = 0 }
    db[key] = e
  end
  return e
end

-- An aggregate left empty goes, as in Redis.
local function prune(db, key, e)
  if e.n == 0 then
    db[key] = nil
  end
end

local function num(s)
  local v = tonumber(s)
  if v == nil or v ~= v then
    return nil
  end
  return v
end

-- A ZRANGEBYSCORE bound: "-inf", "+inf", "x" or "(x" (exclusive).
local function bound(s)
  if s == "-inf" then
    return -math.huge, false
  elseif s == "+inf" or s == "inf" then
    return math.huge, false
  end
  local ex = s:sub(1, 1) == "("
  local v = num(ex and s:sub(2) or s)
  return v, ex
end

local function is_int(s)
  return type(s) == "string" and s:match("^%-?%d+$") ~= nil
end

local C = {}

function C.PING(_, _, a)
  if a[2] ~= nil then
    return a[2]
  end
  return { ok = "PONG" }
end

function C.TIME()
  local ms = sprun.now()
  return { format("%d", floor(ms / 1000)), format("%d", (ms % 1000) * 1000) }
end

function C.GET(self, db, a)
  local e = self:_typed(db, a[2], "string")
  if e == false then
    return err(WRONGTYPE)
  end
  return e and e.value or false
end

function C.SET(self, db, a)
  local key, value = a[2], a[3]
  if key == nil or value == nil then
    return err("ERR wrong number of arguments for 'set' command")
  end
  local nx, xx, ttl = false, false, nil
  local i = 4
  while a[i] ~= nil do
    local o = a[i]:upper()
    if o == "NX" then
      nx = true
    elseif o == "XX" then
      xx = true
    elseif (o == "PX" or o == "EX") and is_int(a[i + 1]) then
      ttl = tonumber(a[i + 1]) * (o == "EX" and 1000 or 1)
      if ttl <= 0 then
        return err("ERR invalid expire time in 'set' command")
      end
      i = i + 1
    else
      return err("ERR syntax error")
    end
    i = i + 1
  end
  local e = self:_entry(db, key)
  if (nx and e ~= nil) or (xx and e == nil) then
    return false
  end
  db[key] = { type = "string", value = value,
              expire_at = ttl and sprun.now() + ttl or nil }
  return OK
end

function C.DEL(self, db, a)
  local n = 0
  for i = 2, #a do
    if self:_entry(db, a[i]) ~= nil then
      db[a[i]] = nil
      n = n + 1
    end
  end
  return n
end

function C.EXISTS(self, db, a)
  local n = 0
  for i = 2, #a do
    if self:_entry(db, a[i]) ~= nil then
      n = n + 1
    end
  end
  return n
end

function C.PEXPIRE(self, db, a)
  if not is_int(a[3]) then
    return err("ERR value is not an integer or out of range")
  end
  local e = self:_entry(db, a[2])
  if e == nil then
    return 0
  end
  local ms = tonumber(a[3])
  if ms <= 0 then
    db[a[2]] = nil
    return 1
  end
  e.expire_at = sprun.now() + ms
  return 1
end

function C.PTTL(self, db, a)
  local e = self:_entry(db, a[2])
  if e == nil then
    return -2
  end
  if e.expire_at == nil then
    return -1
  end
  return e.expire_at - sprun.now()
end

-- KEYS pattern: the glob's * and ? only (enough for the specs).
function C.KEYS(self, db, a)
  local pat = "^" .. a[2]:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0")
                          :gsub("%*", ".*"):gsub("%?", ".") .. "$"
  local out = {}
  for key in pairs(db) do
    if self:_entry(db, key) ~= nil and key:match(pat) then
      out[#out + 1] = key
    end
  end
  table.sort(out)
  return out
end

function C.FLUSHALL(self)
  for i = 0, 15 do
    self.dbs[i] = {}
  end
  return OK
end

function C.HGET(self, db, a)
  local e = self:_typed(db, a[2], "hash")
  if e == false then
    return err(WRONGTYPE)
  end
  local v = e and e.value[a[3]]
  return v or false
end

function C.HSET(self, db, a)
  if #a < 4 or #a % 2 ~= 0 then
    return err("ERR wrong number of arguments for 'hset' command")
  end
  local e = self:_make(db, a[2], "hash")
  if not e then
    return err(WRONGTYPE)
  end
  local added = 0
  for i = 3, #a, 2 do
    if e.value[a[i]] == nil then
      added = added + 1
      e.n = e.n + 1
    end
    e.value[a[i]] = a[i + 1]
  end
  return added
end

function C.HMGET(self, db, a)
  local e = self:_typed(db, a[2], "hash")
  if e == false then
    return err(WRONGTYPE)
  end
  local out = {}
  for i = 3, #a do
    out[#out + 1] = e and e.value[a[i]] or false
  end
  return out
end

function C.HINCRBY(self, db, a)
  if not is_int(a[4]) then
    return err("ERR value is not an integer or out of range")
  end
  local e = self:_make(db, a[2], "hash")
  if not e then
    return err(WRONGTYPE)
  end
  local old = e.value[a[3]]
  if old ~= nil and not is_int(old) then
    return err("ERR hash value is not an integer")
  end
  if old == nil then
    e.n = e.n + 1
  end
  local v = (old and tonumber(old) or 0) + tonumber(a[4])
  e.value[a[3]] = format("%d", v)
  return v
end

function C.HGETALL(self, db, a)
  local e = self:_typed(db, a[2], "hash")
  if e == false then
    return err(WRONGTYPE)
  end
  local out = {}
  if e then
    local fields = {}
    for f in pairs(e.value) do
      fields[#fields + 1] = f
    end
    table.sort(fields)
    for _, f in ipairs(fields) do
      out[#out + 1] = f
      out[#out + 1] = e.value[f]
    end
  end
  return out
end

function C.HDEL(self, db, a)
  local e = self:_typed(db, a[2], "hash")
  if e == false then
    return err(WRONGTYPE)
  end
  local n = 0
  if e then
    for i = 3, #a do
      if e.value[a[i]] ~= nil then
        e.value[a[i]] = nil
        e.n = e.n - 1
        n = n + 1
      end
    end
    prune(db, a[2], e)
  end
  return n
end

function C.ZADD(self, db, a)
  if #a < 4 or #a % 2 ~= 0 then
    return err("ERR syntax error")
  end
  for i = 3, #a, 2 do
    if num(a[i]) == nil then
      return err("ERR value is not a valid float")
    end
  end
  local e = self:_make(db, a[2], "zset")
  if not e then
    return err(WRONGTYPE)
  end
  local added = 0
  for i = 3, #a, 2 do
    local member = a[i + 1]
    if e.value[member] == nil then
      added = added + 1
      e.n = e.n + 1
    end
    e.value[member] = num(a[i])
  end
  return added
end

function C.ZREM(self, db, a)
  local e = self:_typed(db, a[2], "zset")
  if e == false then
    return err(WRONGTYPE)
  end
  local n = 0
  if e then
    for i = 3, #a do
      if e.value[a[i]] ~= nil then
        e.value[a[i]] = nil
        e.n = e.n - 1
        n = n + 1
      end
    end
    prune(db, a[2], e)
  end
  return n
end

function C.ZREMRANGEBYSCORE(self, db, a)
  local lo, lo_ex = bound(a[3] or "")
  local hi, hi_ex = bound(a[4] or "")
  if lo == nil or hi == nil then
    return err("ERR min or max is not a float")
  end
  local e = self:_typed(db, a[2], "zset")
  if e == false then
    return err(WRONGTYPE)
  end
  local n = 0
  if e then
    local gone = {}
    for member, score in pairs(e.value) do
      local above = lo_ex and score > lo or not lo_ex and score >= lo
      local below = hi_ex and score < hi or not hi_ex and score <= hi
      if above and below then
        gone[#gone + 1] = member
      end
    end
    for _, member in ipairs(gone) do
      e.value[member] = nil
      e.n = e.n - 1
      n = n + 1
    end
    prune(db, a[2], e)
  end
  return n
end

function C.ZCARD(self, db, a)
  local e = self:_typed(db, a[2], "zset")
  if e == false then
    return err(WRONGTYPE)
  end
  return e and e.n or 0
end

function C.ZSCORE(self, db, a)
  local e = self:_typed(db, a[2], "zset")
  if e == false then
    return err(WRONGTYPE)
  end
  local s = e and e.value[a[3]]
  return s and format("%.17g", s) or false
end

--- Scripts --------------------------------------------------------------

-- An argument of redis.call as Redis takes it: a string, or a number
-- made one.
local function arg_string(v)
  if type(v) == "number" then
    if v % 1 == 0 then
      return format("%d", v)
    end
    return format("%.17g", v)
  end
  return v
end

local function copy(list)
  local out = {}
  for i = 1, #list do
    out[i] = list[i]
  end
  return out
end

function Fake:_eval(db, a)
  local sha = a[2] and a[2]:lower()
  local fn = sha and self.scripts[sha]
  if fn == nil then
    return err("NOSCRIPT No matching script. Please use EVAL.")
  end
  local nkeys = tonumber(a[3])
  if nkeys == nil or nkeys < 0 or 3 + nkeys > #a then
    return err("ERR Number of keys can't be greater than number of args")
  end
  local keys, argv = {}, {}
  for i = 1, nkeys do
    keys[i] = a[3 + i]
  end
  for i = 4 + nkeys, #a do
    argv[#argv + 1] = a[i]
  end
  local function call(raise, name, ...)
    local args = { name, ... }
    for i = 1, #args do
      args[i] = arg_string(args[i])
      if type(args[i]) ~= "string" then
        error("Lua redis lib command arguments must be strings or integers",
              3)
      end
    end
    local cmd = type(name) == "string" and name:upper() or ""
    self.script_counts[cmd] = (self.script_counts[cmd] or 0) + 1
    local f = C[cmd]
    local r
    if f == nil then
      r = err("ERR unknown command '" .. tostring(name) .. "'")
    else
      r = f(self, db, args)
    end
    if raise and type(r) == "table" and r.err ~= nil then
      error(r.err, 3)
    end
    return r
  end
  local redis = {
    call = function(...) return call(true, ...) end,
    pcall = function(...) return call(false, ...) end,
    status_reply = function(s) return { ok = s } end,
    error_reply = function(s) return { err = s } end,
  }
  local env = {
    KEYS = keys, ARGV = argv, redis = redis,
    string = string, math = math, table = table, tonumber = tonumber,
    tostring = tostring, ipairs = ipairs, pairs = pairs, type = type,
    unpack = unpack, next = next, select = select, error = error,
    pcall = pcall, assert = assert,
  }
  setfenv(fn, env)
  local time = sprun.now()
  local ok, v = pcall(fn)
  local entry = { node = argv[1], time = time, keys = copy(keys),
                  argv = copy(argv) }
  self.evals[#self.evals + 1] = entry
  if not ok then
    entry.err = tostring(v)
    return err("ERR Error running script (call to f_" .. sha .. "): "
               .. tostring(v))
  end
  local r = from_lua(v)
  entry.reply = r
  return r
end

function Fake:_script(_, a)
  local sub = (a[2] or ""):upper()
  if sub == "LOAD" then
    local text = a[3]
    if text == nil then
      return err("ERR wrong number of arguments for 'script|load' command")
    end
    local fn, why = loadstring(text, "=user_script")
    if fn == nil then
      return err("ERR Error compiling script (new function): " .. why)
    end
    local sha = _M.sha1(text)
    self.scripts[sha] = fn
    self.sources[sha] = text
    return sha
  elseif sub == "FLUSH" then
    self:flush_scripts()
    return OK
  elseif sub == "EXISTS" then
    local out = {}
    for i = 3, #a do
      out[#out + 1] = self.scripts[a[i]:lower()] and 1 or 0
    end
    return out
  end
  return err("ERR unknown subcommand '" .. tostring(a[2]) .. "'")
end

-- One request (a list of strings) from connection `c`: its reply.
function Fake:_command(c, a)
  local name = type(a[1]) == "string" and a[1]:upper() or ""
  self.counts[name] = (self.counts[name] or 0) + 1
  self.commands = self.commands + 1
  if name == "AUTH" then
    local pass = a[3] or a[2]
    if self.password == nil then
      return err("ERR AUTH <password> called without any password "
                 .. "configured for the default user. Are you sure your "
                 .. "configuration is correct?")
    elseif pass ~= self.password then
      return err("WRONGPASS invalid username-password pair or user is "
                 .. "disabled.")
    end
    c.authed = true
    return OK
  end
  if self.password ~= nil and not c.authed then
    return err("NOAUTH Authentication required.")
  end
  if name == "SELECT" then
    local n = tonumber(a[2])
    if n == nil or n % 1 ~= 0 or n < 0 or n > 15 then
      return err("ERR DB index is out of range")
    end
    c.db = n
    return OK
  end
  local db = self.dbs[c.db]
  if name == "SCRIPT" then
    return self:_script(db, a)
  elseif name == "EVALSHA" then
    return self:_eval(db, a)
  end
  local f = C[name]
  if f == nil then
    return err("ERR unknown command '" .. tostring(a[1]) .. "'")
  end
  return f(self, db, a)
end

--- Connections --------------------------------------------------------------

-- The sockets the fakes accepted (their writes wake nobody).
local own = setmetatable({}, { __mode = "k" })
-- The fakes running now.
local running = {}
local wrapped = nil

local function kick_all()
  for fake in pairs(running) do
    fake:_kick()
  end
end

local function wrap()
  if wrapped then
    return
  end
  local Conn = tcp.Connection
  wrapped = { write = Conn.write, close = Conn.close }
  local write, close = wrapped.write, wrapped.close
  Conn.write = function(self, data)
    local ok, e = write(self, data)
    if not own[self] then
      kick_all()
    end
    return ok, e
  end
  Conn.close = function(self)
    local r = close(self)
    if not own[self] then
      kick_all()
    end
    return r
  end
end

local function unwrap()
  if wrapped and next(running) == nil then
    tcp.Connection.write = wrapped.write
    tcp.Connection.close = wrapped.close
    wrapped = nil
  end
end

function Fake:_kick()
  for c in pairs(self.conns) do
    c.kicks = c.kicks + 1
    kernel.wake(c)
  end
end

-- One short read of connection c: what came (data), or nil and whether
-- the peer closed it. Reads for a loop step or two at most.
local function short_read(c)
  local conn = c.conn
  if #conn.buf > 0 then
    return conn:read()
  end
  if conn.eof or conn.closed then
    return nil, true
  end
  local reader = sprun.spawn(function()
    return conn:read()
  end)
  for _ = 1, 3 do
    sprun.sleep(0)
    if reader:status() == "done" or reader:status() == "failed"
       or #conn.buf > 0 or conn.eof or conn.closed then
      break
    end
  end
  local status = reader:status()
  if status ~= "done" and status ~= "failed" and status ~= "cancelled" then
    reader:cancel()
  end
  local data = reader:await()
  if data == nil and #conn.buf > 0 then
    data = conn:read()
  end
  if data == nil then
    return nil, conn.eof or conn.closed
  end
  return data
end

-- Answers what c's reader holds, unless the fake stalls (then it waits).
function Fake:_answer(c)
  while true do
    if self.mode == "stall" and not self.closed then
      return
    end
    local req = table.remove(c.pending, 1)
    if req == nil then
      return
    end
    local reply = self:_command(c, req)
    if not c.conn.closed then
      c.conn:write(_M.encode(reply))
    end
  end
end

function Fake:_parse(c)
  while true do
    local kind, v = c.reader:next()
    if kind == nil then
      return true
    elseif kind == "array" then
      c.pending[#c.pending + 1] = v
    else
      -- Not a request: Redis drops such a client.
      return false
    end
  end
end

function Fake:_serve(conn)
  own[conn] = true
  self.accepted = self.accepted + 1
  if self.mode == "down" or self.closed then
    self.refused = self.refused + 1
    conn:close()
    return
  end
  local c = { conn = conn, reader = core.resp_reader(), kicks = 1,
              pending = {}, db = 0, task = kernel.current() }
  self.conns[c] = true
  local ok, e = pcall(function()
    while not self.closed and self.mode ~= "down" do
      if c.kicks == 0 then
        kernel.block(c, c.task)
      else
        c.kicks = 0
        local data, ended = short_read(c)
        if data ~= nil then
          c.reader:feed(data)
          if not self:_parse(c) then
            break
          end
          -- A request may come in more than one piece: read again.
          c.kicks = c.kicks + 1
        end
        self:_answer(c)
        if ended then
          -- A stalled Redis still runs what it read, once it wakes.
          while self.mode == "stall" and not self.closed
                and #c.pending > 0 do
            kernel.block(c, c.task)
          end
          self:_answer(c)
          break
        end
      end
    end
  end)
  self.conns[c] = nil
  c.reader:close()
  conn:close()
  if not ok and not self.closed then
    error(e, 0)
  end
end

--- The fake's API -----------------------------------------------------------

-- start{ password = nil } -> fake, from inside a running task. Its server
-- and connections belong to the calling task.
function _M.start(opts)
  opts = opts or {}
  local self = setmetatable({
    mode = "pass", closed = false, password = opts.password,
    dbs = {}, scripts = {}, sources = {}, conns = {},
    counts = {}, script_counts = {}, evals = {}, commands = 0,
    accepted = 0, refused = 0, expired = 0, flushes = 0,
  }, Fake)
  for i = 0, 15 do
    self.dbs[i] = {}
  end
  self.server = assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
    self:_serve(conn)
  end))
  self.port = self.server.port
  running[self] = true
  wrap()
  return self
end

function Fake:url(db)
  local auth = self.password and (":" .. self.password .. "@") or ""
  return "redis://" .. auth .. "127.0.0.1:" .. self.port
         .. (db and ("/" .. db) or "")
end

-- "pass", "stall" or "down".
function Fake:set_mode(mode)
  assert(mode == "pass" or mode == "stall" or mode == "down",
         "fake_redis: mode must be pass, stall or down")
  self.mode = mode
  if mode == "down" then
    for c in pairs(self.conns) do
      c.conn:close()
    end
  end
  self:_kick()
end

-- SCRIPT FLUSH: every script loaded is forgotten.
function Fake:flush_scripts()
  self.scripts = {}
  self.flushes = self.flushes + 1
end

-- The live connections.
function Fake:connections()
  local n = 0
  for _ in pairs(self.conns) do
    n = n + 1
  end
  return n
end

-- The value of `key` (db 0 unless given) as the fake holds it: a string,
-- a table field -> value (hash), a table member -> score (zset), or nil.
function Fake:get(key, db)
  local e = self:_entry(self.dbs[db or 0], key)
  if e == nil then
    return nil
  end
  if e.type == "string" then
    return e.value
  end
  local out = {}
  for k, v in pairs(e.value) do
    out[k] = v
  end
  return out
end

-- The ms left before `key` expires; -1 without expiry, -2 when missing.
function Fake:ttl(key, db)
  return C.PTTL(self, self.dbs[db or 0], { "PTTL", key })
end

-- Every live key of db (0) and its value (as get gives it).
function Fake:dump(db)
  local out = {}
  for key in pairs(self.dbs[db or 0]) do
    local v = self:get(key, db)
    if v ~= nil then
      out[key] = v
    end
  end
  return out
end

-- Runs one command as a client would (for the specs): its reply.
function Fake:command(...)
  return self:_command({ db = 0, authed = true }, { ... })
end

-- The EVALSHA log entries of `node` (every node without one).
function Fake:evals_of(node)
  local out = {}
  for _, e in ipairs(self.evals) do
    if node == nil or e.node == node then
      out[#out + 1] = e
    end
  end
  return out
end

-- Closes the server and every connection; waits for their tasks to end.
function Fake:close()
  if self.closed then
    return
  end
  self.closed = true
  running[self] = nil
  unwrap()
  self.server:close()
  for c in pairs(self.conns) do
    c.conn:close()
    kernel.wake(c)
  end
  -- Let the connections' tasks see it and end.
  for _ = 1, 100 do
    if next(self.conns) == nil then
      break
    end
    sprun.sleep(0)
  end
  assert(next(self.conns) == nil, "fake_redis: connections still open")
end

return _M
