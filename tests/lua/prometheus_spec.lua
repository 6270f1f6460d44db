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
