-- The generator's random numbers: xoshiro128** seeded through splitmix32,
-- in 32-bit bit operations, so that a seed gives the same sequences on
-- every run and every machine (math.random is not used: its generator
-- and seeding differ between Lua builds).
--
-- prng.new(seed) -> g; g:u32() a uint32 as a number, g:float() in [0, 1),
-- g:int(lo, hi) uniform over lo..hi, g:pick(list), g:chance(p).

local bit = require "bit"

local band, bor, bxor = bit.band, bit.bor, bit.bxor
local lshift, rshift, tobit = bit.lshift, bit.rshift, bit.tobit
local floor = math.floor

local TWO32 = 4294967296

local function rotl(x, k)
  return bor(lshift(x, k), rshift(x, 32 - k))
end

-- a * b mod 2^32 (both int32): 16-bit halves keep every product exact.
local function imul(a, b)
  local alo, ahi = band(a, 0xffff), rshift(a, 16)
  return tobit(alo * b + tobit(ahi * b) * 65536)
end

local function splitmix32(s)
  s = tobit(s + 0x9e3779b9)
  local z = s
  z = imul(bxor(z, rshift(z, 16)), 0x21f0aaad)
  z = imul(bxor(z, rshift(z, 15)), 0x735a2d97)
  return s, bxor(z, rshift(z, 15))
end

local G = {}
G.__index = G

local _M = {}

-- seed: any integer 0 .. 2^53; salt: a small integer that gives another
-- stream for the same seed.
function _M.new(seed, salt)
  local lo = tobit(seed % TWO32)
  local hi = tobit(floor(seed / TWO32) % TWO32)
  local s = bxor(lo, imul(bxor(hi, imul(salt or 0, 0x27d4eb2f)), 0x5bd1e995))
  local g = setmetatable({}, G)
  s, g[1] = splitmix32(s)
  s, g[2] = splitmix32(s)
  s, g[3] = splitmix32(s)
  s, g[4] = splitmix32(s)
  if g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 then
    g[1] = 1
  end
  return g
end

function G:u32()
  local s0, s1, s2, s3 = self[1], self[2], self[3], self[4]
  -- rotl(s1 * 5, 7) * 9, with x * 5 = x + x << 2 and x * 9 = x + x << 3
  local r = rotl(tobit(s1 + lshift(s1, 2)), 7)
  r = tobit(r + lshift(r, 3))
  local t = lshift(s1, 9)
  s2 = bxor(s2, s0)
  s3 = bxor(s3, s1)
  s1 = bxor(s1, s2)
  s0 = bxor(s0, s3)
  s2 = bxor(s2, t)
  s3 = rotl(s3, 11)
  self[1], self[2], self[3], self[4] = s0, s1, s2, s3
  return r % TWO32
end

function G:float()
  return self:u32() / TWO32
end

-- Uniform over the integers lo..hi (hi - lo < 2^32).
function G:int(lo, hi)
  return lo + floor(self:float() * (hi - lo + 1))
end

function G:pick(list)
  return list[1 + floor(self:float() * #list)]
end

function G:chance(p)
  return self:float() < p
end

return _M
