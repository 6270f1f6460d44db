-- require "sprun.redis": Redis connections (lua/sprun/io/redis.lua).
return require "sprun.io.redis"
