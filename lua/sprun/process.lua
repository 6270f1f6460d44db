-- require "sprun.process": child processes (lua/sprun/io/process.lua).
return require "sprun.io.process"
