-- The example policy scripts in scripts/: each runs with build/sprun,
-- exits 0 within a few seconds, and prints the account its header promises.
local helpers = require "helpers"
local sprun = require "sprun"

-- Runs a script; returns the result of helpers.run plus the wall time in ms
-- and the output as a list of lines with the "[  123 ms] " prefix removed.
--
-- The scripts tell a story in real time: a job of 300 ms has a timeout of
-- 1000 ms, a probe its slot of 100 ms. What they run (sh, sleep, cksum) has
-- nothing of sprun in it, so it runs without what `make check` preloads
-- into the processes the specs start (the sanitizer runtime, which makes
-- each of them start and exit tens of ms slower); sprun itself is built
-- with the sanitizers there and needs no preload.
local function run_script(name, ...)
  local words = { "env -u LD_PRELOAD", helpers.shell_quote(helpers.sprun),
                  helpers.shell_quote(helpers.root .. "/scripts/" .. name) }
  for _, a in ipairs { ... } do
    words[#words + 1] = helpers.shell_quote(a)
  end
  local t0 = sprun.hrtime()
  local r = helpers.run(table.concat(words, " "))
  r.ms = (sprun.hrtime() - t0) / 1e6
  r.lines = {}
  for line in r.stdout:gmatch("[^\n]*") do
    r.lines[#r.lines + 1] = (line:gsub("^%[%s*%d+ ms%] ", ""))
  end
  return r
end

-- The index of the first line equal to `line` at or after `from`, or nil.
local function find_line(r, line, from)
  for i = from or 1, #r.lines do
    if r.lines[i] == line then
      return i
    end
  end
  return nil
end

-- Asserts that the lines appear in this order (others may come between).
local function assert_in_order(r, lines)
  local at = 0
  for _, line in ipairs(lines) do
    local i = find_line(r, line, at + 1)
    assert(i, string.format("line %q not found after line %d in:\n%s", line,
                            at, r.stdout))
    at = i
  end
end

local function count(r, pattern)
  local n = 0
  for _, line in ipairs(r.lines) do
    if line:find(pattern) then n = n + 1 end
  end
  return n
end

local function assert_header(name)
  local src = helpers.read_file(helpers.root .. "/scripts/" .. name)
  -- A comment block first, saying how to run the script.
  assert.are.equal("-- ", src:sub(1, 3))
  assert.truthy(src:find("%-%-%s+%./build/sprun scripts/" .. name:gsub("%.", "%%.")),
                "the header of " .. name .. " does not say how to run it")
end

describe("example scripts", function()
  describe("retry_flaky_command.lua", function()
    it("retries a command until it works, a hung one after its timeout, and "
       .. "gives up on a permanent failure", function()
      assert_header("retry_flaky_command.lua")
      local r = run_script("retry_flaky_command.lua")
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("", r.stderr)
      assert.is_true(r.ms < 5000, "took " .. r.ms .. " ms")
      assert_in_order(r, {
        "== a command that fails 2 times, then works ==",
        "attempt 1: exit 75: run 1: service busy, try later; retrying in 100 ms",
        "attempt 2: exit 75: run 2: service busy, try later; retrying in 200 ms",
        "attempt 3: exit 0: run 3: backup complete",
        'result: "run 3: backup complete" after 3 attempts',
        "== a command that hangs on its first run ==",
        "attempt 1: timeout: sh did not finish within 300 ms (killed); "
          .. "retrying in 100 ms",
        "attempt 2: exit 0: run 2: answered",
        'result: "run 2: answered" after 2 attempts',
        "== a command that fails for good ==",
        "attempt 1: exit 2: usage: backup DIR; not retriable",
        "gave up after 1 attempt: command_failed: usage: backup DIR "
          .. "(not retriable)",
        "all cases behaved as expected",
      })
      -- The backoff was really slept: 100 + 200 ms, then 300 + 100 ms.
      local backoff = {}
      for _, line in ipairs(r.lines) do
        local ms = line:match("^%((%d+) ms including backoff%)$")
        if ms then backoff[#backoff + 1] = tonumber(ms) end
      end
      assert.are.equal(3, #backoff)
      assert.is_true(backoff[1] >= 299 and backoff[1] < 5000, backoff[1])
      assert.is_true(backoff[2] >= 399 and backoff[2] < 5000, backoff[2])
      assert.is_true(backoff[3] < 5000, backoff[3])
    end)

    it("gives up with retries exhausted when the command fails too often",
      function()
        local r = run_script("retry_flaky_command.lua", "5")
        assert.are.equal(0, r.code, r.stderr)
        assert_in_order(r, {
          "== a command that fails 5 times, then works ==",
          "attempt 4: exit 75: run 4: service busy, try later; retrying in "
            .. "400 ms",
          "attempt 5: exit 75: run 5: service busy, try later; no attempts "
            .. "left",
          "gave up after 5 attempts: unavailable: run 5: service busy, try "
            .. "later (retries exhausted)",
          "all cases behaved as expected",
        })
        assert.are.equal(0, count(r, "backup complete"))
      end)
  end)

  describe("probe_tcp_service.lua", function()
    it("shows the breaker opening, half-open, re-opening and closing",
      function()
        assert_header("probe_tcp_service.lua")
        local r = run_script("probe_tcp_service.lua")
        assert.are.equal(0, r.code, r.stderr)
        assert.are.equal("", r.stderr)
        assert.is_true(r.ms < 6000, "took " .. r.ms .. " ms")
        assert_in_order(r, {
          "probe  5: PONG",
          "service: DOWN (stops listening)",
          "probe  6: failed: connection_refused (1 consecutive failure)",
          "probe  7: failed: connection_refused (2 consecutive failures)",
          "probe  8: failed: connection_refused (3 consecutive failures)",
          "breaker: closed -> open",
          "probe  9: rejected, the breaker is open (no connection made)",
          "probe 12: rejected, the breaker is open (no connection made)",
          "breaker: open -> half_open",
          "probe 13: failed: connection_refused (1 consecutive failure)",
          "breaker: half_open -> open",
          "probe 17: rejected, the breaker is open (no connection made)",
          "breaker: open -> half_open",
          "probe 18: PONG (the half-open probe)",
          "breaker: half_open -> closed",
          "probe 25: PONG",
          "probes: 13 answered, 4 failed, 8 rejected by the breaker",
          "breaker: state=closed, opened 2 time(s), half-open 2 time(s), "
            .. "closed 1 time(s), rejected_count=8",
          "the breaker opened, went half-open and closed again",
        })
        assert.are.equal(2, count(r, "^service: up on 127%.0%.0%.1:%d+$"))
      end)
  end)

  describe("batch_jobs.lua", function()
    it("runs 10 jobs 3 at a time, with per-job timeouts, and sums them up",
      function()
        assert_header("batch_jobs.lua")
        local r = run_script("batch_jobs.lua")
        assert.are.equal(0, r.code, r.stderr)
        assert.are.equal("", r.stderr)
        assert.is_true(r.ms < 5000, "took " .. r.ms .. " ms")
        assert_in_order(r, {
          "batch of 10 jobs, max_concurrency=3, timeout_ms=1000",
          "#   job              status   detail",
        })
        local rows = {}
        for _, line in ipairs(r.lines) do
          local i, job, status = line:match("^(%d+)%s+(thumbnail %a%.jpg)%s+(%a+)")
          if i then rows[#rows + 1] = i .. " " .. job .. " " .. status end
        end
        assert.are.same({
          "1 thumbnail a.jpg ok", "2 thumbnail b.jpg ok",
          "3 thumbnail c.jpg timeout", "4 thumbnail d.jpg failed",
          "5 thumbnail e.jpg ok", "6 thumbnail f.jpg crashed",
          "7 thumbnail g.jpg ok", "8 thumbnail h.jpg raised",
          "9 thumbnail i.jpg timeout", "10 thumbnail j.jpg ok",
        }, rows)
        assert_in_order(r, {
          "3   thumbnail c.jpg  timeout  did not finish within 1000 ms",
          "4   thumbnail d.jpg  failed   thumbnail d.jpg: unsupported format",
          "6   thumbnail f.jpg  crashed  killed by SIGSEGV",
          "8   thumbnail h.jpg  raised   cannot parse the job's output: ??",
          "summary: 5 ok, 1 failed, 1 crashed, 1 raised, 2 timeout",
        })
        assert.truthy(r.stdout:find("at most 3 jobs ran at once (limit 3)", 1,
                                    true))
        -- Never more than 3 running, as each start line says.
        local most = 0
        for _, line in ipairs(r.lines) do
          local n = tonumber(line:match("^start .-%((%d+) running%)$"))
          if n and n > most then most = n end
        end
        assert.are.equal(3, most)
        assert.are.equal(2, count(r, "cancelled: timed out, its process was "
                                     .. "killed$"))
      end)
  end)
end)
