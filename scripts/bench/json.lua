-- JSON: what the sinks pay to turn an event into text. sprun's encoder
-- (telemetry/json.lua: sorted keys, valid UTF-8, placeholders, numbers
-- that read back the same, strings escaped by lua-cjson) next to
-- lua-cjson's own encode of the same table, which does none of that
-- (keys in pairs() order, 14 digits): the floor. Then the JSON-lines
-- sink's whole line for an event.
--
-- The same cases run against an older sprun too (they use only
-- telemetry.json_encode and telemetry.json_line), which is how the
-- encoder before lua-cjson was compared.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"
local cjson = require("cjson").new()
local telemetry = sprun.telemetry

local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

local ENCODE = [[
  local encode, value = ...
  return function(n)
    local e, v = encode, value
    for _ = 1, n do e(v) end
  end
]]

-- An opened event's metadata, and a crash's with an error object whose
-- message needs escaping.
local SMALL = { pool = "python_pool", reason = "failures" }
local ERROR = { pool = "python_pool", worker_id = "worker_17",
                reason = "segfault",
                error = sprun.error("worker_crash",
                                    'exit "139"\nin predict() – café') }
local PLAIN_ERROR = { pool = ERROR.pool, worker_id = ERROR.worker_id,
                      reason = ERROR.reason, error = tostring(ERROR.error) }

print("-- encoding a table")
local floor_small = H.case("cjson.encode, an event's metadata (the floor)",
                           1e6, fresh(ENCODE, cjson.encode, SMALL))
H.case("json.encode, an event's metadata", 1e6,
       fresh(ENCODE, telemetry.json_encode, SMALL), floor_small)
local floor_error = H.case("cjson.encode, a crash's metadata (the floor)",
                           1e6, fresh(ENCODE, cjson.encode, PLAIN_ERROR))
H.case("json.encode, a crash's metadata with an error object", 1e6,
       fresh(ENCODE, telemetry.json_encode, ERROR), floor_error)

print("-- the JSON-lines sink's line")
local LINE = [[
  local json_line, event, metadata = ...
  return function(n)
    for i = 1, n do json_line(event, { failure_count = i }, metadata) end
  end
]]
H.case("json_line, an opened event", 1e6,
       fresh(LINE, telemetry.json_line,
             { "snakepit", "circuit_breaker", "opened" }, SMALL),
       floor_small)
H.case("json_line, a crash with an error object", 1e6,
       fresh(LINE, telemetry.json_line, { "snakepit", "worker", "crash" },
             ERROR), floor_error)
