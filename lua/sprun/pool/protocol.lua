-- The pool's wire protocol (internal): messages are JSON objects (lua-cjson),
-- framed one of two ways on the channel:
--
--   ndjson  one object per line, ending in "\n" (JSON escapes the newlines
--           inside strings, so any value fits on a line)
--   lp4     a 4-byte big-endian length, then that many bytes of JSON
--
-- sprun sends { id, op, args }; a worker answers each with { id, ok } or
-- { id, error = { kind, message, details } }, after a first { ready =
-- true }. A reader is fed chunks as they arrive and hands each whole
-- message, decoded, to a function; what is left of a message split across
-- chunks waits for the next one.
--
-- The trap: a message that never ends (no newline, or an lp4 length too
-- large) would grow the buffer without bound; past MAX_MESSAGE bytes the
-- reader gives up, since the stream cannot be resynchronised.

local cjson = require "cjson"
local jsonx = require "sprun.telemetry.json"
local check = require "sprun.check"

local byte = string.byte
local char = string.char
local find = string.find
local sub = string.sub
local floor = math.floor
local pcall = pcall
local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local error = error
local tostring = tostring
local concat = table.concat
local setmetatable = setmetatable

local MAX_DEPTH = 100

local _M = {
  MAX_MESSAGE = 64 * 1024 * 1024,
}

-- An instance of its own: settings made here change no one else's cjson.
-- It decodes (numbers in full) and escapes strings; encoding is done here,
-- since cjson writes at most 14 significant digits and would change
-- numbers.
local json = cjson.new()
json.decode_max_depth(MAX_DEPTH)
_M.null = json.null

local decode = json.decode
local encode_string = json.encode
local number_text = jsonx.number

local encode_value

-- A table as a JSON array (positive whole keys: holes become null, as
-- long as there are not many more of them than values) or object (string
-- keys).
local function encode_table(t, depth)
  if depth > MAX_DEPTH then
    error("nested deeper than " .. MAX_DEPTH .. " levels", 0)
  end
  local count, max, named = 0, 0, false
  for k in each_key, t do
    count = count + 1
    if type(k) == "string" then
      named = true
    elseif type(k) == "number" and k % 1 == 0 and k >= 1 then
      if k > max then
        max = k
      end
    else
      error("a table with the key " .. check.describe(k)
            .. " (keys are strings, or 1, 2, ... for a list)", 0)
    end
  end
  if count == 0 then
    return "{}"
  end
  local out = {}
  if not named then
    if max > 2 * count + 10 then
      error("a sparse list (" .. count .. " values up to index " .. max
            .. ")", 0)
    end
    for i = 1, max do
      out[i] = encode_value(t[i], depth + 1)
    end
    return "[" .. concat(out, ",") .. "]"
  elseif max > 0 then
    error("a table with both list items and named keys", 0)
  end
  local i = 0
  for k, v in each_key, t do
    i = i + 1
    out[i] = encode_string(k) .. ":" .. encode_value(v, depth + 1)
  end
  return "{" .. concat(out, ",") .. "}"
end

encode_value = function(v, depth)
  local t = type(v)
  if t == "string" then
    return encode_string(v)
  elseif t == "number" then
    local s = number_text(v)
    if s == nil then
      error("the number " .. tostring(v) .. " (JSON has no nan or infinity)",
            0)
    end
    return s
  elseif t == "boolean" then
    return v and "true" or "false"
  elseif v == nil or v == json.null then
    return "null"
  elseif t == "table" then
    return encode_table(v, depth)
  end
  error("a " .. t .. " (JSON holds strings, numbers, booleans, nil and "
        .. "tables)", 0)
end

-- The JSON of a value, or nil and why it cannot be encoded. Numbers read
-- back the same; an empty table is {}.
function _M.encode(v)
  local ok, s = pcall(encode_value, v, 1)
  if not ok then
    return nil, s
  end
  return s
end

-- The JSON of a request, or nil and why its args cannot be encoded.
function _M.request(id, op, args)
  local ok, a = pcall(encode_value, args, 1)
  if not ok then
    return nil, a
  end
  return '{"id":' .. id .. ',"op":' .. encode_string(op) .. ',"args":' .. a
         .. "}"
end

local function be32(n)
  return char(floor(n / 16777216) % 256, floor(n / 65536) % 256,
              floor(n / 256) % 256, n % 256)
end

-- A message's JSON framed for the wire.
function _M.frame(framing, s)
  if framing == "lp4" then
    return be32(#s) .. s
  end
  return s .. "\n"
end

local Reader = {}
Reader.__index = Reader

-- A reader for `framing` that calls on_message(msg) for each whole
-- message (a decoded table) and on_bad(why, text) for each that is not a
-- JSON object; on_fatal(why) once when the stream cannot go on.
function _M.reader(framing, on_message, on_bad, on_fatal)
  return setmetatable({
    lp4 = framing == "lp4", rest = nil, failed = false,
    on_message = on_message, on_bad = on_bad, on_fatal = on_fatal,
  }, Reader)
end

local function deliver(self, text)
  local ok, msg = pcall(decode, text)
  -- An array decodes to a table too: an object starts with "{".
  if ok and type(msg) == "table" and (byte(text) == 123
                                       or find(text, "^%s*{")) then
    self.on_message(msg)
  else
    self.on_bad(ok and "not a JSON object" or "not JSON", text)
  end
end

local function fail(self, why)
  self.failed = true
  self.rest = nil
  self.on_fatal(why)
end

local function feed_ndjson(self, data)
  local at = 1
  local nl = find(data, "\n", 1, true)
  if self.rest then
    if nl == nil then
      local n = self.rest + #data
      if n > _M.MAX_MESSAGE then
        return fail(self, "a line longer than " .. _M.MAX_MESSAGE .. " bytes")
      end
      self.parts[#self.parts + 1] = data
      self.rest = n
      return
    end
    self.parts[#self.parts + 1] = sub(data, 1, nl - 1)
    local line = concat(self.parts)
    self.rest, self.parts = nil, nil
    deliver(self, line)
    if self.failed then
      return
    end
    at = nl + 1
    nl = find(data, "\n", at, true)
  end
  while nl do
    if nl > at then
      deliver(self, sub(data, at, nl - 1))
      if self.failed then
        return
      end
    end
    at = nl + 1
    nl = find(data, "\n", at, true)
  end
  if at <= #data then
    local n = #data - at + 1
    if n > _M.MAX_MESSAGE then
      return fail(self, "a line longer than " .. _M.MAX_MESSAGE .. " bytes")
    end
    self.parts = { sub(data, at) }
    self.rest = n
  end
end

-- A frame begun and not finished waits in self.parts (self.rest bytes)
-- until self.need bytes are there, so that a large frame arriving in
-- many chunks is joined once.
local function feed_lp4(self, data)
  if self.rest then
    local parts = self.parts
    parts[#parts + 1] = data
    local have = self.rest + #data
    if have < self.need then
      self.rest = have
      return
    end
    data = concat(parts)
    self.rest, self.parts, self.need = nil, nil, nil
  end
  local at, n = 1, #data
  local len
  while n - at + 1 >= 4 do
    local b1, b2, b3, b4 = byte(data, at, at + 3)
    len = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    if len > _M.MAX_MESSAGE then
      return fail(self, "a frame of " .. len .. " bytes (the most is "
                  .. _M.MAX_MESSAGE .. ")")
    end
    if n - at + 1 < 4 + len then
      break
    end
    deliver(self, sub(data, at + 4, at + 3 + len))
    if self.failed then
      return
    end
    at = at + 4 + len
    len = nil
  end
  if at <= n then
    self.rest, self.parts = n - at + 1, { sub(data, at) }
    self.need = len and 4 + len or 4
  end
end

-- Feeds one chunk read from the channel.
function Reader:feed(data)
  if self.failed then
    return
  end
  if self.lp4 then
    return feed_lp4(self, data)
  end
  return feed_ndjson(self, data)
end

-- Bytes of a message begun and not finished (nothing left at the end of
-- the stream means it ended between messages).
function Reader:pending()
  return self.rest or 0
end

return _M
