-- require "sprun.http": HTTP requests and clients (lua/sprun/io/http.lua).
return require "sprun.io.http"
