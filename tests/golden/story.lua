-- The run the report and trace golden files are made of: a dependency
-- that slows and fails for a while, behind a breaker and a retry, two
-- crashes recorded, and a batch with a timeout. No process, no socket:
-- under --virtual-time it is the same on every run.
--
--   build/sprun --virtual-time --report r.html --trace t.json \
--     tests/golden/story.lua
local sprun = require "sprun"
local ex = sprun.executor

local cb = sprun.circuit_breaker.start_link {
  name = "payments", failure_threshold = 3, reset_timeout_ms = 400,
}
local health = sprun.health_monitor.start_link {
  name = "story_health", pool = "story", crash_window_ms = 10000,
  max_crashes = 5,
}

-- The dependency: 20 ms a call, down from 300 ms to 1100 ms of the run.
local t0 = sprun.now()
local function dependency(job)
  sprun.sleep(20)
  local t = sprun.now() - t0
  if t >= 300 and t < 1100 then
    return nil, sprun.error("unavailable", "job " .. job .. ": down")
  end
  return "done " .. job
end

local policy = sprun.retry_policy.new {
  max_attempts = 3, backoff_ms = { 50, 100 },
  retriable_errors = { "unavailable" },
}

for job = 1, 24 do
  ex.execute_with_protection(cb, function() return dependency(job) end,
                             { policy = policy })
  if job == 6 then
    health:record_crash("worker_2", { reason = "SIGSEGV" })
  elseif job == 14 then
    health:record_crash("worker_5", { reason = "exit status 1" })
  end
  sprun.sleep(40)
end
-- The breaker half-opened: its probe succeeds and closes it.
sprun.sleep(400)
ex.execute_with_protection(cb, function() return dependency(25) end,
                           { policy = policy })

-- A batch: 6 jobs, 2 at a time, 150 ms each at most.
local fns = {}
for i = 1, 6 do
  fns[i] = function()
    sprun.sleep(i * 40)
    if i == 3 then
      return nil, sprun.error("unavailable", "job " .. i .. " failed")
    end
    return i
  end
end
ex.execute_batch(fns, { max_concurrency = 2, timeout_ms = 150 })
print(cb:state(), health:stats().total_crashes)
