-- Small table helpers the modules share (internal): a vararg as a table
-- that keeps its count, a shallow copy, and keys in a stable order.
--
-- The trap: pairs() order is not stable (LuaJIT seeds its string hashes
-- per process), so anything shown to a user, compared by a test or
-- written to a file walks keys_in_order(), never pairs() alone.
--
-- Every module walks tables with `for k, v in each_key, t` (each_key =
-- next), never `pairs(t)` or `next, t` by those names. The parser
-- compiles a loop over `pairs` or `next` to ITERN, and the LuaJIT 2.1
-- of Debian 12 (2.1.0~beta3+git20220320) can end such a loop early once
-- its trace is blacklisted (LuaJIT issue #827, fixed upstream later):
-- options then lose keys and tables encode as {}. Under another name
-- the loop calls next itself, which is never wrong. lint_spec holds
-- every file of lua/sprun to it.

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local select = select
local sort = table.sort

local _M = {}

-- { n = select("#", ...), ... }: nil values keep their place.
function _M.pack(...)
  return { n = select("#", ...), ... }
end

-- A shallow copy of t.
function _M.copy(t)
  local out = {}
  for k, v in each_key, t do
    out[k] = v
  end
  return out
end

local function key_before(a, b)
  local ta, tb = type(a), type(b)
  if ta == tb and (ta == "string" or ta == "number") then
    return a < b
  end
  return ta < tb
end

-- The keys of t: strings and numbers in order, then the others by type.
function _M.keys_in_order(t)
  local keys = {}
  for k in each_key, t do
    keys[#keys + 1] = k
  end
  sort(keys, key_before)
  return keys
end

return _M
