-- Telemetry costs: an event with no handler (the emit site's one lookup,
-- and telemetry.execute), with one Lua handler, and with the JSON-lines
-- sink writing to /dev/null; then the same for the breaker's call and the
-- health monitor's record_crash, next to the bare operations.
--
-- Every loop, operation and handler is compiled afresh for its case: a
-- function called through pcall that gets hot on its own is blacklisted by
-- LuaJIT, and would slow every later case that calls it. The JSON-lines
-- cases come last: file writes cannot be compiled, and once the traces
-- through the handlers' dispatch loop have aborted on them often enough,
-- LuaJIT stops compiling that loop for every handler.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"
local telemetry = sprun.telemetry

local OPENED_EVENT = { "snakepit", "circuit_breaker", "opened" }

-- A new function from `src`, called with the given values.
local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

local EMIT = [[
  local telemetry = ...
  local enabled, emit = telemetry.enabled, telemetry.emit
  local OPENED = "snakepit.circuit_breaker.opened"
  return function(n)
    for i = 1, n do
      if enabled[OPENED] then
        emit(OPENED, { failure_count = i },
             { pool = "python_pool", reason = "failures" })
      end
    end
  end
]]

local EXECUTE = [[
  local telemetry, event = ...
  return function(n)
    for i = 1, n do
      telemetry.execute(event, { failure_count = i },
                        { pool = "python_pool", reason = "failures" })
    end
  end
]]

local HANDLER = "return function() end"

local function with_handler(event, run)
  telemetry.attach("bench", event, fresh(HANDLER))
  local ns = run()
  telemetry.detach("bench")
  return ns
end

local function with_sink(opts, run)
  local id = assert(telemetry.json_lines("/dev/null", opts))
  local ns = run()
  telemetry.detach(id)
  return ns
end

print("-- an event")
local bare = H.case("bare call of an empty function", 1e7,
  fresh("return function(n) local f = function() end "
        .. "for _ = 1, n do f() end end"))
H.case("emit site, no handler (enabled[name] lookup)", 1e7,
       fresh(EMIT, telemetry), bare)
H.case("telemetry.execute, no handler", 1e6,
       fresh(EXECUTE, telemetry, OPENED_EVENT), bare)
with_handler(OPENED_EVENT, function()
  H.case("emit site, one Lua handler", 1e6, fresh(EMIT, telemetry), bare)
end)
with_handler(OPENED_EVENT, function()
  H.case("telemetry.execute, one Lua handler", 1e6,
         fresh(EXECUTE, telemetry, OPENED_EVENT), bare)
end)

local CALLS = [[
  local cb = ...
  local function op() return 1 end
  return function(n)
    for _ = 1, n do cb:call(op) end
  end
]]

print("-- circuit_breaker.call on a closed breaker")
local cb = sprun.circuit_breaker.start_link { name = "bench_pool" }
local bare_call = H.case("call, no handler", 1e7, fresh(CALLS, cb))
with_handler({ "snakepit", "circuit_breaker", "call", "success" }, function()
  H.case("call, one Lua handler on call.success", 1e6, fresh(CALLS, cb),
         bare_call)
end)
with_sink(nil, function()
  H.case("call, JSON-lines sink at info (no per-call event)", 1e7,
         fresh(CALLS, cb), bare_call)
end)

local CRASHES = [[
  local hm = ...
  return function(n)
    for _ = 1, n do hm:record_crash("w1") end
  end
]]

print("-- health_monitor.record_crash")
local hm = sprun.health_monitor.start_link { max_crashes = 1000000 }
local bare_crash = H.case("record_crash, no handler", 1e6, fresh(CRASHES, hm))
with_handler({ "snakepit", "worker", "crash" }, function()
  H.case("record_crash, one Lua handler", 1e6, fresh(CRASHES, hm),
         bare_crash)
end)

print("-- recorded by sprun.trace (a ring of 100,000 events, full)")
local function with_tracer(run)
  local t = sprun.trace.start { buffer = 100000 }
  run()
  return t
end
with_tracer(function()
  H.case("emit site, recorded by sprun.trace", 1e6, fresh(EMIT, telemetry),
         bare)
end):stop()
collectgarbage()
local kb0 = collectgarbage("count")
local tracer = with_tracer(function()
  H.case("call, recorded by sprun.trace (2 events)", 1e6, fresh(CALLS, cb),
         bare_call)
end)
-- What a full ring holds, and becomes: the trace document and the page.
collectgarbage()
local ring_kb = collectgarbage("count") - kb0
local t0 = sprun.hrtime()
tracer:document()
local doc_ms = (sprun.hrtime() - t0) / 1e6
t0 = sprun.hrtime()
local page = sprun.report.render(tracer)
local page_ms = (sprun.hrtime() - t0) / 1e6
tracer:stop()
print(("a full ring of %d events holds %.1f MiB (%.0f B an event); from it "
       .. "the trace document takes %.0f ms, the report page (%d KiB) %.0f "
       .. "ms"):format(#tracer:entries(), ring_kb / 1024,
                       ring_kb * 1024 / #tracer:entries(), doc_ms,
                       math.floor(#page / 1024), page_ms))
page, tracer = nil, nil
collectgarbage()

print("-- with the JSON-lines sink")
with_sink(nil, function()
  H.case("emit site, JSON-lines sink to /dev/null", 1e5,
         fresh(EMIT, telemetry), bare)
end)
with_sink({ level = "debug" }, function()
  H.case("call, JSON-lines sink at debug to /dev/null (2 events)", 1e5,
         fresh(CALLS, cb), bare_call)
end)
with_sink(nil, function()
  H.case("record_crash, JSON-lines sink to /dev/null", 1e5,
         fresh(CRASHES, hm), bare_crash)
end)
