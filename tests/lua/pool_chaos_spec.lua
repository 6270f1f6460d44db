-- sprun.pool under chaos: REQUESTS calls (every second one idempotent)
-- from TASKS tasks at once over SIZE workers, while a chaos task sends
-- SIGKILL or SIGSEGV to a random live worker every ~CHAOS_MS, and every
-- HANG_EVERY-th call is a request that sleeps far past its timeout_ms (the
-- pool kills its worker). The worker is tests/lua/pool/chaos_worker.lua.
--
-- What it asserts holds whatever the timing (which worker dies when, and
-- with which requests in flight, varies from run to run); the seed of the
-- chaos's choices (SPRUN_CHAOS_SEED, else the clock) is in every failure
-- message.
--
--   * every call returns exactly once, and a value is the reply to that
--     very call (the worker echoes the call's number);
--   * an idempotent call succeeds, unless the crash barrier refused to
--     send it to a third worker: kind poison_request, its details.crash
--     the second crash (see below);
--   * a failed non-idempotent call is worker_crash naming the worker, the
--     class (killed, segfault, or timeout when it shared its worker with a
--     hanging call) and the signal; or, for a hanging call, timeout;
--   * pool:stats() adds up: requests = replies + every error, each kind as
--     the callers counted it; crashes = restarts = processes started past
--     the first SIZE; no protocol error, nothing in flight or queued;
--   * after pool:stop() every worker process ever seen (in pool:workers()
--     or as the pid in a reply) is gone (kill(pid, 0) is ESRCH, /proc/pid
--     absent), and the spec's process has no child left.
--
-- Retries: crash_barrier.max_retries is 10, yet an idempotent call gets at
-- most one retry. The crash barrier's poison rule (pool/barrier.lua) marks
-- a request that was in flight on two worker processes when each died,
-- and the call whose second attempt crashed is not retried again: it ends
-- with poison_request (the crash in details.crash and as the cause), as
-- the same request made again would. Random kills hit some retried calls
-- twice, so a few idempotent calls fail by design; the spec checks that
-- each of them is one the pool counted as poisoned (stats.poisoned).
--
-- Sizes: SPRUN_CHAOS_REQUESTS overrides REQUESTS (for a quick run).
local sprun = require "sprun"
local h = require "helpers"
local ffi = require "ffi"

pcall(ffi.cdef, "int kill(int pid, int sig);")

local WORKER = h.root .. "/tests/lua/pool/chaos_worker.lua"
local REQUESTS = tonumber(os.getenv("SPRUN_CHAOS_REQUESTS")) or 20000
local SIZE = 8
local CONCURRENCY = 4
local TASKS = 64
local CHAOS_MS = 50
local HANG_EVERY = 1000
local HANG_TIMEOUT_MS = 200
local MAX_RETRIES = 10
-- The longest a call sleeps in the worker (call i sleeps i % SLEEP_MOD
-- ms): enough that the run lasts some seconds and the chaos hits calls in
-- flight, not only idle workers.
local SLEEP_MOD = 20
local SEED = tonumber(os.getenv("SPRUN_CHAOS_SEED")) or os.time()
local LIMIT_MS = 150000

local SIGKILL, SIGSEGV, ESRCH = 9, 11, 3

local function is_hang(i)
  return i % HANG_EVERY == HANG_EVERY / 2 + 1
end

local function idempotent(i)
  return i % 2 == 0
end

describe("sprun.pool under chaos", function()
  it("every call ends once, idempotent calls survive the kills, the stats "
     .. "add up, and no worker is left", function()
    math.randomseed(SEED)
    local function where(fmt, ...)
      -- The seed replays the chaos's choices (victims, signals), not the
      -- timing they meet.
      return ("pool chaos (seed %d: SPRUN_CHAOS_SEED=%d to replay): "
              .. fmt):format(SEED, SEED, ...)
    end
    local me = h.getpid()
    local t0 = os.time()
    -- Children some earlier spec left are its failure, not this one's.
    local earlier = {}
    for _, c in ipairs(h.live_children()) do
      earlier[c] = true
    end

    local ended = {}        -- i -> times its call returned
    local outcome = {}      -- i -> true, or the error
    local crossed = {}      -- calls whose value is another call's reply
    local raised = {}       -- calls whose pool:call raised
    local pids = {}         -- every worker pid seen
    local kills = { [SIGKILL] = 0, [SIGSEGV] = 0 }
    local before, after, final_workers

    local ran, run_err = pcall(h.run_guarded, function()
      local pool = sprun.pool.start {
        name = "chaos", size = SIZE, cmd = { h.sprun, WORKER },
        concurrency = CONCURRENCY, max_queue = TASKS * 2,
        queue_timeout_ms = 60000, request_timeout_ms = 30000,
        start_failures = 1000000,
        restart = { backoff_ms = { 10 }, max_restarts = 1000000 },
        crash_barrier = { retry = "idempotent", max_retries = MAX_RETRIES,
                          backoff_ms = { 5, 10, 20 } },
      }
      local function see_workers()
        local list = pool:workers()
        for _, w in ipairs(list) do
          pids[w.pid] = true
        end
        return list
      end

      local done = false
      local chaos = sprun.spawn(function()
        while not done do
          sprun.sleep(CHAOS_MS / 2 + math.random(CHAOS_MS))
          local list = see_workers()
          if #list > 0 then
            local w = list[math.random(#list)]
            local sig = math.random(2) == 1 and SIGKILL or SIGSEGV
            -- Still this process's child and not yet a zombie: the pid
            -- cannot be someone else's.
            local state, ppid = h.proc_state(w.pid)
            if state and state ~= "Z" and ppid == me
               and ffi.C.kill(w.pid, sig) == 0 then
              kills[sig] = kills[sig] + 1
            end
          end
        end
      end)

      local next_i = 0
      local function caller()
        while next_i < REQUESTS do
          next_i = next_i + 1
          local i = next_i
          local ok, v, err
          if is_hang(i) then
            ok, v, err = pcall(pool.call, pool, "hang", { i = i, ms = 60000 },
                               { timeout_ms = HANG_TIMEOUT_MS })
          else
            ok, v, err = pcall(pool.call, pool, "work",
                               { i = i, ms = i % SLEEP_MOD },
                               { idempotent = idempotent(i) })
          end
          ended[i] = (ended[i] or 0) + 1
          if not ok then
            raised[#raised + 1] = i .. ": " .. tostring(v)
            outcome[i] = { kind = "raised" }
          elseif v ~= nil then
            if type(v) ~= "table" or v.i ~= i then
              crossed[#crossed + 1] = i
            else
              pids[v.pid] = true
            end
            outcome[i] = true
          else
            outcome[i] = err
          end
        end
      end
      local tasks = {}
      for k = 1, TASKS do
        tasks[k] = sprun.spawn(caller)
      end
      for k = 1, TASKS do
        tasks[k]:await()
      end
      done = true
      chaos:await()
      -- Every slot serving again, so that the generations add up.
      h.wait_for("every worker to be ready", function()
        local list = see_workers()
        if #list ~= SIZE then
          return false
        end
        for _, w in ipairs(list) do
          if w.state ~= "ready" then
            return false
          end
        end
        return true
      end, 60000)
      before = pool:stats()
      final_workers = see_workers()
      pool:stop()
      after = pool:stats()
    end, LIMIT_MS)
    if not ran then
      error(where("%s", tostring(run_err)), 0)
    end

    -- Every call ended once, with its own reply.
    local missing, twice = {}, {}
    for i = 1, REQUESTS do
      if ended[i] == nil then
        missing[#missing + 1] = i
      elseif ended[i] > 1 then
        twice[#twice + 1] = i
      end
    end
    assert.are.same({ {}, {}, {}, {} }, { missing, twice, crossed, raised },
                    where("calls that never ended, ended twice, got another "
                          .. "call's value, or raised"))

    -- What each call got.
    local replies, errors, bad = 0, {}, {}
    local idem_failed, poisoned_calls, hang_timeouts = 0, 0, 0
    local CLASS_SIGNALS = { killed = { SIGKILL = true },
                            segfault = { SIGSEGV = true },
                            timeout = { SIGKILL = true, SIGSEGV = true } }
    -- The details of a worker_crash: the worker, the class and the signal,
    -- and the attempt (0 for a call never retried).
    local function crash_ok(d, idem)
      if type(d) ~= "table" or type(d.worker_id) ~= "string"
         or not d.worker_id:match("^worker_[1-" .. SIZE .. "]$")
         or d.exit_code ~= nil then
        return false
      end
      local signals = CLASS_SIGNALS[d.classification]
      if not (signals and signals[d.signal]) then
        return false
      end
      if idem then
        return d.attempt >= 1 and d.attempt <= MAX_RETRIES
      end
      return d.attempt == 0
    end
    for i = 1, REQUESTS do
      local o = outcome[i]
      if o == true then
        replies = replies + 1
        if is_hang(i) then
          bad[#bad + 1] = i .. ": a hanging call succeeded"
        end
      else
        local kind = sprun.error_kind(o)
        errors[kind] = (errors[kind] or 0) + 1
        local fine
        if is_hang(i) then
          fine = (kind == "timeout" and o.details.timeout_ms == HANG_TIMEOUT_MS
                  and o.details.worker_id ~= nil)
                 or (kind == "worker_crash" and crash_ok(o.details, false))
          if kind == "timeout" then
            hang_timeouts = hang_timeouts + 1
          end
        elseif idempotent(i) then
          idem_failed = idem_failed + 1
          -- Poisoned by its second crash (unique args: no other call
          -- has its key, so none is refused before it is sent).
          fine = kind == "poison_request" and type(o.details) == "table"
                 and crash_ok(o.details.crash, true)
                 and sprun.error_kind(o.cause) == "worker_crash"
          if kind == "poison_request" then
            poisoned_calls = poisoned_calls + 1
          end
        else
          fine = kind == "worker_crash" and crash_ok(o.details, false)
        end
        if not fine then
          bad[#bad + 1] = ("%d%s: %s %s"):format(i, idempotent(i)
            and " (idempotent)" or "", tostring(kind), tostring(o))
        end
      end
    end
    assert.are.same({}, bad, where("calls that ended wrongly"))
    assert.are.equal(before.poisoned, poisoned_calls,
                     where("idempotent calls poisoned vs stats.poisoned"))

    -- The pool's counts agree with the callers' and with themselves.
    local err_sum = 0
    for _, n in pairs(before.errors) do
      err_sum = err_sum + n
    end
    local crash_sum = 0
    for _, n in pairs(before.crashes) do
      crash_sum = crash_sum + n
    end
    local gens = 0
    for _, w in ipairs(final_workers) do
      gens = gens + w.generation
    end
    assert.are.same({
      requests = REQUESTS, replies = replies, errors = errors,
      sum = REQUESTS, in_flight = 0, queued = 0, protocol_errors = 0,
      dropped_replies = 0, recycled = 0, restarts = crash_sum,
      generations = SIZE + crash_sum,
    }, {
      requests = before.requests, replies = before.replies,
      errors = before.errors, sum = before.replies + err_sum,
      in_flight = before.in_flight, queued = before.queued,
      protocol_errors = before.protocol_errors,
      dropped_replies = before.dropped_replies, recycled = before.recycled,
      restarts = before.restarts, generations = gens,
    }, where("pool:stats() totals"))
    -- Each crash is one the spec caused.
    for class in pairs(before.crashes) do
      assert.is_truthy(CLASS_SIGNALS[class],
                       where("crash class %s", tostring(class)))
    end
    assert.is_true((before.crashes.killed or 0) <= kills[SIGKILL]
                   and (before.crashes.segfault or 0) <= kills[SIGSEGV]
                   and (before.crashes.timeout or 0)
                       <= REQUESTS / HANG_EVERY,
                   where("more crashes than kills and hangs: %s",
                         require("sprun.telemetry.json").encode(
                           before.crashes)))
    -- The chaos did happen (these hold for any timing: hundreds of kills
    -- are sent, and a hanging call outlives its 200 ms far more often
    -- than not).
    assert.is_true(kills[SIGKILL] + kills[SIGSEGV] >= 20 and crash_sum >= 20
                   and hang_timeouts >= 1,
                   where("too little chaos: %d kills, %d crashes, %d hang "
                         .. "timeouts", kills[SIGKILL] + kills[SIGSEGV],
                         crash_sum, hang_timeouts))
    assert.are.same({ REQUESTS, replies, "stopped" },
                    { after.requests, after.replies, after.state },
                    where("stats after stop"))

    -- No worker process is left.
    local left = {}
    local seen = 0
    for pid in pairs(pids) do
      seen = seen + 1
      local r = ffi.C.kill(pid, 0)
      local errno = ffi.errno()
      local f = io.open("/proc/" .. pid .. "/stat")
      if f then
        f:close()
      end
      if r == 0 or errno ~= ESRCH or f then
        left[#left + 1] = pid
      end
    end
    assert.are.same({}, left, where("worker processes left after stop"))
    local children = {}
    for _, c in ipairs(h.live_children()) do
      if not earlier[c] then
        children[#children + 1] = c
      end
    end
    assert.are.same({}, children, where("children left"))
    assert.is_true(seen >= SIZE + 1, where("%d pids seen", seen))

    print(("# pool chaos: seed %d, %d calls (%d replies; errors %s), %d "
      .. "SIGKILL + %d SIGSEGV sent, crashes %s, %d restarts, %d idempotent "
      .. "calls failed (poisoned %d), %d worker pids seen, %d s"):format(
      SEED, REQUESTS, replies, require("sprun.telemetry.json").encode(errors),
      kills[SIGKILL], kills[SIGSEGV],
      require("sprun.telemetry.json").encode(before.crashes),
      before.restarts, idem_failed, before.poisoned, seen, os.time() - t0))
  end)
end)
