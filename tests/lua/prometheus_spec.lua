-- sprun.telemetry.prometheus: the /metrics endpoint, checked by promtool
-- and scraped by a real Prometheus server.
local h = require "helpers"
local cjson = require "cjson"
local sprun = require "sprun"
local telemetry = require "sprun.telemetry"
local retry = require "sprun.retry"

-- Prometheus' tools run as they are, without what a sanitizer build
-- preloads into the processes the specs start.
local PROMTOOL = "env -u LD_PRELOAD promtool "
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"

local function fail() return nil, "boom" end
local function succeed() return "ok" end

-- Sends `request` to 127.0.0.1:port and reads until the server closes the
-- connection; fails the test if that takes more than 5 s. Returns the
-- status, the headers (lower-case names), the body and the raw response.
local function http(port, request)
  local task = sprun.spawn(function()
    local conn = assert(sprun.tcp.connect("127.0.0.1", port,
                                          { timeout_ms = 2000 }))
    if request ~= "" then
      assert(conn:write(request))
    end
    local parts = {}
    while true do
      local data = conn:read()
      if data == nil then
        break
      end
      parts[#parts + 1] = data
    end
    conn:close()
    return table.concat(parts)
  end)
  local raw, err = task:await(5000)
  assert(raw, "no complete response within 5 s: " .. tostring(err))
  local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "not an HTTP response: " .. raw)
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+): ([^\r\n]*)") do
    headers[k:lower()] = v
  end
  return tonumber(head:match("^HTTP/1%.1 (%d%d%d) ")), headers, body, raw
end

local function get(port, path)
  return http(port, "GET " .. (path or "/metrics") .. " HTTP/1.1\r\n"
              .. "Host: 127.0.0.1\r\n\r\n")
end

local function lines_of(body)
  local set = {}
  for line in body:gmatch("[^\n]+") do
    set[line] = true
  end
  return set
end

local function promtool_check(body)
  local dir = h.tmpdir()
  local path = h.write_file(dir .. "/metrics.txt", body)
  local r = h.run(PROMTOOL .. "check metrics < " .. h.shell_quote(path))
  h.rmrf(dir)
  return r
end

local function detach_all()
  for _, r in ipairs(telemetry.list_handlers({})) do
    telemetry.detach(r.id)
  end
end

describe("telemetry.prometheus", function()
  after_each(detach_all)

  it("serves every metric family at GET /metrics, and promtool accepts it "
     .. "with no error or warning", function()
    local status, headers, body
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { host = "127.0.0.1", port = 0 })
      local cb = circuit_breaker.start_link { name = "python_pool",
        failure_threshold = 2, reset_timeout_ms = 60000 }
      cb:call(succeed)
      cb:call(fail)
      cb:call(fail)           -- opens
      cb:call(succeed)        -- rejected
      circuit_breaker.start_link { name = "idle_pool" }
      local hm = health_monitor.start_link { pool = "workers", max_crashes = 2 }
      hm:record_crash("w1", { reason = "segfault" })
      hm:record_crash("w2", { reason = "oom" })
      retry.emit_attempt("api", "fetch", 1, 100)
      retry.emit_attempt("api", "fetch", 2, 200)
      retry.emit_success("api", 3, sprun.hrtime())
      retry.emit_exhausted("api", 3, sprun.hrtime(), "timeout")
      status, headers, body = get(ep.port)
      ep:close()
    end)
    assert.are.equal(200, status)
    assert.are.equal("text/plain; version=0.0.4; charset=utf-8",
                     headers["content-type"])
    assert.are.equal("close", headers["connection"])
    assert.are.equal(#body, tonumber(headers["content-length"]))
    local r = promtool_check(body)
    assert.are.same({ code = 0, stdout = "", stderr = "" }, r)
    local l = lines_of(body)
    for _, want in ipairs {
      "# TYPE sprun_circuit_breaker_state gauge",
      'sprun_circuit_breaker_state{pool="python_pool",state="closed"} 0',
      'sprun_circuit_breaker_state{pool="python_pool",state="open"} 1',
      'sprun_circuit_breaker_state{pool="python_pool",state="half_open"} 0',
      'sprun_circuit_breaker_state{pool="idle_pool",state="closed"} 1',
      "# TYPE sprun_circuit_breaker_transitions_total counter",
      'sprun_circuit_breaker_transitions_total{pool="python_pool",'
        .. 'state="open"} 1',
      'sprun_circuit_breaker_transitions_total{pool="python_pool",'
        .. 'state="closed"} 0',
      'sprun_circuit_breaker_transitions_total{pool="idle_pool",'
        .. 'state="open"} 0',
      "# TYPE sprun_circuit_breaker_rejected_calls_total counter",
      'sprun_circuit_breaker_rejected_calls_total{pool="python_pool"} 1',
      'sprun_circuit_breaker_rejected_calls_total{pool="idle_pool"} 0',
      "# TYPE sprun_circuit_breaker_call_duration_seconds histogram",
      'sprun_circuit_breaker_call_duration_seconds_bucket{pool="python_pool",'
        .. 'le="+Inf"} 3',
      'sprun_circuit_breaker_call_duration_seconds_count{pool="python_pool"} 3',
      "# TYPE sprun_retry_attempts_total counter",
      'sprun_retry_attempts_total{pool="api"} 2',
      "# TYPE sprun_retry_successes_total counter",
      'sprun_retry_successes_total{pool="api"} 1',
      "# TYPE sprun_retry_exhausted_total counter",
      'sprun_retry_exhausted_total{pool="api"} 1',
      "# TYPE sprun_worker_crashes_total counter",
      'sprun_worker_crashes_total{pool="workers"} 2',
      "# TYPE sprun_health_crashes_in_window gauge",
      'sprun_health_crashes_in_window{pool="workers"} 2',
      "# TYPE sprun_health_healthy gauge",
      'sprun_health_healthy{pool="workers"} 0',
    } do
      assert.is_true(l[want] == true, "missing line: " .. want .. "\nin:\n"
                     .. body)
    end
    -- Every sample has a HELP and a TYPE line before it.
    for name in body:gmatch("\n(sprun_[%w_]+)[{ ]") do
      local base = name:gsub("_bucket$", ""):gsub("_sum$", "")
                       :gsub("_count$", "")
      assert.is_truthy(body:find("# HELP " .. base .. " ", 1, true), name)
    end
  end)

  it("histogram buckets are cumulative and in seconds", function()
    local body
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      local cb = circuit_breaker.start_link { name = "timed_pool" }
      cb:call(function() sprun.sleep(30) end)
      cb:call(function() sprun.sleep(30) return nil, "slow failure" end)
      cb:call(succeed)
      body = ep:metrics()
      ep:close()
    end)
    local counts, bounds = {}, {}
    for le, n in body:gmatch('sprun_circuit_breaker_call_duration_seconds_'
        .. 'bucket{pool="timed_pool",le="([^"]+)"} (%d+)') do
      bounds[#bounds + 1] = le
      counts[le] = tonumber(n)
    end
    assert.are.equal("+Inf", bounds[#bounds])
    -- Cumulative: each bucket holds the calls of the ones below it.
    for i = 2, #bounds do
      assert.is_true(counts[bounds[i]] >= counts[bounds[i - 1]],
        "bucket le=" .. bounds[i] .. " below le=" .. bounds[i - 1])
    end
    -- In seconds: the 30 ms calls are above 0.025 and within 10 (they
    -- would be above 10 in ms). The quick call may land anywhere below.
    assert.is_true(counts["0.025"] <= 1, "le=0.025: " .. counts["0.025"])
    assert.are.same({ 3, 3 }, { counts["10"], counts["+Inf"] })
    local sum = tonumber(body:match('sprun_circuit_breaker_call_duration_'
      .. 'seconds_sum{pool="timed_pool"} (%S+)'))
    assert.is_true(sum >= 0.055 and sum < 10, "sum " .. tostring(sum))
  end)

  it("the state gauge follows the breaker, half-open included", function()
    local bodies = {}
    h.run_tasks({ clock = "virtual" }, function()
      local ep = assert(telemetry.prometheus { port = 0 })
      local cb = circuit_breaker.start_link { name = "gauge_pool",
        failure_threshold = 1, reset_timeout_ms = 1000 }
      cb:call(fail)
      bodies[1] = ep:metrics()
      sprun.sleep(1000)
      bodies[2] = ep:metrics()
      cb:call(succeed)
      bodies[3] = ep:metrics()
      ep:close()
    end)
    local function current(body)
      local on = {}
      for state in body:gmatch('sprun_circuit_breaker_state{pool="gauge_pool",'
                               .. 'state="([%w_]+)"} 1') do
        on[#on + 1] = state
      end
      return table.concat(on, ",")
    end
    assert.are.same({ "open", "half_open", "closed" },
      { current(bodies[1]), current(bodies[2]), current(bodies[3]) })
    assert.matches('sprun_circuit_breaker_transitions_total{pool="gauge_pool",'
      .. 'state="half_open"} 1', bodies[3], 1, true)
    assert.matches('sprun_circuit_breaker_transitions_total{pool="gauge_pool",'
      .. 'state="closed"} 1', bodies[3], 1, true)
  end)

  it("escapes label values, and promtool accepts them", function()
    local body
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      circuit_breaker.start_link { name = 'odd "pool" \\ with\nnewline' }
      body = ep:metrics()
      ep:close()
    end)
    assert.matches('sprun_circuit_breaker_state{pool="odd \\"pool\\" \\\\ '
                   .. 'with\\nnewline",state="closed"} 1', body, 1, true)
    assert.are.same({ code = 0, stdout = "", stderr = "" },
                    promtool_check(body))
  end)

  it("answers 404 for other paths, 405 for other methods, HEAD with "
     .. "headers only, and ignores a query string", function()
    local r = {}
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      r.other = { get(ep.port, "/") }
      r.nested = { get(ep.port, "/metrics/x") }
      r.post = { http(ep.port, "POST /metrics HTTP/1.1\r\nHost: x\r\n"
                      .. "Content-Length: 0\r\n\r\n") }
      r.head = { http(ep.port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n") }
      r.query = { get(ep.port, "/metrics?name[]=x") }
      r.http10 = { http(ep.port, "GET /metrics HTTP/1.0\r\n\r\n") }
      ep:close()
    end)
    assert.are.same({ 404, "not found\n" }, { r.other[1], r.other[3] })
    assert.are.equal(404, r.nested[1])
    assert.are.same({ 405, "GET, HEAD" }, { r.post[1], r.post[2].allow })
    assert.are.equal(200, r.head[1])
    assert.are.equal("", r.head[3])
    assert.is_true(tonumber(r.head[2]["content-length"]) > 0)
    assert.are.equal(200, r.query[1])
    assert.matches("# TYPE sprun_circuit_breaker_state gauge", r.query[3], 1,
                   true)
    assert.are.equal(200, r.http10[1])
  end)

  it("answers 400 to malformed requests and keeps serving", function()
    local statuses, after = {}, nil
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      for _, req in ipairs {
        "garbage\r\n\r\n",
        "GET /metrics\r\n\r\n",
        "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\n\r\n",                 -- no Host
        "GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",       -- no colon
        "GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "G(T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX: " .. ("y"):rep(10000)
          .. "\r\n\r\n",
        "\0\1\2\255\r\n\r\n",
      } do
        statuses[#statuses + 1] = (http(ep.port, req))
      end
      after = (get(ep.port))
      ep:close()
    end)
    assert.are.same({ 400, 400, 400, 400, 400, 400, 400, 400, 400, 400 },
                    statuses)
    assert.are.equal(200, after)
  end)

  it("drops a client that sends nothing after request_timeout_ms, and one "
     .. "that hangs up early, without disturbing the loop", function()
    local status, waited
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0,
                                               request_timeout_ms = 100 })
      local idle = assert(sprun.tcp.connect("127.0.0.1", ep.port))
      local early = assert(sprun.tcp.connect("127.0.0.1", ep.port))
      early:write("GET /metr")
      early:close()
      local t0 = sprun.now()
      assert.is_nil(idle:read())      -- the server closes it
      waited = sprun.now() - t0
      idle:close()
      status = get(ep.port)
      ep:close()
    end)
    assert.is_true(waited >= 90 and waited < 3000, "waited " .. waited)
    assert.are.equal(200, status)
  end)

  it("close() stops serving and detaches its handlers", function()
    local refused
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      assert.are.equal(13, #telemetry.list_handlers { "snakepit" })
      assert.is_true(telemetry.observed["snakepit.circuit_breaker.call"])
      assert.is_true(ep:close())
      assert.is_true(ep:close())
      local _, err = sprun.tcp.connect("127.0.0.1", ep.port)
      refused = err and err.kind
    end)
    assert.are.same({}, telemetry.list_handlers({}))
    assert.are.equal("connection_refused", refused)
  end)

  it("stops with the task that started it when that task is cancelled",
    function()
      h.run_tasks(function()
        local port
        local t = sprun.spawn(function()
          local ep = assert(telemetry.prometheus { port = 0 })
          port = ep.port
          sprun.sleep(60000)
        end)
        sprun.sleep(10)
        t:cancel()
        t:await()
        local _, err = sprun.tcp.connect("127.0.0.1", port)
        assert.are.equal("connection_refused", err.kind)
      end)
      assert.are.same({}, telemetry.list_handlers({}))
    end)

  it("returns nil, err when the address cannot be used", function()
    local err
    h.run_tasks(function()
      local ep = assert(telemetry.prometheus { port = 0 })
      local again
      again, err = telemetry.prometheus { port = ep.port }
      assert.is_nil(again)
      ep:close()
    end)
    assert.are.equal("address_in_use", err.kind)
    assert.are.same({}, telemetry.list_handlers({}))
  end)

  it("rejects misuse with clear messages", function()
    local ok, err = pcall(function() telemetry.prometheus() end)
    assert.is_false(ok)
    assert.matches("telemetry.prometheus: must be called from a task "
                   .. "%(inside sprun.run or a script run by sprun%)", err)
    for _, c in ipairs {
      { { port = 70000 }, "telemetry.prometheus: option 'port' must be an "
        .. "integer between 0 and 65535, got 70000" },
      { { prot = 1 }, "telemetry.prometheus: unknown option 'prot' (did you "
        .. "mean 'port'?)" },
      { { host = 1 }, "telemetry.prometheus: option 'host' must be a "
        .. "non-empty string, got 1" },
      { { path = "metrics" }, "telemetry.prometheus: option 'path' must be "
        .. "a path starting with '/', got \"metrics\"" },
    } do
      ok, err = pcall(function() telemetry.prometheus(c[1]) end)
      assert.is_false(ok)
      assert.are.equal(c[2], (err:gsub("^[^:]*:%d+: ", "")))
    end
  end)

  it("is scraped by a real Prometheus server: up is 1 and the breaker "
     .. "counter has its value", function()
    local dir = h.tmpdir()
    local ok, err = pcall(h.run_tasks, function()
      local ep = assert(telemetry.prometheus { host = "127.0.0.1", port = 0 })
      local cb = circuit_breaker.start_link { name = "scrape_pool",
        failure_threshold = 1, reset_timeout_ms = 600000 }
      cb:call(fail)                       -- opened: 1
      cb:call(succeed)                    -- rejected: 1
      -- A free port for Prometheus' own web server.
      local probe = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
      local web = probe.port
      probe:close()
      h.write_file(dir .. "/prometheus.yml", table.concat({
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: sprun",
        "    scrape_interval: 1s",
        "    static_configs:",
        "      - targets: ['127.0.0.1:" .. ep.port .. "']",
      }, "\n") .. "\n")
      local prom = assert(sprun.process.spawn {
        "prometheus", "--config.file=" .. dir .. "/prometheus.yml",
        "--storage.tsdb.path=" .. dir .. "/data",
        "--web.listen-address=127.0.0.1:" .. web, "--log.level=warn",
        env = { LD_PRELOAD = false },
      })

      local function query(q)
        local conn = sprun.tcp.connect("127.0.0.1", web, { timeout_ms = 1000 })
        if conn == nil then
          return nil
        end
        local enc = q:gsub("[^%w%-_.~]", function(c)
          return ("%%%02X"):format(c:byte())
        end)
        conn:write("GET /api/v1/query?query=" .. enc .. " HTTP/1.0\r\n"
                   .. "Host: 127.0.0.1\r\n\r\n")
        local parts = {}
        while true do
          local data = conn:read()
          if data == nil then break end
          parts[#parts + 1] = data
        end
        conn:close()
        local body = table.concat(parts):match("\r\n\r\n(.*)$")
        local decoded = body and select(2, pcall(cjson.decode, body))
        if type(decoded) ~= "table" or decoded.status ~= "success"
           or decoded.data.result[1] == nil then
          return nil
        end
        return decoded.data.result[1].value[2]
      end

      local checked, failure = pcall(function()
        -- Bounded: fail with a clear message after 30 s.
        local t0, up = sprun.now(), nil
        while up ~= "1" do
          if sprun.now() - t0 > 30000 then
            error("Prometheus did not report up == 1 for the sprun "
                  .. "endpoint within 30 s (last: " .. tostring(up) .. ")", 0)
          end
          sprun.sleep(200)
          local t = sprun.spawn(query, 'up{job="sprun"}')
          up = t:await(3000)
        end
        local transitions = query('sprun_circuit_breaker_transitions_total'
          .. '{pool="scrape_pool",state="open"}')
        local rejected = query('sprun_circuit_breaker_rejected_calls_total'
          .. '{pool="scrape_pool"}')
        local state = query('sprun_circuit_breaker_state'
          .. '{pool="scrape_pool",state="open"}')
        assert.are.same({ "1", "1", "1" }, { transitions, rejected, state })
      end)
      prom:kill("SIGTERM")
      local stopper = sprun.spawn(function() return prom:wait() end)
      if not stopper:await(10000) then
        prom:kill("SIGKILL")
        prom:wait()
      end
      ep:close()
      if not checked then
        error(failure, 0)
      end
    end)
    h.rmrf(dir)
    assert(ok, err)
  end)
end)

-- The pool metrics, read from real pools of sprun worker processes
-- (tests/lua/pool/worker.lua). Every test stops its pools, and checks
-- that no child process is left.
describe("telemetry.prometheus: pools", function()
  local WORKER = h.root .. "/tests/lua/pool/worker.lua"
  local CLASSES = {}
  for i, c in ipairs(require("sprun.pool.barrier").CLASSES) do
    CLASSES[i] = c
  end
  table.sort(CLASSES)
  local FAMILIES = {
    "sprun_pool_state", "sprun_pool_size", "sprun_pool_ready_workers",
    "sprun_pool_busy_workers", "sprun_pool_starting_workers",
    "sprun_pool_tainted_workers", "sprun_pool_queued_requests",
    "sprun_pool_in_flight_requests", "sprun_pool_healthy",
    "sprun_pool_requests_total", "sprun_pool_replies_total",
    "sprun_pool_errors_total", "sprun_pool_crashes_total",
    "sprun_pool_restarts_total", "sprun_pool_recycled_total",
    "sprun_pool_dropped_replies_total", "sprun_pool_protocol_errors_total",
    "sprun_pool_poisoned_total", "sprun_pool_queue_wait_p50_seconds",
    "sprun_pool_queue_wait_p99_seconds", "sprun_pool_service_p50_seconds",
    "sprun_pool_service_p99_seconds",
  }
  local LATENCY = "^sprun_pool_[%w_]+_p[59][09]_seconds{"

  after_each(function()
    detach_all()
    assert.are.same({}, h.live_children())
  end)

  -- Runs fn(start, ep) in a loop with an endpoint; start(o) starts a pool
  -- of test workers. Every pool is stopped (its workers reaped) and the
  -- endpoint closed at the end, whether fn fails or not.
  local function with_pools(fn)
    return h.run_tasks(function()
      local ep = assert(telemetry.prometheus { host = "127.0.0.1", port = 0 })
      local pools = {}
      local function start(o)
        o.cmd = { h.sprun, WORKER }
        local pool = sprun.pool.start(o)
        pools[#pools + 1] = pool
        return pool
      end
      local r = h.pack(pcall(fn, start, ep))
      for _, pool in ipairs(pools) do
        pool:stop()
      end
      ep:close()
      if not r[1] then
        error(r[2], 0)
      end
      return unpack(r, 2, r.n)
    end)
  end

  -- The sample lines of the sprun_pool_* families for pool label `label`
  -- (as it is written, escaped), in order; the latency gauges apart.
  local function pool_lines(body, label)
    local lines, latencies = {}, {}
    local mark = '{pool="' .. label .. '"'
    for line in body:gmatch("[^\n]+") do
      if line:find("^sprun_pool_") and line:find(mark, 1, true) then
        if line:find(LATENCY) then
          latencies[#latencies + 1] = line
        else
          lines[#lines + 1] = line
        end
      end
    end
    return lines, latencies
  end

  -- The lines pool_lines gives (latencies apart) for a pool whose stats
  -- are `s`: { state, size, ready, busy, starting, tainted, queued,
  -- in_flight, healthy, requests, replies, errors = { kind = n },
  -- crashes = { class = n }, restarts, recycled, dropped_replies,
  -- protocol_errors, poisoned }, every field but state and errors a number.
  local function expected(label, s)
    local l = '{pool="' .. label .. '"'
    local out = {}
    local function add(name, labels, v)
      out[#out + 1] = name .. l .. labels .. "} " .. v
    end
    for _, st in ipairs { "running", "draining", "failed" } do
      add("sprun_pool_state", ',state="' .. st .. '"', s.state == st and 1 or 0)
    end
    add("sprun_pool_size", "", s.size)
    add("sprun_pool_ready_workers", "", s.ready)
    add("sprun_pool_busy_workers", "", s.busy)
    add("sprun_pool_starting_workers", "", s.starting)
    add("sprun_pool_tainted_workers", "", s.tainted)
    add("sprun_pool_queued_requests", "", s.queued)
    add("sprun_pool_in_flight_requests", "", s.in_flight)
    add("sprun_pool_healthy", "", s.healthy)
    add("sprun_pool_requests_total", "", s.requests)
    add("sprun_pool_replies_total", "", s.replies)
    local kinds = {}
    for k in pairs(s.errors) do kinds[#kinds + 1] = k end
    table.sort(kinds)
    for _, k in ipairs(kinds) do
      add("sprun_pool_errors_total", ',kind="' .. k .. '"', s.errors[k])
    end
    for _, c in ipairs(CLASSES) do
      add("sprun_pool_crashes_total", ',class="' .. c .. '"',
          s.crashes[c] or 0)
    end
    add("sprun_pool_restarts_total", "", s.restarts)
    add("sprun_pool_recycled_total", "", s.recycled)
    add("sprun_pool_dropped_replies_total", "", s.dropped_replies)
    add("sprun_pool_protocol_errors_total", "", s.protocol_errors)
    add("sprun_pool_poisoned_total", "", s.poisoned)
    return out
  end

  -- The value of latency gauge `name` for `label`, as a number.
  local function latency(body, name, label)
    local v = body:match("\n" .. name .. '{pool="' .. label:gsub("%p", "%%%0")
                         .. '"} (%S+)\n')
    assert(v, "no " .. name .. " line for " .. label .. " in:\n" .. body)
    return tonumber(v) or v
  end

  -- Every sprun_pool_* family has its HELP and TYPE lines, samples or not.
  local function assert_families(body)
    for _, name in ipairs(FAMILIES) do
      assert.is_truthy(body:find("\n# HELP " .. name .. " ", 1, true), name)
      local kind = name:find("_total$") and "counter" or "gauge"
      assert.is_truthy(body:find("\n# TYPE " .. name .. " " .. kind .. "\n",
                                 1, true), name)
    end
  end

  local CLEAN = { code = 0, stdout = "", stderr = "" }

  it("counts a pool's calls, worker errors and crashes, and shows its "
     .. "workers busy and its queue; promtool accepts every scrape; a "
     .. "stopped pool is gone", function()
    local r = with_pools(function(start, ep)
      local pool = start { name = "metrics_pool", size = 2,
                           restart = { backoff_ms = { 1 } } }
      local out = {}
      out.a = pool:call("echo", "a")
      out.b = pool:call("echo", "b")
      local _, e1 = pool:call("fail", { kind = "bad_input", message = "no" })
      local _, e2 = pool:call("raise", "plain")
      local _, e3 = pool:call("segv")
      out.kinds = { e1.kind, e2.kind, e3.kind }
      h.wait_for("the crashed worker's restart", function()
        local s = pool:stats()
        return s.ready == 2 and s.starting == 0
      end)
      local status
      status, _, out.idle = get(ep.port)
      out.status = status
      -- Both workers busy, one call queued.
      local t1 = sprun.spawn(function() return pool:call("sleep", 300) end)
      local t2 = sprun.spawn(function() return pool:call("sleep", 300) end)
      local t3 = sprun.spawn(function() return pool:call("echo", "q") end)
      h.wait_for("two calls in flight and one queued", function()
        local s = pool:stats()
        return s.in_flight == 2 and s.queued == 1
      end)
      out.busy = ep:metrics()
      out.values = { t1:await(), t2:await(), t3:await() }
      out.done = ep:metrics()
      out.stats = pool:stats()
      pool:stop()
      out.stopped = ep:metrics()
      return out
    end)
    assert.are.same({ "a", "b" }, { r.a, r.b })
    assert.are.same({ "bad_input", "error", "worker_crash" }, r.kinds)
    assert.are.same({ 300, 300, "q" }, r.values)
    assert.are.equal(200, r.status)

    local base = { state = "running", size = 2, ready = 2, busy = 0,
      starting = 0, tainted = 1, queued = 0, in_flight = 0, healthy = 1,
      requests = 5, replies = 2,
      errors = { bad_input = 1, error = 1, worker_crash = 1 },
      crashes = { segfault = 1 }, restarts = 1, recycled = 0,
      dropped_replies = 0, protocol_errors = 0, poisoned = 0 }
    local function with(changes)
      local t = {}
      for k, v in pairs(base) do t[k] = v end
      for k, v in pairs(changes) do t[k] = v end
      return t
    end
    assert.are.same(expected("metrics_pool", base),
                    (pool_lines(r.idle, "metrics_pool")))
    assert.are.same(expected("metrics_pool",
                             with { busy = 2, queued = 1, in_flight = 2,
                                    requests = 8 }),
                    (pool_lines(r.busy, "metrics_pool")))
    assert.are.same(expected("metrics_pool",
                             with { requests = 8, replies = 5 }),
                    (pool_lines(r.done, "metrics_pool")))

    -- The percentiles are the stats', in seconds: the queued echo waited
    -- for a 300 ms call to end, and the 300 ms calls are the slowest.
    local s = r.stats
    local got = {
      latency(r.done, "sprun_pool_queue_wait_p50_seconds", "metrics_pool"),
      latency(r.done, "sprun_pool_queue_wait_p99_seconds", "metrics_pool"),
      latency(r.done, "sprun_pool_service_p50_seconds", "metrics_pool"),
      latency(r.done, "sprun_pool_service_p99_seconds", "metrics_pool"),
    }
    assert.are.same({ s.queue_wait_ms.p50 / 1000, s.queue_wait_ms.p99 / 1000,
                      s.service_ms.p50 / 1000, s.service_ms.p99 / 1000 }, got)
    assert.are.same({ 8, 5 }, { s.queue_wait_ms.samples, s.service_ms.samples })
    assert.is_true(got[2] >= 0.2 and got[2] < 10, "wait p99 " .. got[2])
    assert.is_true(got[1] < got[2], "wait p50 " .. got[1])
    assert.is_true(got[4] >= 0.29 and got[4] < 10, "service p99 " .. got[4])
    assert.is_true(got[3] < 0.29, "service p50 " .. got[3])

    for _, body in ipairs { r.idle, r.busy, r.done, r.stopped } do
      assert.are.same(CLEAN, promtool_check(body))
      assert_families(body)
    end
    -- Stopped: no sample of the pool's is left.
    local lines, lat = pool_lines(r.stopped, "metrics_pool")
    assert.are.same({ {}, {} }, { lines, lat })
    assert.is_nil(r.stopped:find("\nsprun_pool_", 1, true))
  end)

  it("shows a new pool at zero with NaN percentiles, a draining and a "
     .. "failed pool by their state, escapes pool names, and drops each "
     .. "pool as it stops", function()
    local odd = 'odd "pool" \\ x'
    local odd_label = 'odd \\"pool\\" \\\\ x'
    local r = with_pools(function(start, ep)
      local a = start { name = odd, size = 2 }
      local d = start { name = "drained_pool", size = 1 }
      local f = start { name = "failing_pool", size = 2,
        crash_barrier = { max_retries = 5, backoff_ms = { 0 } },
        restart = { max_restarts = 1, backoff_ms = { 1 },
                    cooldown_ms = 60000 },
        health = { max_crashes = 2 } }
      h.wait_for("every worker to be ready", function()
        return a:stats().ready == 2 and d:stats().ready == 1
               and f:stats().ready == 2
      end)
      local out = {}
      -- Crashes two workers: poison, and two restarts within the window
      -- fail the pool.
      local _, err = f:call("segv", nil, { idempotent = true })
      out.err = { err.kind, err.details.crash.attempt, err.cause.kind }
      out.first = ep:metrics()
      out.failing = f:stats()
      local t = sprun.spawn(function() return d:call("sleep", 300) end)
      h.wait_for("the call in flight", function()
        return d:stats().in_flight == 1
      end)
      local drain = sprun.spawn(function() return d:drain(5000) end)
      h.wait_for("the pool to drain", function()
        return d:stats().state == "draining"
      end)
      out.draining = ep:metrics()
      out.value = t:await()
      assert(drain:await())
      out.drained = ep:metrics()
      f:stop()
      out.one_left = ep:metrics()
      a:stop()
      out.none = ep:metrics()
      return out
    end)
    assert.are.same({ "poison_request", 1, "worker_crash" }, r.err)
    assert.are.equal(300, r.value)

    local zero = { state = "running", size = 2, ready = 2, busy = 0,
      starting = 0, tainted = 0, queued = 0, in_flight = 0, healthy = 1,
      requests = 0, replies = 0, errors = {}, crashes = {}, restarts = 0,
      recycled = 0, dropped_replies = 0, protocol_errors = 0, poisoned = 0 }
    local lines, lat = pool_lines(r.first, odd_label)
    assert.are.same(expected(odd_label, zero), lines)
    assert.are.same({
      'sprun_pool_queue_wait_p50_seconds{pool="' .. odd_label .. '"} NaN',
      'sprun_pool_queue_wait_p99_seconds{pool="' .. odd_label .. '"} NaN',
      'sprun_pool_service_p50_seconds{pool="' .. odd_label .. '"} NaN',
      'sprun_pool_service_p99_seconds{pool="' .. odd_label .. '"} NaN',
    }, lat)

    -- The failed pool: ready and starting depend on how far the first
    -- crashed worker's restart got, so they are taken from its stats.
    local fs = r.failing
    assert.are.equal("failed", fs.state)
    assert.are.same(expected("failing_pool", {
      state = "failed", size = 2, ready = fs.ready, busy = 0,
      starting = fs.starting, tainted = 2, queued = 0, in_flight = 0,
      healthy = 0, requests = 1, replies = 0,
      errors = { poison_request = 1 }, crashes = { segfault = 2 },
      restarts = 1, recycled = 0, dropped_replies = 0, protocol_errors = 0,
      poisoned = 1 }), (pool_lines(r.first, "failing_pool")))

    local dl = pool_lines(r.draining, "drained_pool")
    for _, want in ipairs {
      'sprun_pool_state{pool="drained_pool",state="running"} 0',
      'sprun_pool_state{pool="drained_pool",state="draining"} 1',
      'sprun_pool_state{pool="drained_pool",state="failed"} 0',
      'sprun_pool_busy_workers{pool="drained_pool"} 1',
      'sprun_pool_in_flight_requests{pool="drained_pool"} 1',
      'sprun_pool_requests_total{pool="drained_pool"} 1',
    } do
      assert.is_true(lines_of(table.concat(dl, "\n"))[want] == true,
                     "missing line: " .. want .. "\nin:\n" .. r.draining)
    end

    -- Each pool leaves as it stops; the families stay.
    local function pools_in(body)
      local seen, list = {}, {}
      for label in body:gmatch('\nsprun_pool_state{pool="(.-)",state=') do
        if not seen[label] then
          seen[label] = true
          list[#list + 1] = label
        end
      end
      table.sort(list)
      return list
    end
    assert.are.same({ "drained_pool", "failing_pool", odd_label },
                    pools_in(r.first))
    assert.are.same({ "failing_pool", odd_label }, pools_in(r.drained))
    assert.are.same({ odd_label }, pools_in(r.one_left))
    assert.are.same({}, pools_in(r.none))
    assert.is_nil(r.none:find("\nsprun_pool_", 1, true))
    for _, body in ipairs { r.first, r.draining, r.drained, r.one_left,
                            r.none } do
      assert.are.same(CLEAN, promtool_check(body))
      assert_families(body)
    end
  end)
end)
