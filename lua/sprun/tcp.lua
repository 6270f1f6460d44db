-- require "sprun.tcp": TCP connections and servers (lua/sprun/io/tcp.lua).
return require "sprun.io.tcp"
