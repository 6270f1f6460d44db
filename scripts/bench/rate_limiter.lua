-- The rate limiter's take(), next to the bare operations it is made of: a
-- Lua call, and the FFI call of sp_rate_take with the loop's clock read as
-- take() reads it (clock.lua). take() admitting, take() refusing, and a
-- keyed take with one key and with 10,000 keys taken in turn (each take
-- moves its key to the front of the least-recently-used list).
--
-- As in core.lua, each loop is compiled afresh for its case (`fresh`) and
-- the objects it uses are locals of the loop's function.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"
local sp = require "sprun.ffi"
local clock = require "sprun.clock"

-- A new function from `src`, called with the given values.
local function fresh(src, ...)
  return assert(loadstring(src))(...)
end

print("-- bare operations")
local bare = H.case("bare call of an operation returning at once", 1e7,
                    fresh [[
  local function op() return true end
  return function(n)
    local f = op
    for _ = 1, n do f() end
  end
]])

-- 1e9 per ms with a burst of 1e9: every take is admitted.
local OPEN = { rate = 1e9, per_ms = 1, burst = 1e9 }
local open = sprun.rate_limiter.new(OPEN)
local bare_ffi = H.case("bare sp_rate_take FFI call, loop clock read", 1e7,
                        fresh([[
  local sp, clock, lim = ...
  local C, now = sp.C, clock.now
  return function(n)
    local take, r, s, out = C.sp_rate_take, lim._r, lim._s, lim._out
    for _ = 1, n do take(r, s, 1, now(), out) end
  end
]], sp, clock, open))

print("-- rate_limiter")
local TAKE = [[
  local lim = ...
  return function(n)
    local l = lim
    for _ = 1, n do l:take() end
  end
]]
H.case("take(), admitted", 1e7, fresh(TAKE, open), bare_ffi,
       { over = 5, bytes = 0 })
H.case("take(), admitted, vs the bare Lua call", 1e7, fresh(TAKE, open),
       bare)
H.case("take(), admitted, limiter in an upvalue", 1e7, fresh([[
  local lim = ...
  return function(n)
    for _ = 1, n do lim:take() end
  end
]], open), bare_ffi, { over = 5, bytes = 0 })
local shut = sprun.rate_limiter.new { rate = 1e-6, burst = 1 }
assert(shut:take() and not shut:take())
H.case("take(), refused", 1e7, fresh(TAKE, shut), bare_ffi,
       { over = 5, bytes = 0 })
H.case("take(3), admitted", 1e7, fresh([[
  local lim = ...
  return function(n)
    local l = lim
    for _ = 1, n do l:take(3) end
  end
]], open), bare_ffi, { over = 5, bytes = 0 })

print("-- keyed rate_limiter")
local one = sprun.rate_limiter.keyed(OPEN)
H.case("keyed take, 1 key", 1e7, fresh([[
  local kl = ...
  return function(n)
    local l = kl
    for _ = 1, n do l:take("client") end
  end
]], one), bare_ffi, { bytes = 0 })
local many = sprun.rate_limiter.keyed(OPEN)
local keys = {}
for i = 1, 10000 do
  keys[i] = "client-" .. i
  many:take(keys[i])
end
assert(many:stats().keys == 10000)
H.case("keyed take, 10,000 keys in turn", 1e7, fresh([[
  local kl, keys = ...
  return function(n)
    local l, k, m = kl, keys, #keys
    local i = 0
    for _ = 1, n do
      i = i + 1
      if i > m then i = 1 end
      l:take(k[i])
    end
  end
]], many, keys), bare_ffi, { bytes = 0 })
assert(many:stats().keys == 10000 and many:stats().evicted == 0)
