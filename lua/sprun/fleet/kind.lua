-- What a fleet is, for the modules that take `fleet = f` (breakers,
-- monitors, pools, HTTP clients) without loading sprun.fleet itself.

local getmetatable = getmetatable

local _M = {
  -- The metatable of every fleet (sprun.fleet.connect).
  mt = {},
}

_M.mt.__index = _M.mt

function _M.is_fleet(v)
  return getmetatable(v) == _M.mt
end

-- The check of a `fleet` option (sprun.options).
function _M.check(v)
  if getmetatable(v) ~= _M.mt then
    return "must be a fleet (sprun.fleet.connect)"
  end
end

return _M
