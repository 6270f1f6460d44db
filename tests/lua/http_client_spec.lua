-- sprun.http.client: a breaker and a bulkhead per origin, retries that fit
-- HTTP (idempotent methods, 502/503/504/429, Retry-After, the budget),
-- origins forgotten when idle, the deadline header, and what telemetry
-- and Prometheus see. Against the fault server (tests/lua/httpd).
local h = require "helpers"
local sprun = require "sprun"
local fault = require "httpd.fault_server"
local telemetry = require "sprun.telemetry"
local cjson = require "cjson"

local http = sprun.http
local kind = sprun.error_kind

-- Runs fn(fs, fs2) with two fault servers (two origins), closed after.
local function with_servers(fn)
  return h.run_tasks(function()
    local fs, fs2 = fault.start(), fault.start()
    local ok, r = pcall(fn, fs, fs2)
    fs:close()
    fs2:close()
    assert(ok, r)
    return r
  end)
end

local function origin(fs)
  return "http://127.0.0.1:" .. fs.port
end

describe("sprun.http.client", function()
  it("keeps a breaker per origin: 5xx and connection errors count, 4xx "
    .. "do not, and one origin's failures leave the other closed", function()
    local r = with_servers(function(fs, fs2)
      local c = http.client {
        breaker_per_origin = { failure_threshold = 3,
                               reset_timeout_ms = 60000 },
      }
      local out = {}
      for _ = 1, 5 do
        out[#out + 1] = c:get(fs2:url("/status?code=404")).status
      end
      out[#out + 1] = c:breaker(origin(fs2)):state()
      for _ = 1, 3 do
        out[#out + 1] = c:get(fs:url("/status?code=500")).status
      end
      local v, err = c:get(fs:url("/ok"))
      out[#out + 1] = v == nil and kind(err) or v.status
      out[#out + 1] = fs.hits["/ok"] or 0
      out[#out + 1] = c:breaker(origin(fs)):state()
      out[#out + 1] = c:get(fs2:url("/ok")).status
      out[#out + 1] = c:breaker(fs2:url("/any/path")):state()
      return out
    end)
    assert.are.same({ 404, 404, 404, 404, 404, "closed", 500, 500, 500,
                      "circuit_open", 0, "open", 200, "closed" }, r)
  end)

  it("failure_statuses says which statuses count", function()
    local r = with_servers(function(fs)
      local c = http.client {
        breaker_per_origin = { failure_threshold = 2 },
        failure_statuses = function(status) return status == 404 end,
      }
      c:get(fs:url("/status?code=500"))
      c:get(fs:url("/status?code=500"))
      local after_500 = c:breaker(origin(fs)):state()
      c:get(fs:url("/status?code=404"))
      c:get(fs:url("/status?code=404"))
      return { after_500, c:breaker(origin(fs)):state() }
    end)
    assert.are.same({ "closed", "open" }, r)
  end)

  it("retries an idempotent GET on 503 honouring Retry-After, and never a "
    .. "POST", function()
    local r = with_servers(function(fs)
      local c = http.client {
        retry = { max_attempts = 3, backoff_ms = { 1 },
                  max_backoff_ms = 5000 },
      }
      local t0 = sprun.now()
      local v = assert(c:get(fs:url("/flaky?fail=2&retry_after=1&id=get")))
      local waited = sprun.now() - t0
      local p = assert(c:post(fs:url("/flaky?fail=2&id=post"), "x"))
      return { v.status, waited, fs.hits["/flaky"], p.status }
    end)
    assert.are.equal(200, r[1])
    -- Two backoffs of Retry-After: 1 s each, not the policy's 1 ms.
    assert.is_true(r[2] >= 1900, r[2] .. " ms")
    -- 3 GETs, 1 POST.
    assert.are.equal(4, r[3])
    assert.are.equal(503, r[4])
  end)

  it("a Retry-After past max_backoff_ms is cut to it; a status retried in "
    .. "vain comes back as the response", function()
    local r = with_servers(function(fs)
      local c = http.client {
        retry = { max_attempts = 2, backoff_ms = { 1 }, max_backoff_ms = 50 },
      }
      local t0 = sprun.now()
      local v = assert(c:get(fs:url("/503?retry_after=30")))
      local c2 = http.client {
        raise_for_status = true,
        retry = { max_attempts = 2, backoff_ms = { 1 } },
      }
      local _, err = c2:get(fs:url("/429?retry_after=0"))
      return { v.status, sprun.now() - t0, fs.hits["/503"], kind(err),
               err.details.status, fs.hits["/429"] }
    end)
    assert.are.equal(503, r[1])
    assert.is_true(r[2] >= 45 and r[2] < 2000, r[2] .. " ms")
    assert.are.equal(2, r[3])
    assert.are.same({ "http_error", 429, 2 }, { r[4], r[5], r[6] })
  end)

  it("retries connection errors, within the retry budget", function()
    local r = h.run_tasks(function()
      local c = http.client {
        retry = { max_attempts = 5, backoff_ms = { 0 },
                  budget = { ratio = 0, min_retries_per_s = 0.2,
                             ttl_ms = 10000 } },
      }
      local _, e1 = c:get("http://127.0.0.1:1/a")
      local _, e2 = c:get("http://127.0.0.1:1/b")
      return { kind(e1), e1.details.attempts, kind(e2),
               e2.details.budget_exhausted, c:stats().budget.refused }
    end)
    -- The budget allows 2 retries in the window: the first call makes 3
    -- attempts, the second is refused its first retry.
    assert.are.same({ "connection_refused", 3, "connection_refused", true,
                      2 }, r)
  end)

  it("a full bulkhead is bulkhead_full and does not count for the breaker",
    function()
    local r = with_servers(function(fs)
      local c = http.client {
        breaker_per_origin = { failure_threshold = 1 },
        bulkhead_per_origin = { max_concurrent = 1, max_queue = 0 },
      }
      local t = sprun.spawn(c.get, c, fs:url("/slow-headers?ms=100"))
      sprun.sleep(10)
      local v, err = c:get(fs:url("/ok"))
      local first = t:await()
      return { v, kind(err), first.status, c:breaker(origin(fs)):state() }
    end)
    assert.are.same({ nil, "bulkhead_full", 200, "closed" },
                    { r[1], r[2], r[3], r[4] })
  end)

  it("forgets an origin idle for idle_origin_ms, and keeps at most "
    .. "max_origins", function()
    local r = with_servers(function(fs, fs2)
      local c = http.client { breaker_per_origin = {}, idle_origin_ms = 50,
                              max_origins = 1 }
      c:get(fs:url("/ok"))
      local one = c:stats().count
      c:get(fs2:url("/ok"))
      local s = c:stats()
      sprun.sleep(60)
      c:get(fs2:url("/ok"))
      return { one, s.count, s.origins[origin(fs2)] ~= nil, s.evicted,
               c:breaker(origin(fs)) }
    end)
    assert.are.same({ 1, 1, true, 1 }, { r[1], r[2], r[3], r[4] })
    assert.is_nil(r[5])
  end)

  it("merges its defaults with each request's options, and sends the time "
    .. "left in deadline_header", function()
    local r = with_servers(function(fs)
      local c = http.client {
        base_url = origin(fs) .. "/", timeout_ms = 5000,
        headers = { ["x-client"] = "a", ["x-both"] = "client" },
        deadline_header = "x-request-deadline-ms",
      }
      return cjson.decode(assert(c:get("/echo", {
        headers = { ["x-both"] = "request" } })).body)
    end)
    assert.are.equal("a", r.headers["x-client"])
    assert.are.equal("request", r.headers["x-both"])
    local left = tonumber(r.headers["x-request-deadline-ms"])
    assert.is_true(left > 4000 and left <= 5000, tostring(left))
  end)

  it("sends what is left of the task's deadline when it comes before the "
    .. "timeout, and none with neither", function()
    local r = with_servers(function(fs)
      local c = http.client { base_url = origin(fs) .. "/",
                              timeout_ms = 5000,
                              deadline_header = "x-request-deadline-ms" }
      local within = sprun.executor.execute_with_timeout(function()
        return cjson.decode(assert(c:get("/echo")).body)
      end, { timeout_ms = 800 })
      local bare = http.client { base_url = origin(fs) .. "/",
                                 deadline_header = "x-request-deadline-ms" }
      return { within, cjson.decode(assert(bare:get("/echo")).body) }
    end)
    local left = tonumber(r[1].headers["x-request-deadline-ms"])
    assert.is_true(left > 500 and left <= 800, tostring(left))
    assert.is_nil(r[2].headers["x-request-deadline-ms"])
  end)

  it("deadline_ms bounds a request's attempts and backoffs together",
    function()
    local r = with_servers(function(fs)
      local c = http.client { base_url = origin(fs) .. "/",
        retry = { max_attempts = 50, backoff_ms = { 60 } } }
      local t0 = sprun.now()
      local v, err = c:get("/status?code=503", { deadline_ms = 200 })
      local took = sprun.now() - t0
      local hung_t0 = sprun.now()
      local _, e2 = c:get("/never", { deadline_ms = 150 })
      return { v, err, took, e2, sprun.now() - hung_t0, fs.hits["/status"] }
    end)
    -- 503 at 0, 60, 120, 180: the next backoff would end past 200.
    assert.are.same({ 503, true }, { r[1] and r[1].status,
                                    r[2] == nil or nil })
    assert.is_true(r[3] >= 180 and r[3] < 1000, tostring(r[3]))
    assert.are.equal(4, r[6])
    assert.are.same({ "timeout", true }, { kind(r[4]),
                                           r[4].details.deadline_exceeded })
    assert.is_true(r[5] >= 150 and r[5] < 1000, tostring(r[5]))
  end)

  it("adaptive_limit_per_origin refuses a request past the origin's limit "
     .. "before its breaker sees it", function()
    local r = with_servers(function(fs)
      local c = http.client { base_url = origin(fs) .. "/",
        breaker_per_origin = { failure_threshold = 1 },
        adaptive_limit_per_origin = { min_limit = 1, max_limit = 1,
                                      initial_limit = 1 } }
      local hung = sprun.spawn(function() return c:get("/never") end)
      sprun.sleep(50)
      local _, err = c:get("/ok")
      hung:cancel()
      hung:await() -- its permit goes back as it stops
      local ok = c:get("/ok")
      local s = c:stats().origins[origin(fs)]
      return { kind(err), ok and ok.status, s.state, s.limit }
    end)
    assert.are.same({ "limit_exceeded", 200, "closed", 1 }, r)
    local ok, err = pcall(http.client, { adaptive_limit_per_origin =
                                           { algorithm = "x" } })
    assert.is_false(ok)
    assert.matches("http.client: option 'adaptive_limit_per_origin."
                   .. "algorithm'", err, 1, true)
  end)

  it("every request is a sprun.http.request event, and Prometheus counts "
    .. "them by origin, status class and outcome", function()
    local r = with_servers(function(fs)
      local seen = {}
      telemetry.attach("http-spec", { "sprun", "http", "request" },
        function(_, m, md)
          seen[#seen + 1] = md.method .. " " .. m.status .. " " .. md.outcome
        end)
      local prom = assert(telemetry.prometheus { port = 0 })
      local c = http.client {}
      c:get(fs:url("/ok"))
      c:get(fs:url("/status?code=503"))
      http.get("http://127.0.0.1:1/")
      local metrics = prom:metrics()
      prom:close()
      telemetry.detach("http-spec")
      return { seen, metrics }
    end)
    assert.are.same({ "GET 200 ok", "GET 503 ok", "GET 0 connection_refused" },
                    r[1])
    local o = "http://127.0.0.1:"
    assert.matches('sprun_http_requests_total{origin="' .. o .. '%d+",'
                   .. 'status_class="2xx",outcome="ok"} 1', r[2])
    assert.matches('sprun_http_requests_total{origin="' .. o .. '%d+",'
                   .. 'status_class="5xx",outcome="ok"} 1', r[2])
    assert.matches('sprun_http_requests_total{origin="http://127.0.0.1:1",'
                   .. 'status_class="none",outcome="connection_refused"} 1',
                   r[2])
    assert.matches('sprun_http_request_duration_seconds_count{origin="'
                   .. o .. '%d+"} 2', r[2])
  end)
end)
