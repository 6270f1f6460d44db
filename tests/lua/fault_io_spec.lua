-- Fault injection under load, with real I/O: worker processes that die of
-- SIGSEGV, SIGKILL or SIGABRT (or are killed by their caller) and TCP
-- connections that close midway, from either end, among 1,000 concurrent
-- calls. The same checks as fault_spec.lua: each call ends exactly once,
-- nothing leaks (handles, child processes), the loop serves ordinary calls
-- afterwards, and the breakers' and monitors' counts equal what happened.
local sprun = require "sprun"
local sched = require "sprun.sched"
local errors = require "sprun.errors"
local h = require "helpers"

local ex = sprun.executor

local N = 1000

local F = require "fault_helpers"
local pack, run_guarded, fan_out, ordinary_batch =
  F.pack, F.run_guarded, F.fan_out, F.ordinary_batch

local function tally_of(list)
  local t = {}
  for _, k in ipairs(list) do t[k] = (t[k] or 0) + 1 end
  return t
end

--- Worker processes that crash ----------------------------------------------

-- What call i does, by i % 40 (7..39: no process, a quick success). Each
-- crash is a process that really dies of the signal; `ulimit -c 0` keeps
-- core files out of the work tree.
local WORK = {
  [0] = { "SIGSEGV", function()
    return sprun.process.run { "sh", "-c", "ulimit -c 0; kill -SEGV $$" }
  end },
  [1] = { "SIGKILL", function()
    return sprun.process.run { "sh", "-c", "echo half; kill -KILL $$" }
  end },
  [2] = { "SIGABRT", function()
    return sprun.process.run { "sh", "-c", "ulimit -c 0; kill -ABRT $$" }
  end },
  [3] = { "exit 3", function()
    return sprun.process.run { "sh", "-c", "echo partial; exit 3" }
  end },
  [4] = { "SIGSEGV", function()    -- a long-lived worker dies mid-job
    local w = assert(sprun.process.spawn {
      "sh", "-c", "echo ready; read job; ulimit -c 0; kill -SEGV $$",
      stdin = true })
    assert(w:read_line() == "ready")
    assert(w:write("job\n"))
    local line, err = w:read_line()
    assert(line == nil and err.kind == "eof", "read after the crash")
    local st = w:wait()
    local ok, werr = w:write("more\n")
    assert(ok == nil and werr.kind == "closed", "write after the crash")
    return st
  end },
  [5] = { "SIGKILL", function()    -- killed by its caller
    local w = assert(sprun.process.spawn { "sleep", "60" })
    sprun.sleep(1)
    assert(w:kill("SIGKILL"))
    return w:wait()
  end },
  [6] = { "ok", function()
    return sprun.process.run { "sh", "-c", "echo ok" }
  end },
}

-- Runs one job as worker `id`: a death by signal is recorded in the health
-- monitor and becomes a "worker_crash" error (which the default retry
-- policy retries); a bad exit status is an "exit_status" error.
local function supervised(monitors, id, job)
  local r, err = job()
  if r == nil then
    return nil, err
  end
  if r.signal then
    for _, hm in ipairs(monitors) do
      assert(hm:record_crash(id, { reason = r.signal }))
    end
    return nil, sprun.error("worker_crash", id .. " died of " .. r.signal,
                            { signal = r.signal })
  end
  if r.code ~= 0 then
    return nil, sprun.error("exit_status", id .. " exited with " .. r.code)
  end
  return r.stdout or r.code
end

describe("fault injection: worker processes that crash", function()
  after_each(function()
    assert.are.same({}, h.live_children())
    assert.is_nil(sched.running())
  end)

  it("1,000 protected calls, 175 of them on processes that die or fail: "
    .. "each call ends once, the monitor counts every death", function()
    local cbs = {}
    for b = 1, 5 do
      cbs[b] = sprun.circuit_breaker.start_link { name = "workers-" .. b,
        failure_threshold = 1000000 }
    end
    local hm = sprun.health_monitor.start_link { pool = "workers",
      max_crashes = 1000, crash_window_ms = 600000 }
    local strict = sprun.health_monitor.start_link { pool = "strict",
      max_crashes = 100 }
    local policy = sprun.retry_policy.new { max_attempts = 2,
                                            backoff_ms = { 1 } }
    local attempts = {}
    local out, good = run_guarded(function()
      local res = fan_out(N, function(i)
        local k = i % 40
        return ex.execute_with_protection(cbs[i % 5 + 1], function()
          attempts[i] = (attempts[i] or 0) + 1
          if WORK[k] == nil then
            sprun.sleep(0)
            return i
          end
          return supervised({ hm, strict }, "w" .. k, WORK[k][2])
        end, { policy = policy })
      end)
      return res, ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    local got, want = {}, {}
    local fails, oks = { 0, 0, 0, 0, 0 }, { 0, 0, 0, 0, 0 }
    for i = 1, N do
      local k, r, b = i % 40, out[i], i % 5 + 1
      local what = WORK[k] and WORK[k][1]
      local e = r[2]
      if what == nil then
        want[i] = "value " .. i
        oks[b] = oks[b] + 1
      elseif what == "ok" then
        want[i] = "value ok\n"
        oks[b] = oks[b] + 1
      elseif what == "exit 3" then
        want[i] = "exit_status: w3 exited with 3 after 1"
        fails[b] = fails[b] + 1
      else
        want[i] = ("worker_crash: w%d died of %s after 2"):format(k, what)
        fails[b] = fails[b] + 2
      end
      if r[1] ~= nil then
        got[i] = "value " .. tostring(r[1])
      else
        got[i] = tostring(e) .. " after " .. attempts[i]
        if e.kind == "worker_crash" and not (e.details.retries_exhausted
            and e.details.attempts == 2) then
          got[i] = got[i] .. " (not marked exhausted)"
        end
      end
    end
    assert.are.same(want, got)
    for b = 1, 5 do
      local s = cbs[b]:stats()
      assert.are.same({ oks[b], fails[b], 0 },
        { s.total_successes, s.total_failures, s.rejected_count })
    end
    -- 25 calls of each kind, each crash tried twice: 5 * 25 * 2 deaths.
    local st = hm:stats()
    assert.are.same({ 250, 250, 5, true }, { st.total_crashes,
      st.crashes_in_window, st.workers_with_crashes, st.is_healthy })
    for k, reason in pairs { [0] = "SIGSEGV", "SIGKILL", "SIGABRT",
                             [4] = "SIGSEGV", [5] = "SIGKILL" } do
      local w = hm:worker_health("w" .. k)
      assert.are.same({ 50, 50, { reason, reason, reason, reason } },
        { w.crashes_in_window, w.crash_count, w.reasons })
    end
    assert.are.equal(0, hm:worker_health("w3").crash_count)
    assert.are.equal(0, hm:worker_health("w6").crash_count)
    assert.are.same({ 250, false }, { strict:stats().total_crashes,
                                      strict:is_healthy() })
  end)

  it("workers killed from outside while their readers wait: each reader "
    .. "sees the end, each wait the signal, nothing is left", function()
    local K = 40
    local res = run_guarded(function()
      local workers, readers, up = {}, {}, 0
      for i = 1, K do
        workers[i] = assert(sprun.process.spawn {
          "sh", "-c", "echo up; exec sleep 60" })
        readers[i] = sprun.spawn(function()
          local first = workers[i]:read_line()
          up = up + 1
          local line, err = workers[i]:read_line()
          return first, line, err and err.kind
        end)
      end
      -- 960 ordinary tasks share the loop meanwhile.
      local busy = sprun.spawn(ordinary_batch, N - K)
      -- Every reader is blocked in its second read_line when the kill comes.
      while up < K do
        sprun.sleep(1)
      end
      sprun.sleep(5)
      for i = 1, K do
        assert(workers[i]:kill(i % 2 == 0 and "SIGKILL" or "SIGSEGV"))
      end
      local out = {}
      for i = 1, K do
        local first, line, kind = readers[i]:await(5000)
        local st = workers[i]:wait()
        out[i] = table.concat({ tostring(first), tostring(line),
                                tostring(kind), tostring(st.signal) }, " ")
      end
      out.busy = busy:await(5000)
      return out
    end)
    local want = { busy = N - K }
    for i = 1, K do
      want[i] = "up nil eof " .. (i % 2 == 0 and "SIGKILL" or "SIGSEGV")
    end
    assert.are.same(want, res)
  end)

  it("a batch whose items crash, hang or overrun: the hung ones are killed "
    .. "at their timeout and reaped", function()
    local res = run_guarded(function()
      local fns = {}
      for i = 1, N do
        local k = i % 50
        fns[i] = function()
          if k == 0 then
            return sprun.process.run { "sh", "-c",
                                       "ulimit -c 0; kill -SEGV $$" }
          elseif k == 1 then
            return sprun.process.run { "sleep", "60" }        -- batch timeout
          elseif k == 2 then
            return sprun.process.run { "sleep", "60", timeout_ms = 50 }
          end
          sprun.sleep(0)
          return "fine"
        end
      end
      -- Long enough for the 60 processes to start and end on a loaded
      -- machine: only the `sleep 60` items may reach it.
      return ex.execute_batch(fns, { timeout_ms = 4000 })
    end)
    local got = {}
    for i = 1, N do
      local r, k = res[i], i % 50
      if k == 0 then
        got[i] = r.ok and (r.value.signal or "code " .. tostring(r.value.code)
          .. " " .. r.value.stderr) or tostring(r.error)
      elseif k == 1 or k == 2 then
        got[i] = r.ok and "?" or tostring(r.error)
      else
        got[i] = r.ok and r.value or tostring(r.error)
      end
    end
    assert.are.same({
      fine = 940, SIGSEGV = 20,
      ["timeout: did not finish within 4000 ms"] = 20,
      ["timeout: sleep did not finish within 50 ms (killed)"] = 20,
    }, tally_of(got))
  end)
end)

--- Sockets that close midway --------------------------------------------------

-- The server reads the mode line its client sends, then misbehaves as
-- told; it records exactly one outcome per connection.
local SERVE = {
  partial = function(conn)                -- half a line, then gone
    conn:write("HALF")
    return "sent half"
  end,
  nothing = function()                    -- gone without a word
    return "said nothing"
  end,
  short = function(conn)                  -- promises 10 bytes, sends 5
    conn:write("LEN 10\n12345")
    return "sent 5 of 10"
  end,
  echo = function(conn)
    local line = conn:read_line()
    conn:write(line .. "\n")
    local more, err = conn:read()
    return "echoed, then " .. tostring(more or errors.kind(err))
  end,
  never = function(conn)                  -- waits for a client that gives up
    local data, err = conn:read()
    return "waited, then " .. tostring(data or errors.kind(err))
  end,
  ["client-half"] = function(conn)
    local line, err = conn:read_line()
    local after, err2 = conn:read_line()
    return ("got %s then %s"):format(tostring(line or errors.kind(err)),
                                     tostring(after or errors.kind(err2)))
  end,
  flood = function(conn)                  -- writes to a client that left
    local chunk = string.rep("f", 256 * 1024)
    for _ = 1, 256 do
      local ok, err = conn:write(chunk)
      if not ok then
        local kind = errors.kind(err)
        if kind == "connection_reset" or kind == "connection_closed" then
          return "write failed"
        end
        return "write failed: " .. tostring(err)
      end
    end
    return "wrote 64 MiB to nobody"
  end,
}

-- What the client does for each mode, and the value it returns.
local CLIENT = {
  partial = function(conn)
    local a, e1 = conn:read_line()
    local b, e2 = conn:read_line()
    if b == nil and e2.kind == "closed" then
      return nil, sprun.error("truncated", "got '" .. tostring(a or e1) .. "'")
    end
    return b
  end,
  nothing = function(conn)
    local a, e = conn:read_line()
    if a == nil then
      return nil, sprun.error("truncated", "got " .. errors.kind(e))
    end
    return a
  end,
  short = function(conn)
    local head = conn:read_line()
    local want, body = tonumber(head:match("^LEN (%d+)$")), ""
    while #body < want do
      local data = conn:read()
      if data == nil then
        return nil, sprun.error("truncated", #body .. " of " .. want)
      end
      body = body .. data
    end
    return body
  end,
  echo = function(conn)
    conn:write("hello\n")
    return conn:read_line()
  end,
  never = function(conn)
    return conn:read()
  end,
  ["client-half"] = function(conn)
    conn:write("par")
    conn:close()
    return "left early"
  end,
  ["client-gone"] = function(conn)
    conn:close()
    return "left at once"
  end,
  flood = function(conn)
    local data = conn:read(1)
    conn:close()
    return "read " .. data
  end,
}
local MODES = { "partial", "nothing", "short", "echo", "never", "client-half",
                "client-gone", "flood" }

describe("fault injection: sockets that close midway", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("1,000 connections to a server that drops them, and clients that "
    .. "drop it: each call and each connection ends exactly once", function()
    local cbs = {}
    for b = 1, #MODES do
      cbs[b] = sprun.circuit_breaker.start_link { name = "tcp-" .. MODES[b],
        failure_threshold = 1000000 }
    end
    local served = {}
    local out, good = run_guarded(function()
      local server = assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
        local mode, err = conn:read_line()
        local serve = mode and SERVE[mode]
        local what = serve and serve(conn) or ("gone: " .. tostring(
          mode or errors.kind(err)))
        served[#served + 1] = (mode or "?") .. ": " .. what
      end))
      local res = fan_out(N, function(i)
        local b = i % #MODES + 1
        local mode = MODES[b]
        return ex.execute_with_protection(cbs[b], function()
          return ex.execute_with_timeout(function()
            local conn = assert(sprun.tcp.connect("127.0.0.1", server.port,
                                                  { timeout_ms = 5000 }))
            if mode ~= "client-gone" then
              assert(conn:write(mode .. "\n"))
            end
            local r = pack(CLIENT[mode](conn))
            conn:close()
            return unpack(r, 1, r.n)
          end, { timeout_ms = mode == "never" and 100 or 8000 })
        end, { max_attempts = 1 })
      end)
      -- The server's handlers end when they see their clients go.
      while #served < N do        -- (the watchdog bounds this)
        sprun.sleep(5)
      end
      server:close()
      return res, ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    local want_client = {
      partial = "truncated: got 'HALF'",
      nothing = "truncated: got closed",
      short = "truncated: 5 of 10",
      echo = "hello",
      never = "timeout: did not finish within 100 ms",
      ["client-half"] = "left early",
      ["client-gone"] = "left at once",
      flood = "read f",
    }
    local got, want = {}, {}
    for i = 1, N do
      local mode = MODES[i % #MODES + 1]
      want[i] = mode .. " -> " .. want_client[mode]
      got[i] = mode .. " -> " .. tostring(out[i][1] or out[i][2])
    end
    assert.are.same(want, got)
    -- 1000 = 125 * 8 connections of each mode.
    assert.are.same({
      ["partial: sent half"] = 125,
      ["nothing: said nothing"] = 125,
      ["short: sent 5 of 10"] = 125,
      ["echo: echoed, then closed"] = 125,
      ["never: waited, then closed"] = 125,
      ["client-half: got par then closed"] = 125,
      ["?: gone: closed"] = 125,
      ["flood: write failed"] = 125,
    }, tally_of(served))
    for b, mode in ipairs(MODES) do
      local s = cbs[b]:stats()
      local failed = want_client[mode]:match("^truncated") or mode == "never"
      assert.are.same({ failed and 0 or 125, failed and 125 or 0 },
        { s.total_successes, s.total_failures }, mode)
    end
  end)

  it("a server closed while 1,000 clients are connected: the clients see "
    .. "the end, the handlers are not cut off", function()
    local ended, accepted = {}, 0
    local out = run_guarded(function()
      local server = assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
        accepted = accepted + 1
        local line = conn:read_line()
        sprun.sleep(20)
        conn:write("late " .. line .. "\n")
        ended[#ended + 1] = line
      end))
      local clients = {}
      for i = 1, N do
        clients[i] = sprun.spawn(function()
          local conn = assert(sprun.tcp.connect("127.0.0.1", server.port))
          conn:write(i .. "\n")
          local a = conn:read_line()
          local b, err = conn:read_line()
          conn:close()
          return a, b == nil and err.kind
        end)
      end
      while accepted < N do       -- (the watchdog bounds this)
        sprun.sleep(1)
      end
      server:close()           -- stops accepting; open connections go on
      local res = {}
      for i = 1, N do
        res[i] = pack(clients[i]:await(5000))
      end
      return res
    end)
    local bad = {}
    for i = 1, N do
      if not (out[i][1] == "late " .. i and out[i][2] == "closed") then
        bad[#bad + 1] = i .. ": " .. tostring(out[i][1]) .. " "
          .. tostring(out[i][2])
      end
    end
    assert.are.same({}, bad)
    assert.are.equal(N, #ended)
  end)
end)
