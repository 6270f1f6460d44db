-- A real redis-server (Debian's) for the specs, started from inside a
-- running sprun task on 127.0.0.1 and a free port, in a temporary
-- directory, with nothing saved to disk:
--
--   local redisd = require "redisd"
--   local srv = redisd.start { password = "secret" }   -- inside sprun.run
--   ... srv.port, srv:url(), srv.pid ...
--   srv:stop()
--
-- It is a child of sprun.process.spawn, in its own process group: it goes
-- when stop() kills it, when its task is cancelled, or when the run ends.
local sprun = require "sprun"
local h = require "helpers"

local _M = {}

local Server = {}
Server.__index = Server

_M.REDIS = "/usr/bin/redis-server"

local function free_port()
  local s = assert(sprun.tcp.listen("127.0.0.1", 0, function() end))
  local port = s.port
  s:close()
  return port
end

function Server:url(db)
  local auth = self.password and (":" .. self.password .. "@") or ""
  return "redis://" .. auth .. "127.0.0.1:" .. self.port
         .. (db and ("/" .. db) or "")
end

function Server:stop()
  if self.proc then
    self.proc:kill("SIGKILL")
    self.proc:wait()
    self.proc = nil
    h.rmrf(self.dir)
  end
end

-- opts: { password, port } (port: that one instead of a free one, e.g.
-- to restart a server where its clients expect it). Raises if
-- redis-server is not up within 5 s.
function _M.start(opts)
  opts = opts or {}
  local dir = h.tmpdir()
  for _ = 1, 5 do
    local port = opts.port or free_port()
    local args = { _M.REDIS, "--port", tostring(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", dir,
                   "--daemonize", "no", "--loglevel", "warning",
                   env = { LD_PRELOAD = false }, stderr = "null" }
    if opts.password then
      args[#args + 1] = "--requirepass"
      args[#args + 1] = opts.password
    end
    local proc = assert(sprun.process.spawn(args))
    local deadline = sprun.now() + 5000
    while sprun.now() < deadline do
      local c = sprun.tcp.connect("127.0.0.1", port, { timeout_ms = 200 })
      if c then
        c:close()
        return setmetatable({ port = port, dir = dir, proc = proc,
                              pid = proc:pid(), password = opts.password },
                            Server)
      end
      sprun.sleep(10)
    end
    proc:kill("SIGKILL")
    proc:wait()
  end
  h.rmrf(dir)
  error("redis-server did not start on 127.0.0.1", 2)
end

-- Runs fn(srv) in a run of its own (h.run_tasks: no handle may be left)
-- with a server started for it, stops the server whatever fn did, raises
-- fn's error, and checks that no redis-server process is left.
function _M.with(opts, fn)
  local pid
  local r = h.run_tasks(function()
    local srv = _M.start(opts)
    pid = srv.pid
    local ok, v = pcall(fn, srv)
    srv:stop()
    assert(ok, v)
    return v
  end)
  assert(not h.alive(pid), "redis-server " .. tostring(pid) .. " is left")
  return r
end

return _M
