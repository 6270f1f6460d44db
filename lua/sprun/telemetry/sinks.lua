-- The sinks that write events as text: a logger (one readable line per
-- event, to stderr by default) and JSON lines (one object per event, to a
-- file or a path opened for appending). Each attaches to sprun's events
-- at its level or above (telemetry.events_at) under an id of its own,
-- which detaching stops it with.
--
--   sprun.telemetry.logger { level = "info" }
--   sprun.telemetry.json_lines("events.jsonl", { level = "debug" })
--
-- The trap: a line is written in one write and flushed at once, so that
-- it is never half written when the process stops, however it stops; and
-- the per-call events are at "debug", so that a sink at "info" keeps the
-- breaker's call on its fast path (no handler on the call events).

local telemetry = require "sprun.telemetry"
local json = require "sprun.telemetry.json"
local check = require "sprun.check"
local errors = require "sprun.errors"
local options = require "sprun.options"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local floor = math.floor
local huge = math.huge
local find = string.find
local gsub = string.gsub
local format = string.format
local concat = table.concat
local sort = table.sort
local io_open = io.open
local io_stderr = io.stderr
local os_time = os.time

local event_name = telemetry.event_name
local json_string = json.string
local json_encode = json.encode
local one_line = errors.one_line
local sink_id = telemetry.sink_id

local _M = {}

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
    { "attempt", "m", "attempt" }, { "delay_ms", "m", "delay_ms" },
    { "error", "md", "error" } },
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
  ["snakepit.worker.tainted"] = { "worker TAINTED", { "pool", "md", "pool" },
    { "worker", "md", "worker_id" }, { "reason", "md", "reason" },
    { "duration_ms", "m", "duration_ms" } },
  ["snakepit.worker.restarted"] = { "worker RESTARTED",
    { "pool", "md", "pool" }, { "worker", "md", "worker_id" } },
  ["sprun.pool.worker_output"] = { "worker OUTPUT", { "pool", "md", "pool" },
    { "worker", "md", "worker_id" }, { "stream", "md", "stream" },
    { "line", "md", "line" } },
  ["sprun.pool.worker_started"] = { "pool worker STARTED",
    { "pool", "md", "pool" }, { "worker", "md", "worker_id" },
    { "pid", "m", "pid" }, { "ready", "m", "ready" },
    { "busy", "m", "busy" } },
  ["sprun.pool.worker_stopped"] = { "pool worker STOPPED",
    { "pool", "md", "pool" }, { "worker", "md", "worker_id" },
    { "pid", "m", "pid" }, { "reason", "md", "reason" },
    { "class", "md", "classification" }, { "signal", "md", "signal" },
    { "code", "m", "code" }, { "lifetime_ms", "m", "lifetime_ms" } },
  ["sprun.pool.request"] = { "pool REQUEST", { "pool", "md", "pool" },
    { "worker", "md", "worker_id" }, { "outcome", "md", "outcome" },
    { "duration_ms", "m", "duration_ms" }, { "queued", "m", "queued" } },
  ["sprun.batch.item"] = { "batch item DONE", { "batch", "m", "batch" },
    { "index", "m", "index" }, { "size", "m", "size" },
    { "outcome", "md", "outcome" }, { "duration_ms", "m", "duration_ms" } },
  ["sprun.process.started"] = { "process STARTED", { "name", "md", "name" },
    { "pid", "m", "pid" } },
  ["sprun.process.exited"] = { "process EXITED", { "name", "md", "name" },
    { "pid", "m", "pid" }, { "code", "m", "code" },
    { "signal", "md", "signal" }, { "lifetime_ms", "m", "lifetime_ms" } },
  ["sprun.retry.budget_exhausted"] = { "retry BUDGET_EXHAUSTED",
    { "pool", "md", "pool" }, { "attempts", "m", "attempts" },
    { "error", "md", "last_error" } },
  ["sprun.http.request"] = { "http REQUEST", { "method", "md", "method" },
    { "origin", "md", "origin" }, { "url", "md", "url" },
    { "status", "m", "status" }, { "outcome", "md", "outcome" },
    { "duration_ms", "m", "duration_ms" }, { "ttfb_ms", "m", "ttfb_ms" } },
  ["sprun.fleet.degraded"] = { "fleet DEGRADED to local",
    { "node", "md", "node_id" }, { "reason", "md", "reason" } },
  ["sprun.fleet.recovered"] = { "fleet RECOVERED", { "node", "md", "node_id" },
    { "degraded_ms", "m", "degraded_ms" } },
  ["sprun.hedge.started"] = { "hedge STARTED", { "name", "md", "name" },
    { "attempt", "m", "attempt" }, { "after_ms", "m", "after_ms" } },
  ["sprun.hedge.won"] = { "hedge WON", { "name", "md", "name" },
    { "attempt", "m", "attempt" }, { "cancelled", "m", "cancelled" },
    { "duration_ms", "m", "duration_ms" } },
  ["sprun.bulkhead.rejected"] = { "bulkhead call REJECTED",
    { "pool", "md", "pool" }, { "in_flight", "m", "in_flight" },
    { "queued", "m", "queued" } },
  ["sprun.rate_limiter.rejected"] = { "rate limiter call REJECTED",
    { "name", "md", "name" }, { "key", "md", "key" },
    { "retry_after_ms", "m", "retry_after_ms" } },
}

local function sorted_fields(t, prefix, out)
  local keys = {}
  for k in each_key, t do
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
  local level = telemetry.level_of(name) or "info"
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
  telemetry.attach_many(id, telemetry.events_at(o.level), log_handler,
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
      return nil, errors.error("io_error", err, { path = target })
    end
    out, owned = f, true
  end
  local id = sink_id("json_lines")
  telemetry.attach_many(id, telemetry.events_at(o.level), json_handler, out)
  if owned then
    telemetry.on_detach(id, function() out:close() end)
  end
  return id
end

return _M
