-- sprun: fault tolerance for LuaJIT. Every module is also usable on its
-- own: require "sprun.circuit_breaker", "sprun.health_monitor",
-- "sprun.retry_policy", "sprun.errors", "sprun.executor", "sprun.process",
-- "sprun.tcp", "sprun.telemetry", "sprun.pipeline", "sprun.bulkhead",
-- "sprun.policy", "sprun.sched", "sprun.pool", "sprun.dns", "sprun.http",
-- "sprun.redis", "sprun.fleet".

local sp = require "sprun.ffi"
local clock = require "sprun.clock"
local errors = require "sprun.errors"
local sched = require "sprun.sched"

local _M = {
  version = sp.ffi.string(sp.C.sp_version_string()),
  circuit_breaker = require "sprun.circuit_breaker",
  health_monitor = require "sprun.health_monitor",
  retry_policy = require "sprun.retry_policy",
  errors = errors,
  error = errors.error,
  error_kind = errors.kind,
  executor = require "sprun.executor",
  process = require "sprun.process",
  tcp = require "sprun.tcp",
  dns = require "sprun.dns",
  telemetry = require "sprun.telemetry",
  -- sprun.pipeline{...} makes a pipeline (also sprun.pipeline.new).
  pipeline = require "sprun.pipeline",
  bulkhead = require "sprun.bulkhead",
  policy = require "sprun.policy",
  -- The loop's monotonic time in whole ms (virtual under a virtual clock),
  -- taken at the start of each turn of the loop; outside a loop, the
  -- clock. update_time() brings it up to the clock in the middle of a
  -- turn. hrtime() is the real clock in ns, for measuring durations.
  now = clock.now,
  update_time = clock.update_time,
  hrtime = clock.hrtime,
  -- The scheduler.
  run = sched.run,
  spawn = sched.spawn,
  sleep = sched.sleep,
  -- What is left (ms) of the running task's deadline, or nil.
  deadline = sched.deadline,
}

-- Loaded at its first use: sprun.pool brings lua-cjson, whose buffers
-- only a closed Lua state frees, and a script that never makes a pool
-- need not hold them.
local LAZY = { pool = "sprun.pool", http = "sprun.http",
               redis = "sprun.redis", fleet = "sprun.fleet" }
LAZY.adaptive_limit = "sprun.adaptive_limit"
LAZY.rate_limiter = "sprun.rate_limiter"
LAZY.trace = "sprun.trace"
LAZY.report = "sprun.report"
setmetatable(_M, { __index = function(t, k)
  local name = LAZY[k]
  if name then
    local m = require(name)
    rawset(t, k, m)
    return m
  end
end })

return _M
