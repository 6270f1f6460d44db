-- A pool's counters and latency samples (internal), all of fixed size:
-- the latencies keep the last SAMPLES of each, for p50 and p99.

local errors = require "sprun.errors"

local sort = table.sort
local floor = math.floor
local setmetatable = setmetatable

local _M = {}

local SAMPLES = 1024
-- Error kinds counted each on its own; a worker that makes up more goes
-- under "other".
local MAX_KINDS = 64

local Stats = {}
Stats.__index = Stats

function _M.new()
  return setmetatable({
    requests = 0, replies = 0, errors = {}, nkinds = 0, crashes = {},
    restarts = 0, recycled = 0, dropped_replies = 0, protocol_errors = 0,
    poisoned = 0, waits = { n = 0 }, services = { n = 0 },
  }, Stats)
end

function Stats:error(err)
  local kind = errors.kind(err)
  local e = self.errors
  if e[kind] == nil then
    if self.nkinds >= MAX_KINDS then
      kind = "other"
    else
      self.nkinds = self.nkinds + 1
    end
  end
  e[kind] = (e[kind] or 0) + 1
end

local function add(ring, v)
  local n = ring.n + 1
  ring.n = n
  ring[(n - 1) % SAMPLES + 1] = v
end

function Stats:queue_wait(ms)
  add(self.waits, ms)
end

function Stats:service(ms)
  add(self.services, ms)
end

-- { p50, p99 } of a ring's samples (ms), or zeros with none.
local function percentiles(ring)
  local n = ring.n < SAMPLES and ring.n or SAMPLES
  if n == 0 then
    return { p50 = 0, p99 = 0, samples = 0 }
  end
  local copy = {}
  for i = 1, n do
    copy[i] = ring[i]
  end
  sort(copy)
  local function at(p)
    return copy[floor((n - 1) * p + 0.5) + 1]
  end
  return { p50 = at(0.5), p99 = at(0.99), samples = n }
end

function Stats:latencies()
  return percentiles(self.waits), percentiles(self.services)
end

return _M
