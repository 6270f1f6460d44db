-- A small PNG reader for the specs (8-bit RGB or RGBA, not interlaced:
-- what Chromium's screenshots are), on zlib through the FFI.
--
--   local img = png.read(path)       -- or nil, message
--   img.width, img.height, img:rgb(x, y) -> r, g, b   (x, y from 0)
--   png.colours(img) -> the number of distinct colours, and a set of them
--                       as "#rrggbb" -> pixel count
local ffi = require "ffi"
local bit = require "bit"

local band, bor, lshift = bit.band, bit.bor, bit.lshift
local byte, sub, format = string.byte, string.sub, string.format
local abs = math.abs

pcall(ffi.cdef, [[
int uncompress(uint8_t *dest, unsigned long *destLen, const uint8_t *source,
               unsigned long sourceLen);
]])
local z = ffi.load("z")

local _M = {}

local function u32(s, i)
  local a, b, c, d = byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end

local Image = {}
Image.__index = Image

function Image:rgb(x, y)
  local p = self.px + y * self.stride + x * self.bpp
  return p[0], p[1], p[2]
end

function _M.read(path)
  local f = io.open(path, "rb")
  if not f then
    return nil, "cannot open " .. path
  end
  local s = f:read("*a")
  f:close()
  if sub(s, 1, 8) ~= "\137PNG\r\n\26\n" then
    return nil, path .. " is not a PNG file"
  end
  local i, w, h, depth, ctype, interlace = 9, nil, nil, nil, nil, nil
  local idat = {}
  while i + 8 <= #s do
    local len, typ = u32(s, i), sub(s, i + 4, i + 7)
    local data = sub(s, i + 8, i + 7 + len)
    if typ == "IHDR" then
      w, h = u32(data, 1), u32(data, 5)
      depth, ctype, interlace = byte(data, 9), byte(data, 10), byte(data, 13)
    elseif typ == "IDAT" then
      idat[#idat + 1] = data
    elseif typ == "IEND" then
      break
    end
    i = i + 12 + len
  end
  if not w then
    return nil, path .. ": no IHDR chunk"
  end
  if depth ~= 8 or (ctype ~= 2 and ctype ~= 6) or interlace ~= 0 then
    return nil, format("%s: depth %d, colour type %d, interlace %d: only "
                       .. "8-bit RGB(A), not interlaced, is read", path,
                       depth, ctype, interlace)
  end
  local bpp = ctype == 6 and 4 or 3
  local stride = w * bpp
  local raw_len = h * (stride + 1)
  local raw = ffi.new("uint8_t[?]", raw_len)
  local out_len = ffi.new("unsigned long[1]", raw_len)
  local src = table.concat(idat)
  local rc = z.uncompress(raw, out_len, src, #src)
  if rc ~= 0 or out_len[0] ~= raw_len then
    return nil, format("%s: inflate failed (zlib %d, %d of %d bytes)", path,
                       rc, tonumber(out_len[0]), raw_len)
  end
  -- Undo each row's filter.
  local px = ffi.new("uint8_t[?]", h * stride)
  for y = 0, h - 1 do
    local filter = raw[y * (stride + 1)]
    local line = raw + y * (stride + 1) + 1
    local cur = px + y * stride
    local prev = y > 0 and px + (y - 1) * stride or nil
    for x = 0, stride - 1 do
      local a = x >= bpp and cur[x - bpp] or 0
      local b = prev and prev[x] or 0
      local c = (prev and x >= bpp) and prev[x - bpp] or 0
      local v = line[x]
      if filter == 1 then
        v = v + a
      elseif filter == 2 then
        v = v + b
      elseif filter == 3 then
        v = v + bit.rshift(a + b, 1)
      elseif filter == 4 then
        local p = a + b - c
        local pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        if pa <= pb and pa <= pc then
          v = v + a
        elseif pb <= pc then
          v = v + b
        else
          v = v + c
        end
      elseif filter ~= 0 then
        return nil, format("%s: row %d has filter %d", path, y, filter)
      end
      cur[x] = band(v, 255)
    end
  end
  return setmetatable({ width = w, height = h, bpp = bpp, stride = stride,
                        px = px, keep = raw }, Image)
end

function _M.colours(img)
  local set, n = {}, 0
  for y = 0, img.height - 1 do
    for x = 0, img.width - 1 do
      local r, g, b = img:rgb(x, y)
      local key = bor(lshift(r, 16), lshift(g, 8), b)
      local c = set[key]
      if c == nil then
        n = n + 1
        set[key] = 1
      else
        set[key] = c + 1
      end
    end
  end
  local named = {}
  for k, c in pairs(set) do
    named[format("#%06x", k)] = c
  end
  return n, named
end

return _M
