-- Telemetry: the events that breakers, retries, health monitors and the
-- rest of sprun emit, their catalogue, and the handlers attached to them.
-- The sinks are modules of their own, loaded when one is asked for:
-- telemetry/sinks.lua (a logger, JSON lines), telemetry/prometheus.lua
-- (metrics and their endpoint), telemetry/json.lua; nothing here depends
-- on the scheduler or on I/O.
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
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local pcall = pcall
local error = error
local require = require
local setmetatable = setmetatable
local find = string.find
local sub = string.sub
local format = string.format
local concat = table.concat
local sort = table.sort
local io_stderr = io.stderr

local check = require "sprun.check"
local errors = require "sprun.errors"

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
  { "snakepit.worker.tainted", "warning" },
  { "snakepit.worker.restarted", "info" },
  { "sprun.retry.budget_exhausted", "warning" },
  { "sprun.bulkhead.rejected", "debug" },
  { "sprun.rate_limiter.rejected", "debug" },
  { "sprun.pool.worker_output", "debug" },
  { "sprun.pool.worker_started", "info" },
  { "sprun.pool.worker_stopped", "info" },
  { "sprun.pool.request", "debug" },
  { "sprun.batch.item", "debug" },
  { "sprun.process.started", "debug" },
  { "sprun.process.exited", "debug" },
  { "sprun.http.request", "debug" },
  { "sprun.fleet.degraded", "warning" },
  { "sprun.fleet.recovered", "info" },
  { "sprun.hedge.started", "info" },
  { "sprun.hedge.won", "debug" },
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

-- The event lists of sprun's events at `level` ("debug", "info" or
-- "warning") or above, for a sink to attach to.
function _M.events_at(level)
  local lists, min = {}, LEVELS[level]
  for _, e in ipairs(EVENTS) do
    if LEVELS[e[2]] >= min then
      lists[#lists + 1] = event_list(e[1])
    end
  end
  return lists
end

-- name -> level, and the names as a list (for near misses, see add).
local LEVEL_OF, NAMES = {}, {}
for i, e in ipairs(EVENTS) do
  LEVEL_OF[e[1]] = e[2]
  NAMES[i] = e[1]
end

-- The level of one of sprun's events by name, or nil.
function _M.level_of(name)
  return LEVEL_OF[name]
end

-- The event list of a dotted name, made once (handlers get these lists).
_M.event_list = event_list

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
  for k in each_key, enabled do
    enabled[k] = nil
  end
  for k in each_key, observed do
    observed[k] = nil
  end
  for name in each_key, by_name do
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
  for k in each_key, event do
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

-- An id is a non-empty string or a number (not NaN). Raises at `level`
-- (as error's level, counted from here).
local function check_id_shape(fname, id, level)
  local t = type(id)
  if (t ~= "string" or id == "") and (t ~= "number" or id ~= id) then
    error(fname .. ": id must be a non-empty string or a number, got "
          .. describe(id), level)
  end
end

-- An id for a new attachment: well formed and not attached yet.
local function check_id(fname, id)
  check_id_shape(fname, id, 4)
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

local function add(fname, id, events, handler, config)
  local records = {}
  for _, event in ipairs(events) do
    local name = concat(event, ".")
    -- An event one or two letters from one of sprun's is a typo that
    -- would never fire: warn (events of the user's own stay silent).
    check.near_miss(fname, name, "an event sprun emits", LEVEL_OF, NAMES)
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
  add("telemetry.attach", id, { event }, handler, config)
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
  add("telemetry.attach_many", id, list, handler, config)
  return true
end

-- Detaches every handler attached under `id`; true if there was one.
function _M.detach(id)
  check_id_shape("telemetry.detach", id, 3)
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

-- Runs fn() once when `id` is detached (a sink that opened a file closes
-- it then).
function _M.on_detach(id, fn)
  check_id_shape("telemetry.on_detach", id, 3)
  if type(fn) ~= "function" then
    error("telemetry.on_detach: fn must be a function, got " .. describe(fn),
          2)
  end
  cleanups[id] = fn
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
  for _, records in each_key, by_id do
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
                           describe(r.id), r.name, errors.one_line(err)))
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

--- Sinks ------------------------------------------------------------------

-- Sinks attach under ids of their own: "sprun.<kind>.<n>".
local next_sink = 0

function _M.sink_id(kind)
  next_sink = next_sink + 1
  return format("sprun.%s.%d", kind, next_sink)
end

-- The sinks and the JSON encoder live in modules of their own, loaded on
-- first use: the bus that every emit site reads never loads them. Each
-- entry below tail-calls its module, so that the module's misuse errors
-- name the caller's line.

-- telemetry.logger{ level, io }: one readable line per event.
function _M.logger(opts)
  return require("sprun.telemetry.sinks").logger(opts)
end

-- telemetry.json_lines(file_or_path, { level }): one JSON object per event.
function _M.json_lines(target, opts)
  return require("sprun.telemetry.sinks").json_lines(target, opts)
end

-- telemetry.prometheus{ host, port, path, request_timeout_ms }: the
-- metrics served over HTTP while the loop runs.
function _M.prometheus(opts)
  return require("sprun.telemetry.prometheus").serve(opts)
end

-- The line the logger writes for an event, without its newline.
function _M.log_line(event, measurements, metadata)
  return require("sprun.telemetry.sinks").log_line(event, measurements,
                                                   metadata)
end

-- The JSON object the JSON-lines sink writes for an event.
function _M.json_line(event, measurements, metadata)
  return require("sprun.telemetry.sinks").json_line(event, measurements,
                                                    metadata)
end

-- Any Lua value as JSON text (telemetry/json.lua).
function _M.json_encode(v)
  return require("sprun.telemetry.json").encode(v)
end

return _M
