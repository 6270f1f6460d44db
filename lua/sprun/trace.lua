-- sprun.trace: a recording of a run's telemetry in the Chrome Trace Event
-- Format (JSON), which Perfetto (ui.perfetto.dev) and chrome://tracing
-- open.
--
--   local t = sprun.trace.start{ path = "run.json", buffer = 100000 }
--   ...                       -- the run
--   local doc = t:stop()      -- writes path (if given), returns the document
--
-- While it records, every event sprun emits (at debug level and above) is
-- kept in a ring of `buffer` entries, the oldest dropped first; the
-- document's otherData.dropped_events counts what the ring dropped. In the
-- document:
--   - each event is an instant ("ph" = "i") on the track of what emitted
--     it: a breaker, a pool, a retry, an HTTP origin (one track per
--     component and name, labelled by "thread_name" metadata), named by
--     the event's words after the component, its measurements and
--     metadata as args;
--   - a breaker's state is also a counter ("ph" = "C"), set at each
--     transition: 0 closed (or disabled), 1 half-open, 2 open (opened,
--     forced open, isolated);
--   - an event that measured a duration (a breaker's call, an HTTP
--     request, a retried call, a hedge) is also an async slice ("b"/"e",
--     one id each) ending at the event;
--   - the events in time order, each track's metadata first.
-- Times are the loop's ms since start (virtual under a virtual clock) as
-- the format's µs. Measured durations (duration_ms) are real time, so a
-- virtual run's document differs from run to run in those args only.
--
-- The trap: handlers get the emitter's tables, which an emitter may reuse;
-- an entry keeps copies of their plain values (strings, numbers, booleans,
-- and the text of anything with a __tostring), never the tables.

local type = type
local error = error
local setmetatable = setmetatable
local tostring = tostring
local getmetatable = getmetatable
local each_key = next -- never `pairs` in a loop: see tables.lua
local floor = math.floor
local format = string.format
local match = string.match
local sort = table.sort
local io_open = io.open

local check = require "sprun.check"
local clock = require "sprun.clock"
local telemetry = require "sprun.telemetry"

local describe = check.describe
local now = clock.now

local _M = {}

local DEFAULT_BUFFER = 100000
local MAX_BUFFER = 10000000

-- The counter value of a breaker's transitions.
local STATE = {
  closed = 0, disabled = 0, half_open = 1,
  opened = 2, forced_open = 2, isolated = 2,
}

local Tracer = {}
Tracer.__index = Tracer

local next_id = 0

-- The plain values of t (nil when t is not a table or has none).
local function plain(t)
  if type(t) ~= "table" then
    return nil
  end
  local out, any = {}, false
  local k, v = each_key(t)
  while k ~= nil do
    if type(k) == "string" then
      local tv = type(v)
      if tv == "string" or tv == "boolean"
         or tv == "number" and v == v and v ~= 1 / 0 and v ~= -1 / 0 then
        out[k], any = v, true
      elseif tv == "table" or tv == "cdata" then
        local mt = getmetatable(v)
        if tv == "cdata" or type(mt) == "table" and mt.__tostring then
          out[k], any = tostring(v), true
        end
      end
    end
    k, v = each_key(t, k)
  end
  return any and out or nil
end

local function record(name, measurements, metadata, self)
  local n = self.n % self.size + 1
  if self.count == self.size then
    self.dropped = self.dropped + 1
  else
    self.count = self.count + 1
  end
  self.n = n
  self.ring[n] = { now(), name, plain(measurements), plain(metadata) }
end

local function check_opts(opts)
  if opts == nil then
    return nil, DEFAULT_BUFFER
  end
  if type(opts) ~= "table" then
    error("sprun.trace.start: options must be a table or nil, got "
          .. describe(opts), 3)
  end
  local path, buffer = opts.path, opts.buffer
  if path ~= nil and (type(path) ~= "string" or path == "") then
    error("sprun.trace.start: path must be a non-empty string or nil, got "
          .. describe(path), 3)
  end
  if buffer == nil then
    buffer = DEFAULT_BUFFER
  elseif type(buffer) ~= "number" or buffer ~= floor(buffer)
         or buffer < 1 or buffer > MAX_BUFFER then
    error(format("sprun.trace.start: buffer must be an integer between 1 "
                 .. "and %d, got %s", MAX_BUFFER, describe(buffer)), 3)
  end
  local k = each_key(opts)
  while k ~= nil do
    if k ~= "path" and k ~= "buffer" then
      error("sprun.trace.start: unknown option '" .. tostring(k)
            .. "' (allowed: path, buffer)", 3)
    end
    k = each_key(opts, k)
  end
  return path, buffer
end

-- Starts recording. opts: path (where stop writes the document), buffer
-- (the ring's size in events, default 100000).
function _M.start(opts)
  local path, buffer = check_opts(opts)
  next_id = next_id + 1
  local self = setmetatable({
    id = "trace" .. next_id, path = path, size = buffer, ring = {},
    n = 0, count = 0, dropped = 0, t0 = now(), stopped = false,
  }, Tracer)
  local lists = telemetry.events_at("debug")
  telemetry.attach_many(self.id, lists, function(event, m, md)
    record(telemetry.event_name(event), m, md, self)
  end)
  return self
end

-- The entries in the order they were recorded.
function Tracer:entries()
  local out = {}
  if self.count < self.size then
    for i = 1, self.count do
      out[i] = self.ring[i]
    end
  else
    for i = 1, self.size do
      out[i] = self.ring[(self.n + i - 1) % self.size + 1]
    end
  end
  return out
end

-- The component ("circuit_breaker") and the rest ("opened") of an event's
-- name.
local function split(name)
  local component, rest = match(name, "^[^.]+%.([^.]+)%.(.+)$")
  return component or name, rest or name
end

-- The name of what emitted an event, from its metadata.
local function owner(md)
  if md == nil then
    return nil
  end
  return md.name or md.pool or md.origin or md.breaker or md.limiter
end

-- into with the fields of from (when there is one) added; into.
local function merge(into, from)
  if from then
    local k, v = each_key(from)
    while k ~= nil do
      into[k] = v
      k, v = each_key(from, k)
    end
  end
  return into
end

-- The Chrome Trace Event Format document of what was recorded.
function Tracer:document()
  local events, tracks, ntracks = {}, {}, 0
  local function track(label)
    local tid = tracks[label]
    if tid == nil then
      ntracks = ntracks + 1
      tid = ntracks
      tracks[label] = tid
      events[#events + 1] = { ph = "M", name = "thread_name", pid = 1,
                              tid = tid, args = { name = label } }
    end
    return tid
  end
  events[1] = { ph = "M", name = "process_name", pid = 1, tid = 0,
                args = { name = "sprun" } }
  local entries, nslices = self:entries(), 0
  for i = 1, #entries do
    local e = entries[i]
    local ts, name, m, md = (e[1] - self.t0) * 1000, e[2], e[3], e[4]
    local component, rest = split(name)
    local who = owner(md)
    local label = who and component .. " " .. tostring(who) or component
    local tid = track(label)
    local args = merge(merge({}, m), md)
    events[#events + 1] = { ph = "i", s = "t", name = rest, cat = component,
                            ts = ts, pid = 1, tid = tid, args = args }
    local dur = m and (m.duration_ms or m.total_duration_ms)
    if type(dur) == "number" and dur > 0 then
      -- What took time is also an async slice ending at the event: calls
      -- overlap on one track, which only async events may.
      nslices = nslices + 1
      local start = ts - dur * 1000
      local slice = label .. " " .. rest
      events[#events + 1] = { ph = "b", name = slice, cat = component,
                              id = nslices, ts = start > 0 and start or 0,
                              pid = 1, tid = tid }
      events[#events + 1] = { ph = "e", name = slice, cat = component,
                              id = nslices, ts = ts, pid = 1, tid = tid }
    end
    local state = component == "circuit_breaker" and STATE[rest]
    if state then
      events[#events + 1] = { ph = "C", name = "breaker " .. tostring(who),
                              ts = ts, pid = 1, tid = tid,
                              args = { state = state } }
    end
  end
  -- In time order (a slice begins before the event that ends it); the
  -- metadata first, and equal times in the order they were made.
  local order = {}
  for i = 1, #events do
    order[events[i]] = i
  end
  sort(events, function(a, b)
    local ma, mb = a.ph == "M", b.ph == "M"
    if ma ~= mb then
      return ma
    end
    local ta, tb = a.ts or 0, b.ts or 0
    if ta ~= tb then
      return ta < tb
    end
    return order[a] < order[b]
  end)
  return {
    traceEvents = events,
    displayTimeUnit = "ms",
    otherData = { dropped_events = self.dropped, recorded = #entries,
                  buffer = self.size },
  }
end

-- Stops recording (once; later calls give the same document again), writes
-- the document to path when one was given, and returns it. A path that
-- cannot be written gives nil, err (kind "trace_failed").
function Tracer:stop()
  if not self.stopped then
    self.stopped = true
    telemetry.detach(self.id)
  end
  local doc = self:document()
  if self.path then
    local f, err = io_open(self.path, "w")
    if not f then
      return nil, require("sprun.errors").error("trace_failed",
        "sprun.trace: cannot write " .. self.path .. ": " .. tostring(err))
    end
    f:write(telemetry.json_encode(doc), "\n")
    f:close()
  end
  return doc
end

-- Track labels in a stable order, for tests and tools.
function _M.track_names(doc)
  local names = {}
  local list = doc.traceEvents
  for i = 1, #list do
    local e = list[i]
    if e.ph == "M" and e.name == "thread_name" then
      names[#names + 1] = e.args.name
    end
  end
  sort(names)
  return names
end

return _M
