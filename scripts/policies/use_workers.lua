-- Runs 20 jobs through the "jobs" pipeline of scripts/policies/workers.lua;
-- every third attempt of a job "crashes" its worker once.
local sprun = require "sprun"

local ok, reg = pcall(sprun.policy.default)
if not ok then
  io.stderr:write("run with: sprun --policy scripts/policies/workers.lua "
                  .. "scripts/policies/use_workers.lua\n")
  return 2
end
local jobs = reg:pipeline("jobs")
local monitor = reg:health_monitor("workers")

local attempts, done, tasks = 0, 0, {}
for i = 1, 20 do
  tasks[i] = sprun.spawn(function()
    local crashed = false
    local v = jobs:execute(function()
      attempts = attempts + 1
      sprun.sleep(5)
      if i % 3 == 0 and not crashed then
        crashed = true
        monitor:record_crash("worker-" .. i % 4, { reason = "segfault" })
        return nil, sprun.error("worker_crash", "worker died")
      end
      return i * i
    end)
    if v == i * i then done = done + 1 end
  end)
end
for i = 1, #tasks do tasks[i]:await() end
print(("jobs done: %d/20"):format(done))
print(("attempts: %d"):format(attempts))
print(("breaker: %s"):format(jobs:breaker():state()))
print(("pool healthy: %s"):format(tostring(monitor:is_healthy())))
return 0
