-- sprun: fault tolerance for LuaJIT. Every module is also usable on its
-- own: require "sprun.circuit_breaker", "sprun.health_monitor",
-- "sprun.retry_policy", "sprun.errors".

local sp = require "sprun.ffi"
local clock = require "sprun.clock"
local errors = require "sprun.errors"

local _M = {
  version = sp.ffi.string(sp.C.sp_version_string()),
  circuit_breaker = require "sprun.circuit_breaker",
  health_monitor = require "sprun.health_monitor",
  retry_policy = require "sprun.retry_policy",
  errors = errors,
  error = errors.error,
  error_kind = errors.kind,
  -- Monotonic time in whole ms, and in ns for measuring durations.
  now = clock.now,
  hrtime = clock.hrtime,
}

return _M
