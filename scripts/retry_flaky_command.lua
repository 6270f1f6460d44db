-- Retrying a flaky command.
--
-- Runs a shell command through sprun.process.run and retries it with
-- sprun.executor.execute_with_retry: the command fails (exit status 75,
-- "temporarily unavailable") the first FAILS times it runs, then succeeds.
-- A counter file in a temporary directory makes it fail the same way every
-- time. Also shows the two other outcomes a retry policy has: a command
-- that hangs is killed by its per-attempt timeout and retried, and a
-- permanent failure (exit status 2, a usage error) is returned at once.
--
--   ./build/sprun scripts/retry_flaky_command.lua [FAILS]    (default 2)
--
-- Finishes in about a second and exits 0 when every case went as expected.
local sprun = require "sprun"
local ex = sprun.executor

local FAILS = tonumber(arg and arg[1]) or 2
local start = sprun.now()

local function say(fmt, ...)
  print(string.format("[%5d ms] " .. fmt, sprun.now() - start, ...))
end

-- A scratch directory for the counter files, removed at the end.
local tmp = assert(sprun.process.run { "mktemp", "-d" }).stdout:gsub("%s+$", "")

-- The flaky command: counts its runs in $1, fails while the count is at
-- most $2, then prints a result.
local FLAKY = [[
n=$(cat "$1" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$1"
if [ "$n" -le "$2" ]; then echo "run $n: service busy, try later" >&2; exit 75; fi
echo "run $n: backup complete"
]]

-- Exit statuses worth another try (sysexits.h): 75 = EX_TEMPFAIL.
local TRANSIENT = { [75] = true }

-- The retry policy: 5 calls at most, 100, 200, then 400 ms apart. By
-- default it retries the error kinds "timeout", "unavailable",
-- "connection_refused" and "worker_crash".
local policy = sprun.retry_policy.new { max_attempts = 5,
                                       backoff_ms = { 100, 200, 400 } }

-- What the policy will do after attempt n failed with err.
local function next_step(n, err)
  if not policy:retry_for_error(err) then
    return "not retriable"
  elseif not policy:should_retry(n) then
    return "no attempts left"
  end
  return string.format("retrying in %d ms", policy:backoff_for_attempt(n))
end

-- One attempt: runs the command and turns its outcome into the Lua
-- convention: the output on success, or nil and an error whose kind the
-- retry policy looks at.
local attempt = 0
local function run_command(argv, timeout_ms)
  attempt = attempt + 1
  local cmd = { "sh", "-c", argv[1], "flaky", unpack(argv, 2) }
  cmd.timeout_ms = timeout_ms
  local r, err = sprun.process.run(cmd)
  if r == nil then
    say("attempt %d: %s; %s", attempt, tostring(err), next_step(attempt, err))
    return nil, err
  end
  if r.code == 0 then
    local out = r.stdout:gsub("%s+$", "")
    say("attempt %d: exit 0: %s", attempt, out)
    return out
  end
  local msg = r.stderr:gsub("%s+$", "")
  local kind = TRANSIENT[r.code] and "unavailable" or "command_failed"
  err = sprun.error(kind, msg, { code = r.code })
  say("attempt %d: exit %s: %s; %s", attempt, tostring(r.code or r.signal),
      msg, next_step(attempt, err))
  return nil, err
end

local failures = 0

local function case(title, argv, timeout_ms, expect_ok)
  print("")
  print("== " .. title .. " ==")
  attempt = 0
  local t0 = sprun.now()
  local result, err = ex.execute_with_retry(function()
    return run_command(argv, timeout_ms)
  end, { policy = policy })
  local took = sprun.now() - t0
  if result then
    say("result: %q after %d attempt%s", result, attempt,
        attempt == 1 and "" or "s")
  else
    local d = type(err) == "table" and err.details or {}
    say("gave up after %d attempt%s: %s%s", attempt,
        attempt == 1 and "" or "s", tostring(err),
        d.retries_exhausted and " (retries exhausted)" or " (not retriable)")
  end
  say("(%d ms including backoff)", took)
  if (result ~= nil) ~= expect_ok then
    failures = failures + 1
  end
  return attempt
end

local config = policy:config()
print(string.format("retry policy: max_attempts=%d, backoff_ms={%s}, "
  .. "retriable_errors={%s}", config.max_attempts,
  table.concat(config.backoff_ms, ", "),
  table.concat(config.retriable_errors, ", ")))

-- 1. Fails FAILS times, then succeeds (if FAILS < max_attempts).
case("a command that fails " .. FAILS .. " times, then works",
  { FLAKY, tmp .. "/count1", tostring(FAILS) }, 2000,
  FAILS < config.max_attempts)

-- 2. Hangs on its first run: killed after 300 ms and retried.
case("a command that hangs on its first run", { [[
n=$(cat "$1" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$1"
if [ "$n" -eq 1 ]; then exec sleep 30; fi
echo "run $n: answered"
]], tmp .. "/count2" }, 300, true)

-- 3. A permanent failure is not retried.
case("a command that fails for good", {
  [[echo "usage: backup DIR" >&2; exit 2]] }, 2000, false)

sprun.process.run { "rm", "-rf", tmp }
print("")
print(failures == 0 and "all cases behaved as expected"
      or (failures .. " case(s) did not behave as expected"))
return failures == 0 and 0 or 1
