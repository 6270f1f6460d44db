-- Argument checking shared by every sprun module (internal): how a value
-- given by the user is shown, what a number or an integer must be, and
-- the checks of arguments that are not options (tables of options are
-- sprun.options' job).
--
-- Misuse raises one error, at the caller's level, that names the function,
-- the argument, what is allowed and what was given:
--
--   retry_policy.should_retry: attempt must be an integer >= 1, got 0
--
-- Every raising function here is meant to be called directly from the API
-- function the user called (never as a tail call), so level 3 is the user's
-- line: 1 is this function, 2 the API function, 3 its caller.

local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local getmetatable = getmetatable
local huge = math.huge
local min = math.min
local byte = string.byte
local format = string.format

local _M = {
  UINT32_MAX = 4294967295,
  -- The largest whole number of ms a double holds exactly.
  MS_MAX = 2 ^ 53,
}

-- The shortest "%.<n>g" text of v, n from `digits` up, that reads back
-- as the same number (a finite v): 1.5, 5e+12, 0.1.
local function shortest(v, digits)
  for n = digits, 17 do
    local s = format("%." .. n .. "g", v)
    if tonumber(s) == v then
      return s
    end
  end
  return format("%.17g", v)
end
_M.shortest = shortest

-- How a value given by the user is shown after "got".
local function describe(v)
  local t = type(v)
  if t == "string" then
    return format("%q", v)
  elseif t == "number" then
    if v ~= v then
      return "nan"
    elseif v == huge then
      return "inf"
    elseif v == -huge then
      return "-inf"
    elseif v % 1 == 0 and v > -1e9 and v < 1e9 then
      return format("%d", v)
    end
    return shortest(v, 1)
  elseif t == "nil" or t == "boolean" then
    return tostring(v)
  end
  return t
end
_M.describe = describe

local function bound(n)
  if n % 1 == 0 then
    return format("%.0f", n)
  end
  return tostring(n)
end

local function is_number(v)
  return type(v) == "number" and v == v
end

-- nil if v is an integer in [lo, limit], else what is expected of it.
local function expect_integer(v, lo, limit)
  if is_number(v) and v % 1 == 0 and v >= lo and v <= limit then
    return nil
  end
  if is_number(v) and v > limit then
    return format("must be an integer between %s and %s", bound(lo),
                  bound(limit))
  end
  return "must be an integer >= " .. bound(lo)
end
_M.expect_integer = expect_integer

-- nil if v is a number in [lo, hi] (hi = the rule's max, or the limit),
-- else what is expected of it.
local function expect_number(v, lo, hi, limit)
  local top = hi or limit or _M.MS_MAX
  if is_number(v) and v >= lo and v <= top then
    return nil
  end
  if hi ~= nil or (is_number(v) and v > top) then
    return format("must be a number between %s and %s", bound(lo), bound(top))
  end
  return "must be a number >= " .. bound(lo)
end
_M.expect_number = expect_number

-- Optimal string alignment distance: edits, with a swap of two neighbours
-- counting as one, so 'failure_treshold' is one edit from the real name.
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do
    d[i] = { [0] = i }
  end
  for j = 1, lb do
    d[0][j] = j
  end
  for i = 1, la do
    local ca = byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local cost = ca == cb and 0 or 1
      local v = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb then
        v = min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end
_M.distance = distance

-- Near misses -------------------------------------------------------------

-- A name that sprun matches against names of its own (an error kind in
-- retriable_errors, an event in telemetry.attach) and that is one or two
-- edits from one of them is most likely that one misspelt: it would
-- never match, silently. near_miss warns about it with one line on
-- stderr; a name of the user's own, further away, stays silent. Each
-- name is looked at once per process (the answer is remembered, for at
-- most NEAR_MAX names), so a check on a hot path costs a table lookup.
local NEAR_MAX = 1024
local near_seen, near_count = {}, 0

-- The known name `name` is a near miss of, or nil. `known` is a set
-- (name -> true) and `list` the same names as a list.
local function near(name, known, list)
  if known[name] then
    return nil
  end
  local best, best_d
  for i = 1, #list do
    local k = list[i]
    local d = distance(name, k)
    if d <= 2 and d <= #k / 3 and (best_d == nil or d < best_d) then
      best, best_d = k, d
    end
  end
  return best
end
_M.near = near

-- Warns once if `name` (a string) is a near miss of a name in `known`:
--   sprun: warning: <where>: "timeot" is not <what> (did you mean
--   "timeout"?)
-- `where` says where the name was given, `what` what sprun has.
function _M.near_miss(where, name, what, known, list)
  local seen = near_seen[where]
  if seen and seen[name] then
    return
  end
  if near_count >= NEAR_MAX then
    near_seen, near_count, seen = {}, 0, nil
  end
  if seen == nil then
    seen = {}
    near_seen[where] = seen
  end
  seen[name], near_count = true, near_count + 1
  local mean = near(name, known, list)
  if mean then
    io.stderr:write(format("sprun: warning: %s: %s is not %s (did you "
                           .. "mean %s?)\n", where, describe(name), what,
                           describe(mean)))
    io.stderr:flush()
  end
end

-- Raises "<fname>: <name> <expectation>, got <v>" at the caller's level.
function _M.arg_error(fname, name, expectation, v)
  error(format("%s: %s %s, got %s", fname, name, expectation, describe(v)), 3)
end

-- The checks of the hot paths: they cost a compare when all is well.

-- The name a method's object usually has, by module, for the hint that a
-- method was called with "." for ":".
local OBJECT_NAMES = {
  circuit_breaker = "cb", health_monitor = "hm", retry_policy = "policy",
  bulkhead = "bulkhead", pipeline = "pipeline", policy = "reg",
  process = "proc", tcp = "conn", ["tcp.server"] = "server", task = "task",
  ["telemetry.prometheus"] = "endpoint", fleet = "f",
}

-- Misuse of a method: raises at the level of its caller. A function or
-- nil given as self is most often obj.method(...) written for
-- obj:method(...), and the message says so.
function _M.self(self, mt, fname, what)
  if getmetatable(self) ~= mt then
    local hint = ""
    if self == nil or type(self) == "function" then
      local module, method = fname:match("^(.*)%.([^.]+)$")
      hint = format(" (did you mean %s:%s(...)?)",
                    OBJECT_NAMES[module] or "obj", method)
    end
    error(fname .. ": self must be " .. what .. ", got " .. describe(self)
          .. hint, 3)
  end
end

function _M.func(fname, name, v)
  if type(v) ~= "function" then
    error(fname .. ": " .. name .. " must be a function, got " .. describe(v),
          3)
  end
end

function _M.integer(fname, name, v, lo, limit)
  if type(v) ~= "number" or v % 1 ~= 0 or v < lo or v > limit then
    error(format("%s: %s %s, got %s", fname, name,
                 expect_integer(v, lo, limit), describe(v)), 3)
  end
end

function _M.string(fname, name, v)
  if type(v) ~= "string" or v == "" then
    error(fname .. ": " .. name .. " must be a non-empty string, got "
          .. describe(v), 3)
  end
end

-- An id used as a table key: a string or a number other than nan.
function _M.id(fname, name, v)
  local t = type(v)
  if t ~= "string" and (t ~= "number" or v ~= v) then
    error(fname .. ": " .. name .. " must be a string or a number, got "
          .. describe(v), 3)
  end
end

return _M
