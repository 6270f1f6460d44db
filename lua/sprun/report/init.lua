-- sprun.report: a run as one self-contained HTML page, its timeline in
-- inline SVG (no script, nothing fetched from anywhere): a lane per
-- breaker (its states as coloured bands, a mark at each transition), per
-- retry loop (a tick per failed attempt and its backoff), per pool worker
-- or child process (its lifetime, request ticks, crash marks labelled by
-- class, taint periods), per batch (a bar per item by outcome) and per
-- HTTP origin, then a summary: calls, failures, rejections and latency
-- p50/p95/p99 per source, time in each breaker state and from open to
-- closed, crashes by class and restarts. Every mark has a tooltip.
--
--   local r = sprun.report.start{ path = "run.html", title = "nightly" }
--   ...                       -- the run
--   local html = r:stop()     -- writes path (if given), returns the page
--
-- It records what sprun.trace records (every event at debug level and
-- above, in a ring of `buffer` entries: a full ring drops the oldest and
-- the page says how many), so `sprun --trace t.json --report r.html`
-- shares one recording (report.render). Under a virtual clock the page is
-- the same, byte for byte, on every run.

local type = type
local error = error
local tostring = tostring
local setmetatable = setmetatable
local each_key = next -- never `pairs` in a loop: see tables.lua
local io_open = io.open

local check = require "sprun.check"
local clock = require "sprun.clock"
local errors = require "sprun.errors"
local trace = require "sprun.trace"
local model = require "sprun.report.model"
local html = require "sprun.report.html"

local describe = check.describe

local _M = {}

local Report = {}
Report.__index = Report

local ALLOWED = { path = true, buffer = true, title = true }

local function check_opts(opts)
  if opts == nil then
    return {}
  end
  if type(opts) ~= "table" then
    error("sprun.report.start: options must be a table or nil, got "
          .. describe(opts), 3)
  end
  local k = each_key(opts)
  while k ~= nil do
    if not ALLOWED[k] then
      error("sprun.report.start: unknown option '" .. tostring(k)
            .. "' (allowed: path, buffer, title)", 3)
    end
    k = each_key(opts, k)
  end
  local path, title = opts.path, opts.title
  if path ~= nil and (type(path) ~= "string" or path == "") then
    error("sprun.report.start: path must be a non-empty string or nil, got "
          .. describe(path), 3)
  end
  if title ~= nil and type(title) ~= "string" then
    error("sprun.report.start: title must be a string or nil, got "
          .. describe(title), 3)
  end
  return opts
end

-- The time and the kind of clock of the running loop, for render's opts.
function _M.now()
  local s = require("sprun.sched.kernel").state()
  return clock.now(), s ~= nil and s.virtual or false
end

-- The page of what `tracer` (a sprun.trace, stopped or not) recorded from
-- its start. opts: title; t1 and virtual, the end of the span drawn and
-- whether it is virtual time (default: the running loop's, now()).
function _M.render(tracer, opts)
  opts = opts or {}
  local t1, virtual = opts.t1, opts.virtual
  if t1 == nil then
    t1, virtual = _M.now()
  end
  local entries = tracer:entries()
  local m = model.build(entries, tracer.t0, t1)
  return html.render(m, {
    title = opts.title or "sprun run report",
    clock = virtual and "a virtual" or "the real",
    recorded = #entries, dropped = tracer.dropped, buffer = tracer.size,
  })
end

-- Writes `page` to path; true, or nil, err (kind report_failed).
function _M.write(path, page)
  local f, err = io_open(path, "w")
  if not f then
    return nil, errors.error("report_failed", "sprun.report: cannot write "
                             .. path .. ": " .. tostring(err))
  end
  f:write(page)
  f:close()
  return true
end

-- Starts recording. opts: path (where stop writes the page), buffer (the
-- ring's size in events, default 100000, as sprun.trace's), title.
function _M.start(opts)
  opts = check_opts(opts)
  local ok, tracer = pcall(trace.start, { buffer = opts.buffer })
  if not ok then
    -- The ring's own check, said for this function.
    error((tostring(tracer):gsub("^.-sprun%.trace%.start:",
                                 "sprun.report.start:")), 2)
  end
  return setmetatable({ tracer = tracer, path = opts.path,
                        title = opts.title, page = false }, Report)
end

-- Stops recording (once; later calls give the same page again), writes
-- the page to path when one was given, and returns it; a path that cannot
-- be written gives nil, err (kind "report_failed").
function Report:stop()
  if not self.page then
    self.page = _M.render(self.tracer, { title = self.title })
    self.tracer:stop()
  end
  if self.path then
    local ok, err = _M.write(self.path, self.page)
    if not ok then
      return nil, err
    end
  end
  return self.page
end

return _M
