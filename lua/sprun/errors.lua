-- Error values of sprun. An error is either a string kind ("timeout") or an
-- error object made by error(kind, message, details, cause): a table with
-- those four fields that prints as "kind: message". kind() reads the kind
-- of either form, so code that handles errors never has to know which one
-- it was given.

local check = require "sprun.check"
local tables = require "sprun.tables"

local type = type
local pcall = pcall
local each_key = next -- never `pairs` in a loop: see tables.lua
local tostring = tostring
local getmetatable = getmetatable
local setmetatable = setmetatable
local concat = table.concat

local _M = {
  CIRCUIT_OPEN = "circuit_open",
  TIMEOUT = "timeout",
  TASK_CRASHED = "task_crashed",
  CANCELLED = "cancelled",
  RETRIES_EXHAUSTED = "retries_exhausted",
  INVALID_ARGUMENT = "invalid_argument",
}

-- Every error kind sprun itself produces (and Snakepit's two that its
-- default retriable_errors name). retriable_errors naming a kind one or
-- two edits from one of these gets a warning (check.near_miss).
_M.KINDS = {
  "address_in_use", "address_not_available", "bad_reply", "bad_request",
  "bad_response", "bulkhead_full", "cancelled", "capacity_reached",
  "circuit_open", "closed", "connect_failed", "connect_timeout",
  "connection_closed", "connection_refused", "connection_reset", "dns_failed",
  "eof", "error", "http_error", "http_failed", "invalid_address",
  "invalid_argument", "io_error", "kill_failed", "limit_exceeded",
  "not_found", "out_of_memory",
  "out_of_range", "poison_request", "policy_error", "pool_failed",
  "pool_saturated", "queue_timeout", "rate_limited", "redis_error",
  "reset",
  "retries_exhausted", "spawn_failed", "stalled", "task_crashed", "timeout", "tls_failed",
  "too_large", "unavailable", "unknown_op", "unreachable", "worker_busy",
  "worker_crash", "worker_error", "write_failed",
}
local known_kinds = {}
for i = 1, #_M.KINDS do
  known_kinds[_M.KINDS[i]] = true
end

-- Warns once if `kind`, named by the user as an error kind to match
-- (`where` says where), is a near miss of a kind sprun produces.
function _M.check_kind_name(where, kind)
  check.near_miss(where, kind, "an error kind sprun produces", known_kinds,
                  _M.KINDS)
end

local mt = {}

function mt.__tostring(e)
  if e.message == nil then
    return e.kind
  end
  return e.kind .. ": " .. e.message
end

function _M.error(kind, message, details, cause)
  if type(kind) ~= "string" or kind == "" then
    check.arg_error("errors.error", "kind", "must be a non-empty string", kind)
  end
  if message ~= nil and type(message) ~= "string" then
    check.arg_error("errors.error", "message", "must be a string or nil",
                    message)
  end
  return setmetatable({
    kind = kind, message = message, details = details, cause = cause,
  }, mt)
end

function _M.is_error(e)
  return getmetatable(e) == mt
end

function _M.kind(e)
  if type(e) == "string" then
    return e
  end
  if getmetatable(e) == mt then
    return e.kind
  end
  return "error"
end

-- A plain table raised as an error (error({ code = 42 })), shown by its
-- fields, keys in order: { code = 42 }. Nested tables to `depth`, at most
-- MAX_FIELDS fields each.
local MAX_FIELDS = 10

local function fields(t, depth)
  if depth <= 0 then
    return "{...}"
  end
  local keys = tables.keys_in_order(t)
  local out = {}
  for i = 1, #keys do
    if i > MAX_FIELDS then
      out[#out + 1] = "..."
      break
    end
    local k, v = keys[i], t[keys[i]]
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k
                or "[" .. check.describe(k) .. "]"
    local shown
    if type(v) == "table" and getmetatable(v) == nil then
      shown = fields(v, depth - 1)
    else
      shown = check.describe(v)
    end
    out[#out + 1] = key .. " = " .. shown
  end
  if #out == 0 then
    return "{}"
  end
  return "{ " .. concat(out, ", ") .. " }"
end

-- tostring(v) for an error value of any kind, never raising: a
-- __tostring that raises or returns something other than a string must
-- not turn one failure into a failure of whoever reports it. A plain
-- table shows its fields, not its address.
local function text(v)
  if type(v) == "table" and getmetatable(v) == nil then
    return fields(v, 2)
  end
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then
    return s
  end
  return "(error object is a " .. type(v) .. " value)"
end
_M.text = text

-- text(v) on one line (a log line, a warning).
function _M.one_line(v)
  return (text(v):gsub("%s*\n%s*", " "))
end

-- An error value as the sprun executable prints it: a string or a number
-- as it is, an object through its __tostring, a plain table by its
-- fields, any other value named by its type (an address says nothing).
-- Never raises.
function _M.message(v)
  local t = type(v)
  if t == "string" or t == "number" then
    return tostring(v)
  end
  local m = getmetatable(v)
  if t == "table" and m == nil then
    return text(v)
  end
  if type(m) == "table" and m.__tostring then
    return text(v)
  end
  return "(error object is a " .. t .. " value)"
end

-- A raised value as an error object: error objects stay as they are,
-- anything else becomes kind "error" with the value in details.
function _M.raised(e)
  if getmetatable(e) == mt then
    return e
  end
  return _M.error("error", text(e), { value = e })
end

-- The error object `err` with details[k1] = v1 and details[k2] = v2, on a
-- copy (every field, and its details table): the same error object may
-- stand for many failures (a constant an operation returns every time, a
-- breaker's one circuit_open error), and changing it would change them
-- all. Details that are not a table are kept as details.value. Any other
-- error value is returned as it is.
function _M.with_details(err, k1, v1, k2, v2)
  if getmetatable(err) ~= mt then
    return err
  end
  local copy = {}
  for k, v in each_key, err do
    copy[k] = v
  end
  local d = {}
  if type(err.details) == "table" then
    for k, v in each_key, err.details do
      d[k] = v
    end
  elseif err.details ~= nil then
    d.value = err.details
  end
  d[k1] = v1
  if k2 ~= nil then
    d[k2] = v2
  end
  copy.details = d
  return setmetatable(copy, mt)
end

-- The kinds the SP_E* codes of the C core stand for, built on first use so
-- that error objects work without the C core.
local code_kinds

-- An error object for a negative return code of the C core.
function _M.from_code(code)
  local sp = require "sprun.ffi"
  if code_kinds == nil then
    code_kinds = {
      [sp.SP_EINVAL] = _M.INVALID_ARGUMENT,
      [sp.SP_ENOMEM] = "out_of_memory",
      [sp.SP_ECIRCUITOPEN] = _M.CIRCUIT_OPEN,
      [sp.SP_ETIMEDOUT] = _M.TIMEOUT,
      [sp.SP_ECANCELED] = _M.CANCELLED,
      [sp.SP_ENOENT] = "not_found",
      [sp.SP_ERANGE] = "out_of_range",
      [sp.SP_EFULL] = "capacity_reached",
    }
  end
  local C, string = sp.C, sp.ffi.string
  return _M.error(code_kinds[code] or "error", string(C.sp_strerror(code)),
                  { code = code, name = string(C.sp_err_name(code)) })
end

return _M
