-- Deadlines, under virtual time so that every figure is exact:
-- sprun.deadline() (a timeout's, inherited by children, capped by an inner
-- timeout, never lengthened), deadline_ms on execute_with_retry,
-- execute_with_protection and pipelines (a backoff past the deadline is
-- not taken, an attempt running at it is cancelled), and a caller's
-- deadline bounding the backoffs of a retry that has none of its own.
local sprun = require "sprun"
local h = require "helpers"

local ex = sprun.executor
local vrun = h.vrun

local function down() return nil, sprun.error("unavailable", "down") end

describe("sprun.deadline()", function()
  it("is nil outside a loop and in a task with no deadline", function()
    assert.is_nil(sprun.deadline())
    vrun(function()
      assert.is_nil(sprun.deadline())
      assert.is_nil(sprun.spawn(sprun.deadline):await())
    end)
  end)

  it("is a timeout's, inherited by children, capped by an inner timeout "
     .. "and never lengthened by one", function()
    local seen = {}
    local function note(what) seen[#seen + 1] = { what, sprun.deadline() } end
    vrun(function()
      ex.execute_with_timeout(function()
        note("inline")
        sprun.sleep(100)
        note("task")
        sprun.spawn(note, "child"):await()
        ex.execute_with_timeout(function() note("longer") end,
                                { timeout_ms = 5000 })
        ex.execute_with_timeout(function()
          note("shorter")
          sprun.sleep(30)
          note("shorter later")
        end, { timeout_ms = 50 })
        ex.execute_batch({ function() note("batch item") end },
                         { timeout_ms = 20 })
      end, { timeout_ms = 1000 })
      note("after")
    end)
    assert.are.same({ { "inline", 1000 }, { "task", 900 }, { "child", 900 },
      { "longer", 900 }, { "shorter", 50 }, { "shorter later", 20 },
      { "batch item", 20 }, { "after" } }, seen)
  end)

  it("is 0 once the deadline has passed", function()
    vrun(function()
      local left
      ex.execute_with_timeout(function()
        pcall(sprun.sleep, 100)
        left = sprun.deadline()
      end, { timeout_ms = 10 })
      assert.are.equal(0, left)
    end)
  end)
end)

describe("kernel.capped: the I/O timeouts under a deadline", function()
  it("caps process, tcp, http and pool timeouts by what is left",
    function()
    local kernel = require "sprun.sched.kernel"
    local got = {}
    assert.are.same({ 1000 }, { kernel.capped(1000) })
    assert.is_nil(kernel.capped(nil))
    vrun(function()
      got[#got + 1] = kernel.capped(1000)
      ex.execute_with_timeout(function()
        sprun.sleep(100)
        got[#got + 1] = kernel.capped(1000)
        got[#got + 1] = kernel.capped(nil)
        got[#got + 1] = kernel.capped(50)
        pcall(sprun.sleep, 500)
        got[#got + 1] = kernel.capped(1000)
        got[#got + 1] = kernel.capped(1000, 1)
      end, { timeout_ms = 300 })
    end)
    assert.are.same({ 1000, 200, 200, 50, 0, 1 }, got)
  end)

  it("a process.run inside a deadline is killed at the deadline",
    function()
    local pid, took
    h.run_tasks(function()
      local t0 = sprun.now()
      ex.execute_with_retry(function()
        local r, err = sprun.process.run { "sh", "-c", "echo $$; sleep 30",
                                           timeout_ms = 60000 }
        return r, err
      end, { max_attempts = 1, deadline_ms = 300 })
      took = sprun.now() - t0
      pid = nil
    end)
    assert.is_true(took >= 300 and took < 2000, tostring(took))
    assert.are.same({}, h.live_children())
  end)
end)

describe("deadline_ms", function()
  it("on execute_with_retry: the backoff that would end past it is not "
     .. "taken", function()
    local at = {}
    local r, err, took = vrun(function()
      local t0 = sprun.now()
      local a, b = ex.execute_with_retry(function()
        at[#at + 1] = { sprun.now() - t0, sprun.deadline() }
        return down()
      end, { max_attempts = 10, backoff_ms = { 100 }, deadline_ms = 350 })
      return a, b, sprun.now() - t0
    end)
    assert.is_nil(r)
    assert.are.same({ { 0, 350 }, { 100, 250 }, { 200, 150 }, { 300, 50 } },
                    at)
    assert.are.same({ "unavailable", true, 4, 300 },
      { err.kind, err.details.deadline_exceeded, err.details.attempts, took })
    assert.is_nil(err.details.retries_exhausted)
  end)

  it("on execute_with_retry: an attempt running at it is cancelled at once",
    function()
    local cleaned
    local r, err, took = vrun(function()
      local t0 = sprun.now()
      local a, b = ex.execute_with_retry(function()
        local ok = pcall(sprun.sleep, 1000)
        cleaned = { ok, sprun.now() - t0 }
        error("unreachable: the cancellation is raised again", 0)
      end, { policy = sprun.retry_policy.new { max_attempts = 3 },
             deadline_ms = 250 })
      return a, b, sprun.now() - t0
    end)
    assert.is_nil(r)
    assert.are.same({ "timeout", true, 250 },
                    { err.kind, err.details.deadline_exceeded, took })
    assert.are.same({ false, 250 }, cleaned)
    h.assert_no_handles()
  end)

  it("on execute_with_protection: the same, each attempt through the "
     .. "breaker", function()
    local cb = sprun.circuit_breaker.start_link { name = "dl",
                                                  failure_threshold = 100 }
    local r, err = vrun(function()
      return ex.execute_with_protection(cb, down,
        { max_attempts = 10, backoff_ms = { 40 }, deadline_ms = 100 })
    end)
    assert.is_nil(r)
    assert.are.same({ true, 3, 3 }, { err.details.deadline_exceeded,
      err.details.attempts, cb:stats().failure_count })
  end)

  it("a caller's deadline bounds the backoffs of a retry without one",
    function()
    local err, took = vrun(function()
      local t0 = sprun.now()
      local _, e = ex.execute_with_timeout(function()
        return ex.execute_with_retry(down, { max_attempts = 10,
                                             backoff_ms = { 30 } })
      end, { timeout_ms = 100 })
      return e, sprun.now() - t0
    end)
    -- Attempts at 0, 30, 60, 90: the next backoff would end at 120.
    assert.are.same({ "unavailable", true, 4, 90 }, { err.kind,
      err.details.deadline_exceeded, err.details.attempts, took })
  end)

  it("on a pipeline: bounds the retry stage; the fallback sees it",
    function()
    local seen
    local p = sprun.pipeline { name = "dl", deadline_ms = 120,
      retry = { max_attempts = 10, backoff_ms = { 50 } },
      fallback = function(err) seen = err return "fallback" end }
    local v, took = vrun(function()
      local t0 = sprun.now()
      local r = p:execute(down)
      return r, sprun.now() - t0
    end)
    assert.are.same({ "fallback", 100 }, { v, took })
    assert.are.same({ "unavailable", true, 3 }, { seen.kind,
      seen.details.deadline_exceeded, seen.details.attempts })
    assert.are.equal(120, p:stats().deadline_ms)
    local slow = sprun.pipeline { deadline_ms = 70, timeout_ms = 1000,
      retry = { max_attempts = 3, backoff_ms = { 0 } } }
    local _, err = vrun(function()
      return slow:execute(function() sprun.sleep(500) end)
    end)
    assert.are.same({ "timeout", true }, { err.kind,
                                           err.details.deadline_exceeded })
  end)

  it("must be a number of ms >= 0", function()
    local ok, err = pcall(ex.execute_with_retry, down, { deadline_ms = -1 })
    assert.is_false(ok)
    assert.matches("executor.execute_with_retry: option 'deadline_ms' must "
                   .. "be a number >= 0", err, 1, true)
    ok, err = pcall(sprun.pipeline, { deadline_ms = "soon" })
    assert.is_false(ok)
    assert.matches("option 'deadline_ms' must be a number", err, 1, true)
  end)
end)
