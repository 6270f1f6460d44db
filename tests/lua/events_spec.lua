-- The events of processes and the work they do, with their exact fields
-- and counts: sprun.pool.worker_started, worker_stopped and request
-- (real worker processes, tests/lua/pool/worker.lua), sprun.batch.item
-- (in virtual time, where durations are exact), sprun.process.started and
-- exited; their levels, log lines and README rows. Every test checks that
-- no child process is left, by pid.
local sprun = require "sprun"
local h = require "helpers"
local telemetry = require "sprun.telemetry"
local ex = require "sprun.executor"
local ffi = require "ffi"
pcall(ffi.cdef, "int kill(int pid, int sig);")

local WORKER = h.root .. "/tests/lua/pool/worker.lua"

local STARTED = "sprun.pool.worker_started"
local STOPPED = "sprun.pool.worker_stopped"
local REQUEST = "sprun.pool.request"
local ITEM = "sprun.batch.item"
local PSTARTED = "sprun.process.started"
local PEXITED = "sprun.process.exited"

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Records the events named: { name, m, md } in the order emitted.
local function record(...)
  local seen, events = {}, {}
  for i = 1, select("#", ...) do
    events[i] = telemetry.event_list((select(i, ...)))
  end
  telemetry.attach_many("events_spec", events, function(event, m, md)
    seen[#seen + 1] = { table.concat(event, "."), copy(m), copy(md) }
  end)
  return seen
end

-- The recorded events named `name`, in order.
local function only(seen, name)
  local out = {}
  for _, e in ipairs(seen) do
    if e[1] == name then out[#out + 1] = e end
  end
  return out
end

-- Checks that measurement `key` of each event is a number >= `min`, and
-- replaces it with "ms" (its value cannot be known in advance).
local function measured(list, key, min)
  for _, e in ipairs(list) do
    local v = e[2][key]
    assert.are.equal("number", type(v), key .. " of " .. e[1])
    assert.is_true(v >= (min or 0), key .. " = " .. v)
    e[2][key] = "ms"
  end
  return list
end

local function start(o)
  o.cmd = o.cmd or { h.sprun, WORKER }
  o.name = o.name or "test"
  return sprun.pool.start(o)
end

local function pids_gone(pids)
  return h.wait_until(function()
    for _, pid in ipairs(pids) do
      if h.alive(pid) then return false end
    end
    return true
  end, 2000)
end

local function pids_of(pool)
  local by = {}
  for _, w in ipairs(pool:workers()) do by[w.id] = w.pid end
  return by
end

describe("events", function()
  after_each(function()
    telemetry.detach("events_spec")
    assert.are.same({}, h.live_children())
  end)

  describe("sprun.pool.worker_started and worker_stopped", function()
    it("a pool of 2 started and stopped gives 2 of each, with the pool's "
       .. "worker ids and pids, and a process pair for each", function()
      local seen = record(STARTED, STOPPED, PSTARTED, PEXITED)
      local pids = h.run_tasks(function()
        local pool = start { size = 2 }
        h.wait_for("2 ready workers", function()
          return pool:stats().ready == 2
        end)
        local by = pids_of(pool)
        pool:stop()
        return by
      end)
      assert.is_true(pids_gone { pids.worker_1, pids.worker_2 })
      local started = only(seen, STARTED)
      assert.are.equal(2, #started)
      -- Either may be ready first; the counts are after each.
      local first = started[1][3].worker_id
      local second = first == "worker_1" and "worker_2" or "worker_1"
      assert.are.same({
        { STARTED, { pid = pids[first], ready = 1, busy = 0 },
          { pool = "test", worker_id = first } },
        { STARTED, { pid = pids[second], ready = 2, busy = 0 },
          { pool = "test", worker_id = second } },
      }, started)
      local stopped = measured(only(seen, STOPPED), "lifetime_ms")
      table.sort(stopped, function(a, b)
        return a[3].worker_id < b[3].worker_id
      end)
      -- A sprun worker ends on SIGTERM with status 143.
      assert.are.same({
        { STOPPED, { pid = pids.worker_1, lifetime_ms = "ms", ready = 0,
                     busy = 0, code = 143 },
          { pool = "test", worker_id = "worker_1", reason = "stopped" } },
        { STOPPED, { pid = pids.worker_2, lifetime_ms = "ms", ready = 0,
                     busy = 0, code = 143 },
          { pool = "test", worker_id = "worker_2", reason = "stopped" } },
      }, stopped)
      -- The workers are child processes too: one pair each.
      local ps = only(seen, PSTARTED)
      local pe = measured(only(seen, PEXITED), "lifetime_ms")
      local want_s, want_e = {}, {}
      for _, id in ipairs { "worker_1", "worker_2" } do
        local pid = pids[id]
        want_s[pid] = { PSTARTED, { pid = pid }, { name = "sprun", pid = pid } }
        want_e[pid] = { PEXITED, { pid = pid, lifetime_ms = "ms", code = 143 },
                        { name = "sprun", pid = pid } }
      end
      local got_s, got_e = {}, {}
      for _, e in ipairs(ps) do got_s[e[2].pid] = e end
      for _, e in ipairs(pe) do got_e[e[2].pid] = e end
      assert.are.same({ 2, 2 }, { #ps, #pe })
      assert.are.same(want_s, got_s)
      assert.are.same(want_e, got_e)
      -- Each process's exit comes before its worker's stop.
      local at = {}
      for i, e in ipairs(seen) do at[e[1] .. " " .. e[2].pid] = i end
      for _, pid in pairs(pids) do
        assert.is_true(at[PEXITED .. " " .. pid] < at[STOPPED .. " " .. pid])
      end
    end)

    it("a worker killed by SIGSEGV or SIGKILL stops with its signal and "
       .. "class, and its replacement starts under the same id", function()
      local seen = record(STARTED, STOPPED)
      local p = h.run_tasks(function()
        local pool = start { size = 1, restart = { backoff_ms = { 10 } },
                             crash_barrier = { retry = "never" } }
        assert.are.equal(1, pool:call("echo", 1))
        local p1 = pids_of(pool).worker_1
        local _, err = pool:call("segv")
        assert.are.equal("worker_crash", err.kind)
        h.wait_for("a restart", function()
          return pool:stats().ready == 1
        end)
        local p2 = pids_of(pool).worker_1
        ffi.C.kill(p2, 9)
        h.wait_for("the kill", function()
          return #only(seen, STOPPED) == 2
        end)
        h.wait_for("a second restart", function()
          return pool:stats().ready == 1
        end)
        local p3 = pids_of(pool).worker_1
        pool:stop()
        return { p1, p2, p3 }
      end)
      assert.is_true(pids_gone(p))
      assert.is_true(p[1] ~= p[2] and p[2] ~= p[3])
      local md = { pool = "test", worker_id = "worker_1" }
      assert.are.same({
        { STARTED, { pid = p[1], ready = 1, busy = 0 }, md },
        { STARTED, { pid = p[2], ready = 1, busy = 0 }, md },
        { STARTED, { pid = p[3], ready = 1, busy = 0 }, md },
      }, only(seen, STARTED))
      assert.are.same({
        { STOPPED, { pid = p[1], lifetime_ms = "ms", ready = 0, busy = 0 },
          { pool = "test", worker_id = "worker_1", reason = "crashed",
            classification = "segfault", signal = "SIGSEGV" } },
        { STOPPED, { pid = p[2], lifetime_ms = "ms", ready = 0, busy = 0 },
          { pool = "test", worker_id = "worker_1", reason = "crashed",
            classification = "killed", signal = "SIGKILL" } },
        { STOPPED, { pid = p[3], lifetime_ms = "ms", ready = 0, busy = 0,
                     code = 143 },
          { pool = "test", worker_id = "worker_1", reason = "stopped" } },
      }, measured(only(seen, STOPPED), "lifetime_ms"))
    end)

    it("a worker that becomes ready while another is busy counts it",
      function()
      local seen = record(STARTED)
      h.run_tasks(function()
        -- One worker at a time starts; the first takes a long request
        -- before the second is up.
        local pool = start { size = 2, startup_batch = 1 }
        local t = sprun.spawn(function() return pool:call("sleep", 500) end)
        h.wait_for("2 workers", function()
          return #only(seen, STARTED) == 2
        end)
        t:await()
        pool:stop()
      end)
      local s = only(seen, STARTED)
      assert.are.same({ { 1, 0 }, { 1, 1 } },
        { { s[1][2].ready, s[1][2].busy }, { s[2][2].ready, s[2][2].busy } })
    end)

    it("a worker that dies before it is ready stops, and never started",
      function()
      local seen = record(STARTED, STOPPED, PSTARTED)
      h.run_tasks(function()
        local pool = start { size = 1, env = { SPRUN_TEST_START = "exit:3" },
                             start_failures = 2,
                             restart = { backoff_ms = { 10 } } }
        h.wait_for("the pool to fail", function()
          return pool:stats().state == "failed"
        end)
        pool:stop()
      end)
      local pids = {}
      for i, e in ipairs(only(seen, PSTARTED)) do pids[i] = e[2].pid end
      assert.is_true(pids_gone(pids))
      assert.are.same({}, only(seen, STARTED))
      local stopped = measured(only(seen, STOPPED), "lifetime_ms")
      assert.are.equal(2, #pids)
      for i, e in ipairs(stopped) do
        assert.are.same({ STOPPED, { pid = pids[i], lifetime_ms = "ms",
                                     ready = 0, busy = 0, code = 3 },
                          { pool = "test", worker_id = "worker_1",
                            reason = "crashed", classification = "exit" } },
                        e)
      end
      assert.are.equal(2, #stopped)
    end)

    it("a recycled worker stops with reason recycled", function()
      local seen = record(STARTED, STOPPED)
      local p = h.run_tasks(function()
        local pool = start { size = 1, max_requests = 2 }
        pool:call("echo", 1)
        local p1 = pids_of(pool).worker_1
        pool:call("echo", 2)
        h.wait_for("the old worker's end", function()
          return #only(seen, STOPPED) == 1
        end)
        local p2 = pids_of(pool).worker_1
        pool:stop()
        return { p1, p2 }
      end)
      assert.is_true(pids_gone(p))
      assert.are.same({ p[1], p[2] }, { only(seen, STARTED)[1][2].pid,
                                        only(seen, STARTED)[2][2].pid })
      local stopped = only(seen, STOPPED)
      assert.are.same({ 2, p[1], "recycled", p[2], "stopped" },
        { #stopped, stopped[1][2].pid, stopped[1][3].reason,
          stopped[2][2].pid, stopped[2][3].reason })
      -- The replacement serves while the old one goes.
      assert.are.same({ 1, 0 }, { stopped[1][2].ready, stopped[1][2].busy })
    end)
  end)

  describe("sprun.pool.request", function()
    it("5 requests give 5 events with their outcomes", function()
      local seen = record(REQUEST)
      local s = h.run_tasks(function()
        local pool = start { size = 1 }
        pool:call("echo", 1)
        pool:call("fail", { kind = "bad_input", message = "no" })
        pool:call("raise", "plain")
        pool:call("echo", 2)
        pool:call("nope")
        local st = pool:stats()
        pool:stop()
        return st
      end)
      assert.are.same({ 5, 2 }, { s.requests, s.replies })
      local function ev(outcome)
        return { REQUEST, { duration_ms = "ms", ready = 1, busy = 0,
                            queued = 0 },
                 { pool = "test", worker_id = "worker_1", outcome = outcome } }
      end
      assert.are.same({ ev("ok"), ev("bad_input"), ev("error"), ev("ok"),
                        ev("unknown_op") },
                      measured(seen, "duration_ms"))
    end)

    it("counts the queue and busy workers after each, and ends on a "
       .. "worker with a timeout or a crash; a request that never reached "
       .. "a worker has none", function()
      local seen = record(REQUEST)
      local pids = {}
      h.run_tasks(function()
        local pool = start { size = 1, concurrency = 1,
                             restart = { backoff_ms = { 10 } },
                             crash_barrier = { retry = "never" } }
        pool:call("echo", 0)
        pids[1] = pids_of(pool).worker_1
        local ts = {}
        for i = 1, 3 do
          ts[i] = sprun.spawn(function() return pool:call("sleep", 20) end)
        end
        for i = 1, 3 do assert.are.equal(20, ts[i]:await()) end
        -- One in flight, one that times out in the queue.
        local slow = sprun.spawn(function()
          return pool:call("sleep", 2000, { timeout_ms = 100 })
        end)
        sprun.sleep(0)
        local q = sprun.spawn(function()
          return pool:call("echo", 1, { timeout_ms = 5000 })
        end)
        local _, err = slow:await()
        assert.are.equal("timeout", err.kind)
        assert.are.equal(1, q:await())
        pids[2] = pids_of(pool).worker_1
        local _, crash = pool:call("segv")
        assert.are.equal("worker_crash", crash.kind)
        h.wait_for("a restart", function()
          return pool:stats().ready == 1
        end)
        pids[3] = pids_of(pool).worker_1
        pool:stop()
      end)
      assert.is_true(pids_gone(pids))
      local got = {}
      for i, e in ipairs(measured(seen, "duration_ms")) do
        got[i] = { e[3].outcome, e[2].queued, e[2].ready, e[2].busy }
      end
      assert.are.same({
        { "ok", 0, 1, 0 },
        { "ok", 2, 1, 0 }, { "ok", 1, 1, 0 }, { "ok", 0, 1, 0 },
        -- Killed for it: the worker is no longer ready; the queued echo
        -- goes to its replacement.
        { "timeout", 1, 0, 0 },
        { "ok", 0, 1, 0 },
        { "worker_crash", 0, 0, 0 },
      }, got)
    end)

    it("a worker with another request in flight counts as busy",
      function()
      local seen = record(REQUEST, STARTED)
      h.run_tasks(function()
        local pool = start { size = 2, concurrency = 2 }
        h.wait_for("2 ready workers", function()
          return pool:stats().ready == 2
        end)
        -- One session: both go to the worker the first went to.
        local a = sprun.spawn(function()
          return pool:call("sleep", 30, { session = "s" })
        end)
        local b = sprun.spawn(function()
          return pool:call("sleep", 300, { session = "s" })
        end)
        assert.are.equal(30, a:await())
        assert.are.equal(300, b:await())
        pool:stop()
      end)
      local req = only(seen, REQUEST)
      assert.are.same({ 2, "ok", "ok" }, { #req, req[1][3].outcome,
                                           req[2][3].outcome })
      assert.are.equal(req[1][3].worker_id, req[2][3].worker_id)
      -- The first ends with the second still in flight there: that worker
      -- is busy, the other idle; then both are idle.
      assert.are.same({ { 1, 1, 0 }, { 2, 0, 0 } },
        { { req[1][2].ready, req[1][2].busy, req[1][2].queued },
          { req[2][2].ready, req[2][2].busy, req[2][2].queued } })
    end)

    it("a request in a queue that times out there has no event", function()
      local seen = record(REQUEST)
      h.run_tasks(function()
        local pool = start { size = 1, concurrency = 1,
                             queue_timeout_ms = 20 }
        -- The worker is up (its start may take longer than 20 ms).
        h.wait_for("the worker ready", function()
          return pool:stats().ready == 1
        end, 10000)
        pool:call("echo", 0)
        local busy = sprun.spawn(function() return pool:call("sleep", 100) end)
        sprun.sleep(0)
        local _, err = pool:call("echo", 1)
        assert.are.equal("queue_timeout", err.kind)
        busy:await()
        pool:stop()
      end)
      assert.are.same({ "ok", "ok" }, { seen[1][3].outcome,
                                        seen[2][3].outcome })
      assert.are.equal(2, #seen)
    end)
  end)

  describe("sprun.batch.item", function()
    it("a batch of 4 gives 4 events as the items finish, with virtual "
       .. "durations exact", function()
      local seen = record(ITEM)
      local r = h.vrun(function()
        return ex.execute_batch({
          function() sprun.sleep(300) return "slept" end,
          function() return nil, sprun.error("bad_input", "no") end,
          function() sprun.sleep(1000) return "late" end,
          function() error("boom") end,
        }, { timeout_ms = 500 })
      end)
      assert.are.same({ true, "bad_input", "timeout", "task_crashed" },
        { r[1].ok, r[2].error.kind, r[3].error.kind, r[4].error.kind })
      local b = seen[1] and seen[1][2].batch
      assert.are.equal("number", type(b))
      assert.are.equal(b, math.floor(b))
      local function ev(index, ms, outcome)
        return { ITEM, { index = index, duration_ms = ms, batch = b, size = 4 },
                 { outcome = outcome, pool = "default" } }
      end
      -- 2 and 4 end at once (inline), 1 after its 300 ms, 3 at the
      -- timeout.
      assert.are.same({ ev(2, 0, "bad_input"), ev(4, 0, "task_crashed"),
                        ev(1, 300, "ok"), ev(3, 500, "timeout") }, seen)
      -- The next batch has the next number.
      h.vrun(function()
        return ex.execute_batch({ function() return 1 end })
      end)
      assert.are.same({ ITEM, { index = 1, duration_ms = 0, batch = b + 1,
                                size = 1 },
                        { outcome = "ok", pool = "default" } }, seen[5])
      assert.are.equal(5, #seen)
    end)

    it("a batch of 4 in real time, one failing and one timing out",
      function()
      local seen = record(ITEM)
      h.run_tasks(function()
        return ex.execute_batch({
          function() return 1 end,
          function() return nil, sprun.error("not_found", "gone") end,
          function() sprun.sleep(2000) end,
          function() sprun.sleep(10) return true end,
        }, { timeout_ms = 100, max_concurrency = 2 })
      end)
      table.sort(seen, function(a, c) return a[2].index < c[2].index end)
      local got = {}
      for i, e in ipairs(seen) do
        got[i] = { e[2].index, e[3].outcome, e[2].size }
      end
      assert.are.same({ { 1, "ok", 4 }, { 2, "not_found", 4 },
                        { 3, "timeout", 4 }, { 4, "ok", 4 } }, got)
      -- About its 100 ms: the timeout runs on the loop's time, which may
      -- lag the clock durations are measured on by a turn.
      assert.is_true(seen[3][2].duration_ms >= 50
                     and seen[3][2].duration_ms < 1000)
      assert.is_true(seen[4][2].duration_ms >= 9)
      assert.is_true(seen[4][2].duration_ms < 1000)
    end)

    it("items a cancelled batch never started get one event each, "
       .. "cancelled after 0 ms", function()
      local seen = record(ITEM)
      h.vrun(function()
        local t = sprun.spawn(function()
          return ex.execute_batch({
            function() sprun.sleep(100) end,
            function() sprun.sleep(100) end,
            function() sprun.sleep(100) end,
          }, { max_concurrency = 1 })
        end)
        sprun.sleep(50)
        t:cancel()
        t:await()
      end)
      table.sort(seen, function(a, c) return a[2].index < c[2].index end)
      local b = seen[1][2].batch
      local function ev(index, ms)
        return { ITEM, { index = index, duration_ms = ms, batch = b, size = 3 },
                 { outcome = "cancelled", pool = "default" } }
      end
      assert.are.same({ ev(1, 50), ev(2, 0), ev(3, 0) }, seen)
    end)

    it("with no handler a batch runs as before and emits nothing",
      function()
      assert.is_nil(telemetry.enabled[ITEM])
      local seen = record(REQUEST)
      local r = h.vrun(function()
        return ex.execute_batch({ function() sprun.sleep(5) return 7 end,
                                  function() return 8 end })
      end)
      assert.are.same({ 7, 8 }, { r[1].value, r[2].value })
      assert.are.same({}, seen)
    end)
  end)

  describe("sprun.process.started and exited", function()
    it("a child killed by SIGSEGV gives started and exited with its "
       .. "signal", function()
      local seen = record(PSTARTED, PEXITED)
      local r = h.run_tasks(function()
        return sprun.process.run { "sh", "-c", "kill -SEGV $$" }
      end)
      assert.are.equal("SIGSEGV", r.signal)
      assert.are.same({
        { PSTARTED, { pid = r.pid }, { name = "sh", pid = r.pid } },
        { PEXITED, { pid = r.pid, lifetime_ms = "ms" },
          { name = "sh", pid = r.pid, signal = "SIGSEGV" } },
      }, measured(only(seen, PEXITED), "lifetime_ms") and seen)
    end)

    it("an exit status goes in code; the name is argv[1]'s basename",
      function()
      local seen = record(PSTARTED, PEXITED)
      local r = h.run_tasks(function()
        return sprun.process.run { "/bin/sh", "-c", "exit 3" }
      end)
      assert.are.equal(3, r.code)
      assert.are.same({
        { PSTARTED, { pid = r.pid }, { name = "sh", pid = r.pid } },
        { PEXITED, { pid = r.pid, lifetime_ms = "ms", code = 3 },
          { name = "sh", pid = r.pid } },
      }, measured(only(seen, PEXITED), "lifetime_ms") and seen)
    end)

    it("a spawned child gives one pair; one killed by its timeout exits "
       .. "by SIGKILL", function()
      local seen = record(PSTARTED, PEXITED)
      local pids = h.run_tasks(function()
        local p = assert(sprun.process.spawn { "cat", stdin = true })
        p:write("x\n")
        assert.are.equal("x", p:read_line())
        p:close_stdin()
        assert.are.equal(0, p:wait().code)
        local _, err = sprun.process.run { "sleep", "5", timeout_ms = 50 }
        assert.are.equal("timeout", err.kind)
        return { p:pid(), err.details.pid }
      end)
      assert.is_true(pids_gone(pids))
      local exited = only(seen, PEXITED)
      assert.are.equal(2, #only(seen, PSTARTED))
      assert.are.equal(2, #exited)
      assert.is_true(exited[2][2].lifetime_ms >= 50)
      assert.are.same({
        { PEXITED, { pid = pids[1], lifetime_ms = "ms", code = 0 },
          { name = "cat", pid = pids[1] } },
        { PEXITED, { pid = pids[2], lifetime_ms = "ms" },
          { name = "sleep", pid = pids[2], signal = "SIGKILL" } },
      }, measured(exited, "lifetime_ms"))
    end)
  end)

  describe("the catalogue", function()
    it("lists each with its level, a log line and a README row", function()
      local want = { [STARTED] = "info", [STOPPED] = "info",
                     [REQUEST] = "debug", [ITEM] = "debug",
                     [PSTARTED] = "debug", [PEXITED] = "debug" }
      for name, level in pairs(want) do
        assert.are.equal(level, telemetry.level_of(name), name)
      end
      local readme = h.read_file(h.root .. "/README.md")
      for name in pairs(want) do
        assert.is_truthy(readme:find("\n| `" .. name .. "` |", 1, true),
                         name .. " has no row in README's table")
      end
      local function line(name, m, md)
        return telemetry.log_line(telemetry.event_list(name), m, md)
      end
      assert.are.same({
        "[info] pool worker STARTED pool=py worker=worker_1 pid=42 ready=1 "
          .. "busy=0",
        "[info] pool worker STOPPED pool=py worker=worker_1 pid=42 "
          .. "reason=crashed class=segfault signal=SIGSEGV lifetime_ms=1500",
        "[debug] pool REQUEST pool=py worker=worker_2 outcome=ok "
          .. "duration_ms=1.25 queued=3",
        "[debug] batch item DONE batch=7 index=2 size=4 outcome=timeout "
          .. "duration_ms=500",
        "[debug] process STARTED name=sh pid=9",
        "[debug] process EXITED name=sh pid=9 code=3 lifetime_ms=12",
      }, {
        line(STARTED, { pid = 42, ready = 1, busy = 0 },
             { pool = "py", worker_id = "worker_1" }),
        line(STOPPED, { pid = 42, lifetime_ms = 1500, ready = 0, busy = 0 },
             { pool = "py", worker_id = "worker_1", reason = "crashed",
               classification = "segfault", signal = "SIGSEGV" }),
        line(REQUEST, { duration_ms = 1.25, ready = 0, busy = 1,
                        queued = 3 },
             { pool = "py", worker_id = "worker_2", outcome = "ok" }),
        line(ITEM, { index = 2, duration_ms = 500, batch = 7, size = 4 },
             { outcome = "timeout", pool = "default" }),
        line(PSTARTED, { pid = 9 }, { name = "sh", pid = 9 }),
        line(PEXITED, { pid = 9, lifetime_ms = 12, code = 3 },
             { name = "sh", pid = 9 }),
      })
    end)
  end)
end)
