-- Reference model of the retry policy, in plain Lua, written from
-- DESIGN.md (sprun.retry_policy) and the comments of sprun.h and
-- runtime/core/retry.c.
--
-- Rules:
--  * should_retry(attempt): attempt < max_attempts;
--  * the delay after attempt n starts from backoff_ms[n] (past the end the
--    last value repeats) or base_backoff_ms * multiplier^(n - 1); it is
--    capped at max_backoff_ms, spread by the jitter mode, clamped to
--    [0, max_backoff_ms] and floored to whole ms:
--      true (proportional): uniform over d - d*f .. d + d*f
--      "full":  uniform over [0, d]
--      "equal": d/2 + uniform over [0, d/2]
--      "decorrelated": uniform over [first base, previous * 3], capped,
--        where previous is the last such delay (before flooring), and
--        starts again from the first base at attempt 1 (and at seeding);
--  * every jittered delay draws one number from xoshiro256** seeded by
--    splitmix64(seed) (the generator named in sprun.h), as the top 53 bits
--    of the next output times 2^-53; without jitter nothing is drawn;
--  * retry_for_error: the error's kind (a string is its own kind, an error
--    object has .kind, anything else is "error") is in retriable_errors;
--    "all" retries any failure; a function decides.
--
-- The formulas are evaluated in the order sprun.h writes them (lo + (hi -
-- lo) * u), so that the model predicts every delay to the millisecond: the
-- floor turns a different rounding in the last bit into a whole ms.
-- bounds() checks the same delay against the ranges alone.

local ffi = require "ffi"
local bit = require "bit"

local bxor, rshift, lshift, rol = bit.bxor, bit.rshift, bit.lshift, bit.rol
local floor = math.floor
local pow = math.pow
local tonumber = tonumber

local U64 = ffi.typeof("uint64_t")
local GOLDEN = 0x9e3779b97f4a7c15ULL
local MIX1 = 0xbf58476d1ce4e5b9ULL
local MIX2 = 0x94d049bb133111ebULL
local TWO_M53 = 2 ^ -53

local M = {}
M.__index = M

local _M = {}

-- splitmix64: returns the new state and the output.
local function splitmix64(x)
  x = x + GOLDEN
  local z = x
  z = bxor(z, rshift(z, 30)) * MIX1
  z = bxor(z, rshift(z, 27)) * MIX2
  return x, bxor(z, rshift(z, 31))
end
_M.splitmix64 = splitmix64

-- o: the options in effect (retry_policy config(): defaults filled in and
-- the seed chosen).
function _M.new(o)
  local m = setmetatable({
    max_attempts = o.max_attempts,
    backoff = o.backoff,
    list = o.backoff_ms,
    base = o.base_backoff_ms,
    multiplier = o.multiplier,
    cap = o.max_backoff_ms,
    jitter = o.jitter,
    factor = o.jitter_factor,
    retriable = o.retriable_errors,
  }, M)
  if type(m.retriable) == "table" then
    local set = {}
    for _, k in ipairs(m.retriable) do
      set[k] = true
    end
    m.retriable = set
  end
  m:seed(o.seed)
  return m
end

function M:seed(seed)
  local x = U64(seed)
  local s = {}
  for i = 1, 4 do
    x, s[i] = splitmix64(x)
  end
  self.s0, self.s1, self.s2, self.s3 = s[1], s[2], s[3], s[4]
  self.previous = self:first_base()
end

function M:first_base()
  if self.backoff == "list" then
    return self.list[1]
  end
  return self.base
end

-- xoshiro256**: the next output as a uint64 cdata.
function M:next64()
  local s0, s1, s2, s3 = self.s0, self.s1, self.s2, self.s3
  local result = rol(s1 * 5, 7) * 9
  local t = lshift(s1, 17)
  s2 = bxor(s2, s0)
  s3 = bxor(s3, s1)
  s1 = bxor(s1, s2)
  s0 = bxor(s0, s3)
  s2 = bxor(s2, t)
  s3 = rol(s3, 45)
  self.s0, self.s1, self.s2, self.s3 = s0, s1, s2, s3
  return result
end

function M:random()
  return tonumber(rshift(self:next64(), 11)) * TWO_M53
end

function M:should_retry(attempt)
  return attempt < self.max_attempts
end

-- The delay before any jitter, capped.
function M:base_delay(attempt)
  local d
  if self.backoff == "list" then
    local list = self.list
    d = list[attempt <= #list and attempt or #list]
  elseif self.base == 0 then
    d = 0
  else
    d = self.base * pow(self.multiplier, attempt - 1)
  end
  if d > self.cap then
    d = self.cap
  end
  return d
end

-- Returns the delay and the capped base delay it was spread from.
function M:backoff_for_attempt(attempt)
  local cap, jitter = self.cap, self.jitter
  local base = self:base_delay(attempt)
  local d = base
  if jitter == true then
    local lo = d - d * self.factor
    local hi = d + d * self.factor
    d = lo + (hi - lo) * self:random()
  elseif jitter == "full" then
    d = d * self:random()
  elseif jitter == "equal" then
    d = d / 2 + d / 2 * self:random()
  elseif jitter == "decorrelated" then
    local lo = self:first_base()
    if attempt == 1 then
      self.previous = lo
    end
    local hi = self.previous * 3
    d = lo + (hi - lo) * self:random()
    if d > cap then
      d = cap
    end
    self.previous = d
  end
  if not (d >= 0) then
    d = 0
  end
  if d > cap then
    d = cap
  end
  return floor(d), base
end

-- Whether `d`, a delay given for the capped base delay `base`, is in the
-- range its mode allows (1 ms of slack at each end for rounding); nil or
-- a description of the range broken.
function M:bounds(d, base)
  local cap = self.cap
  if d ~= floor(d) or d < 0 or d > cap then
    return "a whole number of ms in [0, max_backoff_ms]"
  end
  local jitter = self.jitter
  local lo, hi
  if jitter == false then
    lo, hi = floor(base), floor(base)
  elseif jitter == true then
    lo, hi = base * (1 - self.factor) - 1, base * (1 + self.factor)
  elseif jitter == "full" then
    lo, hi = 0, base
  elseif jitter == "equal" then
    lo, hi = base / 2 - 1, base
  else
    return nil
  end
  if d < lo or d > hi then
    return string.format("in [%s, %s]", lo, hi)
  end
  return nil
end

function M:retry_for_error(err, kind)
  local r = self.retriable
  if r == "all" then
    return true
  elseif type(r) == "function" then
    return not not r(err)
  end
  return r[kind] == true
end

return _M
