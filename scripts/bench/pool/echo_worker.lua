-- A sprun Lua worker for scripts/bench/pool.lua: answers "echo" with its
-- args (run as { "build/sprun", "scripts/bench/pool/echo_worker.lua" }).
local sprun = require "sprun"

sprun.pool.serve {
  echo = function(args) return args end,
}
