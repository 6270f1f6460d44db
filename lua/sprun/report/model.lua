-- What a run report shows, read from a recording's entries (sprun.trace's
-- { time_ms, event name, measurements, metadata }) (internal).
--
--   model.build(entries, t0, t1) -> {
--     t0, t1,                       -- the run's span, loop ms
--     breakers = { lane... },       -- state bands, transitions, calls
--     retries = { lane... },        -- failed attempts, exhausted loops
--     workers = { lane... },        -- pool workers and child processes
--     crashes = { lane... },        -- crashes recorded for no known worker
--     batches = { lane... },        -- execute_batch items
--     http = { lane... },           -- HTTP requests per origin
--     calls = { row... },           -- calls, failures, latency per source
--     crash_classes = { {class, n}... }, restarts, hidden = { section = n },
--   }
--
-- Each list keeps the order things first appeared in, and a section draws
-- at most MAX_LANES lanes (the rest is counted in `hidden`), so a report's
-- size is bounded by its recording's. The trap: an event's tables may lack
-- any field (a handler-made event, a dropped start): every read is
-- checked, and what is missing is left out rather than guessed.

local type = type
local tostring = tostring
local floor = math.floor
local sort = table.sort
local match = string.match

local _M = {}

local MAX_LANES = 40
_M.MAX_LANES = MAX_LANES

-- A breaker transition's event -> the state it enters.
local ENTERS = {
  opened = "open", forced_open = "open", isolated = "open",
  half_open = "half_open", closed = "closed", disabled = "disabled",
}
-- A breaker's state before its first transition, when no call said it.
local BEFORE = { open = "closed", half_open = "open", closed = "half_open",
                 disabled = "closed" }

local function num(t, k)
  local v = t and t[k]
  return type(v) == "number" and v or nil
end

local function str(t, k)
  local v = t and t[k]
  if v == nil then
    return nil
  end
  return tostring(v)
end

-- A list of lanes by key, in first-seen order, at most MAX_LANES of them;
-- and lane(key, make), the lane of key (made by make() when new), or nil
-- for a key past the limit (counted once in hidden[name]).
local function section(name, hidden)
  local by, list = {}, {}
  return list, function(key, make)
    local lane = by[key]
    if lane == nil then
      if #list >= MAX_LANES then
        lane = false
        hidden[name] = (hidden[name] or 0) + 1
      else
        lane = make()
        list[#list + 1] = lane
      end
      by[key] = lane
    end
    return lane or nil
  end
end

-- The nearest-rank percentile p (0..1) of the sorted list xs.
local function percentile(xs, p)
  local n = #xs
  if n == 0 then
    return nil
  end
  local i = floor(p * n + 0.999999)
  if i < 1 then
    i = 1
  elseif i > n then
    i = n
  end
  return xs[i]
end
_M.percentile = percentile

-- Ends a worker's or process's newest life at t (one that began before
-- the recording did starts lifetime_ms earlier); returns it.
local function end_life(w, t, m, md, reason)
  local life = w.lives[#w.lives]
  if life == nil or life.to ~= nil then
    life = { from = t - (num(m, "lifetime_ms") or 0) }
    w.lives[#w.lives + 1] = life
  end
  life.to, life.reason = t, reason
  life.signal, life.code = str(md, "signal"), num(m, "code")
  return life
end

-- A calls row: what a source (a breaker, an origin, a pool, a batch) did.
local function calls_row(rows, by, kind, name)
  local key = kind .. " " .. name
  local row = by[key]
  if row == nil then
    row = { kind = kind, name = name, calls = 0, failures = 0,
            rejections = 0, durations = {} }
    by[key] = row
    rows[#rows + 1] = row
  end
  return row
end

local function count_call(row, ok, rejected, ms)
  row.calls = row.calls + 1
  if rejected then
    row.rejections = row.rejections + 1
  elseif not ok then
    row.failures = row.failures + 1
  end
  if ms then
    row.durations[#row.durations + 1] = ms
  end
end

function _M.build(entries, t0, t1)
  local hidden = {}
  local breakers, breaker = section("breakers", hidden)
  local retries, retry = section("retries", hidden)
  local workers, worker = section("workers", hidden)
  local crashes, crash_lane = section("crashes", hidden)
  local batches, batch = section("batches", hidden)
  local http, origin = section("http", hidden)
  local rows, row_by = {}, {}
  local classes, class_list = {}, {}
  local pool_pids = {}   -- pids of pool workers (not drawn as processes)
  local by_worker = {}   -- worker_id -> its lane
  local restarts = 0

  local function class(c)
    if classes[c] == nil then
      classes[c] = 0
      class_list[#class_list + 1] = c
    end
    classes[c] = classes[c] + 1
  end

  local function worker_lane(kind, key, label)
    return worker(kind .. " " .. key, function()
      return { kind = kind, label = label, lives = {}, marks = {},
               requests = {}, taints = {} }
    end)
  end

  -- Pool workers first, so that their processes are known as theirs.
  for i = 1, #entries do
    local e = entries[i]
    if e[2] == "sprun.pool.worker_started" then
      local pid = num(e[3], "pid")
      if pid then
        pool_pids[pid] = true
      end
    end
  end

  for i = 1, #entries do
    local e = entries[i]
    local t, name, m, md = e[1], e[2], e[3], e[4]
    local component, rest = match(name, "^[^.]+%.([^.]+)%.(.+)$")
    if component == "circuit_breaker" then
      local who = str(md, "pool") or "breaker"
      local b = breaker(who, function()
        return { name = who, first = nil, bands = {}, marks = {} }
      end)
      if b then
        local enters = ENTERS[rest]
        if enters then
          if b.first == nil then
            b.first = BEFORE[enters]
            b.bands[1] = { state = b.first, from = t0 }
          end
          local last = b.bands[#b.bands]
          last.to = t
          b.bands[#b.bands + 1] = { state = enters, from = t, why = rest }
          b.marks[#b.marks + 1] = { t = t, what = rest,
                                    failures = num(m, "failure_count"),
                                    reason = str(md, "reason") }
        elseif b.first == nil and md and type(md.state) == "string" then
          b.first = md.state == "open" and "open"
                    or md.state == "half_open" and "half_open" or "closed"
          b.bands[1] = { state = b.first, from = t0 }
        end
        if rest == "call.success" or rest == "call.failure"
           or rest == "call.rejected" then
          count_call(calls_row(rows, row_by, "breaker", who),
                     rest == "call.success", rest == "call.rejected",
                     num(m, "duration_ms"))
        end
      end
    elseif component == "retry" then
      local who = str(md, "pool") or "default"
      local r = retry(who, function()
        return { name = who, ticks = {}, ends = {} }
      end)
      if r then
        if rest == "attempt" then
          r.ticks[#r.ticks + 1] = {
            t = t, attempt = num(m, "attempt"), delay = num(m, "delay_ms"),
            kind = str(md, "error_kind"), message = str(md, "error_message"),
          }
        elseif rest == "exhausted" or rest == "budget_exhausted"
               or rest == "success" then
          r.ends[#r.ends + 1] = { t = t, what = rest,
                                  attempts = num(m, "attempts") }
        end
      end
    elseif name == "sprun.pool.worker_started" then
      local id = str(md, "worker_id") or "?"
      local w = worker_lane("worker", id, str(md, "pool") and
                            md.pool .. " " .. id or id)
      if w then
        w.lives[#w.lives + 1] = { from = t }
        by_worker[id] = w
      end
    elseif name == "sprun.pool.worker_stopped" then
      local id = str(md, "worker_id") or "?"
      local w = by_worker[id] or worker_lane("worker", id, id)
      if w then
        by_worker[id] = w
        end_life(w, t, m, md, str(md, "reason"))
      end
    elseif name == "sprun.pool.request" then
      local id = str(md, "worker_id") or "?"
      local w = by_worker[id]
      local ms = num(m, "duration_ms")
      if w then
        w.requests[#w.requests + 1] = { t = t, ms = ms,
                                        outcome = str(md, "outcome") }
      end
      local outcome = str(md, "outcome")
      count_call(calls_row(rows, row_by, "pool", str(md, "pool") or "pool"),
                 outcome == "ok", false, ms)
    elseif name == "sprun.process.started" then
      local pid = num(m, "pid")
      if pid and not pool_pids[pid] then
        local w = worker_lane("process", tostring(pid),
                              (str(md, "name") or "process") .. " " .. pid)
        if w then
          w.lives[#w.lives + 1] = { from = t }
        end
      end
    elseif name == "sprun.process.exited" then
      local pid = num(m, "pid")
      if pid and not pool_pids[pid] then
        local w = worker_lane("process", tostring(pid),
                              (str(md, "name") or "process") .. " " .. pid)
        if w then
          local life = end_life(w, t, m, md)
          if life.signal then
            w.marks[#w.marks + 1] = { t = t, what = "crash",
                                      class = life.signal }
          end
        end
      end
    elseif name == "snakepit.worker.crash" then
      local id = str(md, "worker_id") or "?"
      local reason = str(md, "reason") or "crash"
      class(reason)
      local w = by_worker[id]
      if w then
        w.marks[#w.marks + 1] = { t = t, what = "crash", class = reason }
      else
        local who = str(md, "pool") or "health"
        local c = crash_lane(who, function()
          return { name = who, marks = {} }
        end)
        if c then
          c.marks[#c.marks + 1] = { t = t, worker = id, class = reason }
        end
      end
    elseif name == "snakepit.worker.tainted" then
      local w = by_worker[str(md, "worker_id") or "?"]
      if w then
        w.taints[#w.taints + 1] = { from = t,
                                    to = t + (num(m, "duration_ms") or 0),
                                    reason = str(md, "reason") }
      end
    elseif name == "snakepit.worker.restarted" then
      restarts = restarts + 1
    elseif name == "sprun.batch.item" then
      local id = num(m, "batch") or 0
      local b = batch(id, function()
        return { id = id, size = num(m, "size") or 0, items = {} }
      end)
      local ms = num(m, "duration_ms") or 0
      local outcome = str(md, "outcome") or "?"
      if b then
        b.items[#b.items + 1] = { index = num(m, "index") or #b.items + 1,
                                  from = t - ms, to = t, outcome = outcome }
      end
      count_call(calls_row(rows, row_by, "batch", tostring(id)),
                 outcome == "ok", false, ms)
    elseif name == "sprun.http.request" then
      local who = str(md, "origin") or "http"
      local o = origin(who, function()
        return { name = who, requests = {} }
      end)
      local ms = num(m, "duration_ms")
      local outcome = str(md, "outcome") or "?"
      if o then
        o.requests[#o.requests + 1] = {
          t = t, ms = ms, status = num(m, "status"), outcome = outcome,
          method = str(md, "method"), url = str(md, "url"),
        }
      end
      count_call(calls_row(rows, row_by, "http", who), outcome == "ok",
                 false, ms)
    end
  end

  -- Every open band and lifetime ends at the run's end.
  for i = 1, #breakers do
    local b = breakers[i]
    if #b.bands == 0 then
      b.bands[1] = { state = b.first or "closed", from = t0 }
    end
    b.bands[#b.bands].to = t1
  end
  for i = 1, #workers do
    local w = workers[i]
    if #w.lives == 0 then
      w.lives[1] = { from = t0 }
    end
    for j = 1, #w.lives do
      local life = w.lives[j]
      life.alive = life.to == nil
      life.to = life.to or t1
    end
  end
  for i = 1, #rows do
    sort(rows[i].durations)
  end
  local crash_classes = {}
  for i = 1, #class_list do
    crash_classes[i] = { class = class_list[i], n = classes[class_list[i]] }
  end
  return {
    t0 = t0, t1 = t1, breakers = breakers, retries = retries,
    workers = workers, crashes = crashes, batches = batches, http = http,
    calls = rows, crash_classes = crash_classes, restarts = restarts,
    hidden = hidden,
  }
end

-- A breaker's time in each state and its open-to-closed recoveries:
-- { closed = ms, open = ms, half_open = ms, disabled = ms,
--   opened = n, recoveries = { ms... } }.
function _M.breaker_times(b)
  local out = { closed = 0, open = 0, half_open = 0, disabled = 0,
                opened = 0, recoveries = {} }
  local opened_at = nil
  for i = 1, #b.bands do
    local band = b.bands[i]
    out[band.state] = (out[band.state] or 0) + (band.to - band.from)
    if band.state == "open" and i > 1 and b.bands[i - 1].state ~= "half_open"
    then
      out.opened = out.opened + 1
      opened_at = opened_at or band.from
    elseif band.state == "open" and i > 1 then
      -- A failed probe: open again, the same outage.
      opened_at = opened_at or band.from
    elseif band.state == "closed" and opened_at then
      out.recoveries[#out.recoveries + 1] = band.from - opened_at
      opened_at = nil
    end
  end
  return out
end

return _M
