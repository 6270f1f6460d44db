-- A sprun script as a worker of sprun.pool: each handler runs as a task
-- of its own, so it may sleep, run processes and use sockets, and
-- several run at once when the pool's concurrency allows.
--
--   local pool = sprun.pool.start { name = "lua", size = 2,
--     cmd = { "build/sprun", "scripts/pool/worker.lua" }, concurrency = 8 }
--   print(pool:call("add", { 2, 3 }))  --> 5
--
-- A handler returns the reply's value, or nil and an error (its kind,
-- message and details reach the caller); a raised error becomes kind
-- "error". Run by hand, it says that it needs a pool.
local sprun = require "sprun"

sprun.pool.serve {
  add = function(args) return args[1] + args[2] end,
  lookup = function(key)
    local t = { a = 1, b = 2 }
    if t[key] == nil then
      return nil, sprun.error("not_found", "no key " .. tostring(key),
                              { key = key })
    end
    return t[key]
  end,
  -- Waits without blocking the worker's other requests.
  sleep = function(ms) sprun.sleep(ms) return ms end,
  -- Runs a command and answers with its output.
  run = function(argv)
    local r = assert(sprun.process.run(argv))
    return r.stdout
  end,
}
