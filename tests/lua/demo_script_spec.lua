-- scripts/demo.lua (what `make demo` runs): it supervises a real worker
-- process and must tell the same story on every run, quickly.
local helpers = require "helpers"
local sprun = require "sprun"

local DEMO = helpers.root .. "/scripts/demo.lua"

-- Runs the demo once; returns { code, stdout, stderr, ms, lines } where
-- lines have their "[  123 ms] " prefix and leading spaces removed.
--
-- The story runs on real timeouts (300 ms for a worker's answer). The
-- worker is a plain sh, with nothing of sprun in it: it runs without what
-- `make check` preloads into the processes the specs start (the sanitizer
-- runtime, which slows the start and exit of each process); sprun itself
-- is built with the sanitizers there and needs no preload.
local function run_demo(...)
  local words = { "env -u LD_PRELOAD", helpers.shell_quote(helpers.sprun),
                  helpers.shell_quote(DEMO) }
  for _, a in ipairs { ... } do
    words[#words + 1] = helpers.shell_quote(a)
  end
  local t0 = sprun.hrtime()
  local r = helpers.run(table.concat(words, " "))
  r.ms = (sprun.hrtime() - t0) / 1e6
  r.lines = {}
  for line in r.stdout:gmatch("[^\n]+") do
    r.lines[#r.lines + 1] = (line:gsub("^%[%s*%d+ ms%]%s*", ""))
  end
  return r
end

local function find_line(r, line, from)
  for i = from or 1, #r.lines do
    if r.lines[i] == line then
      return i
    end
  end
  return nil
end

-- Asserts that the lines appear in this order (others may come between);
-- returns the index of the last one.
local function assert_in_order(r, lines, from)
  local at = (from or 1) - 1
  for _, line in ipairs(lines) do
    local i = find_line(r, line, at + 1)
    assert(i, string.format("line %q not found after line %d in:\n%s", line,
                            at, r.stdout))
    at = i
  end
  return at
end

-- The story without what changes between runs (times, pids).
local function story(r)
  local out = {}
  for _, line in ipairs(r.lines) do
    out[#out + 1] = line:gsub("%(pid %d+%)", "(pid N)")
  end
  return out
end

describe("the demo", function()
  local first

  setup(function()
    first = run_demo()
  end)

  it("is what make demo runs", function()
    local mk = helpers.read_file(helpers.root .. "/Makefile")
    local target = mk:match("\ndemo:[^\n]*\n(.-)\n\n")
    assert.truthy(target, "no demo target in the Makefile")
    assert.truthy(target:find("\t$(BIN) --trace $(BUILD)/demo-trace.json "
                              .. "--report $(BUILD)/demo-report.html "
                              .. "scripts/demo.lua", 1, true), target)
    assert.truthy(target:find("\t$(BIN) --report "
                              .. "$(BUILD)/pool-demo-report.html "
                              .. "scripts/pool_demo.lua", 1, true), target)
  end)

  it("exits 0 with nothing on stderr, in well under 15 seconds", function()
    assert.are.equal(0, first.code, first.stderr)
    assert.are.equal("", first.stderr)
    assert.is_true(first.ms < 15000, "took " .. first.ms .. " ms")
    assert.is_true(first.ms < 8000, "took " .. first.ms .. " ms")
  end)

  it("supervises a real worker process and replaces it when it dies",
    function()
      assert.are.equal(1, find_line(first, "sprun " .. sprun.version
                                    .. " demo, seed 38"))
      local started = 0
      for _, line in ipairs(first.lines) do
        if line:match("^started worker_%d+ %(pid %d+%)$") then
          started = started + 1
        end
      end
      assert.are.equal(4, started)
      assert_in_order(first, {
        "worker_2 did not answer within 300 ms: killed it (SIGKILL)",
        "attempt 1: failed (timeout: did not finish within 300 ms); retry in "
          .. "50 ms",
      })
      assert.truthy(find_line(first, "stopped worker_4 (exit status 0)"))
    end)

  it("records a crash by its signal's name in the health monitor", function()
    assert_in_order(first, {
      "job 2:",
      "worker_1 crashed (SIGSEGV): crash recorded, 1 in the window, pool "
        .. "healthy",
      "attempt 1: failed (worker_crash: worker_1 died (SIGSEGV)); retry in "
        .. "50 ms",
      "attempt 2: ok, job 2 -> 34",
    })
    assert_in_order(first, {
      "== 4. the account ==",
      "health: 3 crashes in total, 3 in the last 10 s, 3 workers crashed: "
        .. "pool UNHEALTHY (too many crashes)",
      "worker_1     1 crash(es), reasons: SIGSEGV",
      "worker_3     1 crash(es), reasons: SIGSEGV",
      "batch_job_3  1 crash(es), reasons: SIGSEGV",
    })
  end)

  it("retries with the policy's delays", function()
    assert_in_order(first, {
      "job 4:",
      "attempt 1: failed (unavailable: job 4: transient failure); retry in "
        .. "50 ms",
      "attempt 2: failed (unavailable: job 4: transient failure); retry in "
        .. "100 ms",
      "attempt 3: ok, job 4 -> 72",
    })
  end)

  it("shows the breaker opening, rejecting, probing and closing again",
    function()
      local at = assert_in_order(first, {
        "== 2. the backend goes down ==",
        "job 9:",
        "attempt 3: failed (unavailable: backend unavailable); giving up",
        "breaker: closed -> open",
        "job 10:",
        "attempt 1: rejected, the breaker is open (the worker is not called; "
          .. "circuit_open is not retried)",
        "breaker: open -> half_open",
        "job 11:",
        "attempt 1: failed (unavailable: backend unavailable); retry in 50 ms",
        "breaker: half_open -> open",
        "attempt 2: rejected, the breaker is open (the worker is not called; "
          .. "circuit_open is not retried)",
        "backend: UP again",
        "breaker: open -> half_open",
        "job 12:",
        "attempt 1: ok, job 12 -> 220",
        "breaker: half_open -> closed",
      })
      -- And it stays closed.
      for i = at + 1, #first.lines do
        assert.is_nil(first.lines[i]:match("^breaker: closed %-> "))
      end
      assert_in_order(first, {
        "== 4. the account ==",
        "requests: 11 ok, 1 failed, 2 rejected by the breaker; 9 retries",
        "breaker: closed now; transitions: closed->open, open->half_open, "
          .. "half_open->open, open->half_open, half_open->closed",
        "breaker totals: 11 successes, 10 failures, 2 rejected",
      })
    end)

  it("runs a bounded batch and sums it up", function()
    assert_in_order(first, {
      "== 3. a batch of one-shot jobs, 3 at a time, 300 ms each ==",
      "execute_batch: 8 jobs, max_concurrency=3, timeout_ms=300",
      "batch job 1: ok, 626",
      "batch job 2: failed, unavailable: transient failure",
      "batch job 3: crashed, killed by SIGSEGV (crash recorded)",
      "batch job 4: ok, 665",
      "batch job 5: timed out (its process was killed)",
      "batch job 6: ok, 998",
      "batch job 7: timed out (its process was killed)",
      "batch job 8: ok, 294",
      "batch summary: 8 jobs: 4 ok, 1 failed, 1 crashed, 2 timed out; at most "
        .. "3 at once",
    })
  end)

  it("tells the same story on every run", function()
    local second = run_demo()
    assert.are.equal(0, second.code, second.stderr)
    assert.are.same(story(first), story(second))
  end)

  it("tells another story with another seed", function()
    local other = run_demo("29")
    assert.are.equal(0, other.code, other.stderr)
    assert.are.equal("sprun " .. sprun.version .. " demo, seed 29",
                     other.lines[1])
    assert.are_not.same(story(first), story(other))
    -- Whatever the seed, the breaker ends closed after the outage.
    assert.truthy(find_line(other, "breaker: half_open -> closed"))
  end)

  it("with --trace (as make demo runs it) writes a trace of the story: "
     .. "its breaker, retries and worker on tracks, each slice closed",
     function()
      local dir = helpers.tmpdir()
      local path = dir .. "/demo-trace.json"
      local words = { "env -u LD_PRELOAD", helpers.shell_quote(helpers.sprun),
                      "--trace", helpers.shell_quote(path),
                      helpers.shell_quote(DEMO) }
      local r = helpers.run(table.concat(words, " "))
      assert.are.equal(0, r.code, r.stderr)
      local doc = require("cjson").decode(helpers.read_file(path))
      helpers.rmrf(dir)
      -- A track per worker the health monitor recorded a crash of, as
      -- the story's account lists them.
      local tracks = { "batch default", "circuit_breaker worker_pool",
                       "process sh", "retry default", "tasks" }
      for id in r.stdout:gmatch("\n%[[ %d]+ ms%]   (%S+) +%d+ crash%(es%)")
      do
        tracks[#tracks + 1] = "worker demo " .. id
      end
      table.sort(tracks)
      assert.is_true(#tracks > 5, r.stdout)
      assert.are.same(tracks, sprun.trace.track_names(doc))
      local _, by_ph = helpers.trace_structure(doc)
      local states, crashes = {}, 0
      for _, e in ipairs(by_ph.C) do
        states[#states + 1] = e.args.state
      end
      for _, e in ipairs(by_ph.i) do
        if e.cat == "worker" and e.name == "crash" then
          crashes = crashes + 1
        end
      end
      -- The story's outage: the breaker opens, probes, and ends closed.
      assert.are.equal(2, states[1])
      assert.are.equal(0, states[#states])
      -- One crash instant for each crash the story recorded.
      local recorded = 0
      for _ in r.stdout:gmatch("crash recorded") do
        recorded = recorded + 1
      end
      assert.is_true(recorded > 0)
      assert.are.equal(recorded, crashes)
    end)
end)
