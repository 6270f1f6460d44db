-- Probing a TCP service through a circuit breaker.
--
-- Starts a small line-based service on 127.0.0.1 (sprun.tcp.listen: it
-- answers "PING" with "PONG"), takes it down for a while and brings it back,
-- and meanwhile probes it every 100 ms with sprun.tcp.connect through a
-- circuit breaker (sprun.executor.execute_with_circuit_breaker), each probe
-- bounded by execute_with_timeout. The account shows the breaker opening
-- after 3 refused connections, rejecting probes without touching the
-- network while open, turning half-open after its reset timeout, re-opening
-- when the probe fails, and closing once the service answers again.
--
--   ./build/sprun scripts/probe_tcp_service.lua
--
-- Runs for about 2.5 seconds and exits 0 when the breaker went through
-- open, half-open and closed.
local sprun = require "sprun"
local ex = sprun.executor

local HOST = "127.0.0.1"
local PROBE_EVERY_MS = 100
local PROBES = 25

local start = sprun.now()
local function say(fmt, ...)
  print(string.format("[%5d ms] " .. fmt, sprun.now() - start, ...))
end

--- The service -------------------------------------------------------------

local function handler(conn)
  while true do
    local line = conn:read_line()
    if line == nil then
      return
    end
    conn:write(line == "PING" and "PONG\n" or "ERR unknown command\n")
  end
end

-- Listens on `port` (0: any free port); returns the server.
local function service_up(port)
  local server, err = sprun.tcp.listen(HOST, port, handler)
  if server == nil then
    error("cannot listen: " .. tostring(err))
  end
  say("service: up on %s:%d", HOST, server.port)
  return server
end

local server = service_up(0)
local port = server.port

-- Down from 450 ms to 1450 ms: half-way between two probes, so that the
-- story is the same on every run.
local outage = sprun.spawn(function()
  sprun.sleep(450)
  server:close()
  say("service: DOWN (stops listening)")
  sprun.sleep(1000)
  server = service_up(port)
end)

--- The prober -----------------------------------------------------------------

local cb = sprun.circuit_breaker.start_link {
  name = "tcp_service",
  failure_threshold = 3,
  reset_timeout_ms = 450,
  half_open_max_calls = 1,
}

-- One probe: connect, PING, expect PONG. nil, err on any failure.
local function probe()
  local conn, err = sprun.tcp.connect(HOST, port, { timeout_ms = 200 })
  if conn == nil then
    return nil, err
  end
  local ok, werr = conn:write("PING\n")
  if not ok then
    conn:close()
    return nil, werr
  end
  local line, rerr = conn:read_line()
  conn:close()
  if line ~= "PONG" then
    return nil, rerr or sprun.error("bad_answer", tostring(line))
  end
  return line
end

local seen = { open = 0, half_open = 0, closed = 0 }
local last_state = cb:state()
local function note_state()
  local state = cb:state()
  if state ~= last_state then
    say("breaker: %s -> %s", last_state, state)
    seen[state] = seen[state] + 1
    last_state = state
  end
end

local counts = { ok = 0, failed = 0, rejected = 0 }
for i = 1, PROBES do
  note_state()
  local answer, err = ex.execute_with_circuit_breaker(cb, function()
    return ex.execute_with_timeout(probe, { timeout_ms = 300 })
  end)
  local was = last_state
  if answer then
    counts.ok = counts.ok + 1
    say("probe %2d: %s%s", i, answer,
        was == "half_open" and " (the half-open probe)" or "")
  elseif sprun.error_kind(err) == "circuit_open" then
    counts.rejected = counts.rejected + 1
    say("probe %2d: rejected, the breaker is open (no connection made)", i)
  else
    counts.failed = counts.failed + 1
    say("probe %2d: failed: %s (%d consecutive failure%s)", i,
        sprun.error_kind(err), cb:stats().consecutive_failures,
        cb:stats().consecutive_failures == 1 and "" or "s")
  end
  note_state()
  -- On a fixed schedule (probe i+1 at i * 100 ms), so that the time the
  -- probes themselves take does not add up.
  sprun.sleep(math.max(0, start + i * PROBE_EVERY_MS - sprun.now()))
end

outage:await()
server:close()

local s = cb:stats()
print("")
print(string.format("probes: %d answered, %d failed, %d rejected by the "
  .. "breaker", counts.ok, counts.failed, counts.rejected))
print(string.format("breaker: state=%s, opened %d time(s), half-open %d "
  .. "time(s), closed %d time(s), rejected_count=%d", s.state, seen.open,
  seen.half_open, seen.closed, s.rejected_count))
local ok = s.state == "closed" and seen.open >= 1 and seen.half_open >= 1
           and seen.closed >= 1
print(ok and "the breaker opened, went half-open and closed again"
         or "unexpected: the breaker did not go through its states")
return ok and 0 or 1
