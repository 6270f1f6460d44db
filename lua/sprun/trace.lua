-- sprun.trace: a recording of a run's telemetry in the Chrome Trace Event
-- Format (JSON), which Perfetto (ui.perfetto.dev) and chrome://tracing
-- open.
--
--   local t = sprun.trace.start{ path = "run.json", buffer = 100000 }
--   ...                       -- the run
--   local doc = t:stop()      -- writes path (if given), returns the document
--
-- While it records, every event sprun emits (at debug level and above) is
-- kept in a ring of `buffer` entries, the oldest dropped first, and so is
-- each task made and each task finished (one entry each: the scheduler
-- calls a hook, kernel.set_trace_hook, installed while a tracer records;
-- without one a spawn and a finish cost one field check). Only the tasks
-- made after start are recorded. The document's otherData.dropped_events
-- counts what the ring dropped. In the document:
--   - each event is an instant ("ph" = "i") on the track of what emitted
--     it: a breaker, a pool, a retry, an HTTP origin (one track per
--     component and name, labelled by "thread_name" metadata; an event
--     naming a worker_id, a pool's or a health monitor's, goes on that
--     worker's track, "worker <pool> <id>"), named by the event's words
--     after the component, its measurements and metadata as args;
--   - a breaker's state is also a counter ("ph" = "C"), set at each
--     transition: 0 closed (or disabled), 1 half-open, 2 open (opened,
--     forced open, isolated); an event whose measurements have numbers
--     `ready` and `busy` (a pool's) sets the counter "pool <md.pool>"
--     { ready, busy }, and with a number `queued` "queue <md.pool>"
--     { queued };
--   - an event that measured a duration (a breaker's call, an HTTP
--     request, a retried call, a hedge, a pool request, a batch item, a
--     worker's or a process's lifetime_ms) is also an async slice
--     ("b"/"e", one id each) ending at the event; a retry's backoff
--     ("backoff") and a worker's taint ("tainted") are slices starting at
--     their event and lasting its delay_ms or duration_ms;
--   - the events of one retry loop, or of one hedged call (the same
--     metadata `call`, per component), are linked by a flow: "s" at the
--     first, "t" at each one between, "f" ("bp" = "e") at the last, each
--     at the time and on the track of its instant, one id per call;
--   - each task is an async slice "task <id>" (cat "task") from its
--     spawn to its finish on the track "tasks", args task, parent (the
--     parent's id, if it has one) and outcome ("ok", "error",
--     "cancelled"; none for a task still running at the end, whose slice
--     ends with the recording); the counter "tasks" { running } counts
--     the recorded tasks unfinished, from 0 at the first;
--   - the events in time order, each track's metadata first.
--
-- Nesting the tasks: the format nests async slices of one cat and id as a
-- stack (a slice inside another of its id is its child, and one must end
-- before any that began before it). A task outliving its parent, or a
-- sibling spawned before another ended, would break that stack. So a
-- task's slice takes its parent's id only when it fits on that stack: its
-- parent is the innermost slice open there when it spawns and it ends
-- first. Any other task (a top-level one, one whose parent was not
-- recorded, one that would overlap) starts an id of its own, its parent
-- named in args.parent; its own children nest under it the same way.
-- Decided when the document is made, from the whole recording: a task
-- whose spawn was dropped begins where the recording does.
--
-- Times are the loop's ms since start (virtual under a virtual clock) as
-- the format's µs. Measured durations (duration_ms) are on the same
-- clock (clock.ticks_ns: virtual time in a virtual run), so a virtual
-- run's document is the same on every run, HTTP timings (curl's, real)
-- aside.
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
local remove = table.remove
local io_open = io.open

local check = require "sprun.check"
local clock = require "sprun.clock"
local telemetry = require "sprun.telemetry"
local kernel = require "sprun.sched.kernel"

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

-- A finished task's state -> its slice's outcome.
local OUTCOME = { done = "ok", failed = "error", cancelled = "cancelled" }

local Tracer = {}
Tracer.__index = Tracer

local next_id = 0

-- The tracers recording, oldest first: the task hook feeds them all.
local active = {}

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

-- Puts an entry in the ring: { time, event name, measurements, metadata }
-- for an event; { time, "task", nil, nil, id, parent id or false, state
-- or false (made), tasks unfinished after it } for a task.
local function push(self, entry)
  local n = self.n % self.size + 1
  if self.count == self.size then
    self.dropped = self.dropped + 1
  else
    self.count = self.count + 1
  end
  self.n = n
  self.ring[n] = entry
end

local function record(name, measurements, metadata, self)
  push(self, { now(), name, plain(measurements), plain(metadata) })
end

-- The scheduler's hook (see kernel.set_trace_hook): state is nil for a
-- task made, its end state for a task finished.
local function task_hook(id, parent, state)
  for i = 1, #active do
    local self = active[i]
    if id > self.first_task then
      local running = self.running + (state and -1 or 1)
      self.running = running
      push(self, { now(), "task", nil, nil, id, parent, state or false,
                   running })
    end
  end
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
    first_task = kernel.last_task_id(), running = 0, t_end = false,
  }, Tracer)
  local lists = telemetry.events_at("debug")
  telemetry.attach_many(self.id, lists, function(event, m, md)
    record(telemetry.event_name(event), m, md, self)
  end)
  active[#active + 1] = self
  if #active == 1 then
    kernel.set_trace_hook(task_hook)
  end
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

-- The tasks of the entries, each { id, parent, b, e (its entries'
-- indexes: b below 1 for one whose spawn was dropped, e past the entries
-- for one unfinished), state, lane (its slice's id) }, in the order their
-- slices begin; and how many ids they took. See "Nesting the tasks" at
-- the top.
local function task_lanes(entries)
  local made, dropped, by_id = {}, {}, {}
  local n = #entries
  for i = 1, n do
    local e = entries[i]
    local id = e[5]
    if id ~= nil then
      local t = by_id[id]
      if not e[7] then
        t = { id = id, parent = e[6], b = i, e = false, state = false }
        by_id[id] = t
        made[#made + 1] = t
      else
        if t == nil then
          t = { id = id, parent = e[6], b = false, e = false }
          by_id[id] = t
          dropped[#dropped + 1] = t
        end
        t.e, t.state = i, e[7]
      end
    end
  end
  sort(dropped, function(a, b) return a.id < b.id end)
  local order = {}
  for i = 1, #dropped do
    dropped[i].b = i - #dropped - 1
    order[i] = dropped[i]
  end
  for i = 1, #made do
    local t = made[i]
    -- Unfinished: ends after everything, the newest first.
    t.e = t.e or 2 * n + 2 - t.b
    order[#order + 1] = t
  end
  local stacks, nlanes = {}, 0
  for i = 1, #order do
    local t = order[i]
    local p = t.parent and by_id[t.parent]
    local lane = false
    if p and p.lane then
      local stack = stacks[p.lane]
      local top = #stack
      while top > 0 and stack[top].e < t.b do
        stack[top] = nil
        top = top - 1
      end
      if stack[top] == p and t.e < p.e then
        lane = p.lane
        stack[top + 1] = t
      end
    end
    if not lane then
      nlanes = nlanes + 1
      lane = nlanes
      stacks[lane] = { t }
    end
    t.lane = lane
  end
  return order, by_id, nlanes
end

-- The flows of the entries: "component call" -> how many events carry it.
local function flow_counts(entries)
  local counts = {}
  for i = 1, #entries do
    local e = entries[i]
    local md = e[4]
    if md and type(md.call) == "number" then
      local key = split(e[2]) .. " " .. md.call
      counts[key] = (counts[key] or 0) + 1
    end
  end
  return counts
end

-- When the recording ends, in the document's µs: at stop (while a loop
-- runs: its clock), else at its newest entry.
local function end_us(self, entries)
  local last = entries[#entries]
  local t = last and last[1] or self.t0
  local stop = self.t_end
  if not self.stopped and kernel.running() then
    stop = now()
  end
  if stop and stop > t then
    t = stop
  end
  return (t - self.t0) * 1000
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
  local function add(ph, name, cat, id, ts, tid, args)
    local e = { ph = ph, name = name, cat = cat, id = id, ts = ts, pid = 1,
                tid = tid, args = args }
    events[#events + 1] = e
    return e
  end
  events[1] = { ph = "M", name = "process_name", pid = 1, tid = 0,
                args = { name = "sprun" } }
  local entries, t0 = self:entries(), self.t0
  -- Where the recording begins: at 0, or at its oldest entry kept.
  local first_ts = 0
  if self.dropped > 0 and entries[1] then
    first_ts = (entries[1][1] - t0) * 1000
  end
  local order, by_id, nasync = task_lanes(entries)
  local counts, flows, nflows = flow_counts(entries), {}, 0
  local tasks_tid = order[1] and track("tasks")
  local function task_slice(ph, t, ts)
    local args
    if ph == "b" then
      args = { task = t.id, parent = t.parent or nil }
    elseif t.state then
      args = { outcome = OUTCOME[t.state] }
    end
    add(ph, "task " .. t.id, "task", t.lane, ts, tasks_tid, args)
  end
  local started_tasks = false
  for i = 1, #order do
    if order[i].b > 0 then
      break
    end
    task_slice("b", order[i], first_ts)
  end
  for i = 1, #entries do
    local e = entries[i]
    local ts, name, m, md = (e[1] - t0) * 1000, e[2], e[3], e[4]
    local id = e[5]
    if id ~= nil then
      local t = by_id[id]
      if not started_tasks then
        started_tasks = true
        -- The counter's value before the first task entry kept.
        add("C", "tasks", nil, nil, first_ts, tasks_tid,
            { running = e[8] + (e[7] and 1 or -1) })
      end
      task_slice(e[7] and "e" or "b", t, ts)
      add("C", "tasks", nil, nil, ts, tasks_tid, { running = e[8] })
    else
      local component, rest = split(name)
      local who = owner(md)
      local label = who and component .. " " .. tostring(who) or component
      local worker = md and md.worker_id
      if worker ~= nil then
        -- A pool's worker (or one a health monitor names): a track each.
        label = "worker " .. (md.pool and tostring(md.pool) .. " " or "")
                .. tostring(worker)
      end
      local tid = track(label)
      local args = merge(merge({}, m), md)
      add("i", rest, component, nil, ts, tid, args).s = "t"
      local call = md and md.call
      local n = type(call) == "number" and counts[component .. " " .. call]
      if n and n > 1 then
        local key = component .. " " .. call
        local f = flows[key]
        local ph = "t"
        if f == nil then
          nflows = nflows + 1
          f = { id = nflows, seen = 0 }
          flows[key] = f
          ph = "s"
        end
        f.seen = f.seen + 1
        if f.seen == n then
          ph = "f"
        end
        local flow = add(ph, component .. " call", component, f.id, ts, tid)
        if ph == "f" then
          flow.bp = "e"
        end
      end
      local dur = m and (m.duration_ms or m.total_duration_ms
                         or m.lifetime_ms)
      if name == "snakepit.worker.tainted" then
        -- A taint lasts from the event on.
        if type(dur) == "number" and dur > 0 then
          nasync = nasync + 1
          add("b", "tainted", component, nasync, ts, tid)
          add("e", "tainted", component, nasync, ts + dur * 1000, tid)
        end
      elseif type(dur) == "number" and dur > 0 then
        -- What took time is also an async slice ending at the event: calls
        -- overlap on one track, which only async events may.
        nasync = nasync + 1
        local start = ts - dur * 1000
        local slice = label .. " " .. rest
        add("b", slice, component, nasync, start > 0 and start or 0, tid)
        add("e", slice, component, nasync, ts, tid)
      end
      local delay = m and m.delay_ms
      if name == "snakepit.retry.backoff" and type(delay) == "number"
         and delay > 0 then
        -- The wait that follows, as a slice of its own.
        nasync = nasync + 1
        add("b", "backoff", component, nasync, ts, tid)
        add("e", "backoff", component, nasync, ts + delay * 1000, tid)
      end
      local state = component == "circuit_breaker" and STATE[rest]
      if state then
        add("C", "breaker " .. tostring(who), nil, nil, ts, tid,
            { state = state })
      end
      if m and type(m.ready) == "number" and type(m.busy) == "number" then
        local pool = tostring(md and md.pool or who or component)
        add("C", "pool " .. pool, nil, nil, ts, tid,
            { ready = m.ready, busy = m.busy })
        if type(m.queued) == "number" then
          add("C", "queue " .. pool, nil, nil, ts, tid, { queued = m.queued })
        end
      end
    end
  end
  -- The tasks still running end with the recording, the newest first.
  local last = end_us(self, entries)
  for i = #order, 1, -1 do
    local t = order[i]
    if t.state == false then
      task_slice("e", t, last)
    end
  end
  -- In time order (a slice begins before the event that ends it); the
  -- metadata first, and equal times in the order they were made.
  local rank = {}
  for i = 1, #events do
    rank[events[i]] = i
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
    return rank[a] < rank[b]
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
    self.t_end = kernel.running() and now() or false
    telemetry.detach(self.id)
    for i = 1, #active do
      if active[i] == self then
        remove(active, i)
        break
      end
    end
    if #active == 0 then
      kernel.set_trace_hook(false)
    end
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
