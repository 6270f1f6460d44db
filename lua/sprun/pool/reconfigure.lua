-- A live pool takes new options (internal): what a policy file's reload
-- does to a pool it declares.
--
--   size      grows: new slots start at once; shrinks: the last slots
--             leave the pool, their workers finish what they run, then
--             stop (nothing in flight is lost)
--   cmd, env, cwd
--             the workers roll one at a time: each is replaced as on
--             recycling (the replacement up first, the old one drained),
--             so capacity never drops
--   breaker, health
--             the objects the file names now
--   the rest  taken at once (timeouts, queue, crash barrier, restart,
--             recycling limits, heartbeat); a limit fixed per worker at
--             its start (max_requests and its jitter) holds for the
--             workers started from then on
--
-- name, channel and protocol cannot change under a live pool:
-- live_error says so before anything is applied.

local kernel = require "sprun.sched.kernel"
local requests = require "sprun.pool.requests"
local Pool = require "sprun.pool.supervise"

local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local type = type
local remove = table.remove
local format = string.format

local _M = {}

local FIXED = { "name", "channel", "protocol" }

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then
    return a == b
  end
  for k, v in each_key, a do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in each_key, b do
    if a[k] == nil then
      return false
    end
  end
  return true
end

-- Why the checked options `o` cannot apply to the live pool, or nil.
function _M.live_error(pool, o)
  for _, k in ipairs(FIXED) do
    if pool._o[k] ~= o[k] then
      return format("option '%s' cannot change on a live pool (%s to %s): "
                    .. "stop the pool and start it again", k,
                    tostring(pool._o[k]), tostring(o[k]))
    end
  end
end

-- The next worker of a roll to replace, one at a time.
local function roll_next(self)
  local stale = self._stale
  if stale == nil then
    return
  end
  for _, slot in ipairs(self._slots) do
    if slot.next and stale[slot.next] then
      -- A replacement of the old command is starting: it goes, and the
      -- slot's worker is replaced again below.
      slot.next:kill("recycle")
      slot.next = nil
    end
    if slot.next then
      return -- one replacement at a time
    end
  end
  for _, slot in ipairs(self._slots) do
    local w = slot.w
    if w and stale[w] then
      if w.state == "ready" then
        w.recycle_due = "config"
        self:_check_recycle(w)
        if slot.next then
          return
        end
      elseif w.state == "starting" then
        -- Not serving yet: it is simply started again with the new
        -- command.
        stale[w] = nil
        w:kill("recycle")
      end
    end
  end
  if next(stale) == nil then
    self._stale = nil
  end
end
Pool._roll_next = roll_next

local function grow(self, size)
  local slots = self._slots
  for i = #slots + 1, size do
    slots[i] = { index = i, id = "worker_" .. i, gen = 0,
                 start_failures = 0, streak = 0 }
  end
end

local function shrink(self, size)
  local slots = self._slots
  local gone = {}
  while #slots > size do
    local slot = remove(slots)
    slot.removed = true
    gone[slot] = true
    if slot.next then
      slot.next:kill("recycle")
    end
    local w = slot.w
    if w then
      if w.state == "ready" then
        w.state = "draining"
        if w.n == 0 then
          w:kill("recycle", "SIGTERM")
        else
          kernel.after(self._o.request_timeout_ms + self._o.stop_timeout_ms,
                       function() w:kill("recycle") end)
        end
      else
        w:kill("recycle")
      end
    end
  end
  -- Sessions bound to a slot that left are forgotten.
  for session, slot in each_key, self._sessions do
    if gone[slot] then
      self._sessions[session] = nil
      self._nsessions = self._nsessions - 1
    end
  end
end

-- Applies checked options `o` (see live_error) to the live pool; `hm`
-- and `cb` are its health monitor and breaker from now on (cb may be
-- nil).
function Pool:_reconfigure(o, hm, cb)
  local old = self._o
  local roll = not (same(old.cmd, o.cmd) and same(old.env, o.env)
                    and old.cwd == o.cwd)
  self._o = o
  self._hm = hm or self._hm
  self._cb = cb
  self._poison.taint_ms = o.crash_barrier.taint_ms
  if self._state == "stopped" or self._state == "draining" then
    return
  end
  if o.size > #self._slots then
    grow(self, o.size)
  elseif o.size < #self._slots then
    shrink(self, o.size)
  end
  if roll then
    local stale = self._stale or {}
    for w in each_key, self._live do
      if w.state ~= "draining" then
        stale[w] = true
      end
    end
    self._stale = stale
  end
  self:_timers()
  self:_fill()
  roll_next(self)
  requests.dispatch(self)
end

return _M
