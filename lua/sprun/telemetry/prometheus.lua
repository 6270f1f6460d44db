-- Prometheus metrics of breakers, retries, health monitors and worker
-- pools: a collector attached to sprun's events, the text exposition
-- format (0.0.4) rendered from it and from the live breakers, monitors and
-- pools, and an endpoint that serves it over HTTP (io/http_server.lua).
--
--   local ep = sprun.telemetry.prometheus { host = "127.0.0.1", port = 0 }
--   -- http://127.0.0.1:<ep.port>/metrics; ep:metrics(); ep:close()
--
-- Counters of events count from the moment the endpoint started; gauges,
-- and the pools' counters (their own pool:stats(), counted since each pool
-- started), are read from the objects at each scrape. A pool shows while
-- it is registered (from pool.start until it stops). The trap: a counter
-- of a breaker or pool that is alive but never moved must still be there
-- (at 0) from the first scrape, or rate() has no start to count from.

local telemetry = require "sprun.telemetry"
local registry = require "sprun.telemetry.registry"
local json = require "sprun.telemetry.json"
local check = require "sprun.check"
local options = require "sprun.options"
local tables = require "sprun.tables"
local kernel = require "sprun.sched.kernel"
local http_server = require "sprun.io.http_server"
local barrier = require "sprun.pool.barrier"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local huge = math.huge
local floor = math.floor
local match = string.match
local gsub = string.gsub
local sub = string.sub
local concat = table.concat

local event_name = telemetry.event_name
local number_text = json.number
local sorted_keys = tables.keys_in_order

local _M = {}

-- Bucket bounds of the call duration histogram, in seconds.
local BUCKETS = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1, 2.5, 5, 10 }
local BUCKET_TEXT = {}
for i, b in ipairs(BUCKETS) do
  BUCKET_TEXT[i] = number_text(b)
end

local STATES = { "closed", "open", "half_open", "forced_open", "disabled",
                 "isolated" }
local TRANSITION_STATE = {
  ["snakepit.circuit_breaker.opened"] = "open",
  ["snakepit.circuit_breaker.closed"] = "closed",
  ["snakepit.circuit_breaker.half_open"] = "half_open",
  ["snakepit.circuit_breaker.forced_open"] = "forced_open",
  ["snakepit.circuit_breaker.disabled"] = "disabled",
  ["snakepit.circuit_breaker.isolated"] = "isolated",
}

local PROMETHEUS_EVENTS = {
  "snakepit.circuit_breaker.opened", "snakepit.circuit_breaker.closed",
  "snakepit.circuit_breaker.half_open",
  "snakepit.circuit_breaker.forced_open", "snakepit.circuit_breaker.disabled",
  "snakepit.circuit_breaker.isolated",
  "snakepit.circuit_breaker.call.rejected",
  "snakepit.circuit_breaker.call.success",
  "snakepit.circuit_breaker.call.failure",
  "snakepit.retry.attempt", "snakepit.retry.success",
  "snakepit.retry.exhausted", "snakepit.worker.crash", "sprun.http.request",
}

local function new_collector()
  return {
    transitions = {},  -- pool -> state -> count
    rejected = {},     -- pool -> count
    attempts = {},
    successes = {},
    exhausted = {},
    crashes = {},
    durations = {},    -- pool -> { counts = { per bucket }, sum, count }
    http = {},         -- "origin status_class outcome" -> count
    http_durations = {}, -- origin -> as durations
  }
end

local function pool_label(md)
  local pool = md and md.pool
  if pool == nil then
    return "default"
  end
  return tostring(pool)
end

local function bump(t, key)
  t[key] = (t[key] or 0) + 1
end

local function observe(c, pool, seconds, into)
  local hs = into or c.durations
  local h = hs[pool]
  if h == nil then
    h = { counts = {}, sum = 0, count = 0 }
    for i = 1, #BUCKETS do
      h.counts[i] = 0
    end
    hs[pool] = h
  end
  local counts = h.counts
  for i = #BUCKETS, 1, -1 do
    if seconds > BUCKETS[i] then
      break
    end
    counts[i] = counts[i] + 1
  end
  h.sum = h.sum + seconds
  h.count = h.count + 1
end

local COLLECT = {
  ["snakepit.circuit_breaker.call.rejected"] = function(c, m, md)
    bump(c.rejected, pool_label(md))
  end,
  ["snakepit.circuit_breaker.call.success"] = function(c, m, md)
    observe(c, pool_label(md), (tonumber(m.duration_ms) or 0) / 1000)
  end,
  ["snakepit.retry.attempt"] = function(c, m, md)
    bump(c.attempts, pool_label(md))
  end,
  ["snakepit.retry.success"] = function(c, m, md)
    bump(c.successes, pool_label(md))
  end,
  ["snakepit.retry.exhausted"] = function(c, m, md)
    bump(c.exhausted, pool_label(md))
  end,
  ["snakepit.worker.crash"] = function(c, m, md)
    bump(c.crashes, pool_label(md))
  end,
  -- Requests by origin, status class ("2xx", ..., "none" without a
  -- response) and outcome ("ok" or the error's kind).
  ["sprun.http.request"] = function(c, m, md)
    local origin = tostring(md.origin)
    local status = tonumber(m.status) or 0
    local class = status > 0 and (floor(status / 100) .. "xx") or "none"
    bump(c.http, origin .. "\0" .. class .. "\0" .. tostring(md.outcome))
    observe(c, origin, (tonumber(m.duration_ms) or 0) / 1000,
            c.http_durations)
  end,
}
COLLECT["snakepit.circuit_breaker.call.failure"] =
  COLLECT["snakepit.circuit_breaker.call.success"]
for name, state in each_key, TRANSITION_STATE do
  COLLECT[name] = function(c, m, md)
    local pool = pool_label(md)
    local by_state = c.transitions[pool]
    if by_state == nil then
      by_state = {}
      c.transitions[pool] = by_state
    end
    bump(by_state, state)
  end
end

local function collect_handler(event, measurements, metadata, c)
  local f = COLLECT[event_name(event)]
  if f then
    f(c, measurements, metadata)
  end
end

local function label_value(v)
  return (gsub(gsub(gsub(v, "\\", "\\\\"), "\n", "\\n"), '"', '\\"'))
end

local function sample_value(v)
  if v == huge then
    return "+Inf"
  elseif v == -huge then
    return "-Inf"
  elseif v ~= v then
    return "NaN"
  end
  return number_text(v)
end

-- The gauges' view of the live breakers and monitors: pool -> value, the
-- most recently made object winning when two share a pool name.
local function breaker_states()
  local states = {}
  for _, cb in ipairs(registry.breakers()) do
    local ok, state = pcall(cb.state, cb)
    if ok then
      states[cb._name] = state
    end
  end
  return states
end

local function monitor_stats()
  local stats = {}
  for _, hm in ipairs(registry.monitors()) do
    local ok, s = pcall(hm.stats, hm)
    if ok then
      stats[s.pool] = s
    end
  end
  return stats
end

-- The states a registered pool can be in (a stopped pool has left the
-- registry), for the state gauge.
local POOL_STATES = { "running", "draining", "failed" }

-- pool:stats() of the live pools: name -> stats, the most recently started
-- pool winning when two share a name.
local function pool_stats()
  local stats = {}
  for _, pool in ipairs(registry.pools()) do
    local ok, s = pcall(pool.stats, pool)
    if ok and s.state ~= "stopped" then
      stats[s.name] = s
    end
  end
  return stats
end

-- Each fleet's families, from its stats: name, type, help, value (nil:
-- no sample, as the staleness before the first sync).
local FLEET_SERIES = {
  { "sprun_fleet_staleness_seconds", "gauge", "Age of a fleet's view: "
    .. "time since the sync it came from was sent, in seconds.",
    function(s) return s.staleness_ms and s.staleness_ms / 1000 end },
  { "sprun_fleet_degraded", "gauge", "1 while a fleet acts locally (no "
    .. "sync for 3 intervals), else 0.",
    function(s) return s.state == "degraded" and 1 or 0 end },
  { "sprun_fleet_live_nodes", "gauge", "Nodes a fleet saw sync within 3 "
    .. "intervals (the most over its members).",
    function(s) return s.live_nodes end },
  { "sprun_fleet_syncs_total", "counter", "Syncs of a fleet with Redis "
    .. "that worked.", function(s) return s.syncs end },
  { "sprun_fleet_sync_failures_total", "counter", "Syncs of a fleet with "
    .. "Redis that failed or were held back by its breaker.",
    function(s) return s.sync_failures end },
}

-- Each pool's gauge families, from its stats: name, help, value.
local POOL_GAUGES = {
  { "sprun_pool_size", "Worker slots of a pool (its size).",
    function(s) return s.size end },
  { "sprun_pool_ready_workers", "Workers of a pool ready to take requests "
    .. "(busy ones included).", function(s) return s.ready end },
  { "sprun_pool_busy_workers", "Ready workers of a pool with a request in "
    .. "flight.", function(s) return s.busy end },
  { "sprun_pool_starting_workers", "Workers of a pool starting, not yet "
    .. "ready.", function(s) return s.starting end },
  { "sprun_pool_tainted_workers", "Worker slots of a pool tainted by a "
    .. "crash (crash_barrier.taint_ms).", function(s) return s.tainted end },
  { "sprun_pool_queued_requests", "Requests waiting in a pool's queue for "
    .. "a worker.", function(s) return s.queued end },
  { "sprun_pool_in_flight_requests", "Requests sent to a pool's workers "
    .. "and not answered yet.", function(s) return s.in_flight end },
  { "sprun_pool_healthy", "1 while a pool's health monitor says it is "
    .. "healthy, else 0.", function(s) return s.is_healthy and 1 or 0 end },
}

-- Each pool's counters without labels but the pool: name, help, stats key.
local POOL_COUNTERS = {
  { "sprun_pool_requests_total", "Calls made to a pool (one retried after a "
    .. "crash counts once).", "requests" },
  { "sprun_pool_replies_total", "Calls to a pool that got a reply value.",
    "replies" },
  { "sprun_pool_restarts_total", "Workers of a pool restarted after a "
    .. "crash.", "restarts" },
  { "sprun_pool_recycled_total", "Workers of a pool replaced by recycling "
    .. "(max_requests, ttl_ms, max_rss_mb, pool:recycle).", "recycled" },
  { "sprun_pool_dropped_replies_total", "Replies from a pool's workers to "
    .. "no request in flight, dropped.", "dropped_replies" },
  { "sprun_pool_protocol_errors_total", "Protocol violations by a pool's "
    .. "workers.", "protocol_errors" },
  { "sprun_pool_poisoned_total", "Requests of a pool found poison: in "
    .. "flight on two worker processes that each died.", "poisoned" },
}

-- The latency percentiles of the pools' last samples, in seconds (the
-- stats hold ms): name, help, stats key, percentile key. NaN with no
-- sample yet. Gauges, not a summary: the stats keep no sum and no total
-- count of the observations.
local POOL_LATENCIES = {
  { "sprun_pool_queue_wait_p50_seconds", "Median time a pool's requests "
    .. "waited for a worker, over its last 1024 requests sent, in seconds.",
    "queue_wait_ms", "p50" },
  { "sprun_pool_queue_wait_p99_seconds", "99th percentile of the time a "
    .. "pool's requests waited for a worker, over its last 1024 requests "
    .. "sent, in seconds.", "queue_wait_ms", "p99" },
  { "sprun_pool_service_p50_seconds", "Median time a pool's workers took "
    .. "to reply, over its last 1024 replies, in seconds.", "service_ms",
    "p50" },
  { "sprun_pool_service_p99_seconds", "99th percentile of the time a "
    .. "pool's workers took to reply, over its last 1024 replies, in "
    .. "seconds.", "service_ms", "p99" },
}

local function latency_seconds(l, p)
  if type(l) ~= "table" or l.samples == 0 then
    return 0 / 0
  end
  return l[p] / 1000
end

-- The metrics as Prometheus text exposition format 0.0.4.
local function render(c)
  local out = {}
  local function family(name, kind, help)
    out[#out + 1] = "# HELP " .. name .. " " .. help .. "\n"
    out[#out + 1] = "# TYPE " .. name .. " " .. kind .. "\n"
  end
  local function sample(name, labels, v)
    out[#out + 1] = name .. "{" .. labels .. "} " .. sample_value(v) .. "\n"
  end
  local function pool_only(pool)
    return 'pool="' .. label_value(pool) .. '"'
  end
  local function per_pool(name, counts)
    for _, pool in ipairs(sorted_keys(counts)) do
      sample(name, pool_only(pool), counts[pool])
    end
  end

  local states = breaker_states()
  local stats = monitor_stats()
  -- Counters of the breakers alive start at 0, so rates work from the
  -- first scrape.
  for pool in each_key, states do
    c.transitions[pool] = c.transitions[pool] or {}
    c.rejected[pool] = c.rejected[pool] or 0
  end
  for pool in each_key, stats do
    c.crashes[pool] = c.crashes[pool] or 0
  end

  family("sprun_circuit_breaker_state", "gauge",
         "Circuit breaker state: 1 for the current state, 0 for the others.")
  for _, pool in ipairs(sorted_keys(states)) do
    for _, state in ipairs(STATES) do
      sample("sprun_circuit_breaker_state", pool_only(pool) .. ',state="'
             .. state .. '"', states[pool] == state and 1 or 0)
    end
  end

  family("sprun_circuit_breaker_transitions_total", "counter",
         "Circuit breaker transitions, by the state entered.")
  for _, pool in ipairs(sorted_keys(c.transitions)) do
    local by_state = c.transitions[pool]
    for _, state in ipairs(STATES) do
      sample("sprun_circuit_breaker_transitions_total", pool_only(pool)
             .. ',state="' .. state .. '"', by_state[state] or 0)
    end
  end

  family("sprun_circuit_breaker_rejected_calls_total", "counter",
         "Calls rejected by a circuit breaker without running.")
  per_pool("sprun_circuit_breaker_rejected_calls_total", c.rejected)

  local function histogram(name, help, hs, label)
    family(name, "histogram", help)
    for _, key in ipairs(sorted_keys(hs)) do
      local h, labels = hs[key], label .. '="' .. label_value(key) .. '"'
      for i = 1, #BUCKETS do
        sample(name .. "_bucket", labels .. ',le="' .. BUCKET_TEXT[i] .. '"',
               h.counts[i])
      end
      sample(name .. "_bucket", labels .. ',le="+Inf"', h.count)
      sample(name .. "_sum", labels, h.sum)
      sample(name .. "_count", labels, h.count)
    end
  end
  histogram("sprun_circuit_breaker_call_duration_seconds",
            "Duration of the calls a circuit breaker admitted, in seconds.",
            c.durations, "pool")

  family("sprun_retry_attempts_total", "counter",
         "Failed attempts that the executor retried.")
  per_pool("sprun_retry_attempts_total", c.attempts)
  family("sprun_retry_successes_total", "counter",
         "Operations run with retry that succeeded.")
  per_pool("sprun_retry_successes_total", c.successes)
  family("sprun_retry_exhausted_total", "counter",
         "Operations run with retry that failed on their last attempt.")
  per_pool("sprun_retry_exhausted_total", c.exhausted)

  family("sprun_worker_crashes_total", "counter",
         "Worker crashes recorded by health monitors.")
  per_pool("sprun_worker_crashes_total", c.crashes)

  family("sprun_health_crashes_in_window", "gauge",
         "Crashes within each health monitor's crash window.")
  for _, pool in ipairs(sorted_keys(stats)) do
    sample("sprun_health_crashes_in_window", pool_only(pool),
           stats[pool].crashes_in_window)
  end
  family("sprun_health_healthy", "gauge",
         "1 while a health monitor's pool is healthy, else 0.")
  for _, pool in ipairs(sorted_keys(stats)) do
    sample("sprun_health_healthy", pool_only(pool),
           stats[pool].is_healthy and 1 or 0)
  end

  local ps = pool_stats()
  local pools = sorted_keys(ps)
  family("sprun_pool_state", "gauge",
         "Worker pool state: 1 for the current state, 0 for the others.")
  for _, pool in ipairs(pools) do
    local current, known = ps[pool].state, false
    for _, state in ipairs(POOL_STATES) do
      known = known or state == current
      sample("sprun_pool_state", pool_only(pool) .. ',state="' .. state
             .. '"', current == state and 1 or 0)
    end
    if not known then
      sample("sprun_pool_state", pool_only(pool) .. ',state="'
             .. label_value(tostring(current)) .. '"', 1)
    end
  end
  for _, g in ipairs(POOL_GAUGES) do
    family(g[1], "gauge", g[2])
    for _, pool in ipairs(pools) do
      sample(g[1], pool_only(pool), g[3](ps[pool]))
    end
  end
  local function pool_counters(first, last)
    for i = first, last do
      local c = POOL_COUNTERS[i]
      family(c[1], "counter", c[2])
      for _, pool in ipairs(pools) do
        sample(c[1], pool_only(pool), ps[pool][c[3]])
      end
    end
  end
  pool_counters(1, 2)            -- requests, replies
  -- Errors by kind: a kind shows from its first error (worker errors can
  -- have any kind). Crashes by class: every class the crash barrier
  -- gives, at 0 until it happens, and any other that happened.
  family("sprun_pool_errors_total", "counter",
         "Calls to a pool that ended with an error, by its kind.")
  for _, pool in ipairs(pools) do
    local by_kind = ps[pool].errors
    for _, kind in ipairs(sorted_keys(by_kind)) do
      sample("sprun_pool_errors_total", pool_only(pool) .. ',kind="'
             .. label_value(tostring(kind)) .. '"', by_kind[kind])
    end
  end
  family("sprun_pool_crashes_total", "counter",
         "Worker crashes in a pool, by their classification.")
  for _, pool in ipairs(pools) do
    local by_class, classes = ps[pool].crashes, {}
    for _, class in ipairs(barrier.CLASSES) do
      classes[class] = by_class[class] or 0
    end
    for class, n in each_key, by_class do
      classes[class] = n
    end
    for _, class in ipairs(sorted_keys(classes)) do
      sample("sprun_pool_crashes_total", pool_only(pool) .. ',class="'
             .. label_value(tostring(class)) .. '"', classes[class])
    end
  end
  pool_counters(3, #POOL_COUNTERS)
  for _, l in ipairs(POOL_LATENCIES) do
    family(l[1], "gauge", l[2])
    for _, pool in ipairs(pools) do
      sample(l[1], pool_only(pool), latency_seconds(ps[pool][l[3]], l[4]))
    end
  end

  family("sprun_http_requests_total", "counter", "HTTP requests made with "
         .. "sprun.http, by origin, status class and outcome.")
  for _, key in ipairs(sorted_keys(c.http)) do
    local origin, class, outcome = match(key, "^(.-)%z(.-)%z(.*)$")
    sample("sprun_http_requests_total", 'origin="' .. label_value(origin)
           .. '",status_class="' .. class .. '",outcome="'
           .. label_value(outcome) .. '"', c.http[key])
  end
  histogram("sprun_http_request_duration_seconds", "Duration of the HTTP "
            .. "requests made with sprun.http (name lookup included), in "
            .. "seconds.", c.http_durations, "origin")

  -- Fleets: one series per node of this process (node_id).
  local fs = {}
  for _, f in ipairs(registry.fleets()) do
    local ok, st = pcall(f.stats, f)
    if ok then
      fs[st.node_id] = st
    end
  end
  local nodes = sorted_keys(fs)
  for _, g in ipairs(FLEET_SERIES) do
    family(g[1], g[2], g[3])
    for _, node in ipairs(nodes) do
      local v = g[4](fs[node])
      if v ~= nil then
        sample(g[1], 'node="' .. label_value(node) .. '"', v)
      end
    end
  end
  return concat(out)
end

local CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

local Endpoint = {}
Endpoint.__index = Endpoint

-- The metrics text the endpoint serves.
function Endpoint:metrics()
  check.self(self, Endpoint, "telemetry.prometheus.metrics",
             "a Prometheus endpoint")
  return render(self.collector)
end

-- Stops serving and collecting. Idempotent.
function Endpoint:close()
  check.self(self, Endpoint, "telemetry.prometheus.close",
             "a Prometheus endpoint")
  if not self.closed then
    self.closed = true
    telemetry.detach(self.id)
    self.server:close()
  end
  return true
end

local parse_prometheus = options.parser("telemetry.prometheus", {
  host = { "string", default = "127.0.0.1" },
  port = { "integer", min = 0, limit = 65535, default = 9464 },
  request_timeout_ms = { "integer", min = 1, limit = check.MS_MAX,
                         default = 5000 },
  path = { check = function(v)
    if type(v) ~= "string" or sub(v, 1, 1) ~= "/" then
      return "must be a path starting with '/'"
    end
  end },
})

local event_lists = {}
for i, name in ipairs(PROMETHEUS_EVENTS) do
  event_lists[i] = telemetry.event_list(name)
end

-- Serves the metrics on http://host:port/metrics (port 0 picks a free
-- port: see endpoint.port) from the running loop, for as long as the task
-- that started it runs or until endpoint:close(). Returns the endpoint, or
-- nil, err if the address cannot be listened on.
function _M.serve(opts)
  local o = parse_prometheus(opts)
  if kernel.current() == nil then
    error("telemetry.prometheus: must be called from a task (inside "
          .. "sprun.run or a script run by sprun)", 2)
  end
  local host = o.host == "localhost" and "127.0.0.1" or o.host
  local path = o.path or "/metrics"
  local endpoint = setmetatable({
    host = host, path = path, collector = new_collector(), closed = false,
  }, Endpoint)
  local server, err = http_server.listen(host, o.port, {
    request_timeout_ms = o.request_timeout_ms,
    handler = function(p)
      if p == path then
        return render(endpoint.collector), CONTENT_TYPE
      end
    end,
    -- Cancelling the task that owns the server closes it: stop collecting
    -- then too.
    on_abort = function() endpoint:close() end,
  })
  if server == nil then
    return nil, err
  end
  endpoint.server, endpoint.port = server, server.port
  endpoint.id = telemetry.sink_id("prometheus")
  telemetry.attach_many(endpoint.id, event_lists, collect_handler,
                        endpoint.collector)
  return endpoint
end

return _M
