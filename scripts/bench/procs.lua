-- What the benchmarks that run cases in processes of their own share
-- (scripts/bench/pool.lua, http.lua): the sprun running them, the CPU and
-- memory of this process and of others, medians and numbers for notes.
-- Not a benchmark itself (the Makefile leaves it out of `make bench`).
local ffi = require "ffi"

local fmt = string.format

local _M = {}

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_usec; } sp_bench_timeval_t;
typedef struct {
  sp_bench_timeval_t ru_utime, ru_stime;
  long ru_maxrss, ru_ixrss, ru_idrss, ru_isrss, ru_minflt, ru_majflt,
       ru_nswap, ru_inblock, ru_oublock, ru_msgsnd, ru_msgrcv, ru_nsignals,
       ru_nvcsw, ru_nivcsw;
} sp_bench_rusage_t;
int getrusage(int who, sp_bench_rusage_t *usage);
long sysconf(int name);
int kill(int pid, int sig);
]])
local C = ffi.C

_M.RUSAGE_SELF, _M.RUSAGE_CHILDREN = 0, -1
_M.CLK_TCK = tonumber(C.sysconf(2)) -- _SC_CLK_TCK

-- The sprun executable running this script: the first word of the
-- command line.
_M.SPRUN = (function()
  local i = -1
  while arg[i - 1] do
    i = i - 1
  end
  return arg[i] or "sprun"
end)()

function _M.alive(pid)
  return C.kill(pid, 0) == 0
end

local ru = ffi.new("sp_bench_rusage_t")

-- User and sys CPU in ns of `who` (RUSAGE_SELF or RUSAGE_CHILDREN), and
-- the voluntary and involuntary context switches.
function _M.rusage(who)
  assert(C.getrusage(who, ru) == 0)
  return tonumber(ru.ru_utime.tv_sec) * 1e9
         + tonumber(ru.ru_utime.tv_usec) * 1e3,
         tonumber(ru.ru_stime.tv_sec) * 1e9
         + tonumber(ru.ru_stime.tv_usec) * 1e3,
         tonumber(ru.ru_nvcsw), tonumber(ru.ru_nivcsw)
end

-- Resident memory (now, and the peak) of this process in KiB.
function _M.rss_kb()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")),
         tonumber(s:match("VmHWM:%s*(%d+)"))
end

-- The median of a list of numbers (the mean of the middle two when the
-- count is even).
function _M.median(list)
  local t = {}
  for i, v in ipairs(list) do
    t[i] = v
  end
  table.sort(t)
  local mid = (#t + 1) / 2
  return (t[math.floor(mid)] + t[math.ceil(mid)]) / 2
end

-- 12,345 for 12345.4.
function _M.thousands(x)
  local s = fmt("%.0f", x)
  return (s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

-- Runs `cmd` (a sprun.process.run table, with timeout_ms, env) to its
-- end and returns its stdout's lines decoded as JSON; raises if it failed
-- or left a process of its group behind.
function _M.run_json(cmd, timeout_ms, env)
  local sprun = require "sprun"
  local cjson = require("cjson").new()
  cmd.timeout_ms, cmd.env = timeout_ms, env
  local r, err = sprun.process.run(cmd)
  assert(r, tostring(err))
  assert(not _M.alive(-r.pid), cmd[1] .. " left a process behind")
  if r.code ~= 0 then
    io.stderr:write(r.stderr or "")
    error(fmt("%s exited with %s", table.concat(cmd, " "),
              tostring(r.code or r.signal)))
  end
  local out = {}
  for line in r.stdout:gmatch("[^\n]+") do
    out[#out + 1] = cjson.decode(line)
  end
  return out
end

-- f(v) of each value of `list`, joined by "/" (the rounds of a note).
function _M.runs(list, f)
  local out = {}
  for i, v in ipairs(list) do
    out[i] = f(v)
  end
  return table.concat(out, "/")
end

return _M
