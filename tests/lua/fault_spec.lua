-- Fault injection under load: 1,000 concurrent calls whose operations
-- raise, return odd values, never return, or run beside telemetry
-- handlers and predicates that raise. (Processes that crash and sockets
-- that close midway are in fault_io_spec.lua.)
--
-- Every spec checks the same four things:
--   * each submitted call got exactly one result or error (an id per call,
--     counted where it ends: no duplicate, no loss);
--   * nothing leaked (h.run_tasks: no handle left open; no child process);
--   * the loop still serves: after the faults, a fresh batch of ordinary
--     calls succeeds in the same run;
--   * the breakers' and monitors' counts equal what the operations did.
local sprun = require "sprun"
local sched = require "sprun.sched"
local errors = require "sprun.errors"
local telemetry = require "sprun.telemetry"
local h = require "helpers"

local ex = sprun.executor

local N = 1000

local F = require "fault_helpers"
local pack, run_guarded, fan_out, ordinary_batch =
  F.pack, F.run_guarded, F.fan_out, F.ordinary_batch

-- Totals over a list of breakers.
local function totals(cbs)
  local t = { successes = 0, failures = 0, rejected = 0, ignored = 0 }
  for _, cb in ipairs(cbs) do
    local s = cb:stats()
    t.successes = t.successes + s.total_successes
    t.failures = t.failures + s.total_failures
    t.rejected = t.rejected + s.rejected_count
    t.ignored = t.ignored + s.ignored_count
  end
  return t
end

local function breakers(k, opts)
  local cbs = {}
  for i = 1, k do
    local o = { name = "fault-" .. i, failure_threshold = 1000000 }
    for key, v in pairs(opts or {}) do o[key] = v end
    cbs[i] = sprun.circuit_breaker.start_link(o)
  end
  return cbs
end

-- A table whose __tostring raises, and one whose __tostring returns a
-- number: printing either as an error message must not fail the loop.
local BAD_TOSTRING = setmetatable({}, {
  __tostring = function() error("__tostring raised") end })
local NUM_TOSTRING = setmetatable({}, {
  __tostring = function() return 42 end })
local BIG = string.rep("x", 1024 * 1024)
local UNAVAILABLE = sprun.error("unavailable", "down")
local A_TABLE = { code = 7 }

-- What operation i raises (nil: it succeeds), by i % 10. The message of
-- the "error" object the executor wraps it in is given beside.
local RAISED = {
  [0] = { "plain string", "plain string" },
  [1] = { 42, "42" },
  [2] = { A_TABLE, "{ code = 7 }" },  -- a plain table by its fields
  [3] = { UNAVAILABLE, nil },            -- an error object stays itself
  [4] = { nil, "nil" },
  [5] = { false, "false" },
  [6] = { BAD_TOSTRING, "(error object is a table value)" },
  [7] = { NUM_TOSTRING, "(error object is a table value)" },
  [8] = { BIG, BIG },
}

local function raising_op(i)
  sprun.sleep(i % 3)               -- interleave the 1,000 calls
  local r = RAISED[i % 10]
  if r == nil then
    return i, "ok"
  end
  error(r[1], 0)
end

describe("fault injection: operations that raise", function()
  after_each(function()
    assert.are.same({}, h.live_children())
    assert.is_nil(sched.running())
  end)

  it("execute_with_protection: 1,000 concurrent calls, every raised value "
    .. "becomes one error, the breakers count each attempt", function()
    local cbs = breakers(10)
    local policy = sprun.retry_policy.new {
      max_attempts = 2, backoff_ms = { 1 },
      retriable_errors = { "unavailable" },
    }
    local attempts = {}
    local out, good = run_guarded(function()
      local res = fan_out(N, function(i)
        return ex.execute_with_protection(cbs[i % 10 + 1], function()
          attempts[i] = (attempts[i] or 0) + 1
          return raising_op(i)
        end, { policy = policy })
      end)
      return res, ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    local bad, expect_fail, expect_ok = {}, {}, {}
    for b = 1, 10 do expect_fail[b], expect_ok[b] = 0, 0 end
    for i = 1, N do
      local r, k, b = out[i], i % 10, i % 10 + 1
      local spec = RAISED[k]
      local ok
      if spec == nil then
        ok = r.n == 2 and r[1] == i and r[2] == "ok" and attempts[i] == 1
        expect_ok[b] = expect_ok[b] + 1
      elseif k == 3 then
        -- Retriable: two attempts, then the last error marked exhausted
        -- (a copy: the constant UNAVAILABLE itself is left alone).
        local e = r[2]
        ok = r.n == 2 and r[1] == nil and attempts[i] == 2
          and e ~= UNAVAILABLE and e.kind == "unavailable"
          and e.message == "down" and e.details.retries_exhausted == true
          and e.details.attempts == 2 and UNAVAILABLE.details == nil
        expect_fail[b] = expect_fail[b] + 2
      else
        local e = r[2]
        ok = r.n == 2 and r[1] == nil and attempts[i] == 1
          and errors.is_error(e) and e.kind == "error"
          and e.message == spec[2] and rawequal(e.details.value, spec[1])
        expect_fail[b] = expect_fail[b] + 1
      end
      if not ok then bad[#bad + 1] = i end
    end
    assert.are.same({}, bad)
    for b = 1, 10 do
      local s = cbs[b]:stats()
      assert.are.same({ "closed", expect_ok[b], expect_fail[b], 0, 0 },
        { s.state, s.total_successes, s.total_failures, s.rejected_count,
          s.ignored_count })
    end
    assert.are.same({ successes = 100, failures = 1000, rejected = 0,
                      ignored = 0 }, totals(cbs))
  end)

  it("execute_batch: 1,000 raising items each give task_crashed with the "
    .. "raised value, the others their values", function()
    local ran = {}
    local res, good = run_guarded(function()
      local fns = {}
      for i = 1, N do
        fns[i] = function()
          ran[i] = (ran[i] or 0) + 1
          return raising_op(i)
        end
      end
      return ex.execute_batch(fns, { timeout_ms = 5000, max_concurrency = N }),
             ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    assert.are.equal(N, #res)
    local bad, kinds = {}, {}
    for i = 1, N do
      local r, spec = res[i], RAISED[i % 10]
      local ok
      if spec == nil then
        ok = r.ok == true and r.n == 2 and r.values[1] == i
      else
        local e = r.error
        ok = r.ok == false and e.kind == "task_crashed"
          and rawequal(e.details.error, spec[1])
          and e.message == (spec[2] or "unavailable: down")
          and type(e.details.traceback) == "string"
      end
      kinds[r.ok and "ok" or r.error.kind] =
        (kinds[r.ok and "ok" or r.error.kind] or 0) + 1
      if not ok or ran[i] ~= 1 then bad[#bad + 1] = i end
    end
    assert.are.same({}, bad)
    assert.are.same({ ok = 100, task_crashed = 900 }, kinds)
  end)

  it("execute_with_timeout: a raising operation gives task_crashed, never "
    .. "a raise in the caller", function()
    local out, good = run_guarded(function()
      return fan_out(N, function(i)
        return ex.execute_with_timeout(raising_op, { timeout_ms = 5000 }, i)
      end), ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    local tally = {}
    for i = 1, N do
      local r, spec = out[i], RAISED[i % 10]
      local key
      if spec == nil then
        key = (r.n == 2 and r[1] == i and r[2] == "ok") and "ok" or "bad ok"
      else
        key = (r.n == 2 and r[1] == nil and r[2].kind == "task_crashed"
               and rawequal(r[2].details.error, spec[1])) and "crashed"
               or ("bad " .. i)
      end
      tally[key] = (tally[key] or 0) + 1
    end
    assert.are.same({ ok = 100, crashed = 900 }, tally)
  end)
end)

--- Odd return values ---------------------------------------------------------

local A_FUNCTION = function() end
local A_COROUTINE = coroutine.create(A_FUNCTION)
local HUGE = string.rep("y", 8 * 1024 * 1024)
local MANY = {}
for i = 1, 250 do MANY[i] = i end
local AN_ERROR = sprun.error("bad_input", "nope")

-- { name, the values returned, failure value (nil: a success) }
local SHAPES = {
  { "nothing", pack() },
  { "nil", pack(nil) },
  { "false", pack(false) },
  { "nil, nil", pack(nil, nil) },
  { "nil, nil, x", pack(nil, nil, "x") },
  { "false, string", pack(false, "bad"), "bad" },
  { "nil, error object", pack(nil, AN_ERROR), AN_ERROR },
  { "nil, false", pack(nil, false), false },
  { "false, table", pack(false, A_TABLE), A_TABLE },
  { "a table", pack(A_TABLE) },
  { "an error object as a value", pack(AN_ERROR, "not a failure") },
  { "250 values", pack(unpack(MANY)) },
  { "an 8 MiB string", pack(HUGE) },
  { "nan, inf", pack(0 / 0, math.huge) },
  { "a function, a coroutine, a file", pack(A_FUNCTION, A_COROUTINE,
                                            io.stdout) },
  { "0 and the empty string", pack(0, "") },
}
local NSHAPES = #SHAPES

local function shape_of(i)
  return SHAPES[i % NSHAPES + 1]
end

local function garbage_op(i)
  if i % 2 == 0 then
    sprun.sleep(0)
  end
  local v = shape_of(i)[2]
  return unpack(v, 1, v.n)
end

-- Are the packed values r the same as v (nan equal to nan)?
local function same_values(r, v)
  if r.n ~= v.n then
    return false
  end
  for k = 1, v.n do
    local a, b = r[k], v[k]
    if not (rawequal(a, b) or (a ~= a and b ~= b)) then
      return false
    end
  end
  return true
end

describe("fault injection: operations that return odd values", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("execute_batch classifies each of 1,000 returns exactly", function()
    local res, good = run_guarded(function()
      local fns = {}
      for i = 1, N do fns[i] = function() return garbage_op(i) end end
      return ex.execute_batch(fns, { timeout_ms = 5000 }), ordinary_batch(N)
    end)
    assert.are.equal(N, good)
    local bad = {}
    for i = 1, N do
      local r, shape = res[i], shape_of(i)
      local ok, v = nil, shape[2]
      if shape[3] ~= nil then
        ok = r.ok == false and rawequal(r.error, v[2])
      else
        ok = r.ok == true
          and same_values({ n = r.n, unpack(r.values, 1, r.n) }, v)
          and (rawequal(r.value, v[1]) or (r.value ~= r.value
                                           and v[1] ~= v[1]))
      end
      if not ok then bad[#bad + 1] = i .. " " .. shape[1] end
    end
    assert.are.same({}, bad)
  end)

  it("execute_with_protection returns the values as they were, and the "
    .. "breakers count exactly the failures by return", function()
    local cbs = breakers(4)
    local out = run_guarded(function()
      return fan_out(N, function(i)
        return ex.execute_with_protection(cbs[i % 4 + 1], garbage_op,
                                          { max_attempts = 1 }, i)
      end)
    end)
    local bad, failures, successes = {}, 0, 0
    for i = 1, N do
      local r, shape = out[i], shape_of(i)
      local ok
      if shape[3] ~= nil then
        failures = failures + 1
        ok = r.n == 2 and r[1] == nil and rawequal(r[2], shape[2][2])
      else
        successes = successes + 1
        ok = same_values(r, shape[2])
      end
      if not ok then bad[#bad + 1] = i .. " " .. shape[1] end
    end
    assert.are.same({}, bad)
    -- 16 shapes, 4 of them failures (i % 16 in 5..8): i = 1..992 holds
    -- each residue 62 times, i = 993..1000 the residues 1..8 once more.
    assert.are.same({ 252, 748 }, { failures, successes })
    assert.are.same({ successes = 748, failures = 252, rejected = 0,
                      ignored = 0 }, totals(cbs))
  end)

  it("execute_with_timeout and task:await keep every value", function()
    local out = run_guarded(function()
      return fan_out(N, function(i)
        if i % 2 == 0 then
          return ex.execute_with_timeout(garbage_op, { timeout_ms = 5000 }, i)
        end
        return sprun.spawn(garbage_op, i):await(5000)
      end)
    end)
    local bad = {}
    for i = 1, N do
      if not same_values(out[i], shape_of(i)[2]) then
        bad[#bad + 1] = i .. " " .. shape_of(i)[1]
      end
    end
    assert.are.same({}, bad)
  end)
end)

--- Operations that never return -----------------------------------------------

-- Each blocks forever in its own way; i % 10 picks the way. The listening
-- server (for the socket that never answers) is passed in.
local HANG = {
  [0] = function() sprun.sleep(2 ^ 53) end,
  [1] = function() sprun.sleep(1e9) end,
  [2] = function()                 -- awaits a child that never ends
    return sprun.spawn(function() sprun.sleep(1e9) end):await()
  end,
  [3] = function()                 -- sleeps in a loop
    while true do sprun.sleep(1) end
  end,
  [4] = function(_, port)          -- reads from a server that never writes
    local conn = assert(sprun.tcp.connect("127.0.0.1", port))
    return conn:read()
  end,
  [5] = function(i)                -- a child process that never exits
    if i % 100 == 5 then
      return sprun.process.run { "sleep", "60" }
    end
    sprun.sleep(1e9)
  end,
  [6] = function(i)                -- waits for a long-lived worker
    if i % 100 == 6 then
      return assert(sprun.process.spawn { "sleep", "60" }):wait()
    end
    sprun.sleep(1e9)
  end,
  [7] = function()                 -- a server of its own that nobody calls
    return assert(sprun.tcp.listen("127.0.0.1", 0, function() end)):wait()
  end,
  [8] = function()                 -- yields outside any sprun wait
    coroutine.yield("forever")
    return "resumed?"
  end,
  [9] = function() return "quick" end,
}

-- The server of HANG[4]: it reads until its client goes away.
local function silent_server(seen)
  return assert(sprun.tcp.listen("127.0.0.1", 0, function(conn)
    seen.accepted = seen.accepted + 1
    local data, err = conn:read()
    seen.ended[#seen.ended + 1] = data == nil and errors.kind(err) or data
  end))
end

describe("fault injection: operations that never return", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("execute_batch stops 1,000 hung calls at their timeout, kills their "
    .. "processes and closes their sockets", function()
    local seen = { accepted = 0, ended = {} }
    local t0 = sprun.hrtime()
    local res, good, elapsed = run_guarded(function()
      local server = silent_server(seen)
      local fns = {}
      for i = 1, N do
        fns[i] = function() return HANG[i % 10](i, server.port) end
      end
      local r = ex.execute_batch(fns, { timeout_ms = 150 })
      local ms = (sprun.hrtime() - t0) / 1e6
      -- The server's handlers see their clients go away.
      while #seen.ended < 100 do  -- (the watchdog bounds this)
        sprun.sleep(5)
      end
      server:close()
      return r, ordinary_batch(N), ms
    end)
    assert.are.equal(N, good)
    local tally = {}
    for i = 1, N do
      local r, key = res[i], nil
      if i % 10 == 9 then
        key = r.ok and r.value == "quick" and "quick" or "bad"
      elseif i % 10 == 8 then
        key = not r.ok and r.error.kind == "task_crashed"
          and r.error.message:match("^task %d+ called coroutine%.yield "
            .. "outside a sprun wait %(use sprun%.sleep, an await or an I/O "
            .. "call%)$") and "stray yield" or "bad"
      else
        key = not r.ok and r.error.kind == "timeout"
          and r.error.message == "did not finish within 150 ms"
          and "timeout" or "bad"
      end
      tally[key] = (tally[key] or 0) + 1
    end
    assert.are.same({ timeout = 800, ["stray yield"] = 100, quick = 100 },
      tally)
    assert.are.equal(100, seen.accepted)
    local ends = {}
    for _, v in ipairs(seen.ended) do ends[v] = (ends[v] or 0) + 1 end
    assert.are.same({ closed = 100 }, ends)
    -- Stopped by the timeout, not by luck: well under the 1e9 ms sleeps.
    assert.is_true(elapsed < 5000, elapsed .. " ms")
  end)

  it("execute_with_protection retries each timeout once, the breakers "
    .. "count two failures a call, the error says it was exhausted",
    function()
      local cbs = breakers(10)
      local policy = sprun.retry_policy.new { max_attempts = 2,
                                              backoff_ms = { 2 } }
      local seen = { accepted = 0, ended = {} }
      local attempts = {}
      local out, good = run_guarded(function()
        local server = silent_server(seen)
        local res = fan_out(N, function(i)
          local k = i % 10
          if k == 5 or k == 6 or k == 8 then
            k = 0                      -- processes and yields: above
          end
          return ex.execute_with_protection(cbs[i % 10 + 1], function()
            attempts[i] = (attempts[i] or 0) + 1
            return ex.execute_with_timeout(HANG[k], { timeout_ms = 50 }, i,
                                           server.port)
          end, { policy = policy })
        end)
        while #seen.ended < 200 do  -- (the watchdog bounds this)
          sprun.sleep(5)
        end
        server:close()
        return res, ordinary_batch(N)
      end)
      assert.are.equal(N, good)
      local tally = {}
      for i = 1, N do
        local r, key = out[i], nil
        if i % 10 == 9 then
          key = r[1] == "quick" and attempts[i] == 1 and "quick" or "bad"
        else
          local e = r[2]
          key = r[1] == nil and e.kind == "timeout"
            and e.details.retries_exhausted == true
            and e.details.attempts == 2 and attempts[i] == 2
            and "exhausted" or "bad"
        end
        tally[key] = (tally[key] or 0) + 1
      end
      assert.are.same({ exhausted = 900, quick = 100 }, tally)
      for b = 1, 10 do
        local s = cbs[b]:stats()
        local want = b == 10 and { 100, 0 } or { 0, 200 }
        assert.are.same(want, { s.total_successes, s.total_failures })
      end
      assert.are.equal(200, seen.accepted)
    end)
end)

--- Handlers and predicates that raise -----------------------------------------

-- Replaces io.stderr's write for the length of fn(); returns what was
-- written to it (telemetry warns there when it detaches a handler).
local function capture_stderr(fn)
  local methods = getmetatable(io.stderr).__index
  local write, text = methods.write, {}
  methods.write = function(f, ...)
    if f == io.stderr then
      for k = 1, select("#", ...) do text[#text + 1] = select(k, ...) end
      return f
    end
    return write(f, ...)
  end
  local ok, err = pcall(fn)
  methods.write = write
  if not ok then
    error(err, 0)
  end
  return table.concat(text)
end

-- The breaker rules replayed over the outcomes one breaker saw, in order
-- ("ok", "fail" or "rejected"; half_open_max_calls = 1): how many times it
-- opened and closed.
local function replay(seq, threshold)
  local state, run, opened, closed = "closed", 0, 0, 0
  for _, o in ipairs(seq) do
    if state == "closed" then
      if o == "fail" then
        run = run + 1
        if run == threshold then
          state, opened = "open", opened + 1
        end
      else
        run = 0
      end
    elseif o ~= "rejected" then
      -- Admitted after opening: it was the half-open probe.
      if o == "fail" then
        opened = opened + 1
      else
        state, run, closed = "closed", 0, closed + 1
      end
    end
  end
  return opened, closed
end

describe("fault injection: handlers that raise", function()
  after_each(function()
    telemetry.detach("fault-raiser")
    telemetry.detach("fault-counter")
    assert.are.same({}, h.live_children())
  end)

  it("a telemetry handler that raises is detached once; 1,000 calls and "
    .. "the breakers go on as if it never ran", function()
    local raised, counted = 0, { opened = 0, closed = 0, failure = 0 }
    telemetry.attach_many("fault-raiser", {
      { "snakepit", "circuit_breaker", "opened" },
      { "snakepit", "circuit_breaker", "closed" },
      { "snakepit", "circuit_breaker", "call", "failure" },
      { "snakepit", "worker", "crash" },
    }, function()
      raised = raised + 1
      error(BAD_TOSTRING)
    end)
    telemetry.attach_many("fault-counter", {
      { "snakepit", "circuit_breaker", "opened" },
      { "snakepit", "circuit_breaker", "closed" },
      { "snakepit", "circuit_breaker", "call", "failure" },
    }, function(event)
      counted[event[#event]] = counted[event[#event]] + 1
    end)
    local cbs = breakers(10, { failure_threshold = 3, reset_timeout_ms = 5 })
    local hm = sprun.health_monitor.start_link { pool = "faulty",
                                                 max_crashes = 100000 }
    local seqs = {}
    for b = 1, 10 do seqs[b] = {} end
    local out, good
    local warning = capture_stderr(function()
      out, good = run_guarded(function()
        local res = fan_out(N, function(i)
          sprun.sleep(i % 7)
          local b = i % 10 + 1
          -- The operation does not yield: outcomes are recorded in the
          -- order the calls were admitted, and none arrives late.
          local v, err = cbs[b]:call(function()
            if i % 3 ~= 0 then return nil, "flaky" end
            return i
          end)
          local o = v ~= nil and "ok" or (errors.kind(err) == "circuit_open"
                                          and "rejected" or "fail")
          seqs[b][#seqs[b] + 1] = o
          assert(hm:record_crash("w" .. i % 5, { reason = "fault" }))
          return o
        end)
        return res, ordinary_batch(N)
      end)
    end)
    assert.are.equal(N, good)
    assert.are.equal(1, raised)
    assert.are.equal("sprun: telemetry handler \"fault-raiser\" for "
      .. "snakepit.circuit_breaker.call.failure raised an error and was "
      .. "detached: (error object is a table value)\n", warning)
    assert.are.same({}, telemetry.list_handlers({ "snakepit", "worker" }))
    local tally, want = {}, { ok = 0, fail = 0, rejected = 0 }
    for i = 1, N do tally[out[i][1]] = (tally[out[i][1]] or 0) + 1 end
    local opened, closed = 0, 0
    for b = 1, 10 do
      for _, o in ipairs(seqs[b]) do want[o] = want[o] + 1 end
      local s = cbs[b]:stats()
      local n_ok, n_fail, n_rej = 0, 0, 0
      for _, o in ipairs(seqs[b]) do
        if o == "ok" then n_ok = n_ok + 1
        elseif o == "fail" then n_fail = n_fail + 1
        else n_rej = n_rej + 1 end
      end
      assert.are.same({ n_ok, n_fail, n_rej, 0 }, { s.total_successes,
        s.total_failures, s.rejected_count, s.ignored_count })
      local o, c = replay(seqs[b], 3)
      opened, closed = opened + o, closed + c
    end
    assert.are.same(want, tally)
    assert.are.equal(N, want.ok + want.fail + want.rejected)
    -- Each call got the outcome its operation allows: i % 3 == 0 succeeds,
    -- the others fail, and any call may be rejected.
    local wrong = {}
    for i = 1, N do
      local o = out[i][1]
      if o ~= "rejected" and (o == "ok") ~= (i % 3 == 0) then
        wrong[#wrong + 1] = i .. " " .. o
      end
    end
    assert.are.same({}, wrong)
    assert.is_true(opened > 0 and want.rejected > 0)
    assert.are.same({ opened = opened, closed = closed, failure = want.fail },
      counted)
    local st = hm:stats()
    assert.are.same({ 1000, 5, true }, { st.total_crashes,
      st.workers_with_crashes, st.is_healthy })
    assert.are.equal(200, hm:worker_health("w0").crash_count)
  end)

  it("an is_failure predicate that raises counts the failure and never "
    .. "reaches the caller", function()
    local cbs = breakers(5, {
      is_failure = function(err)
        error("predicate raised: " .. tostring(err))
      end,
    })
    local out = run_guarded(function()
      return fan_out(N, function(i)
        return ex.execute_with_protection(cbs[i % 5 + 1], function()
          sprun.sleep(0)
          if i % 4 == 0 then error("raised " .. i, 0) end
          if i % 4 == 1 then return nil, "returned " .. i end
          return i
        end, { max_attempts = 1 })
      end)
    end)
    local tally = {}
    for i = 1, N do
      local r, key = out[i], nil
      if i % 4 == 0 then
        key = r[1] == nil and r[2].kind == "error"
          and r[2].message == "raised " .. i and "raised" or "bad"
      elseif i % 4 == 1 then
        key = r[1] == nil and r[2] == "returned " .. i and "returned" or "bad"
      else
        key = r[1] == i and "ok" or "bad"
      end
      tally[key] = (tally[key] or 0) + 1
    end
    assert.are.same({ raised = 250, returned = 250, ok = 500 }, tally)
    assert.are.same({ successes = 500, failures = 500, rejected = 0,
                      ignored = 0 }, totals(cbs))
  end)
end)
