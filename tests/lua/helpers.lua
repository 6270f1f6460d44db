-- Shared helpers for the specs: running commands, reading files, watching
-- processes, and running loops and checking what they leave open.
local _M = {}

_M.root = (function()
  local src = debug.getinfo(1, "S").source:sub(2)
  return (src:match("^(.*)/tests/lua/[^/]*$") or ".")
end)()
_M.build = os.getenv("SPRUN_BUILD") or (_M.root .. "/build")
_M.sprun = _M.build .. "/sprun"

function _M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function _M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function _M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

-- A fresh temporary directory, removed by cleanup().
function _M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

function _M.rmrf(path)
  os.execute("rm -rf " .. _M.shell_quote(path))
end

-- How many times `pattern` matches in s.
function _M.count(s, pattern)
  local n = 0
  for _ in s:gmatch(pattern) do
    n = n + 1
  end
  return n
end

-- The values given, as a list with their count in n (nils included).
function _M.pack(...)
  return { n = select("#", ...), ... }
end

-- Runs a shell command line; returns { code, stdout, stderr }.
function _M.run(cmdline, stdin)
  local dir = _M.tmpdir()
  local input = ""
  if stdin then
    _M.write_file(dir .. "/in", stdin)
    input = " <" .. _M.shell_quote(dir .. "/in")
  end
  local script = string.format("(%s)%s >%s 2>%s; echo $? >%s", cmdline, input,
    _M.shell_quote(dir .. "/out"), _M.shell_quote(dir .. "/err"),
    _M.shell_quote(dir .. "/rc"))
  os.execute("sh -c " .. _M.shell_quote(script))
  local r = {
    code = tonumber((_M.read_file(dir .. "/rc"):gsub("%s+$", ""))),
    stdout = _M.read_file(dir .. "/out"),
    stderr = _M.read_file(dir .. "/err"),
  }
  _M.rmrf(dir)
  return r
end

-- Runs build/sprun with the given (unquoted) argument words.
function _M.sprun_run(args, stdin)
  local words = { _M.shell_quote(_M.sprun) }
  for _, a in ipairs(args) do words[#words + 1] = _M.shell_quote(a) end
  return _M.run(table.concat(words, " "), stdin)
end

--- Processes ---------------------------------------------------------------

-- The id of this (the test) process.
function _M.getpid()
  local ffi = require "ffi"
  pcall(ffi.cdef, "int getpid(void);")
  return tonumber(ffi.C.getpid())
end

-- The state letter of process `pid` ("R", "S", "Z", ...) and its parent's
-- id, or nil when no such process exists (it exited and was reaped).
function _M.proc_state(pid)
  local f = io.open("/proc/" .. tostring(pid) .. "/stat", "rb")
  if f == nil then
    return nil
  end
  local s = f:read("*a") or ""
  f:close()
  -- "pid (comm) state ppid ...": comm may hold spaces and parentheses.
  local state, ppid = s:match("^%d+ %(.*%) (%S) (%-?%d+)")
  return state, tonumber(ppid)
end

-- True while process `pid` exists and is not a zombie.
function _M.alive(pid)
  local state = _M.proc_state(pid)
  return state ~= nil and state ~= "Z"
end

-- The children of this process, as a sorted list of "pid comm state"
-- strings: {} when every child has exited and been reaped. Zombies count
-- (a child nobody reaped is a leak) unless `running_only`.
function _M.live_children(running_only)
  local me = _M.getpid()
  local p = io.popen("ls /proc")
  local names = p:read("*a")
  p:close()
  local list = {}
  for pid in names:gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/stat", "rb")
    if f then
      local s = f:read("*a") or ""
      f:close()
      local comm, state, ppid = s:match("^%d+ %((.*)%) (%S) (%-?%d+)")
      if tonumber(ppid) == me and not (running_only and state == "Z") then
        list[#list + 1] = pid .. " " .. comm .. " " .. state
      end
    end
  end
  table.sort(list)
  return list
end

-- The processes of process group `pgid` that are not zombies, as a sorted
-- list of "pid comm state" strings ({} once the group is gone). By group
-- id, read from /proc: never by name.
function _M.group_members(pgid)
  local p = io.popen("ls /proc")
  local names = p:read("*a")
  p:close()
  local list = {}
  for pid in names:gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/stat", "rb")
    if f then
      local s = f:read("*a") or ""
      f:close()
      -- pid (comm) state ppid pgrp ...
      local comm, state, pgrp = s:match("^%d+ %((.*)%) (%S) %-?%d+ (%-?%d+)")
      if tonumber(pgrp) == pgid and state ~= "Z" then
        list[#list + 1] = pid .. " " .. comm .. " " .. state
      end
    end
  end
  table.sort(list)
  return list
end

-- Calls fn() until it returns a true value or `limit_ms` passed (polling
-- every 10 ms with a shell sleep); returns its last value.
function _M.wait_until(fn, limit_ms)
  local tries = math.ceil((limit_ms or 3000) / 10)
  for _ = 1, tries do
    local v = fn()
    if v then
      return v
    end
    os.execute("sleep 0.01")
  end
  return fn()
end

-- The descriptors open in this process, listed by `ls` into a file (a
-- pipe from io.popen would be in the list, and its other end too while
-- the child starts): how many, and the listing.
function _M.open_fds()
  local out = os.tmpname()
  os.execute("ls -l /proc/" .. _M.getpid() .. "/fd > " .. out)
  local names = _M.read_file(out)
  os.remove(out)
  local n = 0
  for _ in names:gmatch(" %d+ %->") do
    n = n + 1
  end
  return n, names
end

-- CLOCK_MONOTONIC in ms (fractional): one clock for every process on the
-- machine, so that times taken in different sprun processes compare.
local mono_ts
function _M.mono_ms()
  local ffi = require "ffi"
  if mono_ts == nil then
    pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } helpers_timespec;
      int clock_gettime(int clk, helpers_timespec *ts);
    ]])
    mono_ts = ffi.new("helpers_timespec")
  end
  ffi.C.clock_gettime(1, mono_ts) -- CLOCK_MONOTONIC
  return tonumber(mono_ts.tv_sec) * 1000 + tonumber(mono_ts.tv_nsec) / 1e6
end

--- The scheduler ------------------------------------------------------------

-- Inside a task: sleeps 5 ms at a time until cond() is true, and raises
-- once `limit_ms` (default 10 s) of loop time went by without it, naming
-- what it waited for.
function _M.wait_for(what, cond, limit_ms)
  local sprun = require "sprun"
  limit_ms = limit_ms or 10000
  local deadline = sprun.now() + limit_ms
  while not cond() do
    if sprun.now() > deadline then
      error("waited " .. limit_ms .. " ms for " .. what, 2)
    end
    sprun.sleep(5)
  end
end

-- Runs fn(...) as the main task of a virtual-time loop; returns its values.
function _M.vrun(fn, ...)
  local sprun = require "sprun"
  return sprun.run({ clock = "virtual" }, fn, ...)
end

-- Asserts (with busted's assert) that the last loop left nothing open: no
-- handle, and no task still running. For the specs that check it after
-- each loop they ran, or each call that ran one.
function _M.assert_no_handles()
  local luassert = require "luassert"
  local sched = require "sprun.sched"
  luassert.are.equal(0, sched.last_run.handles)
  luassert.is_nil(sched.running())
end

-- sprun.run(...) that also checks that the tasks left no handle open
-- (sprun.sched.last_run.handles == 0); returns what sprun.run returns,
-- every value (select("#") preserved), and re-raises its error.
function _M.run_tasks(...)
  local sprun = require "sprun"
  local sched = require "sprun.sched"
  sched.last_run = nil
  local r = _M.pack(sprun.run(...))
  local run = sched.last_run
  if run == nil or run.handles ~= 0 then
    error(string.format("sprun.run left %s handle(s) open",
                        tostring(run and run.handles)), 2)
  end
  return unpack(r, 1, r.n)
end

-- run_tasks(fn) with a watchdog: if the run is still going after
-- limit_ms, every task left is cancelled and the spec fails (at the
-- caller's line), instead of hanging the whole suite. The watchdog is a
-- background timer, which never keeps the loop alive.
function _M.run_guarded(fn, limit_ms)
  local kernel = require "sprun.sched.kernel"
  limit_ms = limit_ms or 15000
  local hung = false
  local r = _M.pack(pcall(_M.run_tasks, function()
    kernel.after(limit_ms, function()
      hung = true
      for t in pairs(kernel.tasks()) do
        t:cancel()
      end
    end)
    return fn()
  end))
  if hung then
    error("the run was still going after " .. limit_ms .. " ms", 2)
  end
  if not r[1] then
    error(r[2], 0)
  end
  return unpack(r, 2, r.n)
end

-- Checks a sprun.trace document's structure (raises on the first fault):
-- every event but the metadata in time order; async slices nested per
-- (cat, id): each "e" ends the innermost open "b" of its cat and id (and
-- names it), every "b" has its "e", and an id whose slices all ended is
-- not used again; each flow id (per cat) has one "s" first, one "f" last
-- (with "bp" = "e"), only "t" between, at times in order. Returns its
-- slices as "name b.ts-e.ts" in the order they ended, the other events by
-- phase ({ C = {...}, ... }), and the flows in the order they began, each
-- { id, cat, phases = "s t f", ts = { ... }, tids = { ... } }.
function _M.trace_structure(doc)
  local open, closed, slices, by_ph, last = {}, {}, {}, {}, -1
  local flows, flow_of = {}, {}
  for _, e in ipairs(doc.traceEvents) do
    if e.ph ~= "M" then
      assert(e.ts >= last, "out of order at ts " .. tostring(e.ts))
      last = e.ts
    end
    local key = tostring(e.cat) .. " " .. tostring(e.id)
    if e.ph == "b" then
      assert(e.id ~= nil, "a b without an id")
      assert(not closed[key], "slice id " .. key .. " reused")
      open[key] = open[key] or {}
      table.insert(open[key], e)
    elseif e.ph == "e" then
      local stack = assert(open[key], "an e without its b (" .. key .. ")")
      local b = table.remove(stack)
      assert(b.name == e.name, "slice " .. key .. ": e of " .. e.name
             .. " ends " .. b.name)
      if #stack == 0 then
        open[key], closed[key] = nil, true
      end
      slices[#slices + 1] = b.name .. " " .. b.ts .. "-" .. e.ts
    else
      if e.ph == "s" or e.ph == "t" or e.ph == "f" then
        assert(e.id ~= nil, "a flow event without an id")
        local f = flow_of[key]
        if e.ph == "s" then
          assert(f == nil, "flow " .. key .. " has a second s")
          f = { id = e.id, cat = e.cat, phases = {}, ts = {}, tids = {} }
          flow_of[key] = f
          flows[#flows + 1] = f
        else
          assert(f ~= nil, "flow " .. key .. ": " .. e.ph .. " before its s")
          assert(not f.ended, "flow " .. key .. ": " .. e.ph .. " after its f")
        end
        if #f.ts > 0 then
          assert(e.ts >= f.ts[#f.ts], "flow " .. key .. " steps out of order")
        end
        if e.ph == "f" then
          assert(e.bp == "e", "flow " .. key .. ": f without bp = e")
          f.ended = true
        end
        table.insert(f.phases, e.ph)
        table.insert(f.ts, e.ts)
        table.insert(f.tids, e.tid)
      end
      by_ph[e.ph] = by_ph[e.ph] or {}
      table.insert(by_ph[e.ph], e)
    end
  end
  assert(next(open) == nil, "a b without its e")
  for _, f in ipairs(flows) do
    assert(f.ended, "flow " .. tostring(f.cat) .. " " .. tostring(f.id)
           .. " without its f")
    f.phases = table.concat(f.phases, " ")
    f.ended = nil
  end
  return slices, by_ph, flows
end

return _M
