-- Reference model of the health monitor, in plain Lua, written from
-- DESIGN.md (sprun.health_monitor) and the comments of sprun.h and
-- runtime/core/health.c; it shares no code with them. Where the C keeps a
-- ring and an idle list, the model keeps the plain log of crashes and
-- recomputes every answer from it.
--
-- Rules:
--  * time never goes back: every time passed in (a crash, a query) is
--    taken as at least the latest seen before;
--  * only the latest max_crashes crashes are kept; of those, a crash is in
--    the window at `now` when now - t <= crash_window_ms (boundary
--    inclusive);
--  * crashes_in_window, a worker's crash_count and workers_with_crashes
--    count the kept crashes in the window; healthy while crashes_in_window
--    < max_crashes (a worker is "healthy" while its own count is);
--  * at most max(max_workers, max_crashes + 1) workers are remembered; a
--    new worker when all are taken makes the monitor forget the worker
--    that has gone longest without a crash (every remembered worker has
--    crashed: a worker is remembered from its first crash on). A forgotten
--    worker is unknown (worker_health -> nil) and starts from zero if it
--    crashes again;
--  * a worker keeps its last 4 crash reasons (info.reason), oldest first.

local M = {}
M.__index = M

local REASONS = 4

local _M = {}

function _M.new(max_crashes, max_workers, window)
  return setmetatable({
    max_crashes = max_crashes,
    window = window,
    capacity = max_workers > max_crashes and max_workers or max_crashes + 1,
    latest = 0,
    total = 0,
    seq = 0,
    log_t = {},   -- crash times, in order (only the last max_crashes count)
    log_w = {},   -- the worker record of each crash
    workers = {}, -- id -> { total, last_ms, last_seq, reasons }
    nworkers = 0,
  }, M)
end

function M:clamp(now)
  if now < self.latest then
    return self.latest
  end
  self.latest = now
  return now
end

-- The kept crashes in the window at `now` (of worker record w only, if
-- given).
function M:in_window(now, w)
  local n, count = self.seq, 0
  local first = n - self.max_crashes + 1
  if first < 1 then
    first = 1
  end
  local log_t, log_w, window = self.log_t, self.log_w, self.window
  for i = first, n do
    if now - log_t[i] <= window and (w == nil or log_w[i] == w) then
      count = count + 1
    end
  end
  return count
end

-- Whether a kept crash is exactly crash_window_ms old at `now`.
function M:on_boundary(now)
  for i = math.max(1, self.seq - self.max_crashes + 1), self.seq do
    if now - self.log_t[i] == self.window then
      return true
    end
  end
  return false
end

function M:workers_with_crashes(now)
  local n = self.seq
  local first = n - self.max_crashes + 1
  if first < 1 then
    first = 1
  end
  local seen, count = {}, 0
  for i = first, n do
    local w = self.log_w[i]
    if now - self.log_t[i] <= self.window and not seen[w] then
      seen[w] = true
      count = count + 1
    end
  end
  return count
end

-- Returns the id of the worker forgotten to make room, if any.
function M:record_crash(id, reason, now)
  local w = self.workers[id]
  local evicted
  if w == nil then
    if self.nworkers >= self.capacity then
      local oldest
      for wid, rec in pairs(self.workers) do
        if oldest == nil or rec.last_seq < oldest.last_seq then
          oldest, evicted = rec, wid
        end
      end
      self.workers[evicted] = nil
      self.nworkers = self.nworkers - 1
    end
    w = { total = 0, last_ms = 0, last_seq = 0, reasons = {} }
    self.workers[id] = w
    self.nworkers = self.nworkers + 1
  end
  now = self:clamp(now)
  local seq = self.seq + 1
  self.seq = seq
  self.log_t[seq] = now
  self.log_w[seq] = w
  -- memory stays bounded: crashes before the last max_crashes never count
  local old = seq - self.max_crashes
  if old >= 1 then
    self.log_t[old], self.log_w[old] = nil, nil
  end
  w.total = w.total + 1
  w.last_ms = now
  w.last_seq = seq
  self.total = self.total + 1
  if reason ~= nil then
    local r = w.reasons
    r[#r + 1] = reason
    if #r > REASONS then
      table.remove(r, 1)
    end
  end
  return evicted
end

function M:is_healthy(now)
  now = self:clamp(now)
  return self:in_window(now) < self.max_crashes
end

-- nil for an unknown worker (the time is then not looked at).
function M:worker_health(id, now)
  local w = self.workers[id]
  if w == nil then
    return nil
  end
  now = self:clamp(now)
  return w, self:in_window(now, w)
end

-- crashes_in_window, workers_with_crashes at now.
function M:stats(now)
  now = self:clamp(now)
  return self:in_window(now), self:workers_with_crashes(now)
end

return _M
