-- The logger and JSON-lines sinks, the JSON encoder, and the telemetry
-- options of the sprun executable (--telemetry, --log-events, --metrics).
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

local function detach_all()
  for _, r in ipairs(telemetry.list_handlers({})) do
    telemetry.detach(r.id)
  end
end

-- A writer that keeps what is written, line by line.
local function writer()
  local w = { text = "", flushes = 0 }
  function w:write(...)
    self.text = self.text .. table.concat({ ... })
    return self
  end
  function w:flush()
    self.flushes = self.flushes + 1
    return true
  end
  function w:lines()
    local out = {}
    for l in self.text:gmatch("([^\n]*)\n") do out[#out + 1] = l end
    return out
  end
  return w
end

-- A breaker on a clock the test sets: t.now.
local function breaker(opts)
  local t = { now = 0 }
  opts.clock = function() return t.now end
  return circuit_breaker.start_link(opts), t
end

local function fail() return nil, "boom" end
local function succeed() return "ok" end

-- Makes every event of the table happen once or more.
local function every_event()
  local cb, t = breaker { name = "python_pool", failure_threshold = 1,
                          reset_timeout_ms = 10 }
  cb:call(succeed)
  cb:call(fail)                    -- opened
  cb:call(succeed)                 -- rejected
  t.now = 10
  cb:call(succeed)                 -- half_open, closed
  local hm = health_monitor.start_link { pool = "python_pool" }
  hm:record_crash("worker_1", { reason = "segfault" })
  local t0 = sprun.hrtime()
  retry.emit_attempt("python_pool", "predict", 1, 100,
                     sprun.error("unavailable", "no worker"))
  retry.emit_success("python_pool", 2, t0)
  retry.emit_exhausted("python_pool", 3, t0,
                            sprun.error("timeout", "too slow"))
end

local function read_lines(path)
  local out = {}
  for l in io.lines(path) do out[#out + 1] = l end
  return out
end

describe("telemetry sinks", function()
  after_each(detach_all)

  describe("logger", function()
    it("writes one readable line per event, warnings for opened and "
       .. "exhausted", function()
      local w = writer()
      local id = telemetry.logger { io = w }
      assert.matches("^sprun%.logger%.%d+$", id)
      every_event()
      local lines = {}
      for i, l in ipairs(w:lines()) do
        lines[i] = l:gsub("duration_ms=[%d.]+", "duration_ms=D")
      end
      assert.are.same({
        "[warning] circuit breaker OPENED pool=python_pool failures=1",
        "[info] circuit breaker HALF_OPEN pool=python_pool",
        "[info] circuit breaker CLOSED pool=python_pool",
        "[info] worker CRASHED pool=python_pool worker=worker_1 "
          .. "reason=segfault",
        "[info] retry attempt FAILED pool=python_pool operation=predict "
          .. 'attempt=1 delay_ms=100 error="unavailable: no worker"',
        "[info] retry SUCCEEDED pool=python_pool attempts=2 duration_ms=D",
        '[warning] retry EXHAUSTED pool=python_pool attempts=3 '
          .. 'duration_ms=D error="timeout: too slow"',
      }, lines)
      assert.are.equal(#lines, w.flushes)
      assert.is_true(telemetry.detach(id))
      every_event()
      assert.are.equal(7, #w:lines())
    end)

    it("at level debug also logs every call and backoff", function()
      local w = writer()
      telemetry.logger { level = "debug", io = w }
      local cb = breaker { name = "p", failure_threshold = 1 }
      cb:call(succeed)
      cb:call(fail)
      cb:call(succeed)
      retry.emit_attempt("p", nil, 1, 12.5, "boom")
      telemetry.execute({ "sprun", "retry", "budget_exhausted" },
        { attempts = 2 }, { pool = "p", last_error = "timeout" })
      telemetry.execute({ "sprun", "bulkhead", "rejected" },
        { in_flight = 4, queued = 0 }, { pool = "b" })
      telemetry.execute({ "sprun", "rate_limiter", "rejected" },
        { retry_after_ms = 250 }, { name = "api", key = "10.0.0.1" })
      telemetry.execute({ "sprun", "rate_limiter", "rejected" },
        { retry_after_ms = 1.5 }, { name = "api" })
      local lines = {}
      for i, l in ipairs(w:lines()) do
        lines[i] = l:gsub("duration_ms=[%d.]+", "duration_ms=D")
      end
      assert.are.same({
        "[debug] circuit breaker call ALLOWED pool=p state=closed",
        "[debug] circuit breaker call SUCCEEDED pool=p state=closed "
          .. "duration_ms=D",
        "[debug] circuit breaker call ALLOWED pool=p state=closed",
        "[debug] circuit breaker call FAILED pool=p state=closed "
          .. "duration_ms=D error=boom",
        "[warning] circuit breaker OPENED pool=p failures=1",
        "[debug] circuit breaker call REJECTED pool=p state=open",
        "[info] retry attempt FAILED pool=p attempt=1 delay_ms=12.5 "
          .. "error=boom",
        "[debug] retry BACKOFF pool=p attempt=1 delay_ms=12.5",
        "[warning] retry BUDGET_EXHAUSTED pool=p attempts=2 error=timeout",
        "[debug] bulkhead call REJECTED pool=b in_flight=4 queued=0",
        "[debug] rate limiter call REJECTED name=api key=10.0.0.1 "
          .. "retry_after_ms=250",
        "[debug] rate limiter call REJECTED name=api retry_after_ms=1.5",
      }, lines)
    end)

    it("at level warning logs only opened, exhausted, tainted, "
       .. "budget_exhausted and degraded", function()
      local w = writer()
      telemetry.logger { level = "warning", io = w }
      every_event()
      assert.are.same({ "opened", "exhausted", "tainted", "budget_exhausted",
                        "degraded" },
        (function()
        local l = {}
        for _, r in ipairs(telemetry.list_handlers({})) do
          l[#l + 1] = r.event[#r.event]
        end
        return l
      end)())
      assert.are.equal(2, #w:lines())
    end)

    it("does not put the breaker on its per-call path below debug",
      function()
        telemetry.logger { io = writer() }
        assert.is_nil(telemetry.observed["snakepit.circuit_breaker.call"])
      end)

    it("writes to stderr by default", function()
      local r = h.sprun_run { "-e", [[
        local sprun = require "sprun"
        sprun.telemetry.logger()
        local cb = sprun.circuit_breaker.start_link { name = "python_pool",
          failure_threshold = 5 }
        for _ = 1, 5 do cb:call(function() return nil, "x" end) end
      ]] }
      assert.are.same({ code = 0, stdout = "", stderr = "[warning] circuit "
        .. "breaker OPENED pool=python_pool failures=5\n" }, r)
    end)

    it("rejects misuse with clear messages", function()
      for _, c in ipairs {
        { { level = "loud" }, "telemetry.logger: option 'level' must be "
          .. '"debug", "info" or "warning", got "loud"' },
        { { io = "stderr" }, "telemetry.logger: option 'io' must be a file "
          .. '(anything with a write method), got "stderr"' },
        { { lvl = "info" }, "telemetry.logger: unknown option 'lvl' (did you "
          .. "mean 'level'?)" },
      } do
        local ok, err = pcall(function() telemetry.logger(c[1]) end)
        assert.is_false(ok)
        assert.are.equal(c[2], (err:gsub("^[^:]*:%d+: ", "")))
      end
    end)

    it("quotes values with spaces and shows unknown events generically",
      function()
        assert.are.equal('[info] worker CRASHED pool="a pool" worker=1 '
          .. 'reason="out of memory"', telemetry.log_line(
          { "snakepit", "worker", "crash" }, {},
          { pool = "a pool", worker_id = 1, reason = "out of memory" }))
        assert.are.equal("[info] app.thing n=1.25 who=me", telemetry.log_line(
          { "app", "thing" }, { n = 1.25 }, { who = "me" }))
      end)
  end)

  describe("json_lines", function()
    local dir
    before_each(function() dir = h.tmpdir() end)
    after_each(function() h.rmrf(dir) end)

    it("writes one JSON object per event with timestamp, event, "
       .. "measurements and metadata", function()
      local path = dir .. "/events.jsonl"
      local before = os.time() * 1000
      local id = assert(telemetry.json_lines(path))
      assert.matches("^sprun%.json_lines%.%d+$", id)
      every_event()
      -- Each line is in the file already: flushed after each event.
      local lines = read_lines(path)
      local after = (os.time() + 1) * 1000
      assert.are.equal(7, #lines)
      local events = {}
      for i, l in ipairs(lines) do
        local o = cjson.decode(l)
        assert.is_true(o.timestamp >= before and o.timestamp <= after,
                       "timestamp " .. tostring(o.timestamp))
        assert.are.equal(0, o.timestamp % 1)
        if o.measurements.total_duration_ms then
          assert.is_true(o.measurements.total_duration_ms >= 0)
          o.measurements.total_duration_ms = "ms"
        end
        o.timestamp = nil
        events[i] = o
      end
      assert.are.same({
        { event = "snakepit.circuit_breaker.opened",
          measurements = { failure_count = 1 },
          metadata = { pool = "python_pool", reason = "failures" } },
        { event = "snakepit.circuit_breaker.half_open", measurements = {},
          metadata = { pool = "python_pool" } },
        { event = "snakepit.circuit_breaker.closed", measurements = {},
          metadata = { pool = "python_pool" } },
        { event = "snakepit.worker.crash", measurements = {},
          metadata = { pool = "python_pool", worker_id = "worker_1",
                       reason = "segfault" } },
        { event = "snakepit.retry.attempt",
          measurements = { attempt = 1, delay_ms = 100 },
          metadata = { pool = "python_pool", operation = "predict",
                       error = "unavailable: no worker",
                       error_kind = "unavailable",
                       error_message = "no worker" } },
        { event = "snakepit.retry.success",
          measurements = { attempts = 2, total_duration_ms = "ms" },
          metadata = { pool = "python_pool" } },
        { event = "snakepit.retry.exhausted",
          measurements = { attempts = 3, total_duration_ms = "ms" },
          metadata = { pool = "python_pool",
                       last_error = "timeout: too slow" } },
      }, events)
      assert.is_true(telemetry.detach(id))
      every_event()
      assert.are.equal(7, #read_lines(path))
    end)

    it("appends to an existing file", function()
      local path = h.write_file(dir .. "/events.jsonl", '{"old":true}\n')
      telemetry.json_lines(path)
      health_monitor.start_link():record_crash("w")
      local lines = read_lines(path)
      assert.are.equal(2, #lines)
      assert.are.equal("snakepit.worker.crash", cjson.decode(lines[2]).event)
    end)

    it("writes to a file handle, and at level debug every call", function()
      local w = writer()
      telemetry.json_lines(w, { level = "debug" })
      local cb = breaker { name = "p" }
      cb:call(succeed)
      local lines = w:lines()
      assert.are.equal(2, #lines)
      local allowed, success = cjson.decode(lines[1]), cjson.decode(lines[2])
      assert.are.same({ "snakepit.circuit_breaker.call.allowed", {},
                        { pool = "p", state = "closed" } },
                      { allowed.event, allowed.measurements, allowed.metadata })
      assert.are.equal("snakepit.circuit_breaker.call.success", success.event)
      assert.are.equal("number", type(success.measurements.duration_ms))
      assert.are.equal(2, w.flushes)
    end)

    it("returns nil, err for a path it cannot open", function()
      local id, err = telemetry.json_lines(dir .. "/no/such/dir/x.jsonl")
      assert.is_nil(id)
      assert.are.equal("io_error", err.kind)
      assert.matches("No such file or directory", err.message)
      assert.are.same({}, telemetry.list_handlers({}))
    end)

    it("rejects misuse with clear messages", function()
      for _, c in ipairs {
        { { 5 }, "telemetry.json_lines: target must be a path or a file, "
          .. "got 5" },
        { { dir .. "/x", { level = 3 } }, "telemetry.json_lines: option "
          .. "'level' must be \"debug\", \"info\" or \"warning\", got 3" },
      } do
        local ok, err = pcall(function() telemetry.json_lines(unpack(c[1])) end)
        assert.is_false(ok)
        assert.are.equal(c[2], (err:gsub("^[^:]*:%d+: ", "")))
      end
    end)

    it("loses nothing when the process is stopped by SIGTERM or SIGINT",
      function()
        for _, sig in ipairs { "SIGTERM", "SIGINT" } do
          local path = dir .. "/" .. sig .. ".jsonl"
          local script = h.write_file(dir .. "/events.lua", [[
local sprun = require "sprun"
local cb = sprun.circuit_breaker.start_link { name = "p",
  failure_threshold = 1, reset_timeout_ms = 5 }
local hm = sprun.health_monitor.start_link { pool = "p" }
for i = 1, 50 do
  hm:record_crash("w" .. i, { reason = "r" })
  cb:call(function() return nil, "x" end)
  sprun.sleep(6)
  cb:call(function() return "ok" end)
end
print("ready")
io.stdout:flush()
sprun.sleep(60000)
]])
          local code, lines
          h.run_tasks(function()
            local p = assert(sprun.process.spawn { h.sprun,
              "--telemetry=" .. path, script })
            assert.are.equal("ready", p:read_line())
            p:kill(sig)
            code = p:wait().code
          end)
          lines = read_lines(path)
          assert.are.equal(sig == "SIGTERM" and 143 or 130, code)
          -- 50 crashes, and 50 times opened, half_open, closed.
          assert.are.equal(200, #lines)
          for _, l in ipairs(lines) do
            assert.are.equal("table", type(cjson.decode(l)))
          end
        end
      end)
  end)

  describe("the sprun executable", function()
    local dir
    before_each(function() dir = h.tmpdir() end)
    after_each(function() h.rmrf(dir) end)

    local SCRIPT = [[
local sprun = require "sprun"
local cb = sprun.circuit_breaker.start_link { name = "python_pool",
  failure_threshold = 2 }
cb:call(function() return nil, "x" end)
cb:call(function() return nil, "x" end)
sprun.health_monitor.start_link { pool = "workers" }:record_crash("w1",
  { reason = "segfault" })
print("done")
]]

    it("--telemetry=stderr writes each event as a JSON line to stderr",
      function()
        local script = h.write_file(dir .. "/s.lua", SCRIPT)
        local r = h.sprun_run { "--telemetry=stderr", script }
        assert.are.equal(0, r.code)
        assert.are.equal("done\n", r.stdout)
        local events = {}
        for l in r.stderr:gmatch("[^\n]+") do
          local o = cjson.decode(l)
          events[#events + 1] = { o.event, o.measurements, o.metadata }
        end
        assert.are.same({
          { "snakepit.circuit_breaker.opened", { failure_count = 2 },
            { pool = "python_pool", reason = "failures" } },
          { "snakepit.worker.crash", {},
            { pool = "workers", worker_id = "w1", reason = "segfault" } },
        }, events)
      end)

    it("--telemetry=PATH appends the JSON lines to a file", function()
      local script = h.write_file(dir .. "/s.lua", SCRIPT)
      local path = dir .. "/events.jsonl"
      for _ = 1, 2 do
        local r = h.sprun_run { "--telemetry=" .. path, script }
        assert.are.same({ code = 0, stdout = "done\n", stderr = "" }, r)
      end
      local lines = read_lines(path)
      assert.are.equal(4, #lines)
      assert.are.equal("snakepit.circuit_breaker.opened",
                       cjson.decode(lines[3]).event)
    end)

    it("--telemetry with a path it cannot open exits 2 with one line",
      function()
        local r = h.sprun_run { "--telemetry=" .. dir .. "/no/x.jsonl",
                                h.write_file(dir .. "/s.lua", SCRIPT) }
        assert.are.same({ code = 2, stdout = "", stderr = "sprun: "
          .. "--telemetry: " .. dir .. "/no/x.jsonl: No such file or "
          .. "directory\n" }, r)
      end)

    it("--log-events logs each event to stderr", function()
      local r = h.sprun_run { "--log-events",
                              h.write_file(dir .. "/s.lua", SCRIPT) }
      assert.are.same({ code = 0, stdout = "done\n", stderr =
        "[warning] circuit breaker OPENED pool=python_pool failures=2\n"
        .. "[info] worker CRASHED pool=workers worker=w1 reason=segfault\n" },
        r)
    end)

    it("--log-events shows the error each retried attempt failed with",
      function()
      local r = h.sprun_run { "--log-events", "--virtual-time", "-e", [[
local sprun = require "sprun"
local n = 0
print(sprun.executor.execute_with_retry(function()
  n = n + 1
  if n == 1 then return nil, sprun.error("unavailable", "no worker") end
  if n == 2 then error({ code = 42 }) end
  return "ok"
end, { max_attempts = 3, backoff_ms = { 5 }, pool = "api",
       retriable_errors = { "unavailable", "error" } }))
]] }
      r.stderr = r.stderr:gsub("duration_ms=[%d.]+", "duration_ms=D")
      assert.are.same({ code = 0, stdout = "ok\n", stderr =
        '[info] retry attempt FAILED pool=api attempt=1 delay_ms=5 '
        .. 'error="unavailable: no worker"\n'
        .. '[info] retry attempt FAILED pool=api attempt=2 delay_ms=5 '
        .. 'error="error: { code = 42 }"\n'
        .. '[info] retry SUCCEEDED pool=api attempts=3 duration_ms=D\n' }, r)
    end)

    it("--metrics=HOST:PORT serves /metrics while the script runs, and "
       .. "does not keep the process alive after it", function()
      local flag = dir .. "/scraped"
      local script = h.write_file(dir .. "/serve.lua", SCRIPT .. [[
io.stdout:flush()
-- Runs until the test has scraped.
while not io.open(]] .. ("%q"):format(flag) .. [[) do sprun.sleep(20) end
return 7
]])
      local body, code, elapsed, promtool
      h.run_tasks(function()
        local probe = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
        local port = probe.port
        probe:close()
        local p = assert(sprun.process.spawn { h.sprun,
          "--metrics=127.0.0.1:" .. port, script })
        assert.are.equal("done", p:read_line())
        local conn = assert(sprun.tcp.connect("127.0.0.1", port))
        conn:write("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        local parts = {}
        while true do
          local d = conn:read()
          if not d then break end
          parts[#parts + 1] = d
        end
        conn:close()
        body = table.concat(parts):match("\r\n\r\n(.*)$")
        h.write_file(flag, "")
        local t0 = sprun.now()
        local waiter = sprun.spawn(function() return p:wait() end)
        local st = waiter:await(10000)
        if st == nil then
          p:kill("SIGKILL")
          p:wait()
        end
        code = st and st.code
        elapsed = sprun.now() - t0
      end)
      assert.are.equal(7, code)
      assert.is_true(elapsed < 10000, "exited after " .. elapsed .. " ms")
      assert.matches('sprun_circuit_breaker_transitions_total{pool='
        .. '"python_pool",state="open"} 1', body, 1, true)
      assert.matches('sprun_worker_crashes_total{pool="workers"} 1', body, 1,
                     true)
      promtool = h.write_file(dir .. "/m.txt", body)
      local r = h.run(PROMTOOL .. "check metrics < " .. h.shell_quote(promtool))
      assert.are.same({ code = 0, stdout = "", stderr = "" }, r)
    end)

    it("--metrics exits as soon as the script's tasks are done", function()
      local r = h.run("timeout 10 " .. h.shell_quote(h.sprun)
        .. " --metrics=127.0.0.1:0 -e 'print(1)' 2>&1; echo rc=$?")
      -- Port 0 is refused up front: a port must be given.
      assert.matches("must be HOST:PORT", r.stdout)
      local probe_port
      h.run_tasks(function()
        local probe = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
        probe_port = probe.port
        probe:close()
      end)
      local t0 = os.time()
      r = h.run("timeout 10 " .. h.shell_quote(h.sprun)
        .. " --metrics=127.0.0.1:" .. probe_port
        .. " -e 'print(require(\"sprun\").now() >= 0)'")
      assert.are.same({ code = 0, stdout = "true\n", stderr = "" }, r)
      assert.is_true(os.time() - t0 < 5)
    end)

    it("a bad --metrics address exits 2 with one clear line", function()
      local script = h.write_file(dir .. "/s.lua", SCRIPT)
      for _, c in ipairs {
        { "--metrics=9464", "sprun: option '--metrics' must be HOST:PORT "
          .. "with a port from 1 to 65535, got '9464' (see sprun -h)\n" },
        { "--metrics=127.0.0.1:99999", "sprun: option '--metrics' must be "
          .. "HOST:PORT with a port from 1 to 65535, got '127.0.0.1:99999' "
          .. "(see sprun -h)\n" },
        { "--metrics=", "sprun: option '--metrics' must be HOST:PORT with a "
          .. "port from 1 to 65535, got '' (see sprun -h)\n" },
        { "--metrics", "sprun: option '--metrics' must be HOST:PORT with a "
          .. "port from 1 to 65535, got 's.lua' (see sprun -h)\n", true },
        { "--metrics=not-an-ip.invalid:9464", "sprun: "
          .. "--metrics=not-an-ip.invalid:9464: not-an-ip.invalid: unknown "
          .. "node or service\n" },
      } do
        local r = h.sprun_run { c[1], script }
        -- A bare --metrics takes the next word as its value.
        local want = c[3] and c[2]:gsub("s%.lua", script, 1) or c[2]
        assert.are.same({ code = 2, stdout = "", stderr = want }, r)
      end
    end)

    it("a --metrics port in use exits 2 with one line", function()
      local script = h.write_file(dir .. "/s.lua", SCRIPT)
      local r
      h.run_tasks(function()
        local busy = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
        r = sprun.process.run { h.sprun, "--metrics=127.0.0.1:" .. busy.port,
                                script }
        r.port = busy.port
        busy:close()
      end)
      assert.are.same({ 2, "", "sprun: --metrics=127.0.0.1:" .. r.port
        .. ": listen on 127.0.0.1:" .. r.port .. ": address already in use\n" },
        { r.code, r.stdout, r.stderr })
    end)

    it("sprun -h describes the options", function()
      local usage = h.sprun_run({ "-h" }).stdout
      for _, opt in ipairs { "--telemetry DEST", "--log-events",
                             "--metrics HOST:PORT", "--telemetry-level LEVEL",
                             "each VALUE also as --option=VALUE" } do
        assert.is_truthy(usage:find(opt, 1, true), opt)
      end
    end)
  end)
end)
