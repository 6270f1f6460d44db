-- The options of sprun.pool.start (internal), checked as every
-- constructor's are: exact messages with the key path, the closest valid
-- name for an unknown key. parse(opts) returns the full set, nested
-- sections included, or raises at the caller's line.

local fleet_kind = require "sprun.fleet.kind"
local check = require "sprun.check"
local options = require "sprun.options"
local process = require "sprun.io.process"
local barrier = require "sprun.pool.barrier"

local type = type
local ipairs = ipairs
local tostring = tostring
local format = string.format
local describe = check.describe
local each_key = next -- never `pairs` in a loop: see tables.lua
local MS = check.MS_MAX

local at = options.nested
local path_plus = options.path_plus

local _M = {}

local ANY = { check = function() return nil end }

local function check_cmd(v)
  if type(v) ~= "table" or v[1] == nil then
    return "must be a list: the program, then its arguments"
  end
  for i = 1, #v do
    local t = type(v[i])
    if (t ~= "string" or v[i] == "") and t ~= "number" then
      return "must be a non-empty string or a number", format("cmd[%d]", i),
             describe(v[i])
    end
  end
end

local function ms_list(name)
  return function(v)
    if type(v) ~= "table" or v[1] == nil then
      return "must be a non-empty list of delays in ms"
    end
    for i = 1, #v do
      if type(v[i]) ~= "number" or not (v[i] >= 0 and v[i] <= MS) then
        return "must be a number >= 0", format("%s[%d]", name, i),
               describe(v[i])
      end
    end
  end
end

local CLASSES = {}
for _, c in ipairs(barrier.CLASSES) do
  CLASSES[c] = true
end

local function check_mark_on(v)
  if type(v) ~= "table" then
    return "must be a list of crash classes"
  end
  for i = 1, #v do
    if not CLASSES[v[i]] then
      return "must be one of " .. table.concat(barrier.CLASSES, ", "),
             format("mark_on[%d]", i), describe(v[i])
    end
  end
end

local parse_top = options.parser("pool.start", {
  name = { "string", default = "pool" },
  size = { "integer", min = 1, limit = 4096, default = 4 },
  cmd = { check = check_cmd, required = true },
  env = { check = process._check_env },
  cwd = { "string" },
  channel = { "choice", values = { "fd3", "stdio" }, default = "fd3" },
  protocol = { "choice", values = { "ndjson", "lp4" }, default = "ndjson" },
  start_timeout_ms = { "integer", min = 1, limit = MS, default = 10000 },
  max_queue = { "integer", min = 0, limit = check.UINT32_MAX,
                default = 1000 },
  queue_timeout_ms = { "number", min = 0, limit = MS, default = 10000 },
  request_timeout_ms = { "number", min = 0, limit = MS, default = 30000 },
  concurrency = { "integer", min = 1, limit = 65536, default = 1 },
  max_requests = { "integer", min = 1, limit = check.UINT32_MAX },
  max_requests_jitter = { "integer", min = 0, limit = check.UINT32_MAX,
                          default = 0 },
  ttl_ms = { "integer", min = 1, limit = MS },
  max_rss_mb = { "number", min = 1, limit = 1e9 },
  rss_check_ms = { "integer", min = 10, limit = MS, default = 1000 },
  heartbeat = ANY,
  restart = ANY,
  start_failures = { "integer", min = 1, limit = check.UINT32_MAX,
                     default = 5 },
  crash_barrier = ANY,
  health = ANY,
  breaker = ANY,
  adaptive_limit = ANY,
  fleet = { check = fleet_kind.check },
  affinity = { "choice", values = { "hint", "strict_queue",
                                    "strict_fail_fast" }, default = "hint" },
  startup_batch = { "integer", min = 1, limit = 4096, default = 8 },
  stop_timeout_ms = { "integer", min = 0, limit = MS, default = 5000 },
})

local parse_heartbeat = options.parser("pool.start.heartbeat", {
  interval_ms = { "integer", min = 1, limit = MS, default = 2000 },
  timeout_ms = { "integer", min = 1, limit = MS, default = 10000 },
})

local parse_restart = options.parser("pool.start.restart", {
  backoff_ms = { check = ms_list("backoff_ms") },
  base_ms = { "number", min = 0, limit = MS, default = 100 },
  max_ms = { "number", min = 0, limit = MS, default = 10000 },
  max_restarts = { "integer", min = 1, limit = check.UINT32_MAX,
                   default = 10 },
  window_ms = { "integer", min = 1, limit = MS, default = 60000 },
  cooldown_ms = { "integer", min = 0, limit = MS, default = 30000 },
})

local parse_barrier = options.parser("pool.start.crash_barrier", {
  retry = { "choice", values = { "idempotent", "always", "never" },
            default = "idempotent" },
  max_retries = { "integer", min = 0, limit = 1000, default = 1 },
  backoff_ms = { check = ms_list("backoff_ms"), default = { 50, 100, 200 } },
  taint_ms = { "integer", min = 0, limit = MS, default = 60000 },
  mark_on = { check = check_mark_on,
              default = { "segfault", "oom", "abort", "bus_error" } },
})

local parse_health = options.parser("pool.start.health", {
  crash_window_ms = { "integer", min = 1, limit = MS, default = 60000 },
  max_crashes = { "integer", min = 1, limit = check.UINT32_MAX,
                  default = 10 },
})

-- Checks the options under options.capture (see pipeline.lua): the parsed
-- set, nested sections with their defaults.
function _M.parse(opts, path, is_monitor, is_breaker)
  path = path or {}
  local o = at(path, parse_top, opts)
  local cmd = {}
  for i = 1, #o.cmd do
    cmd[i] = tostring(o.cmd[i])
  end
  o.cmd = cmd
  if o.max_requests_jitter > 0 and o.max_requests == nil then
    options.throw(path_plus(path, "max_requests_jitter"),
                  "needs max_requests")
  end
  local function section(key, parser, v, default)
    if v == nil then
      v = default
    end
    if v == false then
      return nil
    end
    if type(v) ~= "table" then
      options.throw(path_plus(path, key), "must be a table of options",
                    describe(v))
    end
    return at(path_plus(path, key), parser, v)
  end
  o.heartbeat = section("heartbeat", parse_heartbeat, o.heartbeat, false)
  o.restart = section("restart", parse_restart, o.restart, {})
  o.crash_barrier = section("crash_barrier", parse_barrier, o.crash_barrier,
                            {})
  if o.health ~= nil and not is_monitor(o.health) then
    o.health = section("health", parse_health, o.health, {})
  end
  local al = o.adaptive_limit
  if al ~= nil then
    local adaptive_limit = require "sprun.adaptive_limit"
    if not adaptive_limit.is_adaptive_limit(al) then
      if type(al) ~= "table" then
        options.throw(path_plus(path, "adaptive_limit"),
                      "must be an adaptive limit or a table of its options",
                      describe(al))
      end
      local ao = {}
      for k, v in each_key, al do
        ao[k] = v
      end
      ao.name = ao.name or o.name
      o.adaptive_limit = at(path_plus(path, "adaptive_limit"),
                            adaptive_limit.new, ao)
    end
  end
  if o.breaker ~= nil and not is_breaker(o.breaker)
     and type(o.breaker) ~= "table" then
    options.throw(path_plus(path, "breaker"),
                  "must be a circuit breaker or a table of its options",
                  describe(o.breaker))
  end
  return o
end

return _M
