-- A worker for the pool specs, served by sprun.pool.serve: each op does one
-- thing a real worker may do, from answering to dying by a signal.
local sprun = require "sprun"
local ffi = require "ffi"
ffi.cdef [[
int kill(int pid, int sig);
int getpid(void);
typedef void (*sprun_test_handler)(int);
sprun_test_handler signal(int signum, sprun_test_handler handler);
]]

-- Dies by `sig` with its default action (a sanitizer's handler, if any,
-- is put aside first).
local function die(sig)
  ffi.C.signal(sig, nil)
  ffi.C.kill(ffi.C.getpid(), sig)
end

-- SPRUN_TEST_START="exit:N": the worker dies with status N before it
-- says ready (a program that cannot start).
local at_start = os.getenv("SPRUN_TEST_START")
if at_start then
  io.stderr:write("cannot start: ", at_start, "\n")
  os.exit(tonumber(at_start:match("^exit:(%d+)$")) or 1)
end

local held = {}
local running, most = 0, 0

sprun.pool.serve {
  echo = function(a) return a end,
  who = function()
    return { id = os.getenv("SPRUN_WORKER_ID"), pid = ffi.C.getpid() }
  end,
  segv = function() die(11) end,
  abort = function() die(6) end,
  -- Crashes the first time (the marker file is made then), answers after.
  crash_once = function(a)
    local f = io.open(a.marker)
    if f then
      f:close()
      return "survived"
    end
    io.open(a.marker, "w"):close()
    die(11)
  end,
  sleep = function(ms) sprun.sleep(ms) return ms end,
  exit = function(code) os.exit(code) end,
  -- How many probes ran at once at most, as seen by this worker.
  probe = function(ms)
    running = running + 1
    if running > most then most = running end
    sprun.sleep(ms)
    running = running - 1
    return most
  end,
  alloc = function(mb)
    held[#held + 1] = string.rep("x", mb * 1024 * 1024)
    return #held
  end,
  env = function(name) return os.getenv(name) end,
  print = function(s)
    print("out: " .. s)
    io.stderr:write("err: ", s, "\n")
    return true
  end,
  fail = function(a) return nil, sprun.error(a.kind, a.message, a.details) end,
  raise = function(a) error(a, 0) end,
}
