-- What the fault-injection specs share: a guarded run, a fan-out of calls
-- that checks each ends exactly once, and a batch of ordinary calls to
-- show the loop still serves.
local sprun = require "sprun"
local sched = require "sprun.sched"
local h = require "helpers"

local ex = sprun.executor

local function pack(...)
  return { n = select("#", ...), ... }
end

-- h.run_tasks (which also checks that no handle was left open) with a
-- watchdog: if the run is still going after limit_ms, every task left is
-- cancelled and the spec fails, instead of hanging the whole suite. The
-- watchdog is a background timer, which never keeps the loop alive.
local function run_guarded(fn, limit_ms)
  limit_ms = limit_ms or 15000
  local hung = false
  local r = pack(pcall(h.run_tasks, function()
    sched.after(limit_ms, function()
      hung = true
      for t in pairs(sched._sched().all) do
        t:cancel()
      end
    end)
    return fn()
  end))
  if hung then
    error("the run was still going after " .. limit_ms .. " ms", 2)
  end
  if not r[1] then
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end

-- Starts call(i) as a task for i = 1..n, all at once, and waits for them.
-- Returns out[i] = pack(call(i)); raises if a call ended twice, never, or
-- escaped (raised out of the executor function it used).
local function fan_out(n, call)
  local out, ended, tasks = {}, {}, {}
  for i = 1, n do
    tasks[i] = sprun.spawn(function()
      local r = pack(call(i))
      ended[i] = (ended[i] or 0) + 1
      out[i] = r
    end)
  end
  for i = 1, n do
    local _, err = tasks[i]:await()
    if err ~= nil then
      error("call " .. i .. " escaped: " .. tostring(err), 0)
    end
  end
  for i = 1, n do
    if ended[i] ~= 1 then
      error(("call %d ended %s times"):format(i, tostring(ended[i])), 0)
    end
  end
  return out
end

-- A fresh batch of ordinary calls after the faults: returns how many of
-- the n gave back exactly what they computed.
local function ordinary_batch(n)
  local fns = {}
  for i = 1, n do
    fns[i] = function()
      sprun.sleep(0)
      return i * 2, "ok"
    end
  end
  local res = ex.execute_batch(fns, { timeout_ms = 10000 })
  local good = 0
  for i = 1, n do
    local r = res[i]
    if r.ok and r.n == 2 and r.values[1] == i * 2 and r.values[2] == "ok" then
      good = good + 1
    end
  end
  return good
end

return {
  pack = pack,
  run_guarded = run_guarded,
  fan_out = fan_out,
  ordinary_batch = ordinary_batch,
}
