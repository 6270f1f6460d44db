-- The pool's crash barrier (internal): what a worker's death is called,
-- whether its slot is tainted, whether the request it ran may go to
-- another worker, and which requests are poison.
--
-- A death is classified from what the loop knows for sure: the signal
-- that ended the process (SIGSEGV is "segfault", SIGKILL "oom" when the
-- kernel's OOM killer did it, else "killed"), the exit status (139, 134
-- and 137 are what a shell reports for those signals, as Snakepit reads
-- them), or why the pool ended it itself ("timeout", "heartbeat",
-- "start_timeout", "protocol").
--
-- Poison: a request (its key, or the op and its JSON) that was in flight
-- on two different worker processes when each died of a class in mark_on
-- (supervise.lua decides which deaths count) is refused with kind
-- poison_request for taint_ms, rather than sent to a third. The memory of
-- it is bounded (MAX_POISON keys, the oldest forgotten first).

local errors = require "sprun.errors"

local each_key = next -- never `pairs` in a loop: see tables.lua
local setmetatable = setmetatable
local tonumber = tonumber
local open = io.open
local lower = string.lower
local match = string.match

local _M = {}

local SIGNALS = {
  SIGSEGV = "segfault", SIGABRT = "abort", SIGBUS = "bus_error",
  SIGFPE = "fpe", SIGILL = "illegal_instruction", SIGTERM = "terminated",
  SIGINT = "interrupted",
}
local EXIT_CODES = { [139] = "segfault", [134] = "abort", [137] = "killed" }

-- The classes a death can have, for option checks and docs.
_M.CLASSES = {
  "segfault", "abort", "bus_error", "fpe", "illegal_instruction", "oom",
  "killed", "terminated", "interrupted", "exit", "timeout", "heartbeat",
  "start_timeout", "protocol",
}

-- The kernel's count of OOM kills in sprun's cgroup (cgroup v2), or nil
-- when it cannot be read: a SIGKILL after which it went up was the OOM
-- killer's.
local events_path = false

local function oom_kills()
  if events_path == false then
    events_path = nil
    local f = open("/proc/self/cgroup")
    if f then
      local path = match(f:read("*a") or "", "0::([^\n]*)")
      f:close()
      if path then
        events_path = "/sys/fs/cgroup" .. path .. "/memory.events"
      end
    end
  end
  if events_path == nil then
    return nil
  end
  local f = open(events_path)
  if f == nil then
    return nil
  end
  local n = match(f:read("*a") or "", "oom_kill (%d+)")
  f:close()
  return tonumber(n)
end
_M.oom_kills = oom_kills

-- The class of a death: `reason` is why the pool ended the process (or
-- nil), `oom_before` the OOM count when it started.
function _M.classify(code, signal, reason, oom_before)
  if reason then
    return reason
  end
  if signal == "SIGKILL" then
    local now = oom_before and oom_kills()
    if now and now > oom_before then
      return "oom"
    end
    return "killed"
  elseif signal then
    return SIGNALS[signal] or lower((signal:gsub("^SIG", "")))
  end
  return EXIT_CODES[code] or "exit"
end

-- The error a request gets when its worker died with it.
function _M.crash_error(pool, worker, info, attempt)
  local what = info.signal and "killed by " .. info.signal
               or "exited with status " .. tostring(info.exit_code)
  return errors.error("worker_crash", ("%s/%s %s (%s)"):format(pool,
    worker, what, info.classification), {
      worker_id = worker, signal = info.signal, exit_code = info.exit_code,
      classification = info.classification, attempt = attempt,
    })
end

--- Poison ------------------------------------------------------------------

local MAX_POISON = 10000

local Poison = {}
Poison.__index = Poison

function _M.poison_registry(taint_ms)
  return setmetatable({
    taint_ms = taint_ms, keys = {}, order = {}, head = 1, tail = 0, n = 0,
    poisoned = 0,
  }, Poison)
end

-- The entry of `key`, made if needed (forgetting the oldest past the cap).
local function entry(self, key)
  local e = self.keys[key]
  if e == nil then
    if self.n >= MAX_POISON then
      local old = self.order[self.head]
      self.order[self.head] = nil
      self.head = self.head + 1
      self.keys[old] = nil
      self.n = self.n - 1
    end
    e = { workers = {}, count = 0, until_ms = nil }
    self.keys[key] = e
    self.tail = self.tail + 1
    self.order[self.tail] = key
    self.n = self.n + 1
  end
  return e
end

-- A request with `key` was in flight on worker process `proc_id` when it
-- died: true when the request is poison from now on.
function Poison:crashed(key, proc_id, now)
  local e = entry(self, key)
  if not e.workers[proc_id] then
    e.workers[proc_id] = true
    e.count = e.count + 1
  end
  if e.count >= 2 and (e.until_ms == nil or e.until_ms < now) then
    e.until_ms = now + self.taint_ms
    self.poisoned = self.poisoned + 1
    return true
  end
  return false
end

-- Whether `key` is poison now.
function Poison:is_poison(key, now)
  local e = self.keys[key]
  if e == nil or e.until_ms == nil then
    return false
  end
  if e.until_ms < now then
    -- Served its time: it starts again from no crash.
    e.until_ms, e.count, e.workers = nil, 0, {}
    return false
  end
  return true
end

-- Whether any request is remembered (so that a call need not make its
-- key when there is nothing to look it up in).
function Poison:empty()
  return self.n == 0
end

function Poison:size()
  local n = 0
  for _ in each_key, self.keys do
    n = n + 1
  end
  return n
end

return _M
