-- Telemetry: events emitted by breakers, retries and health monitors, the
-- handlers attached to them, and three sinks (a logger, a JSON-lines
-- writer and a Prometheus endpoint).
--
-- The model is Erlang's :telemetry. An event is a list of strings
-- ({"snakepit","circuit_breaker","opened"}); handlers are attached under an
-- id to one event or many, and called as handler(event, measurements,
-- metadata, config) in the emitter, in the order they were attached. A
-- handler that raises is detached and a one-line warning is printed; the
-- emitter never sees the error.
--
-- The trap: emitting must cost nothing when nobody listens, since the
-- breaker's call() is a hot path. Emit sites therefore check
-- `enabled[name]` (one table lookup with a constant key) before they build
-- a single table, and the breaker checks `observed["...call"]` once per
-- call for its four per-call events. Both tables are updated in place on
-- every attach and detach, so emit sites may keep them in upvalues.

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local require = require
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local floor = math.floor
local huge = math.huge
local byte = string.byte
local char = string.char
local find = string.find
local gsub = string.gsub
local sub = string.sub
local match = string.match
local upper = string.upper
local format = string.format
local concat = table.concat
local sort = table.sort
local io_open = io.open
local io_stderr = io.stderr
local io_stdout = io.stdout
local os_time = os.time

local check = require "sprun.check"
local options = require "sprun.options"

local describe = check.describe

local _M = {
  -- enabled[name] is true while a handler is attached to the event `name`
  -- (the event's strings joined with "."). Emit sites read it before
  -- building measurements and metadata.
  enabled = {},
  -- observed[name] is true while a handler is attached to `name` or to an
  -- event that `name` is a prefix of ("snakepit.circuit_breaker.call" while
  -- any call.* event has a handler).
  observed = {},
}

local enabled = _M.enabled
local observed = _M.observed

--- The events sprun emits --------------------------------------------------

-- Each with the level the logger and the JSON-lines sink give it: the
-- per-call events are "debug" and are attached by those sinks only at
-- that level, so that a sink at "info" keeps the breaker on its fast path.
local EVENTS = {
  { "snakepit.circuit_breaker.opened", "warning" },
  { "snakepit.circuit_breaker.closed", "info" },
  { "snakepit.circuit_breaker.half_open", "info" },
  { "snakepit.circuit_breaker.forced_open", "info" },
  { "snakepit.circuit_breaker.disabled", "info" },
  { "snakepit.circuit_breaker.isolated", "info" },
  { "snakepit.circuit_breaker.call.allowed", "debug" },
  { "snakepit.circuit_breaker.call.rejected", "debug" },
  { "snakepit.circuit_breaker.call.success", "debug" },
  { "snakepit.circuit_breaker.call.failure", "debug" },
  { "snakepit.retry.attempt", "info" },
  { "snakepit.retry.backoff", "debug" },
  { "snakepit.retry.success", "info" },
  { "snakepit.retry.exhausted", "warning" },
  { "snakepit.worker.crash", "info" },
}

local LEVELS = { debug = 1, info = 2, warning = 3 }

local function split(name)
  local list = {}
  for part in name:gmatch("[^.]+") do
    list[#list + 1] = part
  end
  return list
end

-- The event lists handed to handlers, one per name, made once. Handlers
-- must treat them (and measurements and metadata) as read-only.
local event_lists = {}
-- event list -> name, for lists sprun made (handlers look names up here).
local list_names = setmetatable({}, { __mode = "k" })

local function event_list(name)
  local list = event_lists[name]
  if list == nil then
    list = split(name)
    event_lists[name] = list
    list_names[list] = name
  end
  return list
end

-- The dotted name of an event list.
local function event_name(event)
  return list_names[event] or concat(event, ".")
end
_M.event_name = event_name

-- The catalogue for users: { name, event, level } (copies: changing
-- them changes nothing sprun emits).
_M.EVENTS = {}
for i, e in ipairs(EVENTS) do
  event_list(e[1])
  _M.EVENTS[i] = { name = e[1], event = split(e[1]), level = e[2] }
end

-- The names of sprun's events at `level` or above.
local function events_at(level)
  local names, min = {}, LEVELS[level]
  for _, e in ipairs(EVENTS) do
    if LEVELS[e[2]] >= min then
      names[#names + 1] = e[1]
    end
  end
  return names
end

--- Handlers -----------------------------------------------------------------

-- name -> list of records { id, event, name, handler, config, seq }, in the
-- order attached. A list is never changed once made (attach and detach
-- make a new one), so a dispatch in progress runs over the list it began
-- with, whatever its handlers attach or detach.
local by_name = {}
-- id -> list of its records.
local by_id = {}
local next_seq = 0
-- id -> function run once when the id is detached (a sink's cleanup).
local cleanups = {}

local function refresh_flags()
  for k in pairs(enabled) do
    enabled[k] = nil
  end
  for k in pairs(observed) do
    observed[k] = nil
  end
  for name in pairs(by_name) do
    enabled[name] = true
    observed[name] = true
    local pos = 1
    while true do
      local dot = find(name, ".", pos, true)
      if dot == nil then
        break
      end
      observed[sub(name, 1, dot - 1)] = true
      pos = dot + 1
    end
  end
end

-- Misuse checks; each raises at the level of the API function's caller
-- (1: this function, 2: the API function, 3: its caller).

local EVENT_EXPECTED = "must be a non-empty list of non-empty strings "
                       .. "without '.'"

local function bad_event(fname, what, event)
  if type(event) ~= "table" or event[1] == nil then
    return format("%s: %s %s, got %s", fname, what, EVENT_EXPECTED,
                  describe(event))
  end
  local n = #event
  for k in pairs(event) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      return format("%s: %s %s, got key %s", fname, what, EVENT_EXPECTED,
                    describe(k))
    end
  end
  for i = 1, n do
    local v = event[i]
    if type(v) ~= "string" or v == "" or find(v, ".", 1, true) then
      return format("%s: %s[%d] must be a non-empty string without '.', "
                    .. "got %s", fname, what, i, describe(v))
    end
  end
  return nil
end

local function check_event(fname, what, event)
  local msg = bad_event(fname, what, event)
  if msg then
    error(msg, 3)
  end
end

local function check_id(fname, id)
  local t = type(id)
  if (t ~= "string" or id == "") and (t ~= "number" or id ~= id) then
    error(fname .. ": id must be a non-empty string or a number, got "
          .. describe(id), 3)
  end
  if by_id[id] ~= nil then
    error(format("%s: id %s is already attached (detach it first)", fname,
                 describe(id)), 3)
  end
end

local function check_handler(fname, handler)
  if type(handler) ~= "function" then
    error(fname .. ": handler must be a function, got " .. describe(handler),
          3)
  end
end

local function add(id, events, handler, config)
  local records = {}
  for _, event in ipairs(events) do
    local name = concat(event, ".")
    next_seq = next_seq + 1
    local r = {
      id = id, event = event_list(name), name = name, handler = handler,
      config = config, seq = next_seq,
    }
    records[#records + 1] = r
    local old = by_name[name] or {}
    local list = {}
    for i = 1, #old do
      list[i] = old[i]
    end
    list[#list + 1] = r
    by_name[name] = list
  end
  by_id[id] = records
  refresh_flags()
end

-- Attaches handler to one event under `id`; config is passed back to it.
function _M.attach(id, event, handler, config)
  check_id("telemetry.attach", id)
  check_event("telemetry.attach", "event", event)
  check_handler("telemetry.attach", handler)
  add(id, { event }, handler, config)
  return true
end

-- Attaches handler to several events under one `id`.
function _M.attach_many(id, events, handler, config)
  check_id("telemetry.attach_many", id)
  if type(events) ~= "table" or events[1] == nil then
    error("telemetry.attach_many: events must be a non-empty list of "
          .. "events, got " .. describe(events), 2)
  end
  local seen, list = {}, {}
  for i = 1, #events do
    check_event("telemetry.attach_many", "events[" .. i .. "]", events[i])
    local name = concat(events[i], ".")
    if not seen[name] then
      seen[name] = true
      list[#list + 1] = events[i]
    end
  end
  check_handler("telemetry.attach_many", handler)
  add(id, list, handler, config)
  return true
end

-- Detaches every handler attached under `id`; true if there was one.
function _M.detach(id)
  local records = by_id[id]
  if records == nil then
    return false
  end
  by_id[id] = nil
  for _, r in ipairs(records) do
    local old, list = by_name[r.name], {}
    for i = 1, #old do
      if old[i] ~= r then
        list[#list + 1] = old[i]
      end
    end
    by_name[r.name] = list[1] ~= nil and list or nil
  end
  refresh_flags()
  local cleanup = cleanups[id]
  if cleanup ~= nil then
    cleanups[id] = nil
    pcall(cleanup)
  end
  return true
end

-- The handlers whose event starts with `prefix` (a list of strings; {} or
-- nil for all), in the order attached: { id, event, handler, config }.
function _M.list_handlers(prefix)
  if prefix == nil then
    prefix = {}
  end
  if type(prefix) ~= "table" then
    error("telemetry.list_handlers: prefix must be a list of strings, got "
          .. describe(prefix), 2)
  end
  for i = 1, #prefix do
    if type(prefix[i]) ~= "string" then
      error(format("telemetry.list_handlers: prefix[%d] must be a string, "
                   .. "got %s", i, describe(prefix[i])), 2)
    end
  end
  local all = {}
  for _, records in pairs(by_id) do
    for _, r in ipairs(records) do
      local ok = #prefix <= #r.event
      for i = 1, #prefix do
        ok = ok and r.event[i] == prefix[i]
      end
      if ok then
        all[#all + 1] = r
      end
    end
  end
  sort(all, function(a, b) return a.seq < b.seq end)
  local out = {}
  for i, r in ipairs(all) do
    local event = {}
    for k = 1, #r.event do
      event[k] = r.event[k]
    end
    out[i] = { id = r.id, event = event, handler = r.handler,
               config = r.config }
  end
  return out
end

-- One line, whatever the error value holds.
local function one_line(v)
  local ok, s = pcall(tostring, v)
  if not ok then
    s = "(error object is a " .. type(v) .. " value)"
  end
  return (gsub(s, "%s*\n%s*", " "))
end

local function failed(r, err)
  -- Only if it is still attached: a handler may fail on several events
  -- of one dispatch, or have been attached again under the same id.
  local records = by_id[r.id]
  local attached = false
  for i = 1, records and #records or 0 do
    attached = attached or records[i] == r
  end
  if not attached then
    return
  end
  _M.detach(r.id)
  pcall(function()
    io_stderr:write(format("sprun: telemetry handler %s for %s raised an "
                           .. "error and was detached: %s\n",
                           describe(r.id), r.name, one_line(err)))
    io_stderr:flush()
  end)
end

local function dispatch(list, event, measurements, metadata)
  for i = 1, #list do
    local r = list[i]
    local ok, err = pcall(r.handler, event, measurements, metadata, r.config)
    if not ok then
      failed(r, err)
    end
  end
end

-- Emits an event sprun knows by name (no checks: the emit sites are
-- sprun's own, and have looked at enabled[name] already).
function _M.emit(name, measurements, metadata)
  local list = by_name[name]
  if list ~= nil then
    dispatch(list, event_lists[name] or event_list(name), measurements,
             metadata)
  end
end
local emit = _M.emit

-- Emits `event` to the handlers attached to it. measurements and metadata
-- are tables (nil for an empty one).
-- An event list execute() has checked -> { name, n, parts... }: the same
-- list coming again with the same parts skips the check and the join.
-- (Keys added to it since are not looked at again; its parts are.)
local executed = setmetatable({}, { __mode = "k" })

local function executed_name(event)
  local seen = executed[event]
  if seen ~= nil then
    local n = seen.n
    if #event == n then
      local same = true
      for i = 1, n do
        if event[i] ~= seen[i] then
          same = false
          break
        end
      end
      if same then
        return seen.name
      end
    end
  end
  local msg = bad_event("telemetry.execute", "event", event)
  if msg then
    error(msg, 3)
  end
  local name = concat(event, ".")
  seen = { name = name, n = #event }
  for i = 1, seen.n do
    seen[i] = event[i]
  end
  executed[event] = seen
  return name
end

function _M.execute(event, measurements, metadata)
  local name = executed_name(event)
  if measurements ~= nil and type(measurements) ~= "table" then
    check.arg_error("telemetry.execute", "measurements",
                    "must be a table or nil", measurements)
  end
  if metadata ~= nil and type(metadata) ~= "table" then
    check.arg_error("telemetry.execute", "metadata", "must be a table or nil",
                    metadata)
  end
  local list = by_name[name]
  if list ~= nil then
    dispatch(list, event, measurements or {}, metadata or {})
  end
end

--- Retry events -------------------------------------------------------------

-- Called by the executor's retry loop; each costs one table lookup while
-- nothing is attached. `started_ns` is sprun.hrtime() when the first
-- attempt began. `pool` defaults to "default", as a health monitor's does.

local RETRY_ATTEMPT = "snakepit.retry.attempt"
local RETRY_BACKOFF = "snakepit.retry.backoff"
local RETRY_SUCCESS = "snakepit.retry.success"
local RETRY_EXHAUSTED = "snakepit.retry.exhausted"

local hrtime

-- started_ns is false when the loop started with no retry handler attached
-- (it then reads no clock): a handler attached since sees 0.
local function elapsed_ms(started_ns)
  if not started_ns then
    return 0
  end
  if hrtime == nil then
    hrtime = require("sprun.clock").hrtime
  end
  return (hrtime() - started_ns) / 1e6
end

-- Attempt number `attempt` failed; the next one starts in delay_ms.
function _M.retry_attempt(pool, operation, attempt, delay_ms)
  if enabled[RETRY_ATTEMPT] then
    emit(RETRY_ATTEMPT, { attempt = attempt, delay_ms = delay_ms },
         { pool = pool or "default", operation = operation })
  end
  if enabled[RETRY_BACKOFF] then
    emit(RETRY_BACKOFF, { delay_ms = delay_ms },
         { pool = pool or "default", attempt = attempt })
  end
end

-- Attempt number `attempts` succeeded.
function _M.retry_success(pool, attempts, started_ns)
  if enabled[RETRY_SUCCESS] then
    emit(RETRY_SUCCESS, { attempts = attempts,
                          total_duration_ms = elapsed_ms(started_ns) },
         { pool = pool or "default" })
  end
end

-- The attempts ran out; last_error is the error of the last one.
function _M.retry_exhausted(pool, attempts, started_ns, last_error)
  if enabled[RETRY_EXHAUSTED] then
    emit(RETRY_EXHAUSTED, { attempts = attempts,
                            total_duration_ms = elapsed_ms(started_ns) },
         { pool = pool or "default", last_error = last_error })
  end
end

--- Live breakers and monitors -----------------------------------------------

-- Weak, so that registering keeps nothing alive; the value orders them.
local breakers = setmetatable({}, { __mode = "k" })
local monitors = setmetatable({}, { __mode = "k" })
local next_registered = 0

function _M._register_breaker(cb)
  next_registered = next_registered + 1
  breakers[cb] = next_registered
end

function _M._register_monitor(hm)
  next_registered = next_registered + 1
  monitors[hm] = next_registered
end

local function in_order(set)
  local list = {}
  for obj in pairs(set) do
    list[#list + 1] = obj
  end
  sort(list, function(a, b) return set[a] < set[b] end)
  return list
end

-- The live breakers and monitors, oldest first.
function _M.breakers()
  return in_order(breakers)
end

function _M.monitors()
  return in_order(monitors)
end

--- JSON ---------------------------------------------------------------------

local ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}
for i = 0, 31 do
  local c = char(i)
  if ESCAPES[c] == nil then
    ESCAPES[c] = format("\\u%04x", i)
  end
end
ESCAPES["\127"] = "\\u007f"

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- s with every byte that is not part of a valid UTF-8 sequence replaced
-- by U+FFFD, so that the output is always valid JSON text.
local function valid_utf8(s)
  if not find(s, "[\128-\255]") then
    return s
  end
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
-- names, and a pattern match costs more than the rest of the encoding.
local string_texts, string_count = {}, 0

local function json_string(s)
  local text = string_texts[s]
  if text ~= nil then
    return text
  end
  if find(s, '[%c"\\\128-\255]') then
    text = '"' .. gsub(valid_utf8(s), '[%c"\\]', ESCAPES) .. '"'
  else
    text = '"' .. s .. '"'
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

-- The shortest text that reads back as the same number; nil for nan and
-- the infinities, which JSON cannot hold.
local function number_text(v)
  if v ~= v or v == huge or v == -huge then
    return nil
  end
  if v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then
    return format("%.0f", v)
  end
  for digits = 15, 17 do
    local s = format("%." .. digits .. "g", v)
    if tonumber(s) == v then
      return s
    end
  end
  return format("%.17g", v)
end

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

local encode_value

local function encode_table(t, out, depth, seen)
  local mt = getmetatable(t)
  if mt ~= nil and type(mt) == "table" and rawget(mt, "__tostring") then
    -- Error objects and the like: their string form.
    local ok, s = pcall(tostring, t)
    out[#out + 1] = json_string(ok and type(s) == "string" and s
                                or "<" .. type(t) .. ">")
    return
  end
  if seen[t] then
    out[#out + 1] = '"<cycle>"'
    return
  end
  if depth > MAX_DEPTH then
    out[#out + 1] = '"<too deep>"'
    return
  end
  seen[t] = true
  local n, count = #t, 0
  for _ in pairs(t) do
    count = count + 1
  end
  if n > 0 and count == n then
    out[#out + 1] = "["
    for i = 1, n do
      if i > 1 then
        out[#out + 1] = ","
      end
      encode_value(t[i], out, depth + 1, seen)
    end
    out[#out + 1] = "]"
  elseif count == 0 then
    out[#out + 1] = "{}"
  else
    -- Keys as strings, sorted; a key that is not a string is written as
    -- its text, and the first of two keys with the same text wins.
    local keys, by_key = {}, nil
    for k, v in pairs(t) do
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
      out[#out + 1] = sep
      out[#out + 1] = json_string(key)
      out[#out + 1] = ":"
      encode_value(v, out, depth + 1, seen)
      sep = ","
    end
    out[#out + 1] = "}"
  end
  seen[t] = nil
end

function encode_value(v, out, depth, seen)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "number" then
    out[#out + 1] = number_text(v) or "null"
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "nil" then
    out[#out + 1] = "null"
  elseif t == "table" then
    encode_table(v, out, depth, seen)
  elseif t == "cdata" then
    -- 64-bit integers print as 123LL / 123ULL.
    local s = tostring(v)
    local digits = match(s, "^(%-?%d+)U?LL$")
    out[#out + 1] = digits or json_string(s)
  else
    out[#out + 1] = json_string("<" .. t .. ">")
  end
end

-- Any Lua value as JSON text. Tables with consecutive keys 1..n are
-- arrays, others objects with sorted keys; values with a __tostring
-- (error objects) are their string form; functions, cycles and nan are
-- written as placeholders instead of raising.
-- Tables being encoded; empty between calls (each table leaves as its
-- encoding ends), so one serves every call, nested ones included.
local encoding = {}

function _M.json_encode(v)
  local out = {}
  encode_value(v, out, 0, encoding)
  return concat(out)
end
local json_encode = _M.json_encode

--- Sinks --------------------------------------------------------------------

-- Milliseconds since the epoch. The monotonic clock sprun reads says
-- nothing of the date, so the offset between the two is asked of libc's
-- gettimeofday, again once a second so that a clock set meanwhile is
-- followed (should that declaration clash with one the program made,
-- whole seconds are the fallback). The monotonic read is what an event
-- costs: gettimeofday's 64-bit fields are slow to read from Lua.
local wall_ms
do
  local ok, ffi = pcall(require, "ffi")
  local tv
  if ok and pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_usec; } sp_telemetry_timeval_t;
      int gettimeofday(sp_telemetry_timeval_t *tv, void *tz);
    ]]) then
    tv = ffi.new("sp_telemetry_timeval_t")
  end
  local C = ok and ffi.C
  local function epoch_ms()
    if tv ~= nil and C.gettimeofday(tv, nil) == 0 then
      return tonumber(tv.tv_sec) * 1000 + floor(tonumber(tv.tv_usec) / 1000)
    end
    return os_time() * 1000
  end
  local monotonic_ms, offset, checked = nil, 0, -huge
  wall_ms = function()
    if monotonic_ms == nil then
      monotonic_ms = require("sprun.ffi").C.sp_clock_ms
    end
    local mono = monotonic_ms()
    if mono - checked >= 1000 then
      offset = epoch_ms() - mono
      checked = mono
    end
    return mono + offset
  end
end
_M._wall_ms = wall_ms

local next_sink = 0

local function sink_id(kind)
  next_sink = next_sink + 1
  return format("sprun.%s.%d", kind, next_sink)
end

local function writable(v)
  return (type(v) == "userdata" or type(v) == "table")
         and pcall(function() return v.write end)
         and type(v.write) == "function"
end

local function check_writable(v)
  if writable(v) then
    return nil
  end
  return "must be a file (anything with a write method)"
end

local function lists(names)
  local out = {}
  for i, name in ipairs(names) do
    out[i] = event_list(name)
  end
  return out
end

-- The logger: one line per event ------------------------------------------

local function log_number(v)
  if v % 1 == 0 then
    return format("%.0f", v)
  end
  return (gsub(gsub(format("%.3f", v), "0+$", ""), "%.$", ""))
end

local function log_value(v)
  local t = type(v)
  if t == "number" then
    return log_number(v)
  end
  local s = one_line(v)
  if s == "" or find(s, '[%s"=]') then
    return format("%q", s)
  end
  return s
end

-- name -> what the line says, then the fields as { label, "m" or "md",
-- key } (m: measurements, md: metadata); absent fields are left out.
local LOG_LINES = {
  ["snakepit.circuit_breaker.opened"] = { "circuit breaker OPENED",
    { "pool", "md", "pool" }, { "failures", "m", "failure_count" } },
  ["snakepit.circuit_breaker.closed"] = { "circuit breaker CLOSED",
    { "pool", "md", "pool" } },
  ["snakepit.circuit_breaker.half_open"] = { "circuit breaker HALF_OPEN",
    { "pool", "md", "pool" } },
  ["snakepit.circuit_breaker.forced_open"] = { "circuit breaker FORCED_OPEN",
    { "pool", "md", "pool" } },
  ["snakepit.circuit_breaker.disabled"] = { "circuit breaker DISABLED",
    { "pool", "md", "pool" } },
  ["snakepit.circuit_breaker.isolated"] = { "circuit breaker ISOLATED",
    { "pool", "md", "pool" } },
  ["snakepit.circuit_breaker.call.allowed"] = { "circuit breaker call "
    .. "ALLOWED", { "pool", "md", "pool" }, { "state", "md", "state" } },
  ["snakepit.circuit_breaker.call.rejected"] = { "circuit breaker call "
    .. "REJECTED", { "pool", "md", "pool" }, { "state", "md", "state" } },
  ["snakepit.circuit_breaker.call.success"] = { "circuit breaker call "
    .. "SUCCEEDED", { "pool", "md", "pool" }, { "state", "md", "state" },
    { "duration_ms", "m", "duration_ms" } },
  ["snakepit.circuit_breaker.call.failure"] = { "circuit breaker call "
    .. "FAILED", { "pool", "md", "pool" }, { "state", "md", "state" },
    { "duration_ms", "m", "duration_ms" }, { "error", "md", "error" } },
  ["snakepit.retry.attempt"] = { "retry attempt FAILED",
    { "pool", "md", "pool" }, { "operation", "md", "operation" },
    { "attempt", "m", "attempt" }, { "delay_ms", "m", "delay_ms" } },
  ["snakepit.retry.backoff"] = { "retry BACKOFF", { "pool", "md", "pool" },
    { "attempt", "md", "attempt" }, { "delay_ms", "m", "delay_ms" } },
  ["snakepit.retry.success"] = { "retry SUCCEEDED", { "pool", "md", "pool" },
    { "attempts", "m", "attempts" },
    { "duration_ms", "m", "total_duration_ms" } },
  ["snakepit.retry.exhausted"] = { "retry EXHAUSTED",
    { "pool", "md", "pool" }, { "attempts", "m", "attempts" },
    { "duration_ms", "m", "total_duration_ms" },
    { "error", "md", "last_error" } },
  ["snakepit.worker.crash"] = { "worker CRASHED", { "pool", "md", "pool" },
    { "worker", "md", "worker_id" }, { "reason", "md", "reason" } },
}

local LEVEL_OF = {}
for _, e in ipairs(EVENTS) do
  LEVEL_OF[e[1]] = e[2]
end

local function sorted_fields(t, prefix, out)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = tostring(k)
  end
  sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    if v == nil then
      v = t[tonumber(k)]
    end
    out[#out + 1] = prefix .. k .. "=" .. log_value(v)
  end
end

-- The line the logger writes for an event, without its newline.
function _M.log_line(event, measurements, metadata)
  local name = event_name(event)
  local level = LEVEL_OF[name] or "info"
  local spec = LOG_LINES[name]
  local out = { "[" .. level .. "]" }
  if spec == nil then
    out[2] = name
    sorted_fields(measurements or {}, "", out)
    sorted_fields(metadata or {}, "", out)
    return concat(out, " ")
  end
  out[2] = spec[1]
  for i = 2, #spec do
    local f = spec[i]
    local src = f[2] == "m" and measurements or metadata
    local v = src and src[f[3]]
    if v ~= nil then
      out[#out + 1] = f[1] .. "=" .. log_value(v)
    end
  end
  return concat(out, " ")
end
local log_line = _M.log_line

local parse_logger = options.parser("telemetry.logger", {
  level = { "choice", values = { "debug", "info", "warning" },
            default = "info" },
  io = { check = check_writable },
})

local function log_handler(event, measurements, metadata, out)
  out:write(log_line(event, measurements, metadata), "\n")
  if out.flush then
    out:flush()
  end
end

-- Writes one readable line per sprun event at `level` or above to `io`
-- (io.stderr by default). Returns the id to detach it with.
function _M.logger(opts)
  local o = parse_logger(opts)
  local id = sink_id("logger")
  _M.attach_many(id, lists(events_at(o.level)), log_handler,
                 o.io or io_stderr)
  return id
end

-- JSON lines: one object per event ----------------------------------------

local parse_json_lines = options.parser("telemetry.json_lines", {
  level = { "choice", values = { "debug", "info", "warning" },
            default = "info" },
})

-- The JSON object written for an event (without its newline).
function _M.json_line(event, measurements, metadata)
  return '{"timestamp":' .. format("%.0f", wall_ms()) .. ',"event":'
         .. json_string(event_name(event)) .. ',"measurements":'
         .. json_encode(measurements or {}) .. ',"metadata":'
         .. json_encode(metadata or {}) .. "}"
end
local json_line = _M.json_line

local function json_handler(event, measurements, metadata, out)
  -- One write per line, flushed at once: a line is never half written
  -- when the process stops, however it stops.
  out:write(json_line(event, measurements, metadata) .. "\n")
  if out.flush then
    out:flush()
  end
end

-- Writes every sprun event at `level` (default "info") or above as one
-- JSON object per line to `target`: a file, or a path opened for
-- appending. Returns the id to detach it with (which closes a file it
-- opened), or nil, err if the path cannot be opened.
function _M.json_lines(target, opts)
  if type(target) ~= "string" and not writable(target) then
    check.arg_error("telemetry.json_lines", "target",
                    "must be a path or a file", target)
  end
  local o = parse_json_lines(opts)
  local out, owned = target, false
  if type(target) == "string" then
    local f, err = io_open(target, "a")
    if f == nil then
      return nil, require("sprun.errors").error("io_error", err,
                                                { path = target })
    end
    out, owned = f, true
  end
  local id = sink_id("json_lines")
  _M.attach_many(id, lists(events_at(o.level)), json_handler, out)
  if owned then
    cleanups[id] = function() out:close() end
  end
  return id
end

--- Prometheus ---------------------------------------------------------------

-- Bucket bounds of the call duration histogram, in seconds.
local BUCKETS = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1, 2.5, 5, 10 }
local BUCKET_TEXT = {}
for i, b in ipairs(BUCKETS) do
  BUCKET_TEXT[i] = number_text(b)
end

local STATES = { "closed", "open", "half_open", "forced_open", "disabled",
                 "isolated" }
local TRANSITION_STATE = {
  ["snakepit.circuit_breaker.opened"] = "open",
  ["snakepit.circuit_breaker.closed"] = "closed",
  ["snakepit.circuit_breaker.half_open"] = "half_open",
  ["snakepit.circuit_breaker.forced_open"] = "forced_open",
  ["snakepit.circuit_breaker.disabled"] = "disabled",
  ["snakepit.circuit_breaker.isolated"] = "isolated",
}

local PROMETHEUS_EVENTS = {
  "snakepit.circuit_breaker.opened", "snakepit.circuit_breaker.closed",
  "snakepit.circuit_breaker.half_open",
  "snakepit.circuit_breaker.forced_open", "snakepit.circuit_breaker.disabled",
  "snakepit.circuit_breaker.isolated",
  "snakepit.circuit_breaker.call.rejected",
  "snakepit.circuit_breaker.call.success",
  "snakepit.circuit_breaker.call.failure",
  "snakepit.retry.attempt", "snakepit.retry.success",
  "snakepit.retry.exhausted", "snakepit.worker.crash",
}

local function new_collector()
  return {
    transitions = {},  -- pool -> state -> count
    rejected = {},     -- pool -> count
    attempts = {},
    successes = {},
    exhausted = {},
    crashes = {},
    durations = {},    -- pool -> { counts = { per bucket }, sum, count }
  }
end

local function pool_label(md)
  local pool = md and md.pool
  if pool == nil then
    return "default"
  end
  return tostring(pool)
end

local function bump(t, key)
  t[key] = (t[key] or 0) + 1
end

local function observe(c, pool, seconds)
  local h = c.durations[pool]
  if h == nil then
    h = { counts = {}, sum = 0, count = 0 }
    for i = 1, #BUCKETS do
      h.counts[i] = 0
    end
    c.durations[pool] = h
  end
  local counts = h.counts
  for i = #BUCKETS, 1, -1 do
    if seconds > BUCKETS[i] then
      break
    end
    counts[i] = counts[i] + 1
  end
  h.sum = h.sum + seconds
  h.count = h.count + 1
end

local COLLECT = {
  ["snakepit.circuit_breaker.call.rejected"] = function(c, m, md)
    bump(c.rejected, pool_label(md))
  end,
  ["snakepit.circuit_breaker.call.success"] = function(c, m, md)
    observe(c, pool_label(md), (tonumber(m.duration_ms) or 0) / 1000)
  end,
  ["snakepit.retry.attempt"] = function(c, m, md)
    bump(c.attempts, pool_label(md))
  end,
  ["snakepit.retry.success"] = function(c, m, md)
    bump(c.successes, pool_label(md))
  end,
  ["snakepit.retry.exhausted"] = function(c, m, md)
    bump(c.exhausted, pool_label(md))
  end,
  ["snakepit.worker.crash"] = function(c, m, md)
    bump(c.crashes, pool_label(md))
  end,
}
COLLECT["snakepit.circuit_breaker.call.failure"] =
  COLLECT["snakepit.circuit_breaker.call.success"]
for name, state in pairs(TRANSITION_STATE) do
  COLLECT[name] = function(c, m, md)
    local pool = pool_label(md)
    local by_state = c.transitions[pool]
    if by_state == nil then
      by_state = {}
      c.transitions[pool] = by_state
    end
    bump(by_state, state)
  end
end

local function collect_handler(event, measurements, metadata, c)
  local f = COLLECT[event_name(event)]
  if f then
    f(c, measurements, metadata)
  end
end

local function label_value(v)
  return (gsub(gsub(gsub(v, "\\", "\\\\"), "\n", "\\n"), '"', '\\"'))
end

local function sample_value(v)
  if v == huge then
    return "+Inf"
  elseif v == -huge then
    return "-Inf"
  elseif v ~= v then
    return "NaN"
  end
  return number_text(v)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  sort(keys)
  return keys
end

-- The gauges' view of the live breakers and monitors: pool -> value, the
-- most recently made object winning when two share a pool name.
local function breaker_states()
  local states = {}
  for _, cb in ipairs(_M.breakers()) do
    local ok, state = pcall(cb.state, cb)
    if ok then
      states[cb._name] = state
    end
  end
  return states
end

local function monitor_stats()
  local stats = {}
  for _, hm in ipairs(_M.monitors()) do
    local ok, s = pcall(hm.stats, hm)
    if ok then
      stats[s.pool] = s
    end
  end
  return stats
end

-- The metrics as Prometheus text exposition format 0.0.4.
local function render(c)
  local out = {}
  local function family(name, kind, help)
    out[#out + 1] = "# HELP " .. name .. " " .. help .. "\n"
    out[#out + 1] = "# TYPE " .. name .. " " .. kind .. "\n"
  end
  local function sample(name, labels, v)
    out[#out + 1] = name .. "{" .. labels .. "} " .. sample_value(v) .. "\n"
  end
  local function pool_only(pool)
    return 'pool="' .. label_value(pool) .. '"'
  end
  local function per_pool(name, counts)
    for _, pool in ipairs(sorted_keys(counts)) do
      sample(name, pool_only(pool), counts[pool])
    end
  end

  local states = breaker_states()
  local stats = monitor_stats()
  -- Counters of the breakers alive start at 0, so rates work from the
  -- first scrape.
  for pool in pairs(states) do
    c.transitions[pool] = c.transitions[pool] or {}
    c.rejected[pool] = c.rejected[pool] or 0
  end
  for pool in pairs(stats) do
    c.crashes[pool] = c.crashes[pool] or 0
  end

  family("sprun_circuit_breaker_state", "gauge",
         "Circuit breaker state: 1 for the current state, 0 for the others.")
  for _, pool in ipairs(sorted_keys(states)) do
    for _, state in ipairs(STATES) do
      sample("sprun_circuit_breaker_state", pool_only(pool) .. ',state="'
             .. state .. '"', states[pool] == state and 1 or 0)
    end
  end

  family("sprun_circuit_breaker_transitions_total", "counter",
         "Circuit breaker transitions, by the state entered.")
  for _, pool in ipairs(sorted_keys(c.transitions)) do
    local by_state = c.transitions[pool]
    for _, state in ipairs(STATES) do
      sample("sprun_circuit_breaker_transitions_total", pool_only(pool)
             .. ',state="' .. state .. '"', by_state[state] or 0)
    end
  end

  family("sprun_circuit_breaker_rejected_calls_total", "counter",
         "Calls rejected by a circuit breaker without running.")
  per_pool("sprun_circuit_breaker_rejected_calls_total", c.rejected)

  local hist = "sprun_circuit_breaker_call_duration_seconds"
  family(hist, "histogram",
         "Duration of the calls a circuit breaker admitted, in seconds.")
  for _, pool in ipairs(sorted_keys(c.durations)) do
    local h, labels = c.durations[pool], pool_only(pool)
    for i = 1, #BUCKETS do
      sample(hist .. "_bucket", labels .. ',le="' .. BUCKET_TEXT[i] .. '"',
             h.counts[i])
    end
    sample(hist .. "_bucket", labels .. ',le="+Inf"', h.count)
    sample(hist .. "_sum", labels, h.sum)
    sample(hist .. "_count", labels, h.count)
  end

  family("sprun_retry_attempts_total", "counter",
         "Failed attempts that the executor retried.")
  per_pool("sprun_retry_attempts_total", c.attempts)
  family("sprun_retry_successes_total", "counter",
         "Operations run with retry that succeeded.")
  per_pool("sprun_retry_successes_total", c.successes)
  family("sprun_retry_exhausted_total", "counter",
         "Operations run with retry that failed on their last attempt.")
  per_pool("sprun_retry_exhausted_total", c.exhausted)

  family("sprun_worker_crashes_total", "counter",
         "Worker crashes recorded by health monitors.")
  per_pool("sprun_worker_crashes_total", c.crashes)

  family("sprun_health_crashes_in_window", "gauge",
         "Crashes within each health monitor's crash window.")
  for _, pool in ipairs(sorted_keys(stats)) do
    sample("sprun_health_crashes_in_window", pool_only(pool),
           stats[pool].crashes_in_window)
  end
  family("sprun_health_healthy", "gauge",
         "1 while a health monitor's pool is healthy, else 0.")
  for _, pool in ipairs(sorted_keys(stats)) do
    sample("sprun_health_healthy", pool_only(pool),
           stats[pool].is_healthy and 1 or 0)
  end
  return concat(out)
end

-- HTTP ----------------------------------------------------------------------

-- A request head larger than this is refused; one that has not arrived
-- within the endpoint's request_timeout_ms is dropped, so that an idle
-- client never holds the loop (or the process) open for long.
local MAX_HEAD = 8192
local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

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

local function respond(conn, status, body, head_only, extra)
  local text = format("HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                      .. "Content-Length: %d\r\nConnection: close\r\n%s\r\n",
                      status, REASONS[status],
                      status == 200 and CONTENT_TYPE
                      or "text/plain; charset=utf-8", #body, extra or "")
  if not head_only then
    text = text .. body
  end
  conn:write(text)
end

local function serve_request(endpoint, conn)
  local sched = require "sprun.sched"
  local reader = sched.spawn(read_head, conn)
  reader.quiet = true
  local head, why = reader:await(endpoint.request_timeout_ms)
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
    return respond(conn, 405, "method not allowed\n", false,
                   "Allow: GET, HEAD\r\n")
  end
  if path ~= endpoint.path then
    return respond(conn, 404, "not found\n", method == "HEAD")
  end
  respond(conn, 200, render(endpoint.collector), method == "HEAD")
end

local function connection_handler(endpoint)
  return function(conn)
    local ok, err = pcall(serve_request, endpoint, conn)
    if not ok then
      -- A cancellation (the server's task is stopping) goes on up; any
      -- other failure is answered, never raised into the loop.
      require("sprun.sched").reraise_cancel(err)
      pcall(respond, conn, 500, "internal error\n")
    end
  end
end

local Endpoint = {}
Endpoint.__index = Endpoint

-- The metrics text the endpoint serves.
function Endpoint:metrics()
  check.self(self, Endpoint, "telemetry.prometheus.metrics",
             "a Prometheus endpoint")
  return render(self.collector)
end

-- Stops serving and collecting. Idempotent.
function Endpoint:close()
  check.self(self, Endpoint, "telemetry.prometheus.close",
             "a Prometheus endpoint")
  if not self.closed then
    self.closed = true
    _M.detach(self.id)
    self.server:close()
  end
  return true
end

local parse_prometheus = options.parser("telemetry.prometheus", {
  host = { "string", default = "127.0.0.1" },
  port = { "integer", min = 0, limit = 65535, default = 9464 },
  request_timeout_ms = { "integer", min = 1, limit = check.MS_MAX,
                         default = 5000 },
  path = { check = function(v)
    if type(v) ~= "string" or sub(v, 1, 1) ~= "/" then
      return "must be a path starting with '/'"
    end
  end },
})

-- Serves the metrics on http://host:port/metrics (port 0 picks a free
-- port: see endpoint.port) from the running loop, for as long as the task
-- that started it runs or until endpoint:close(). Returns the endpoint, or
-- nil, err if the address cannot be listened on.
function _M.prometheus(opts)
  local o = parse_prometheus(opts)
  local sched = require "sprun.sched"
  if sched.current() == nil then
    error("telemetry.prometheus: must be called from a task (inside "
          .. "sprun.run or a script run by sprun)", 2)
  end
  local host = o.host == "localhost" and "127.0.0.1" or o.host
  local endpoint = setmetatable({
    host = host, path = o.path or "/metrics", collector = new_collector(),
    request_timeout_ms = o.request_timeout_ms, closed = false,
  }, Endpoint)
  local server, err = require("sprun.tcp").listen(host, o.port,
                                                  connection_handler(endpoint))
  if server == nil then
    return nil, err
  end
  endpoint.server, endpoint.port = server, server.port
  -- Cancelling the task that owns the server closes it: stop collecting
  -- then too.
  server._abort = function() endpoint:close() end
  endpoint.id = sink_id("prometheus")
  _M.attach_many(endpoint.id, lists(PROMETHEUS_EVENTS), collect_handler,
                 endpoint.collector)
  return endpoint
end

_M.Endpoint = Endpoint

--- The sprun executable -----------------------------------------------------

-- What runtime/main.c calls instead of sprun.sched.main when a telemetry
-- option was given: opts.telemetry ("stderr", "stdout" or a path),
-- opts.log_events, opts.metrics_host and opts.metrics_port. Returns what
-- sched.main returns: the exit status and, on failure, a message.
function _M.main(opts, chunk, ...)
  local sched = require "sprun.sched"
  if opts.log_events then
    _M.logger()
  end
  local dest = opts.telemetry
  if dest ~= nil then
    local target = dest == "stderr" and io_stderr
                   or dest == "stdout" and io_stdout or dest
    local id, err = _M.json_lines(target)
    if id == nil then
      return 2, "sprun: --telemetry: " .. err.message
    end
  end
  if opts.metrics_host == nil then
    return sched.main(opts, chunk, ...)
  end
  local host, port = opts.metrics_host, opts.metrics_port
  return sched.main(opts, function(...)
    local endpoint, err = _M.prometheus { host = host, port = port }
    if endpoint == nil then
      local errors = require "sprun.errors"
      io_stderr:write(format("sprun: --metrics=%s:%d: %s\n",
                             find(host, ":", 1, true) and "[" .. host .. "]"
                             or host, port, errors.is_error(err)
                             and err.message or tostring(err)))
      return 2
    end
    return chunk(...)
  end, ...)
end

return _M
