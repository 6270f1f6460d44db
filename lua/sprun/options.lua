-- Option tables and the errors they give (internal).
--
-- A parser checks a table of options against a spec and returns a new
-- table with every option, defaults filled in. What is wrong is first a
-- value, an option error: the function it was given to, the path of keys
-- from the top of the options to the bad one, and either the rule broken
-- and what was given, or the unknown key and the names it could have
-- meant. The text is made from that value at the edge, and only there:
--
--   circuit_breaker.start_link: option 'failure_threshold' must be an
--   integer >= 1, got -3
--   pipeline.new: option 'retry.max_attempts' must be an integer >= 1,
--   got 0
--   policies.lua: pipelines.api.retry.max_attempts must be ..., got 0
--
-- The first two are message(e); policy files render the third themselves
-- from the same value. A module that builds its objects from another's
-- options (a pipeline makes a breaker from its `breaker` table, a policy
-- file makes everything) runs the constructor under capture(): the option
-- errors raised inside come back as values, with the caller's path in
-- front, and no message is ever parsed.
--
-- The trap: misuse is reported at the user's line. A parser raises at the
-- level of the caller of the API function that called it, so it must be
-- called straight from that function (never as a tail call, which would
-- drop the function's frame): 1 is raise(), 2 the parser, 3 the API
-- function, 4 the user.

local check = require "sprun.check"
local tables = require "sprun.tables"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local error = error
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local floor = math.floor
local max = math.max
local format = string.format
local sub = string.sub
local concat = table.concat
local keys_in_order = tables.keys_in_order
local describe = check.describe
local distance = check.distance
local expect_integer = check.expect_integer
local expect_number = check.expect_number

local _M = {}

--- Option errors --------------------------------------------------------

-- { fname, path = { key, ... }, rule =, got = } for a value that breaks a
-- rule ("must be an integer >= 1", got "0"; got is nil when there is
-- nothing to show), or { fname, path, key =, mean =, valid = } for an
-- unknown key at `path` (mean: the closest valid name, or nil; valid: the
-- valid names). A path element is a key, or a label naming part of one
-- ("window.size", "backoff_ms[2]", "[1]").
local OptionError = {}
OptionError.__index = OptionError

function _M.is_error(e)
  return getmetatable(e) == OptionError
end

-- A value error at `path`.
function _M.error(path, rule, got)
  return setmetatable({ path = path, rule = rule, got = got }, OptionError)
end

local function unknown_error(path, key, mean, valid)
  return setmetatable({ path = path, key = key, mean = mean, valid = valid },
                      OptionError)
end

local function path_plus(path, key)
  local p = {}
  for i = 1, #path do
    p[i] = path[i]
  end
  p[#p + 1] = key
  return p
end
_M.path_plus = path_plus

-- A copy of `e` at `prefix` + its path.
local function prefixed(prefix, e)
  if #prefix == 0 then
    return e
  end
  local out = {}
  for k, v in each_key, e do
    out[k] = v
  end
  local path = {}
  for i = 1, #prefix do
    path[i] = prefix[i]
  end
  for i = 1, #e.path do
    path[#path + 1] = e.path[i]
  end
  out.path = path
  return setmetatable(out, OptionError)
end

-- "a.b[1].c"
function _M.path_text(path)
  local out = ""
  for i = 1, #path do
    local s = tostring(path[i])
    if sub(s, 1, 1) == "[" or out == "" then
      out = out .. s
    else
      out = out .. "." .. s
    end
  end
  return out
end
local path_text = _M.path_text

-- How an unknown key is named: 'k', or [1] for a key that is no string.
function _M.key_text(key)
  if type(key) == "string" then
    return "'" .. key .. "'"
  end
  return "[" .. describe(key) .. "]"
end
local key_text = _M.key_text

-- The message of an option error as an API function states it.
function _M.message(e, fname)
  fname = fname or e.fname
  local p = path_text(e.path)
  if e.rule == nil then
    local key = key_text(e.key)
    if p ~= "" then
      key = type(e.key) == "string" and "'" .. p .. "." .. e.key .. "'"
            or "'" .. p .. key .. "'"
    end
    if e.mean then
      return format("%s: unknown option %s (did you mean '%s'?)", fname, key,
                    (p == "" and "" or p .. ".") .. e.mean)
    end
    return format("%s: unknown option %s (valid options: %s)", fname, key,
                  concat(e.valid, ", "))
  end
  local got = e.got and ", got " .. e.got or ""
  if p == "" then
    return format("%s: options %s%s", fname, e.rule, got)
  end
  return format("%s: option '%s' %s%s", fname, p, e.rule, got)
end

--- Raising and capturing ---------------------------------------------------

-- Inside capture(), option errors are raised as values; elsewhere as
-- their message. A count, for captures inside captures.
local capturing = 0

-- Raises `e` for function `fname` (see the trap above for the level).
local function raise(fname, e)
  if e.fname == nil then
    e.fname = fname
  end
  if capturing > 0 then
    error(e, 0)
  end
  error(_M.message(e), 4)
end

-- For API functions with checks of their own beyond a parser's: raises
-- a value error at the option `path` (a key, or a list of keys) as a
-- parser would. Call it straight from the API function.
function _M.fail(fname, path, rule, got)
  if type(path) ~= "table" then
    path = { path }
  end
  raise(fname, _M.error(path, rule, got))
end

local function capture_done(prefix, ok, ...)
  capturing = capturing - 1
  if ok then
    return true, ...
  end
  local e = ...
  if getmetatable(e) == OptionError then
    return false, prefixed(prefix, e)
  end
  error(e, 0)
end

-- Calls fn(...) with option errors raised as values: true and fn's
-- values, or false and the option error, `prefix` (a path) put in front
-- of its own. Any other error goes on up as it was.
function _M.capture(prefix, fn, ...)
  capturing = capturing + 1
  return capture_done(prefix, pcall(fn, ...))
end

-- For code that runs under capture() (it builds objects from options of
-- its own, as pipelines and policy files do): raises a value error at
-- `path`, to be caught by that capture.
function _M.throw(path, rule, got)
  error(_M.error(path, rule, got), 0)
end

local function nested_done(ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

-- Under capture() too: fn(...)'s values; an option error it raises goes
-- on up with `path` in front of its own path.
function _M.nested(path, fn, ...)
  return nested_done(_M.capture(path, fn, ...))
end

--- Rules ---------------------------------------------------------------

-- "a", "b" or "c"
local function alternatives(values)
  local shown = {}
  for i = 1, #values do
    shown[i] = describe(values[i])
  end
  if #shown == 1 then
    return shown[1]
  end
  return concat(shown, ", ", 1, #shown - 1) .. " or " .. shown[#shown]
end

local expect = {}

function expect.integer(v, s)
  return expect_integer(v, s.min, s.limit)
end

function expect.number(v, s)
  return expect_number(v, s.min, s.max, s.limit)
end

function expect.string(v)
  if type(v) == "string" and v ~= "" then
    return nil
  end
  return "must be a non-empty string"
end

expect["function"] = function(v)
  if type(v) == "function" then
    return nil
  end
  return "must be a function"
end

function expect.choice(v, s)
  local values = s.values
  for i = 1, #values do
    if v == values[i] then
      return nil
    end
  end
  return "must be " .. alternatives(values)
end

-- The closest of `names` to `key` within a few edits, or nil.
local function closest(key, names)
  if type(key) ~= "string" then
    return nil
  end
  local best, best_d
  for i = 1, #names do
    local d = distance(key, names[i])
    if d <= max(2, floor(#names[i] / 3)) and (best_d == nil or d < best_d)
    then
      best, best_d = names[i], d
    end
  end
  return best
end


local NONE = {}

-- Checks opts against the spec: the parsed table, or nil and the option
-- error.
local function parse(names, spec, any_required, validate, opts)
  if opts == nil and not any_required then
    opts = {}
  end
  if type(opts) ~= "table" then
    return nil, _M.error({}, "must be a table", describe(opts))
  end
  -- Only options with an unknown key pay for the sort that names the
  -- first of them.
  local unknown = false
  for k in each_key, opts do
    if spec[k] == nil then
      unknown = true
      break
    end
  end
  local given = unknown and keys_in_order(opts) or NONE
  for i = 1, #given do
    local k = given[i]
    if spec[k] == nil then
      local mean = closest(k, names)
      return nil, unknown_error({}, k, mean, mean == nil and names or nil)
    end
  end
  local out = {}
  for i = 1, #names do
    local k = names[i]
    local s, v = spec[k], opts[k]
    if v == nil and not s.required then
      out[k] = s.default
    else
      local expectation, label, got
      if s.check then
        expectation, label, got = s.check(v)
      else
        expectation = expect[s[1]](v, s)
      end
      if expectation ~= nil then
        return nil, _M.error({ label or k }, expectation, got or describe(v))
      end
      out[k] = v
    end
  end
  if validate then
    local key, rule, got = validate(out, opts)
    if key ~= nil then
      return nil, _M.error({ key }, rule, got)
    end
  end
  return out
end

-- Returns parse(opts), which checks a table of options against `spec`
-- and returns a new table with every option, defaults filled in, or
-- raises the option error (see raise). `spec` maps each option name to
-- { kind, required =, default =, ... } where kind is "integer" (min,
-- limit), "number" (min, max or limit), "string", "function" or "choice"
-- (values); or to { check = fn } where fn(v) returns nil when v is fine,
-- else the rule and, for a part of v, the label of that part and the text
-- to show after "got". validate(parsed, opts), if given, checks the
-- options together: nil, or the key, the rule and what was got (or nil).
--
-- Bounds come in two flavours. `max` is part of the rule (a probability
-- is between 0 and 1) and is always stated. `limit` is only what the C
-- type can hold (a uint32 count, a double holding whole ms exactly); it
-- is stated only to a value that goes past it, so the usual message stays
-- "must be an integer >= 1".
function _M.parser(fname, spec, validate)
  local names = keys_in_order(spec)
  local any_required = false
  for _, s in each_key, spec do
    any_required = any_required or s.required == true
  end
  return function(opts)
    local out, e = parse(names, spec, any_required, validate, opts)
    if out == nil then
      raise(fname, e)
    end
    return out
  end
end

--- Memo -------------------------------------------------------------------

-- What an API function built from its options (a retry policy from the
-- table literal the seed's call form writes at every call), kept for the
-- next call whose options (or none: nil) hold the same: key for key, and
-- for a list (backoff_ms) item for item. Only flat tables are kept, of
-- values and lists of values; anything else is never found, so it is
-- parsed (and checked) every time. The snapshot is a copy, so a table
-- changed between calls no longer matches. The API function looks up, and on a miss
-- parses (raising at its caller's line, see above), builds and stores:
--
--   local v = memo_get(m, opts)
--   if v == nil then v = build(parse(opts)); memo_put(m, opts, v) end

local COUNT = {} -- the snapshot's key count, under a key no option has

-- A copy of list t if it holds values only (keys 1..n), else nil.
local function flat_copy(t)
  local out, n = {}, 0
  for k, v in each_key, t do
    if type(k) ~= "number" or type(v) == "table" then
      return nil
    end
    out[k] = v
    n = n + 1
  end
  if n ~= #t then
    return nil
  end
  out[COUNT] = n
  return out
end

local function same_list(t, snap)
  local n = 0
  for k, v in each_key, t do
    if snap[k] ~= v then
      return false
    end
    n = n + 1
  end
  return n == snap[COUNT]
end

local function matches(opts, snap)
  local n = 0
  for k, v in each_key, opts do
    local sv = snap[k]
    if sv ~= v then
      if type(v) ~= "table" or type(sv) ~= "table"
         or not same_list(v, sv) then
        return false
      end
    end
    n = n + 1
  end
  return n == snap[COUNT]
end

-- A memo of `size` entries (replaced in turn).
function _M.memo(size)
  return { size = size, next = 1, snaps = {}, values = {}, last = 1 }
end

-- The value stored for options holding what `opts` holds, or nil.
function _M.memo_get(m, opts)
  if type(opts) ~= "table" then
    if opts == nil then
      return m.none
    end
    return nil
  end
  local snaps = m.snaps
  local last = m.last
  local snap = snaps[last]
  if snap ~= nil and matches(opts, snap) then
    return m.values[last]
  end
  for i = 1, #snaps do
    snap = snaps[i]
    if i ~= last and matches(opts, snap) then
      m.last = i
      return m.values[i]
    end
  end
  return nil
end

-- Stores `value` for what `opts` holds now (nothing if it is not flat).
function _M.memo_put(m, opts, value)
  if type(opts) ~= "table" then
    if opts == nil then
      m.none = value
    end
    return
  end
  local snap, n = {}, 0
  for k, v in each_key, opts do
    if type(v) == "table" then
      v = flat_copy(v)
      if v == nil then
        return
      end
    end
    snap[k] = v
    n = n + 1
  end
  snap[COUNT] = n
  local i = m.next
  m.snaps[i], m.values[i] = snap, value
  m.last = i
  m.next = i % m.size + 1
end

return _M
