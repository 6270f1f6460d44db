-- The crash barrier at work (`make demo` runs it after scripts/demo.lua):
-- 4 Python workers (scripts/pool/worker.py) serve 400 requests, and now
-- and then a request segfaults its worker, hangs it, or leaks 40 MiB.
-- The pool kills the hung ones at their timeout, retries the idempotent
-- requests that crashed on another worker, taints the slots that
-- segfaulted, recycles a worker past max_rss_mb, and every request gets
-- exactly one answer.
--
--   ./build/sprun scripts/pool_demo.lua
local sprun = require "sprun"

local here = arg[0]:match("^(.*)/[^/]*$") or "."
local t0 = sprun.now()
local function say(fmt, ...)
  print(("[%5d ms] " .. fmt):format(sprun.now() - t0, ...))
end

-- What the pool says happened, as it happens.
sprun.telemetry.attach("demo.crash", { "snakepit", "worker", "crash" },
  function(_, _, md)
    say("  %s crashed: %s", md.worker_id, md.reason)
  end)
sprun.telemetry.attach("demo.taint", { "snakepit", "worker", "tainted" },
  function(_, m, md)
    say("  %s tainted for %d ms (no requests while others can serve)",
        md.worker_id, m.duration_ms)
  end)

local pool = assert(sprun.pool.start {
  name = "py", size = 4,
  cmd = { "python3", here .. "/pool/worker.py" },
  request_timeout_ms = 500,
  max_rss_mb = 40, rss_check_ms = 10,
  restart = { backoff_ms = { 20 } },
  crash_barrier = { max_retries = 2, taint_ms = 300 },
})
say("pool 'py': 4 Python workers starting")

-- Request i: its fault, if any (the same on every run).
local function fault_of(i)
  if i % 97 == 0 then return "segfault" end
  if i % 151 == 0 then return "hang" end
  if i % 100 == 40 then return "leak" end
  return nil
end

local N = 400
local results = sprun.executor.execute_batch((function()
  local fns = {}
  for i = 1, N do
    fns[i] = function()
      -- Even requests are idempotent: the barrier may retry them.
      local fault = fault_of(i)
      local v, err = pool:call("work", { n = i, fault = fault },
                               { idempotent = i % 2 == 0,
                                 key = "request-" .. i })
      if v == nil then
        say("request %d%s: %s", i, i % 2 == 0 and "" or " (not idempotent)",
            tostring(err))
        return nil, err
      end
      return v
    end
  end
  return fns
end)(), { max_concurrency = 8 })

local ok, by_kind = 0, {}
for i, r in ipairs(results) do
  if r.ok then
    assert(r.value == i * i, "request " .. i .. " got a wrong answer")
    ok = ok + 1
  else
    local e = r.error
    by_kind[e.kind] = (by_kind[e.kind] or 0) + 1
  end
end

-- A worker past max_rss_mb is being replaced (its replacement starts
-- first): let that finish before the account.
for _ = 1, 500 do
  local over = false
  for _, w in ipairs(pool:workers()) do
    if (w.rss_mb or 0) > 40 then over = true end
  end
  if not over then break end
  sprun.sleep(10)
end

-- A segfaulting request that is idempotent succeeds on another worker.
local marker = os.tmpname()
os.remove(marker)
local v = assert(pool:call("crash_once", { marker = marker },
                           { idempotent = true }))
os.remove(marker)
say("an idempotent request that segfaulted its worker: %s", v)

local s = pool:stats()
local errs = 0
for _, n in pairs(s.errors) do errs = errs + n end
say("%d requests: %d answered, %d failed (%s)", N, ok, N - ok,
    (function()
      local parts = {}
      for _, k in ipairs { "worker_crash", "timeout", "poison_request" } do
        if by_kind[k] then parts[#parts + 1] = k .. " " .. by_kind[k] end
      end
      return table.concat(parts, ", ")
    end)())
say("pool: requests %d = replies %d + errors %d; crashes: segfault %d, "
    .. "timeout %d; recycled %d (memory), restarts %d",
    s.requests, s.replies, errs, s.crashes.segfault or 0,
    s.crashes.timeout or 0, s.recycled, s.restarts)
assert(s.requests == s.replies + errs, "the pool's books do not add up")
assert(ok + (N - ok) == #results)
pool:stop()
say("pool stopped: every worker reaped")
