-- require "sprun.dns": name lookups (lua/sprun/io/dns.lua).
return require "sprun.io.dns"
