-- What the fault-injection specs share: a guarded run, a fan-out of calls
-- that checks each ends exactly once, and a batch of ordinary calls to
-- show the loop still serves.
local sprun = require "sprun"
local h = require "helpers"

local ex = sprun.executor

local pack = h.pack

local run_guarded = h.run_guarded

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
