-- A bounded batch of jobs with per-job timeouts.
--
-- Runs 10 jobs (each a shell command started with sprun.process.run) with
-- sprun.executor.execute_batch: at most 3 at a time, each cancelled after
-- 1000 ms. A job that runs too long is cancelled for real (its process
-- group is killed), and one job failing, crashing or timing out never
-- disturbs the others. The results come back in input order; the script
-- prints a summary table and checks that the concurrency limit held.
--
--   ./build/sprun scripts/batch_jobs.lua
--
-- Finishes in about 1.5 seconds and exits 0.
local sprun = require "sprun"
local ex = sprun.executor

local MAX_CONCURRENCY = 3
local TIMEOUT_MS = 1000

local start = sprun.now()
local function say(fmt, ...)
  print(string.format("[%5d ms] " .. fmt, sprun.now() - start, ...))
end

-- name, the command's running time in seconds, and how it ends.
local JOBS = {
  { "thumbnail a.jpg", 0.10, "ok" },
  { "thumbnail b.jpg", 0.30, "ok" },
  { "thumbnail c.jpg", 5.00, "ok" },      -- far too slow: timed out
  { "thumbnail d.jpg", 0.05, "fail" },    -- exits 1
  { "thumbnail e.jpg", 0.20, "ok" },
  { "thumbnail f.jpg", 0.10, "segv" },    -- killed by SIGSEGV
  { "thumbnail g.jpg", 0.15, "ok" },
  { "thumbnail h.jpg", 0.05, "garbage" }, -- prints what we cannot parse
  { "thumbnail i.jpg", 2.00, "ok" },      -- too slow: timed out
  { "thumbnail j.jpg", 0.25, "ok" },
}

local SCRIPT = [[
sleep "$2"
case "$3" in
  ok) echo "done $1 $(( $(printf %s "$1" | cksum | cut -d' ' -f1) % 90000 + 10000 )) bytes" ;;
  fail) echo "$1: unsupported format" >&2; exit 1 ;;
  segv) kill -SEGV $$ ;;
  *) echo "??" ;;
esac
]]

local running, max_running = 0, 0

-- One job: a function the batch runs as its own task. It returns the
-- result, or nil and an error, or raises (the last job's parse error).
local function job(spec)
  local name, seconds, how = spec[1], spec[2], spec[3]
  return function()
    running = running + 1
    if running > max_running then max_running = running end
    say("start  %-16s (%d running)", name, running)
    -- The counter must go down however the job ends, a cancellation
    -- (the timeout) included, hence the pcall.
    local ok, r, err = pcall(sprun.process.run, { "sh", "-c", SCRIPT, "job",
      name, tostring(seconds), how })
    running = running - 1
    if not ok then
      say("end    %-16s cancelled: timed out, its process was killed", name)
      error(r, 0)
    end
    if r == nil then
      say("end    %-16s could not run: %s", name, tostring(err))
      return nil, err
    end
    if r.signal then
      say("end    %-16s crashed (%s)", name, r.signal)
      return nil, sprun.error("worker_crash", "killed by " .. r.signal,
                              { signal = r.signal })
    elseif r.code ~= 0 then
      say("end    %-16s failed (exit %d)", name, r.code)
      return nil, sprun.error("job_failed", (r.stderr:gsub("%s+$", "")),
                              { code = r.code })
    end
    local bytes = r.stdout:match("^done .- (%d+) bytes")
    if bytes == nil then
      say("end    %-16s raising: unexpected output", name)
      error("cannot parse the job's output: "
            .. (r.stdout:gsub("%s+$", "")), 0)
    end
    say("end    %-16s ok, %s bytes", name, bytes)
    return tonumber(bytes)
  end
end

local fns = {}
for i, spec in ipairs(JOBS) do
  fns[i] = job(spec)
end

say("batch of %d jobs, max_concurrency=%d, timeout_ms=%d", #fns,
    MAX_CONCURRENCY, TIMEOUT_MS)
local t0 = sprun.now()
local results = ex.execute_batch(fns, { max_concurrency = MAX_CONCURRENCY,
                                        timeout_ms = TIMEOUT_MS })
local took = sprun.now() - t0

print("")
print(string.format("%-3s %-16s %-8s %s", "#", "job", "status", "detail"))
print(string.rep("-", 64))
local counts = {}
for i, r in ipairs(results) do
  local status, detail
  if r.ok then
    status, detail = "ok", r.value .. " bytes"
  else
    local kind = sprun.error_kind(r.error)
    status = ({ timeout = "timeout", task_crashed = "raised",
                worker_crash = "crashed", job_failed = "failed" })[kind]
             or kind
    local e = r.error
    if kind == "task_crashed" then
      detail = tostring(e.details.error)
    elseif type(e) == "table" then
      detail = e.message
    else
      detail = tostring(e)
    end
  end
  counts[status] = (counts[status] or 0) + 1
  print(string.format("%-3d %-16s %-8s %s", i, JOBS[i][1], status, detail))
end
print(string.rep("-", 64))
local parts = {}
for _, status in ipairs { "ok", "failed", "crashed", "raised", "timeout" } do
  parts[#parts + 1] = string.format("%d %s", counts[status] or 0, status)
end
print("summary: " .. table.concat(parts, ", "))
print(string.format("at most %d jobs ran at once (limit %d); the batch took "
  .. "%.1f s", max_running, MAX_CONCURRENCY, took / 1000))
local good = #results == #JOBS and max_running == MAX_CONCURRENCY
             and running == 0
return good and 0 or 1
