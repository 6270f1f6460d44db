-- JSON for sprun's sinks, traces and protocols, on lua-cjson.
--
--   json.encode(v)   any Lua value as JSON text, never raising
--   json.decode(s)   lua-cjson's decoder: the value, or nil and the error
--
-- encode writes what a log line or a trace needs, which lua-cjson alone
-- does not: objects with their keys sorted (LuaJIT seeds its string
-- hashes per process, so pairs() order changes from run to run, and a
-- golden file or a diff of two logs must not), valid UTF-8 always (a byte
-- that is not part of a valid sequence becomes U+FFFD), error objects and
-- other values with a __tostring as their string form, nan and the
-- infinities as null, and placeholders instead of errors for what JSON
-- cannot hold: "<cycle>", "<too deep>", "<function>", "<thread>",
-- "<userdata>". Numbers are written so that they read back the same
-- (lua-cjson keeps 14 digits at most). Strings are escaped by lua-cjson.
--
-- The trap: encode must not raise, whatever it is given, since it runs in
-- telemetry handlers and a handler that raises is detached. Every call
-- into user code (a __tostring) is protected.

local cjson = require("cjson").new()
local shortest = require("sprun.check").shortest

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local pcall = pcall
local tostring = tostring
local getmetatable = getmetatable
local rawget = rawget
local huge = math.huge
local byte = string.byte
local find = string.find
local sub = string.sub
local match = string.match
local format = string.format
local concat = table.concat
local sort = table.sort
local cjson_encode = cjson.encode
local cjson_decode = cjson.decode

local _M = {}

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- s with every byte that is not part of a valid UTF-8 sequence replaced
-- by U+FFFD.
local function valid_utf8(s)
  local out, start, i, n = nil, 1, 1, #s
  while i <= n do
    local c = byte(s, i)
    local len = c < 0x80 and 1 or c >= 0xC2 and c <= 0xDF and 2
                or c >= 0xE0 and c <= 0xEF and 3
                or c >= 0xF0 and c <= 0xF4 and 4 or 0
    local ok = len > 0 and i + len - 1 <= n
    if ok and len > 1 then
      for k = 1, len - 1 do
        local cc = byte(s, i + k)
        if cc < 0x80 or cc > 0xBF then
          ok = false
          break
        end
      end
      local c2 = byte(s, i + 1)
      if ok and ((c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
                 or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F))
      then
        ok = false
      end
    end
    if ok then
      i = i + len
    else
      out = out or {}
      out[#out + 1] = sub(s, start, i - 1)
      out[#out + 1] = REPLACEMENT
      i = i + 1
      start = i
    end
  end
  if out == nil then
    return s
  end
  out[#out + 1] = sub(s, start)
  return concat(out)
end

-- The JSON text of short strings, kept: events repeat the same keys and
-- names, and escaping costs more than the rest of the encoding.
local string_texts, string_count = {}, 0

local function string_text(s)
  local text = string_texts[s]
  if text ~= nil then
    return text
  end
  if not find(s, '[%c"\\\128-\255]') then
    text = '"' .. s .. '"'
  else
    if find(s, "[\128-\255]") then
      s = valid_utf8(s)
    end
    text = cjson_encode(s)
  end
  if #s <= 64 then
    if string_count >= 1024 then
      string_texts, string_count = {}, 0
    end
    string_texts[s] = text
    string_count = string_count + 1
  end
  return text
end
_M.string = string_text

-- The shortest text that reads back as the same number; nil for nan and
-- the infinities, which JSON cannot hold.
local function number_text(v)
  if v ~= v or v == huge or v == -huge then
    return nil
  end
  if v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then
    return format("%.0f", v)
  end
  -- From 15 digits: %g drops trailing zeros, so a number that fewer
  -- digits hold comes out just as short.
  return shortest(v, 15)
end
_M.number = number_text

local MAX_DEPTH = 32

-- Sorts a list of strings: by insertion when short (the usual metadata
-- table), which the JIT compiles, unlike a call to table.sort.
local function sort_strings(list)
  local n = #list
  if n > 12 then
    sort(list)
    return
  end
  for i = 2, n do
    local v = list[i]
    local j = i - 1
    while j > 0 and list[j] > v do
      list[j + 1] = list[j]
      j = j - 1
    end
    list[j + 1] = v
  end
end

-- The pieces of the text being made: out[1 .. n]. `seen` holds the
-- tables being encoded (a table met inside itself is a cycle); both are
-- empty between calls, and a call made while another one runs (from a
-- __tostring) gets its own.
local out, n, seen, busy = {}, 0, {}, false

local encode_value

local function encode_table(t, depth)
  local mt = getmetatable(t)
  if mt ~= nil and type(mt) == "table" and rawget(mt, "__tostring") then
    -- Error objects and the like: their string form.
    local ok, s = pcall(tostring, t)
    n = n + 1
    out[n] = string_text(ok and type(s) == "string" and s
                         or "<" .. type(t) .. ">")
    return
  end
  if seen[t] then
    n = n + 1
    out[n] = '"<cycle>"'
    return
  end
  if depth > MAX_DEPTH then
    n = n + 1
    out[n] = '"<too deep>"'
    return
  end
  seen[t] = true
  local len, count = #t, 0
  for _ in each_key, t do
    count = count + 1
  end
  if len > 0 and count == len then
    n = n + 1
    out[n] = "["
    for i = 1, len do
      if i > 1 then
        n = n + 1
        out[n] = ","
      end
      encode_value(t[i], depth + 1)
    end
    n = n + 1
    out[n] = "]"
  elseif count == 0 then
    n = n + 1
    out[n] = "{}"
  else
    -- Keys as strings, sorted; a key that is not a string is written as
    -- its text, and the first of two keys with the same text wins.
    local keys, by_key = {}, nil
    for k, v in each_key, t do
      if type(k) ~= "string" then
        by_key = by_key or {}
        k = type(k) == "number" and number_text(k) or tostring(k)
        if by_key[k] == nil and t[k] == nil then
          by_key[k] = v
          keys[#keys + 1] = k
        end
      else
        keys[#keys + 1] = k
      end
    end
    sort_strings(keys)
    local sep = "{"
    for i = 1, #keys do
      local key = keys[i]
      local v = t[key]
      if v == nil and by_key then
        v = by_key[key]
      end
      out[n + 1] = sep
      out[n + 2] = string_text(key)
      out[n + 3] = ":"
      n = n + 3
      encode_value(v, depth + 1)
      sep = ","
    end
    n = n + 1
    out[n] = "}"
  end
  seen[t] = nil
end

encode_value = function(v, depth)
  local t = type(v)
  local text
  if t == "string" then
    text = string_text(v)
  elseif t == "number" then
    text = number_text(v) or "null"
  elseif t == "boolean" then
    text = v and "true" or "false"
  elseif t == "nil" then
    text = "null"
  elseif t == "table" then
    return encode_table(v, depth)
  elseif t == "cdata" then
    -- 64-bit integers print as 123LL / 123ULL.
    local s = tostring(v)
    text = match(s, "^(%-?%d+)U?LL$") or string_text(s)
  else
    text = string_text("<" .. t .. ">")
  end
  n = n + 1
  out[n] = text
end

local function encode_here(v)
  busy = true
  encode_value(v, 0)
  local text = concat(out, "", 1, n)
  for i = 1, n do
    out[i] = nil
  end
  n, busy = 0, false
  return text
end

-- Any Lua value as JSON text (see the top of this file).
function _M.encode(v)
  if busy then
    -- From a __tostring inside an encode: the outer call keeps its own.
    local o, k, s = out, n, seen
    out, n, seen = {}, 0, {}
    local ok, text = pcall(encode_here, v)
    out, n, seen, busy = o, k, s, true
    return ok and text or '"<error>"'
  end
  return encode_here(v)
end

-- The value of JSON text s, or nil and the error. Objects and arrays are
-- tables; JSON null is json.null.
function _M.decode(s)
  local ok, v = pcall(cjson_decode, s)
  if not ok then
    return nil, v
  end
  return v
end

_M.null = cjson.null

return _M
