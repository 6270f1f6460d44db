-- A TCP proxy for the specs, on sprun.tcp, in the same run as the client:
-- it forwards each connection to a target and can drop, delay or cut the
-- traffic on command, to make a partition between a client and a server
-- (a Redis, an HTTP server) without touching either.
--
--   local proxy = require "tcp_proxy"
--   local p = proxy.start("127.0.0.1", redis_port)   -- inside sprun.run
--   connect to 127.0.0.1:p.port ...
--   p:set("drop")                -- bytes are read and thrown away
--   p:set("delay", 300)          -- each chunk waits 300 ms
--   p:set("pass")                -- back to normal
--   p:cut()                      -- closes every connection open now
--   p:close()
--
-- p.connections counts the connections accepted, p.dropped the bytes
-- thrown away. The rule: each direction of a connection is a task of its
-- own, and closing either side closes both, so that nothing is left when
-- the client or the server goes.
local sprun = require "sprun"

local _M = {}

local Proxy = {}
Proxy.__index = Proxy

-- One direction: reads from `from`, writes to `to` as the mode says.
local function pump(p, from, to)
  while true do
    local data = from:read()
    if data == nil then
      break
    end
    if p.mode == "drop" then
      p.dropped = p.dropped + #data
    else
      if p.mode == "delay" then
        sprun.sleep(p.delay_ms)
      end
      if not to:write(data) then
        break
      end
    end
  end
  from:close()
  to:close()
end

function _M.start(host, port)
  local p = setmetatable({ mode = "pass", delay_ms = 0, connections = 0,
                           dropped = 0, open = {} }, Proxy)
  p.server = assert(sprun.tcp.listen("127.0.0.1", 0, function(client)
    p.connections = p.connections + 1
    local upstream = sprun.tcp.connect(host, port, { timeout_ms = 2000 })
    if upstream == nil then
      return
    end
    local pair = { client, upstream }
    p.open[pair] = true
    local back = sprun.spawn(pump, p, upstream, client)
    pump(p, client, upstream)
    back:await()
    p.open[pair] = nil
  end))
  p.port = p.server.port
  return p
end

-- mode: "pass", "drop" or "delay" (with ms).
function Proxy:set(mode, ms)
  assert(mode == "pass" or mode == "drop" or mode == "delay", mode)
  self.mode, self.delay_ms = mode, ms or 0
end

-- Closes every connection open now (both sides).
function Proxy:cut()
  for pair in pairs(self.open) do
    pair[1]:close()
    pair[2]:close()
  end
end

function Proxy:close()
  self:cut()
  self.server:close()
end

return _M
