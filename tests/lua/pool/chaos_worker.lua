-- A worker for pool_chaos_spec (served by sprun.pool.serve): `work`
-- answers with the request's own number and the worker's pid, so that
-- the spec can tell a reply that reached the wrong caller and see every
-- process that served; `hang` never answers in time, so that the pool
-- kills the worker for the request's timeout.
local sprun = require "sprun"
local ffi = require "ffi"
pcall(ffi.cdef, "int getpid(void);")

local pid = ffi.C.getpid()

sprun.pool.serve {
  work = function(a)
    if a.ms and a.ms > 0 then
      sprun.sleep(a.ms)
    end
    return { i = a.i, pid = pid }
  end,
  hang = function(a)
    sprun.sleep(a.ms)
    return { i = a.i, pid = pid }
  end,
}
