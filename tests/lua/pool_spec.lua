-- sprun.pool: calls through a pool of real worker processes (sprun scripts
-- served by sprun.pool.serve, tests/lua/pool/worker.lua, and shell
-- workers where the protocol itself is under test); the crash barrier,
-- timeouts that kill, queues, recycling, draining and stopping. Every
-- test checks that no child process is left, by pid.
local sprun = require "sprun"
local h = require "helpers"

local WORKER = h.root .. "/tests/lua/pool/worker.lua"

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

describe("sprun.pool", function()
  local dir
  before_each(function() dir = h.tmpdir() end)
  after_each(function()
    h.rmrf(dir)
    assert.are.same({}, h.live_children())
  end)

  describe("calls", function()
    it("sends a request to a worker and returns its value; JSON values "
       .. "come back as they went", function()
      local got = h.run_tasks(function()
        local pool = start { size = 2 }
        local v = {
          pool:call("echo", "é ü\n\"quoted\""),
          pool:call("echo", 0.1 + 0.2),
          pool:call("echo", 2 ^ 53 - 1),
          pool:call("echo", -1.5e-300),
          pool:call("echo", { 1, "two", { three = true }, false }),
          pool:call("echo", { a = { b = { c = "deep" } } }),
          pool:call("echo", {}),
          pool:call("echo"),
        }
        pool:stop()
        return v
      end)
      assert.are.same({ "é ü\n\"quoted\"", 0.1 + 0.2, 2 ^ 53 - 1, -1.5e-300,
        { 1, "two", { three = true }, false }, { a = { b = { c = "deep" } } },
        {} }, got)
    end)

    it("returns the worker's own error with its kind, message and details",
      function()
      local e1, e2, e3 = h.run_tasks(function()
        local pool = start { size = 1 }
        local _, a = pool:call("fail", { kind = "bad_input", message = "no",
                                         details = { field = "x" } })
        local _, b = pool:call("raise", "plain")
        local _, c = pool:call("nope")
        pool:stop()
        return a, b, c
      end)
      assert.are.same({ "bad_input", "no", { field = "x" } },
                      { e1.kind, e1.message, e1.details })
      assert.are.same({ "error", "plain" }, { e2.kind, e2.message })
      assert.are.equal("unknown_op", e3.kind)
      assert.matches('no handler for "nope"', e3.message, 1, true)
    end)

    it("runs up to `concurrency` requests at once on each worker", function()
      local most = h.run_tasks(function()
        local pool = start { size = 2, concurrency = 4 }
        local ts = {}
        for i = 1, 8 do
          ts[i] = sprun.spawn(function() return pool:call("probe", 200) end)
        end
        local m = 0
        for i = 1, 8 do m = math.max(m, ts[i]:await()) end
        local s = pool:stats()
        pool:stop()
        return { m, s.requests, s.replies }
      end)
      assert.are.same({ 4, 8, 8 }, most)
    end)

    it("works from plain Lua code outside the loop only through a task",
      function()
      local ok, err = pcall(sprun.pool.start, { cmd = { "true" } })
      assert.is_false(ok)
      assert.matches("pool.start: must be called from a task", err, 1, true)
    end)
  end)

  describe("the crash barrier", function()
    it("a request whose worker dies fails with worker_crash naming the "
       .. "worker, the signal and the class", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2 }
        local v, err = pool:call("segv")
        local s = pool:stats()
        pool:stop()
        return { v, err.kind, err.details, s.crashes, s.errors }
      end)
      assert.is_nil(r[1])
      assert.are.equal("worker_crash", r[2])
      assert.matches("^worker_%d$", r[3].worker_id)
      r[3].worker_id = nil
      assert.are.same({ signal = "SIGSEGV", classification = "segfault",
                        attempt = 0 }, r[3])
      assert.are.same({ segfault = 1 }, r[4])
      assert.are.same({ worker_crash = 1 }, r[5])
    end)

    it("an idempotent request is retried on another worker, and the "
       .. "crashed slot is tainted", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2 }
        local first = pool:call("who")
        local v = pool:call("crash_once", { marker = dir .. "/m" },
                            { idempotent = true })
        -- The untainted worker takes the work while the other is tainted.
        local later = {}
        for i = 1, 4 do later[i] = pool:call("who").id end
        local s = pool:stats()
        pool:stop()
        return { v, first, later, s.tainted, s.crashes.segfault }
      end)
      assert.are.equal("survived", r[1])
      assert.are.equal(1, r[4])
      assert.are.equal(1, r[5])
      for i = 2, 4 do assert.are.equal(r[3][1], r[3][i]) end
    end)

    it("a request that crashed two workers is poison: refused instead of "
       .. "sent to a third", function()
      local r = h.run_tasks(function()
        local pool = start { size = 3, crash_barrier = { max_retries = 5,
                             backoff_ms = { 0 } } }
        local _, e1 = pool:call("segv", nil, { idempotent = true })
        local _, e2 = pool:call("segv", nil, { idempotent = true })
        local s = pool:stats()
        pool:stop()
        return { e1.kind, e1.details.crash.attempt, e1.cause.kind,
                 e2.kind, s.crashes.segfault, s.poisoned }
      end)
      -- The second crash ends the retries: poison, with the crash as cause.
      assert.are.same({ "poison_request", 1, "worker_crash",
                        "poison_request", 2, 1 }, r)
    end)

    it("a non-idempotent request is not retried under retry = "
       .. "\"idempotent\", and is under \"always\"", function()
      local r = h.run_tasks(function()
        local a = start { size = 2 }
        local _, e = a:call("crash_once", { marker = dir .. "/a" })
        a:stop()
        local b = start { size = 2, crash_barrier = { retry = "always" } }
        local v = b:call("crash_once", { marker = dir .. "/b" })
        b:stop()
        return { e.kind, v }
      end)
      assert.are.same({ "worker_crash", "survived" }, r)
    end)

    it("records each crash in the pool's health monitor and emits the "
       .. "crash, tainted and restarted events", function()
      local seen = {}
      for _, e in ipairs { "crash", "tainted", "restarted" } do
        sprun.telemetry.attach("pool-" .. e, { "snakepit", "worker", e },
          function(event, m, md)
            seen[#seen + 1] = { event[3], md.pool, md.worker_id, md.reason,
                                m.duration_ms }
          end)
      end
      local r = h.run_tasks(function()
        local pool = start { name = "events", size = 1,
                             restart = { backoff_ms = { 1 } } }
        local _, err = pool:call("abort")
        -- The restarted worker serves again.
        local again = pool:call("echo", "back")
        local health = pool:health_monitor():worker_health(err.details.worker_id)
        pool:stop()
        return { again, health.crash_count, health.reasons }
      end)
      for _, e in ipairs { "crash", "tainted", "restarted" } do
        sprun.telemetry.detach("pool-" .. e)
      end
      assert.are.same({ "back", 1, { "abort" } }, r)
      assert.are.same({
        { "crash", "events", "worker_1", "abort" },
        { "tainted", "events", "worker_1", "abort", 60000 },
        { "restarted", "events", "worker_1" },
      }, seen)
    end)
  end)

  describe("timeouts", function()
    it("a request past its timeout fails with kind timeout, and its worker "
       .. "is killed and replaced", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1 }
        local before = pool:call("who").pid
        local _, err = pool:call("sleep", 5000, { timeout_ms = 100 })
        local after = pool:call("who").pid
        local s = pool:stats()
        pool:stop()
        return { err.kind, before ~= after, h.alive(before), s.crashes }
      end)
      assert.are.same({ "timeout", true, false, { timeout = 1 } }, r)
    end)

    it("a full queue answers pool_saturated at once; a request waits in "
       .. "the queue at most queue_timeout_ms", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, max_queue = 1, queue_timeout_ms = 300 }
        h.wait_for("the worker", function() return pool:stats().ready == 1 end)
        local busy = sprun.spawn(function() return pool:call("sleep", 600) end)
        sprun.sleep(50)
        local waiting = sprun.spawn(function() return pool:call("echo", 1) end)
        sprun.sleep(10)
        local _, full = pool:call("echo", 2)
        local _, late = waiting:await()
        local v = busy:await()
        pool:stop()
        return { full.kind, late.kind, v }
      end)
      assert.are.same({ "pool_saturated", "queue_timeout", 600 }, r)
    end)

    it("a caller cancelled while its request is in flight stops the work: "
       .. "the worker is killed", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1 }
        local pid = pool:call("who").pid
        local t = sprun.spawn(function() return pool:call("sleep", 5000) end)
        sprun.sleep(100)
        t:cancel()
        local _, err = t:await()
        h.wait_for("the worker to die", function() return not h.alive(pid) end)
        h.wait_for("the pool to see it", function()
          return pool:stats().crashes.timeout == 1
        end)
        local s = pool:stats()
        pool:stop()
        return { err.kind, s.crashes.timeout }
      end)
      assert.are.same({ "cancelled", 1 }, r)
    end)
  end)

  describe("workers' lives", function()
    it("recycles a worker after max_requests: its replacement first, no "
       .. "request lost", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, max_requests = 3 }
        local pids = {}
        for i = 1, 9 do
          local w = pool:call("who")
          pids[w.pid] = (pids[w.pid] or 0) + 1
          if i % 3 == 0 then
            -- The worker serves on until its replacement is ready.
            h.wait_for("the replacement", function()
              return pool:stats().recycled == i / 3
            end)
          end
        end
        local s = pool:stats()
        local counts = {}
        for _, n in pairs(pids) do counts[#counts + 1] = n end
        pool:stop()
        return { counts, s.replies, s.recycled, s.errors }
      end)
      assert.are.same({ 3, 3, 3 }, r[1])
      assert.are.same({ 9, 3, {} }, { r[2], r[3], r[4] })
    end)

    it("drain lets the calls in flight finish, refuses new ones, then "
       .. "stops and reaps every worker", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2 }
        local pids = {}
        for _, w in ipairs(pool:workers()) do pids[#pids + 1] = w.pid end
        local t = sprun.spawn(function() return pool:call("sleep", 200) end)
        sprun.sleep(50)
        local d = sprun.spawn(function() return pool:drain(5000) end)
        sprun.sleep(10)
        local _, refused = pool:call("echo", 1)
        local v = t:await()
        assert(d:await())
        return { v, refused.kind, pool:stats().state, #pool:workers(),
                 pids_gone(pids) }
      end)
      assert.are.same({ 200, "closed", "stopped", 0, true }, r)
    end)

    it("workers that die while the pool drains are replaced: the calls it "
       .. "took are answered, the in-flight ones by the barrier", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2, queue_timeout_ms = 3000,
                             restart = { backoff_ms = { 10 } } }
        h.wait_for("two ready workers", function()
          return pool:stats().ready == 2
        end)
        local ts = {}
        for i = 1, 6 do
          ts[i] = sprun.spawn(function()
            return pool:call("sleep", 300 + i, { idempotent = i % 2 == 0 })
          end)
        end
        sprun.sleep(50)
        local d = sprun.spawn(function() return pool:drain() end)
        sprun.sleep(10)
        for _, w in ipairs(pool:workers()) do
          os.execute("kill -KILL " .. w.pid)
        end
        local out = {}
        for i = 1, 6 do
          local v, err = ts[i]:await()
          out[i] = v or err.kind
        end
        assert(d:await())
        return { out, pool:stats().state }
      end)
      -- 1 and 2 ran when their workers died: 1 is not idempotent.
      assert.are.same({ { "worker_crash", 302, 303, 304, 305, 306 },
                        "stopped" }, r)
    end)

    it("a call cancelled in flight, queued or before its retry is counted: "
       .. "requests = replies + errors", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1,
                             crash_barrier = { backoff_ms = { 5000 } } }
        pool:call("echo", 1)
        local retrying = sprun.spawn(function()
          return pool:call("segv", nil, { idempotent = true })
        end)
        sprun.sleep(300)
        local flying = sprun.spawn(function() return pool:call("sleep", 5000) end)
        local queued = sprun.spawn(function() return pool:call("echo", 2) end)
        sprun.sleep(100)
        for _, t in ipairs { retrying, flying, queued } do t:cancel() end
        local kinds = {}
        for i, t in ipairs { retrying, flying, queued } do
          kinds[i] = select(2, t:await()).kind
        end
        local s = pool:stats()
        pool:stop()
        return { kinds, s.requests, s.replies, s.errors }
      end)
      assert.are.same({ { "cancelled", "cancelled", "cancelled" }, 4, 1,
                        { cancelled = 3 } }, r)
    end)

    it("kills a worker that is not ready within start_timeout_ms (class "
       .. "start_timeout) and starts another", function()
      local sh = h.write_file(dir .. "/mute.sh", "exec sleep 30\n")
      local r = h.run_tasks(function()
        local pool = start { size = 1, cmd = { "sh", sh },
                             start_timeout_ms = 150,
                             restart = { backoff_ms = { 50 } } }
        local first = pool:workers()[1].pid
        h.wait_for("the second start", function()
          local ws = pool:workers()
          return ws[1] and ws[1].pid ~= first and ws[1].generation == 2
        end)
        local s = pool:stats()
        pool:stop()
        return { s.crashes, h.alive(first) }
      end)
      assert.are.same({ { start_timeout = 1 }, false }, r)
    end)

    it("starts startup_batch workers at a time", function()
      local r = h.run_tasks(function()
        local one = start { name = "one", size = 4, startup_batch = 1 }
        local all = start { name = "all", size = 4 }
        local at_once = { one:stats().starting, all:stats().starting }
        h.wait_for("4 ready", function() return one:stats().ready == 4 end)
        one:stop()
        all:stop()
        return at_once
      end)
      assert.are.same({ 1, 4 }, r)
    end)

    it("recycles after max_requests plus a jitter drawn per worker",
      function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, max_requests = 2,
                             max_requests_jitter = 3 }
        local limit, served = {}, {}
        for _ = 1, 80 do
          -- A worker past its limit serves on until its replacement is
          -- ready: each call waits for that, so that the count of workers
          -- does not depend on how fast one starts (slow under ASan).
          h.wait_for("the replacement to be ready", function()
            local ws = pool:workers()
            return #ws == 1 and ws[1].state == "ready"
                   and ws[1].requests < ws[1].max_requests
          end)
          local pid = pool:call("who").pid
          served[pid] = (served[pid] or 0) + 1
          for _, w in ipairs(pool:workers()) do
            limit[w.pid] = w.max_requests
          end
        end
        local last = pool:workers()[1].pid
        pool:stop()
        local values, n, short = {}, 0, {}
        for pid, m in pairs(limit) do
          n = n + 1
          values[m] = true
          -- A worker left before its limit only if it is the last one.
          if pid ~= last and served[pid] and served[pid] < m then
            short[#short + 1] = pid
          end
        end
        local distinct = {}
        for m in pairs(values) do distinct[#distinct + 1] = m end
        table.sort(distinct)
        return { n, distinct, short }
      end)
      assert.is_true(r[1] >= 8, r[1] .. " workers")
      for _, m in ipairs(r[2]) do
        assert.is_true(m >= 2 and m <= 5, "a limit of " .. m)
      end
      assert.is_true(#r[2] >= 2, "every worker had the same limit")
      assert.are.same({}, r[3])
    end)

    it("stop sends SIGTERM, then SIGKILL after stop_timeout_ms to a worker "
       .. "that ignores it", function()
      local sh = h.write_file(dir .. "/stubborn.sh", [=[
trap '' TERM
printf '{"ready":true}\n' >&3
while :; do sleep 0.05; done
]=])
      local r = h.run_tasks(function()
        local pool = start { size = 1, cmd = { "sh", sh },
                             stop_timeout_ms = 300 }
        h.wait_for("ready", function() return pool:stats().ready == 1 end)
        local pid = pool:workers()[1].pid
        local t0 = sprun.now()
        pool:stop()
        return { sprun.now() - t0 >= 250, h.alive(pid) }
      end)
      assert.are.same({ true, false }, r)
    end)

    it("logs the workers' stdout and stderr lines with their prefix",
      function()
      local r = h.sprun_run { "-e", [[
local sprun = require "sprun"
local pool = sprun.pool.start { name = "logs", size = 1,
  cmd = { ]] .. ("%q"):format(h.sprun) .. [[, ]] .. ("%q"):format(WORKER)
  .. [[ } }
pool:call("print", "hello")
pool:stop()
]] }
      assert.are.equal(0, r.code)
      assert.matches("[logs/worker_1] out: hello\n", r.stderr, 1, true)
      assert.matches("[logs/worker_1] err: hello\n", r.stderr, 1, true)
    end)

    it("gives workers SPRUN_POOL, SPRUN_WORKER_ID and PYTHONUNBUFFERED=1",
      function()
      local r = h.run_tasks(function()
        local pool = start { name = "envs", size = 1,
                             env = { MINE = "x" } }
        local v = { pool:call("env", "SPRUN_POOL"),
                    pool:call("env", "SPRUN_WORKER_ID"),
                    pool:call("env", "PYTHONUNBUFFERED"),
                    pool:call("env", "MINE") }
        pool:stop()
        return v
      end)
      assert.are.same({ "envs", "worker_1", "1", "x" }, r)
    end)
  end)

  describe("the protocol", function()
    it("a reply nobody waits for and a line that is not JSON are counted "
       .. "and logged once, and never delivered", function()
      -- A worker that answers its first request after two bad messages.
      local sh = h.write_file(dir .. "/bad.sh", [=[
printf '{"ready":true}\n' >&3
read -r line <&3
printf 'not json\n{"id":999,"ok":1}\n' >&3
id=$(echo "$line" | sed 's/.*"id":\([0-9]*\).*/\1/')
printf '{"id":%s,"ok":"real"}\n' "$id" >&3
sleep 5
]=])
      local r = h.sprun_run { "-e", [[
local sprun = require "sprun"
local pool = sprun.pool.start { name = "bad", size = 1,
                                cmd = { "sh", ]] .. ("%q"):format(sh) .. [[ } }
print(pool:call("x", 1))
local s = pool:stats()
print(s.protocol_errors, s.dropped_replies)
pool:stop()
]] }
      assert.are.same({ 0, "real\n2\t1\n" }, { r.code, r.stdout })
      local lines = {}
      for l in r.stderr:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.same({ "[bad/worker_1] protocol violation: not JSON: not "
        .. "json (counted; later ones from this worker are not logged)" },
        lines)
    end)
  end)

  describe("affinity", function()
    it("hint: a session's calls go to the worker that served it, while "
       .. "another is idle", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2 }
        h.wait_for("two ready workers", function()
          return pool:stats().ready == 2
        end)
        -- worker_1 is busy, so the session's first call goes to worker_2.
        local busy = sprun.spawn(function() return pool:call("sleep", 200) end)
        sprun.sleep(20)
        local first = pool:call("who", nil, { session = "s" }).id
        busy:await()
        local later, plain = {}, pool:call("who").id
        for i = 1, 4 do
          later[i] = pool:call("who", nil, { session = "s" }).id
        end
        pool:stop()
        return { first, plain, later }
      end)
      assert.are.same({ "worker_2", "worker_1",
        { "worker_2", "worker_2", "worker_2", "worker_2" } }, r)
    end)

    it("strict_queue: a session's call waits for its busy worker though "
       .. "another is idle", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2, affinity = "strict_queue" }
        h.wait_for("two ready workers", function()
          return pool:stats().ready == 2
        end)
        local mine = pool:call("who", nil, { session = "s" }).id
        local busy = sprun.spawn(function()
          return pool:call("sleep", 300, { session = "s" })
        end)
        sprun.sleep(20)
        local other = pool:call("who").id
        local t0 = sprun.now()
        local again = pool:call("who", nil, { session = "s" }).id
        local waited = sprun.now() - t0
        busy:await()
        pool:stop()
        return { mine == again, other ~= mine, waited >= 200 }
      end)
      assert.are.same({ true, true, true }, r)
    end)

    it("strict_fail_fast: a session's call fails with worker_busy when its "
       .. "worker has no room", function()
      local r = h.run_tasks(function()
        local pool = start { size = 2, affinity = "strict_fail_fast" }
        local mine = pool:call("who", nil, { session = "s" }).id
        local busy = sprun.spawn(function()
          return pool:call("sleep", 300, { session = "s" })
        end)
        sprun.sleep(20)
        local v, err = pool:call("who", nil, { session = "s" })
        busy:await()
        local after = pool:call("who", nil, { session = "s" }).id
        local s = pool:stats()
        pool:stop()
        return { v, err.kind, err.details.worker_id == mine, after == mine,
                 s.errors.worker_busy }
      end)
      assert.are.same({ nil, "worker_busy", true, true, 1 }, r)
    end)
  end)

  describe("health", function()
    it("kills a worker that misses its heartbeat (class heartbeat) and "
       .. "leaves one that answers alone", function()
      -- Says ready, then reads nothing and answers nothing.
      local sh = h.write_file(dir .. "/deaf.sh", [=[
printf '{"ready":true}\n' >&3
exec sleep 30
]=])
      local r = h.run_tasks(function()
        local deaf = start { name = "deaf", size = 1, cmd = { "sh", sh },
          heartbeat = { interval_ms = 50, timeout_ms = 200 },
          restart = { backoff_ms = { 5000 } } }
        local live = start { name = "live", size = 1,
          heartbeat = { interval_ms = 50, timeout_ms = 200 } }
        local pid = deaf:workers()[1].pid
        h.wait_for("the heartbeat kill", function()
          return deaf:stats().crashes.heartbeat == 1
        end)
        sprun.sleep(300)
        local s = live:stats()
        local v = live:call("echo", "alive")
        deaf:stop()
        live:stop()
        return { h.alive(pid), s.crashes, s.restarts, v }
      end)
      assert.are.same({ false, {}, 0, "alive" }, r)
    end)

    it("recycles a worker whose own RSS passes max_rss_mb, replacement "
       .. "first", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, max_rss_mb = 60, rss_check_ms = 20 }
        local w1 = pool:workers()[1]
        local before = pool:call("who").pid
        pool:call("alloc", 100)
        h.wait_for("the recycling", function()
          return pool:stats().recycled == 1
        end)
        local after = pool:call("who").pid
        h.wait_for("the old worker to go", function()
          return not h.alive(before)
        end)
        local s = pool:stats()
        pool:stop()
        return { w1.rss_mb ~= nil and w1.rss_mb < 60, before ~= after,
                 s.crashes, s.errors }
      end)
      assert.are.same({ true, true, {}, {} }, r)
    end)

    it("a breaker guards the whole pool: crashes open it, and calls get "
       .. "circuit_open without queueing", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1,
          breaker = { failure_threshold = 2, reset_timeout_ms = 60000 },
          restart = { backoff_ms = { 10 } } }
        local kinds = {}
        for i = 1, 2 do
          kinds[i] = select(2, pool:call("segv", i)).kind
        end
        local _, err = pool:call("echo", 1)
        local _, own = pool:breaker():call(function() return true end)
        local s = pool:stats()
        pool:stop()
        return { kinds, err.kind, pool:breaker():state(), s.requests,
                 s.errors.circuit_open, own and own.kind }
      end)
      assert.are.same({ { "worker_crash", "worker_crash" }, "circuit_open",
        "open", 3, 1, "circuit_open" }, r)
    end)

    it("a worker's own errors do not count against the breaker", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, breaker = { failure_threshold = 1 } }
        local _, e = pool:call("fail", { kind = "not_found" })
        local v = pool:call("echo", "still closed")
        local st = pool:breaker():state()
        pool:stop()
        return { e.kind, v, st }
      end)
      assert.are.same({ "not_found", "still closed", "closed" }, r)
    end)

    it("stats has is_healthy from the pool's health monitor", function()
      local r = h.run_tasks(function()
        local pool = start { size = 1, health = { max_crashes = 2 },
          restart = { backoff_ms = { 10 } } }
        local before = pool:stats().is_healthy
        pool:call("segv", 1)
        pool:call("segv", 2)
        local after = pool:stats().is_healthy
        local hm = pool:health_monitor():stats()
        pool:stop()
        return { before, after, hm.total_crashes }
      end)
      assert.are.same({ true, false, 2 }, r)
    end)
  end)

  describe("channels and framings", function()
    for _, c in ipairs {
      { "fd3", "ndjson" }, { "fd3", "lp4" }, { "stdio", "ndjson" },
      { "stdio", "lp4" },
    } do
      local channel, protocol = c[1], c[2]
      for _, lang in ipairs { "Lua", "Python" } do
        it(lang .. " workers on " .. channel .. " with " .. protocol
           .. ": values with newlines and non-ASCII round-trip, output "
           .. "stays off the channel", function()
          local cmd = { h.sprun, WORKER }
          if lang == "Python" then
            cmd = { "python3", h.write_file(dir .. "/w.py", [[
import sys, sprun_worker
@sprun_worker.handler("echo")
def echo(args):
    return args
@sprun_worker.handler("print")
def out(args):
    print("out: " + args)
    sys.stderr.write("err: " + args + "\n")
    return True
sprun_worker.run()
]]) }
          end
          local r = h.run_tasks(function()
            local pool = start { size = 1, cmd = cmd, channel = channel,
                                 protocol = protocol }
            local big = string.rep("line\n\té€😀", 20000)
            local v = { pool:call("echo", { s = "a\nb\r\n\0c", big = big }),
                        pool:call("print", "x") }
            -- What the print wrote would be on the channel by now.
            pool:call("echo", 1)
            local s = pool:stats()
            pool:stop()
            return { v[1].s, v[1].big == big, v[2], s.protocol_errors }
          end)
          assert.are.same({ "a\nb\r\n\0c", true, true, 0 }, r)
        end)
      end
    end
  end)

  describe("misuse", function()
    it("rejects bad options with the key path and the closest name",
      function()
      for _, c in ipairs {
        { {}, "pool.start: option 'cmd' must be a list: the program, then "
              .. "its arguments, got nil" },
        { { cmd = { "x" }, size = 0 }, "pool.start: option 'size' must be "
              .. "an integer >= 1, got 0" },
        { { cmd = { "x" }, sise = 2 }, "pool.start: unknown option 'sise' "
              .. "(did you mean 'size'?)" },
        { { cmd = { "x" }, crash_barrier = { retyr = "never" } },
          "pool.start: unknown option 'crash_barrier.retyr' (did you mean "
          .. "'crash_barrier.retry'?)" },
        { { cmd = { "x" }, crash_barrier = { mark_on = { "segvault" } } },
          "pool.start: option 'crash_barrier.mark_on[1]' must be one of "
          .. table.concat(require("sprun.pool.barrier").CLASSES, ", ")
          .. ', got "segvault"' },
        { { cmd = { "x" }, channel = "pipe" }, "pool.start: option 'channel' "
              .. 'must be "fd3" or "stdio", got "pipe"' },
        { { cmd = { "x" }, max_requests_jitter = 5 }, "pool.start: option "
              .. "'max_requests_jitter' needs max_requests" },
      } do
        local ok, err = pcall(sprun.pool.start, c[1])
        assert.is_false(ok)
        assert.are.equal(c[2], err)
      end
    end)

    it("rejects bad calls at the caller's line", function()
      local errs = h.run_tasks(function()
        local pool = start { size = 1 }
        local out = {}
        for _, c in ipairs {
          { 5 }, { "echo", print }, { "echo", 1, { timout_ms = 1 } },
          { "echo", 1, { idempotent = "yes" } },
        } do
          local ok, err = pcall(function() local _ = pool:call(c[1], c[2], c[3]) end)
          out[#out + 1] = not ok and err
        end
        local ok, err = pcall(function() local _ = pool.call("echo") end)
        out[#out + 1] = not ok and err
        pool:stop()
        return out
      end)
      local src = "pool_spec.lua:%d+: "
      assert.matches(src .. "pool.call: op must be a non%-empty string, got 5",
                     errs[1])
      assert.matches(src .. "pool.call: args cannot be sent as JSON: a "
                     .. "function", errs[2])
      assert.matches(src .. "pool.call: unknown option \"timout_ms\"", errs[3])
      assert.matches(src .. "pool.call: option 'idempotent' must be a "
                     .. "boolean, got \"yes\"", errs[4])
      assert.matches(src .. "pool.call: self must be a pool, got \"echo\"",
                     errs[5])
    end)
  end)
end)

describe("sprun.pool with an adaptive limit and hedged calls", function()
  it("refuses a call past its adaptive limit before it is queued, and "
     .. "gives each permit back with the call's outcome", function()
    local r = h.run_tasks(function()
      local pool = assert(start { size = 2, concurrency = 4,
        adaptive_limit = { min_limit = 2, max_limit = 2, initial_limit = 2 },
        breaker = { failure_threshold = 1 } })
      local a = sprun.spawn(pool.call, pool, "sleep", 100)
      local b = sprun.spawn(pool.call, pool, "sleep", 100)
      sprun.sleep(20)
      local v, err = pool:call("echo", 1)
      local ok_a, ok_b = a:await(), b:await()
      local after = pool:call("echo", 2)
      local s = pool:stats()
      pool:stop()
      return { v, sprun.error_kind(err), ok_a, ok_b, after,
               s.adaptive_limit.rejected, s.adaptive_limit.successes,
               s.adaptive_limit.in_flight, s.errors.limit_exceeded,
               pool:breaker():state() }
    end)
    assert.are.same({ nil, "limit_exceeded", 100, 100, 2, 1, 3, 0, 1,
                      "closed" }, { r[1], r[2], r[3], r[4], r[5], r[6],
                                    r[7], r[8], r[9], r[10] })
  end)

  it("deadline_ms bounds a call: at the deadline its worker is killed and "
     .. "the call returns marked deadline_exceeded", function()
    local r = h.run_tasks(function()
      local pool = assert(start { size = 1 })
      local t0 = sprun.now()
      local _, err = pool:call("sleep", 5000, { deadline_ms = 200 })
      local took = sprun.now() - t0
      local again = pool:call("echo", 7)
      pool:stop()
      return { sprun.error_kind(err), err.details.deadline_exceeded, took,
               again }
    end)
    assert.are.same({ "timeout", true, 7 }, { r[1], r[2], r[4] })
    assert.is_true(r[3] >= 200 and r[3] < 2000, tostring(r[3]))
    local ok, err = pcall(function()
      h.run_tasks(function()
        local pool = assert(start { size = 1 })
        local ok2, e = pcall(pool.call, pool, "echo", 1, { deadline_ms = -1 })
        pool:stop()
        assert(not ok2)
        error(e, 0)
      end)
    end)
    assert.is_false(ok)
    assert.matches("pool.call: option 'deadline_ms' must be a number >= 0, "
                   .. "got -1", err, 1, true)
  end)

  it("names a bad adaptive_limit option", function()
    local ok, err = pcall(sprun.pool.start, { name = "x", cmd = { "true" },
                                              adaptive_limit = 3 })
    assert.is_false(ok)
    assert.matches("option 'adaptive_limit' must be an adaptive limit or a "
                   .. "table of its options, got 3", err, 1, true)
  end)

  it("hedges an idempotent call: the loser's request is cancelled and its "
     .. "worker replaced, the winner answers", function()
    local r = h.run_tasks(function()
      local pool = assert(start { size = 2 })
      h.wait_for("2 workers ready", function()
        return pool:stats().ready == 2
      end, 5000)
      local pids = {}
      for _, w in ipairs(pool:workers()) do pids[w.pid] = true end
      local n = 0
      local t0 = sprun.now()
      local v = sprun.executor.execute_hedged(function()
        n = n + 1
        return pool:call("sleep", n == 1 and 5000 or 10,
                         { idempotent = true })
      end, { delay_ms = 100 })
      local took = sprun.now() - t0
      -- The loser's worker was killed (its request cannot be taken back
      -- from a process) and replaced.
      local gone = 0
      h.wait_for("the loser's worker replaced", function()
        gone = 0
        for pid in pairs(pids) do
          if not h.alive(pid) then gone = gone + 1 end
        end
        return gone == 1 and pool:stats().ready == 2
      end, 3000)
      local s = pool:stats()
      pool:stop()
      return { v, took, n, gone, s.errors.cancelled, s.restarts }
    end)
    assert.are.equal(10, r[1])
    assert.is_true(r[2] < 2000, tostring(r[2]))
    assert.are.same({ 2, 1, 1, 1 }, { r[3], r[4], r[5], r[6] })
  end)
end)
