-- sprun.telemetry: attach, detach, execute, list_handlers, and every event
-- the breaker, the retry loop and the health monitor emit, with their
-- exact measurements and metadata.
local h = require "helpers"
local sprun = require "sprun"
local telemetry = require "sprun.telemetry"
local retry = require "sprun.retry"
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"
local ex = require "sprun.executor"

local function detach_all()
  for _, r in ipairs(telemetry.list_handlers({})) do
    telemetry.detach(r.id)
  end
end

-- Records every event whose name starts with `prefix` (a dotted name):
-- { name, measurements, metadata } in order.
local function recorder(...)
  local seen = {}
  local events = {}
  for _, e in ipairs(telemetry.EVENTS) do
    for i = 1, select("#", ...) do
      if e.name:sub(1, #select(i, ...)) == select(i, ...) then
        events[#events + 1] = e.event
        break
      end
    end
  end
  telemetry.attach_many("recorder", events, function(event, m, md)
    seen[#seen + 1] = { table.concat(event, "."), m, md }
  end)
  return seen
end

-- A breaker driven by a clock the test sets: t.now.
local function breaker(opts)
  local t = { now = 0 }
  opts.name = opts.name or "python_pool"
  opts.clock = function() return t.now end
  return circuit_breaker.start_link(opts), t
end

local function fail() return nil, "boom" end
local function succeed() return "ok" end

-- Drops the measured durations of recorded events (they cannot be known in
-- advance), after checking they are numbers >= 0.
local function without_durations(seen, key)
  for _, e in ipairs(seen) do
    local d = e[2][key]
    if d ~= nil then
      assert.are.equal("number", type(d))
      assert.is_true(d >= 0)
      e[2][key] = "ms"
    end
  end
  return seen
end

-- Checks that the events of `seen` carry one retry loop's `call` (a
-- number, the same in all) and replaces it by "call".
local function without_call(seen)
  local call = seen[1] and seen[1][3].call
  assert.are.equal("number", type(call))
  for _, e in ipairs(seen) do
    assert.are.equal(call, e[3].call)
    e[3].call = "call"
  end
  return seen
end

describe("telemetry", function()
  after_each(detach_all)

  describe("attach and execute", function()
    it("calls the handler with the event, measurements, metadata and config",
      function()
        local calls = {}
        assert.is_true(telemetry.attach("h1", { "app", "request", "done" },
          function(...) calls[#calls + 1] = { ... } end, { level = 1 }))
        telemetry.execute({ "app", "request", "done" }, { duration = 5 },
                          { path = "/x" })
        assert.are.same({ { { "app", "request", "done" }, { duration = 5 },
                            { path = "/x" }, { level = 1 } } }, calls)
      end)

    it("calls only the handlers of that exact event", function()
      local got = {}
      telemetry.attach("a", { "app", "a" }, function() got[#got + 1] = "a" end)
      telemetry.attach("ab", { "app", "a", "b" },
                       function() got[#got + 1] = "ab" end)
      telemetry.execute({ "app", "a", "b" }, {}, {})
      telemetry.execute({ "app" }, {}, {})
      telemetry.execute({ "app", "c" })
      assert.are.same({ "ab" }, got)
    end)

    it("calls several handlers in the order they were attached", function()
      local got = {}
      for _, id in ipairs { "first", "second", "third" } do
        telemetry.attach(id, { "e" }, function() got[#got + 1] = id end)
      end
      telemetry.execute({ "e" })
      assert.are.same({ "first", "second", "third" }, got)
    end)

    it("follows an event list reused and changed between calls", function()
      local got = {}
      telemetry.attach("a", { "app", "a" }, function() got[#got + 1] = "a" end)
      telemetry.attach("b", { "app", "b", "x" },
                       function() got[#got + 1] = "bx" end)
      local event = { "app", "a" }
      telemetry.execute(event)
      telemetry.execute(event)
      event[2] = "b"
      telemetry.execute(event)
      event[3] = "x"
      telemetry.execute(event)
      event[3] = nil
      event[2] = "a"
      telemetry.execute(event)
      assert.are.same({ "a", "a", "bx", "a" }, got)
      event[2] = "a.b"
      assert.has_error(function() telemetry.execute(event) end,
        "telemetry.execute: event[2] must be a non-empty string without '.', "
        .. 'got "a.b"')
    end)

    it("passes empty tables for nil measurements and metadata", function()
      local args
      telemetry.attach("h", { "e" }, function(...) args = { ... } end)
      telemetry.execute({ "e" })
      assert.are.same({ { "e" }, {}, {} }, args)
    end)

    it("attach_many attaches one handler to several events under one id",
      function()
        local got = {}
        telemetry.attach_many("many", { { "a" }, { "b", "c" } },
          function(event) got[#got + 1] = table.concat(event, ".") end, "cfg")
        telemetry.execute({ "a" })
        telemetry.execute({ "b", "c" })
        telemetry.execute({ "b" })
        assert.are.same({ "a", "b.c" }, got)
        assert.is_true(telemetry.detach("many"))
        telemetry.execute({ "a" })
        assert.are.same({ "a", "b.c" }, got)
      end)

    it("refuses an id attached twice, with a clear message", function()
      telemetry.attach("dup", { "a" }, function() end)
      local ok, err = pcall(function()
        telemetry.attach("dup", { "b" }, function() end)
      end)
      assert.is_false(ok)
      assert.matches('telemetry.attach: id "dup" is already attached '
                     .. "%(detach it first%)", err)
      assert.matches("telemetry_spec.lua:%d+:", err)
      ok, err = pcall(telemetry.attach_many, "dup", { { "b" } },
                      function() end)
      assert.is_false(ok)
      assert.matches('telemetry.attach_many: id "dup" is already attached',
                     err)
      -- The first attachment is untouched.
      assert.are.equal(1, #telemetry.list_handlers({}))
    end)

    it("can attach an id again once detached", function()
      telemetry.attach("again", { "a" }, function() end)
      assert.is_true(telemetry.detach("again"))
      assert.is_true(telemetry.attach("again", { "a" }, function() end))
    end)

    it("detach returns false for an id that is not attached", function()
      assert.is_false(telemetry.detach("nobody"))
      telemetry.attach("x", { "a" }, function() end)
      assert.is_true(telemetry.detach("x"))
      assert.is_false(telemetry.detach("x"))
    end)

    it("a handler detached by an earlier handler still sees the event "
       .. "being dispatched, and no later one", function()
      local got = {}
      telemetry.attach("first", { "e" }, function()
        got[#got + 1] = "first"
        telemetry.detach("second")
      end)
      telemetry.attach("second", { "e" }, function()
        got[#got + 1] = "second"
      end)
      telemetry.execute({ "e" })
      telemetry.execute({ "e" })
      assert.are.same({ "first", "second", "first" }, got)
    end)

    it("rejects misuse with messages naming the function and argument",
      function()
        local f = function() end
        local cases = {
          { telemetry.attach, { nil, { "a" }, f },
            "telemetry.attach: id must be a non-empty string or a number, "
            .. "got nil" },
          { telemetry.attach, { "x", "a.b", f },
            "telemetry.attach: event must be a non-empty list of non-empty "
            .. "strings without '.', got \"a.b\"" },
          { telemetry.attach, { "x", {}, f },
            "telemetry.attach: event must be a non-empty list of non-empty "
            .. "strings without '.', got table" },
          { telemetry.attach, { "x", { "a", 2 }, f },
            "telemetry.attach: event[2] must be a non-empty string without "
            .. "'.', got 2" },
          { telemetry.attach, { "x", { "a.b" }, f },
            "telemetry.attach: event[1] must be a non-empty string without "
            .. "'.', got \"a.b\"" },
          { telemetry.attach, { "x", { "a" }, "f" },
            "telemetry.attach: handler must be a function, got \"f\"" },
          { telemetry.attach_many, { "x", {}, f },
            "telemetry.attach_many: events must be a non-empty list of "
            .. "events, got table" },
          { telemetry.attach_many, { "x", { { "a" }, "b" }, f },
            "telemetry.attach_many: events[2] must be a non-empty list of "
            .. "non-empty strings without '.', got \"b\"" },
          { telemetry.execute, { "a.b" },
            "telemetry.execute: event must be a non-empty list of non-empty "
            .. "strings without '.', got \"a.b\"" },
          { telemetry.execute, { { "a" }, 5 },
            "telemetry.execute: measurements must be a table or nil, got 5" },
          { telemetry.execute, { { "a" }, {}, "md" },
            "telemetry.execute: metadata must be a table or nil, got \"md\"" },
          { telemetry.detach, {},
            "telemetry.detach: id must be a non-empty string or a number, "
            .. "got nil" },
          { telemetry.detach, { { "x" } },
            "telemetry.detach: id must be a non-empty string or a number, "
            .. "got table" },
          { telemetry.detach, { "" },
            "telemetry.detach: id must be a non-empty string or a number, "
            .. "got \"\"" },
          { telemetry.on_detach, { nil, f },
            "telemetry.on_detach: id must be a non-empty string or a "
            .. "number, got nil" },
          { telemetry.on_detach, { "x", 5 },
            "telemetry.on_detach: fn must be a function, got 5" },
          { telemetry.list_handlers, { "snakepit" },
            "telemetry.list_handlers: prefix must be a list of strings, "
            .. "got \"snakepit\"" },
        }
        for _, c in ipairs(cases) do
          local ok, err = pcall(function()
            c[1](unpack(c[2], 1, 3))
          end)
          assert.is_false(ok)
          assert.are.equal(c[3], (err:gsub("^[^:]*:%d+: ", "")))
          -- Raised at the caller's line.
          assert.matches("^[^:]*telemetry_spec.lua:%d+: ", err)
        end
        assert.are.same({}, telemetry.list_handlers())
      end)
  end)

  describe("list_handlers", function()
    it("lists the handlers whose event starts with the prefix, in order",
      function()
        local f, g = function() end, function() end
        telemetry.attach("open", { "snakepit", "circuit_breaker", "opened" },
                         f, "c1")
        telemetry.attach_many("retry", { { "snakepit", "retry", "attempt" },
          { "snakepit", "retry", "success" } }, g)
        telemetry.attach("mine", { "app", "x" }, f)
        assert.are.same({
          { id = "open", event = { "snakepit", "circuit_breaker", "opened" },
            handler = f, config = "c1" },
          { id = "retry", event = { "snakepit", "retry", "attempt" },
            handler = g },
          { id = "retry", event = { "snakepit", "retry", "success" },
            handler = g },
        }, telemetry.list_handlers({ "snakepit" }))
        assert.are.same({ "retry", "retry" }, (function()
          local ids = {}
          for i, r in ipairs(telemetry.list_handlers { "snakepit", "retry" })
          do ids[i] = r.id end
          return ids
        end)())
        assert.are.equal(4, #telemetry.list_handlers({}))
        assert.are.equal(4, #telemetry.list_handlers())
        assert.are.same({}, telemetry.list_handlers { "snakepit", "worker" })
        assert.are.same({}, telemetry.list_handlers { "app", "x", "y" })
      end)

    it("gives copies: changing them changes nothing attached", function()
      telemetry.attach("c", { "a", "b" }, function() end)
      local l = telemetry.list_handlers({})
      l[1].event[1] = "z"
      assert.are.same({ "a", "b" }, telemetry.list_handlers({})[1].event)
    end)
  end)

  describe("enabled and observed", function()
    it("hold the names of the events with a handler, updated in place",
      function()
        local enabled, observed = telemetry.enabled, telemetry.observed
        assert.is_nil(next(enabled))
        telemetry.attach("a", { "snakepit", "circuit_breaker", "call",
                                "success" }, function() end)
        assert.are.equal(enabled, telemetry.enabled)
        assert.are.same({ ["snakepit.circuit_breaker.call.success"] = true },
                        enabled)
        assert.is_true(observed["snakepit.circuit_breaker.call"])
        assert.is_true(observed["snakepit.circuit_breaker"])
        assert.is_true(observed["snakepit"])
        assert.is_nil(observed["snakepit.retry"])
        telemetry.detach("a")
        assert.is_nil(next(enabled))
        assert.is_nil(next(observed))
      end)

    it("emit sites build nothing while no handler is attached", function()
      -- A breaker call and a crash with nothing attached allocate nothing
      -- per call once warm (the rejection error is made at start_link).
      local cb = circuit_breaker.start_link { name = "quiet",
                                              failure_threshold = 1 }
      local hm = health_monitor.start_link { max_crashes = 1000000 }
      local function work(n)
        for _ = 1, n do cb:call(succeed) end
        for _ = 1, n do hm:record_crash("w1") end
      end
      work(1000)
      -- The least of three measures: a trace being recorded again (after
      -- the JIT flushed its cache, late in a long run of specs) allocates
      -- while the interpreter runs; an emit site that builds something
      -- allocates in all three.
      local used = math.huge
      for _ = 1, 3 do
        collectgarbage("collect")
        collectgarbage("stop")
        local before = collectgarbage("count")
        work(10000)
        used = math.min(used, (collectgarbage("count") - before) * 1024)
        collectgarbage("restart")
      end
      assert.is_true(used < 20000, "allocated " .. used .. " bytes")
    end)
  end)

  describe("a handler that raises", function()
    it("is detached and warned about on stderr in one line naming it, and "
       .. "the breaker keeps working", function()
      local dir = h.tmpdir()
      local script = h.write_file(dir .. "/raise.lua", [[
local sprun = require "sprun"
local t = sprun.telemetry
local seen = {}
t.attach("bad-handler", { "snakepit", "circuit_breaker", "opened" },
  function() error("handler blew up\nsecond line") end)
t.attach("good", { "snakepit", "circuit_breaker", "opened" },
  function(_, m) seen[#seen + 1] = m.failure_count end)
local cb = sprun.circuit_breaker.start_link { name = "python_pool",
  failure_threshold = 1, reset_timeout_ms = 10 }
print(cb:call(function() return nil, "x" end))
print(cb:state(), #t.list_handlers { "snakepit" })
sprun.sleep(20)
print(cb:call(function() return "after" end))
cb:call(function() return nil, "x" end)
print(cb:state(), table.concat(seen, ","))
]])
      local r = h.sprun_run { script }
      h.rmrf(dir)
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("nil\tx\nopen\t1\nafter\nopen\t1,1\n", r.stdout)
      assert.are.equal('sprun: telemetry handler "bad-handler" for '
        .. "snakepit.circuit_breaker.opened raised an error and was "
        .. "detached: " .. script .. ":5: handler blew up second line\n",
        r.stderr)
    end)

    it("never raises into the emitter, which goes on to the next handler",
      function()
        local io_stderr = io.stderr
        local got = {}
        telemetry.attach("raises", { "e" }, function() error({}) end)
        telemetry.attach("after", { "e" }, function() got[#got + 1] = 1 end)
        -- The warning goes to stderr; the point here is the emitter.
        local ok = pcall(telemetry.execute, { "e" })
        assert.is_true(ok)
        telemetry.execute({ "e" })
        assert.are.same({ 1, 1 }, got)
        assert.are.same({ "after" }, { telemetry.list_handlers({})[1].id })
        assert.are.equal(io_stderr, io.stderr)
      end)
  end)

  describe("circuit breaker events", function()
    it("opened, half_open and closed with exactly the documented fields",
      function()
        local seen = recorder("snakepit.circuit_breaker.opened",
                              "snakepit.circuit_breaker.closed",
                              "snakepit.circuit_breaker.half_open")
        local cb, t = breaker { failure_threshold = 3, reset_timeout_ms = 100 }
        cb:call(fail)
        cb:call(fail)
        cb:call(fail)        -- opens with 3 failures
        t.now = 100
        cb:state()           -- half-open
        cb:call(fail)        -- the probe fails: opens again, with the 4
                             -- failures since it last closed (Snakepit's
                             -- failure_count)
        t.now = 200
        cb:call(succeed)     -- half-open, then the probe closes it
        cb:record_failure()  -- below the threshold: no transition
        assert.are.same({
          { "snakepit.circuit_breaker.opened", { failure_count = 3 },
            { pool = "python_pool", reason = "failures" } },
          { "snakepit.circuit_breaker.half_open", {},
            { pool = "python_pool" } },
          { "snakepit.circuit_breaker.opened", { failure_count = 4 },
            { pool = "python_pool", reason = "failures" } },
          { "snakepit.circuit_breaker.half_open", {},
            { pool = "python_pool" } },
          { "snakepit.circuit_breaker.closed", {}, { pool = "python_pool" } },
        }, seen)
      end)

    it("half_open fires on time from the breaker's timer, in virtual time",
      function()
        local seen = {}
        local t0
        telemetry.attach("timer", { "snakepit", "circuit_breaker",
                                    "half_open" }, function(_, m, md)
          seen[#seen + 1] = { sprun.now() - t0, m, md }
        end)
        h.run_tasks({ clock = "virtual" }, function()
          t0 = sprun.now()
          local cb = circuit_breaker.start_link { name = "timed",
            failure_threshold = 1, reset_timeout_ms = 5000 }
          cb:record_failure()
          sprun.sleep(9000)
        end)
        assert.are.same({ { 5000, {}, { pool = "timed" } } }, seen)
      end)

    it("record_success and record_failure emit the transitions they cause",
      function()
        local seen = recorder("snakepit.circuit_breaker.")
        local cb, t = breaker { name = "manual", failure_threshold = 1,
                                reset_timeout_ms = 10 }
        cb:record_failure()
        t.now = 10
        cb:record_success()
        local names = {}
        for i, e in ipairs(seen) do names[i] = e[1] end
        assert.are.same({ "snakepit.circuit_breaker.opened",
                          "snakepit.circuit_breaker.half_open",
                          "snakepit.circuit_breaker.closed" }, names)
      end)

    it("call.allowed, call.success and call.failure when a handler is "
       .. "attached", function()
      local seen = recorder("snakepit.circuit_breaker.call.",
                            "snakepit.circuit_breaker.opened")
      local cb = breaker { failure_threshold = 2 }
      local err_obj = sprun.error("timeout", "slow")
      assert.are.equal("ok", cb:call(succeed))
      assert.are.same({ nil, "boom" }, { cb:call(fail) })
      local ok, raised = pcall(cb.call, cb, function() error(err_obj) end)
      assert.is_false(ok)
      assert.are.equal(err_obj, raised)
      without_durations(seen, "duration_ms")
      assert.are.same({
        { "snakepit.circuit_breaker.call.allowed", {},
          { pool = "python_pool", state = "closed" } },
        { "snakepit.circuit_breaker.call.success", { duration_ms = "ms" },
          { pool = "python_pool", state = "closed" } },
        { "snakepit.circuit_breaker.call.allowed", {},
          { pool = "python_pool", state = "closed" } },
        { "snakepit.circuit_breaker.call.failure", { duration_ms = "ms" },
          { pool = "python_pool", state = "closed", error = "boom" } },
        { "snakepit.circuit_breaker.call.allowed", {},
          { pool = "python_pool", state = "closed" } },
        { "snakepit.circuit_breaker.call.failure", { duration_ms = "ms" },
          { pool = "python_pool", state = "closed", error = err_obj } },
        { "snakepit.circuit_breaker.opened", { failure_count = 2 },
          { pool = "python_pool", reason = "failures" } },
      }, seen)
    end)

    it("call.rejected with the state that rejected it", function()
      local seen = recorder("snakepit.circuit_breaker.call.rejected")
      local cb, t = breaker { failure_threshold = 1, reset_timeout_ms = 10,
                              half_open_max_calls = 1 }
      cb:record_failure()
      local r, e = cb:call(succeed)
      assert.are.same({ nil, "circuit_open" }, { r, e.kind })
      t.now = 10
      -- One probe in flight fills the half-open breaker.
      cb:call(function()
        assert.is_nil(cb:call(succeed))
        return "probe"
      end)
      assert.are.same({
        { "snakepit.circuit_breaker.call.rejected", {},
          { pool = "python_pool", state = "open" } },
        { "snakepit.circuit_breaker.call.rejected", {},
          { pool = "python_pool", state = "half_open" } },
      }, seen)
    end)

    it("measures a call's duration_ms", function()
      local seen = recorder("snakepit.circuit_breaker.call.success")
      h.run_tasks(function()
        local cb = circuit_breaker.start_link { name = "slow" }
        cb:call(function() sprun.sleep(30) end)
      end)
      assert.are.equal(1, #seen)
      local d = seen[1][2].duration_ms
      assert.is_true(d >= 25 and d < 10000, "duration_ms " .. d)
    end)

    it("the per-call path keeps the breaker's rules (generations, "
       .. "re-raise, values)", function()
      recorder("snakepit.circuit_breaker.call.")
      local cb = breaker { failure_threshold = 1 }
      assert.are.same({ 1, nil, 3, n = 3 },
        (function(...) return { n = select("#", ...), ... } end)(
          cb:call(function() return 1, nil, 3 end)))
      -- A result that arrives after the breaker moved on is ignored.
      cb:call(function() cb:reset() return nil, "late" end)
      assert.are.equal("closed", cb:state())
      assert.are.equal(1, cb:stats().ignored_count)
    end)

    it("a per-call handler that raises is detached and the call goes on",
      function()
        local cb = breaker { failure_threshold = 1 }
        telemetry.attach("bad", { "snakepit", "circuit_breaker", "call",
                                  "allowed" }, function() error("no") end)
        assert.are.equal("ok", cb:call(succeed))
        assert.is_nil(telemetry.observed["snakepit.circuit_breaker.call"])
        assert.are.equal("ok", cb:call(succeed))
      end)
  end)

  describe("worker crash events", function()
    it("snakepit.worker.crash with the monitor's pool, worker_id, reason",
      function()
        local seen = recorder("snakepit.worker.crash")
        local hm = health_monitor.start_link { name = "pool_health",
                                               pool = "python_pool" }
        hm:record_crash("worker_1", { reason = "segfault" })
        hm:record_crash(7)
        assert.are.same({
          { "snakepit.worker.crash", {},
            { pool = "python_pool", worker_id = "worker_1",
              reason = "segfault" } },
          { "snakepit.worker.crash", {},
            { pool = "python_pool", worker_id = 7 } },
        }, seen)
      end)

    it("the pool defaults to the monitor's default pool", function()
      local seen = recorder("snakepit.worker.crash")
      health_monitor.start_link():record_crash("w")
      assert.are.same({ pool = "default", worker_id = "w" }, seen[1][3])
    end)
  end)

  describe("retry events", function()
    local function flaky(failures, err)
      local calls = 0
      return function()
        calls = calls + 1
        if calls <= failures then
          return nil, err or sprun.error("unavailable", "try later")
        end
        return "done"
      end
    end

    it("attempt for each failed attempt retried, then success", function()
      local seen = recorder("snakepit.retry.")
      local result = h.run_tasks({ clock = "virtual" }, function()
        return ex.execute_with_retry(flaky(2), { max_attempts = 3,
          backoff_ms = { 100, 200 }, pool = "python_pool",
          operation = "predict" })
      end)
      assert.are.equal("done", result)
      without_durations(seen, "total_duration_ms")
      without_call(seen)
      local e1, e2 = seen[1][3].error, seen[3][3].error
      assert.are.equal("unavailable: try later", tostring(e1))
      assert.are.equal("unavailable: try later", tostring(e2))
      local function failed(err)
        return { pool = "python_pool", operation = "predict", error = err,
                 error_kind = "unavailable", error_message = "try later",
                 call = "call" }
      end
      assert.are.same({
        { "snakepit.retry.attempt", { attempt = 1, delay_ms = 100 },
          failed(e1) },
        { "snakepit.retry.backoff", { delay_ms = 100 },
          { pool = "python_pool", attempt = 1, call = "call" } },
        { "snakepit.retry.attempt", { attempt = 2, delay_ms = 200 },
          failed(e2) },
        { "snakepit.retry.backoff", { delay_ms = 200 },
          { pool = "python_pool", attempt = 2, call = "call" } },
        { "snakepit.retry.success",
          { attempts = 3, total_duration_ms = "ms" },
          { pool = "python_pool", call = "call" } },
      }, seen)
    end)

    it("exhausted with the last error when the attempts run out", function()
      local seen = recorder("snakepit.retry.attempt", "snakepit.retry.success",
                            "snakepit.retry.exhausted")
      local last = sprun.error("timeout", "third")
      local n = 0
      local _, err = h.run_tasks({ clock = "virtual" }, function()
        return ex.execute_with_retry(function()
          n = n + 1
          if n == 3 then return nil, last end
          return nil, "timeout"
        end, { max_attempts = 3, backoff_ms = { 10 }, pool = "api" })
      end)
      assert.is_true(err.details.retries_exhausted)
      without_durations(seen, "total_duration_ms")
      without_call(seen)
      assert.are.same({
        { "snakepit.retry.attempt", { attempt = 1, delay_ms = 10 },
          { pool = "api", error = "timeout", error_kind = "timeout",
            error_message = "timeout", call = "call" } },
        { "snakepit.retry.attempt", { attempt = 2, delay_ms = 10 },
          { pool = "api", error = "timeout", error_kind = "timeout",
            error_message = "timeout", call = "call" } },
        { "snakepit.retry.exhausted",
          { attempts = 3, total_duration_ms = "ms" },
          { pool = "api", last_error = last, call = "call" } },
      }, seen)
    end)

    it("total_duration_ms is measured with sprun.hrtime", function()
      local seen = recorder("snakepit.retry.success")
      h.run_tasks(function()
        ex.execute_with_retry(flaky(2), { max_attempts = 3,
          backoff_ms = { 20, 20 } })
      end)
      local d = seen[1][2].total_duration_ms
      assert.is_true(d >= 38 and d < 10000, "total_duration_ms " .. d)
      -- Not a whole number of ms: measured in ns.
      assert.are_not.equal(0, d % 1)
      without_call(seen)
      assert.are.same({ pool = "default", call = "call" }, seen[1][3])
    end)

    it("success on the first attempt has attempts = 1, no attempt event",
      function()
        local seen = recorder("snakepit.retry.")
        h.run_tasks(function()
          ex.execute_with_retry(succeed, { pool = "p" })
        end)
        assert.are.equal(1, #seen)
        without_call(seen)
        assert.are.same({ "snakepit.retry.success", 1,
                          { pool = "p", call = "call" } },
                        { seen[1][1], seen[1][2].attempts, seen[1][3] })
      end)

    it("a non-retriable error ends the loop with neither success nor "
       .. "exhausted", function()
      local seen = recorder("snakepit.retry.")
      h.run_tasks(function()
        ex.execute_with_retry(function() return nil, "bad_input" end,
                              { max_attempts = 3 })
      end)
      assert.are.same({}, seen)
    end)

    it("execute_with_protection names the breaker as the pool", function()
      local seen = recorder("snakepit.retry.attempt", "snakepit.retry.success")
      h.run_tasks({ clock = "virtual" }, function()
        local cb = circuit_breaker.start_link { name = "guarded" }
        ex.execute_with_protection(cb, flaky(1), { backoff_ms = { 5 },
                                                   operation = "op" })
      end)
      assert.are.same({ "guarded", "op" },
                      { seen[1][3].pool, seen[1][3].operation })
      without_call(seen)
      assert.are.same({ pool = "guarded", call = "call" }, seen[2][3])
    end)

    it("the helpers emit exactly the documented fields", function()
      local seen = recorder("snakepit.retry.")
      local t0 = sprun.hrtime()
      retry.emit_attempt("p", "op", 2, 400)
      retry.emit_success(nil, 3, t0)
      retry.emit_exhausted("p", 5, t0, "timeout")
      without_durations(seen, "total_duration_ms")
      assert.are.same({
        { "snakepit.retry.attempt", { attempt = 2, delay_ms = 400 },
          { pool = "p", operation = "op" } },
        { "snakepit.retry.backoff", { delay_ms = 400 },
          { pool = "p", attempt = 2 } },
        { "snakepit.retry.success", { attempts = 3, total_duration_ms = "ms" },
          { pool = "default" } },
        { "snakepit.retry.exhausted",
          { attempts = 5, total_duration_ms = "ms" },
          { pool = "p", last_error = "timeout" } },
      }, seen)
    end)
  end)

  describe("the event catalogue", function()
    it("lists every event sprun emits with its level", function()
      local got = {}
      for _, e in ipairs(telemetry.EVENTS) do
        got[#got + 1] = e.name .. " " .. e.level
        assert.are.same(e.event, (function()
          local l = {}
          for p in e.name:gmatch("[^.]+") do l[#l + 1] = p end
          return l
        end)())
      end
      assert.are.same({
        "snakepit.circuit_breaker.opened warning",
        "snakepit.circuit_breaker.closed info",
        "snakepit.circuit_breaker.half_open info",
        "snakepit.circuit_breaker.forced_open info",
        "snakepit.circuit_breaker.disabled info",
        "snakepit.circuit_breaker.isolated info",
        "snakepit.circuit_breaker.call.allowed debug",
        "snakepit.circuit_breaker.call.rejected debug",
        "snakepit.circuit_breaker.call.success debug",
        "snakepit.circuit_breaker.call.failure debug",
        "snakepit.retry.attempt info",
        "snakepit.retry.backoff debug",
        "snakepit.retry.success info",
        "snakepit.retry.exhausted warning",
        "snakepit.worker.crash info",
        "snakepit.worker.tainted warning",
        "snakepit.worker.restarted info",
        "sprun.retry.budget_exhausted warning",
        "sprun.bulkhead.rejected debug",
        "sprun.rate_limiter.rejected debug",
        "sprun.pool.worker_output debug",
        "sprun.pool.worker_started info",
        "sprun.pool.worker_stopped info",
        "sprun.pool.request debug",
        "sprun.batch.item debug",
        "sprun.process.started debug",
        "sprun.process.exited debug",
        "sprun.http.request debug",
        "sprun.fleet.degraded warning",
        "sprun.fleet.recovered info",
        "sprun.hedge.started info",
        "sprun.hedge.won debug",
      }, got)
    end)

    it("has every event named in sprun's sources", function()
      local listed = {}
      for _, e in ipairs(telemetry.EVENTS) do listed[e.name] = true end
      local missing, files = {}, 0
      local p = io.popen("find lua/sprun -name '*.lua'")
      for path in p:lines() do
        files = files + 1
        -- Module names are no events.
        local text = assert(io.open(path)):read("*a")
          :gsub('require%s*%(?%s*"[^"]*"', "")
        for name in text:gmatch('"((%a+)%.[%w_]+%.[%w_.]+)"') do
          local root = name:match("^%a+")
          if (root == "snakepit" or root == "sprun") and not listed[name] then
            -- A prefix of listed events (an event family) is no event.
            local family = false
            for l in pairs(listed) do
              if l:sub(1, #name + 1) == name .. "." then family = true end
            end
            if not family then missing[#missing + 1] = path .. ": " .. name end
          end
        end
      end
      p:close()
      assert.is_true(files > 20)
      assert.are.same({}, missing)
    end)

    it("is a field of require 'sprun'", function()
      assert.are.equal(telemetry, sprun.telemetry)
    end)
  end)
end)
