-- Error values of sprun. An error is either a string kind ("timeout") or an
-- error object made by error(kind, message, details, cause): a table with
-- those four fields that prints as "kind: message". kind() reads the kind
-- of either form, so code that handles errors never has to know which one
-- it was given.

local check = require "sprun.check"

local type = type
local getmetatable = getmetatable
local setmetatable = setmetatable

local _M = {
  CIRCUIT_OPEN = "circuit_open",
  TIMEOUT = "timeout",
  TASK_CRASHED = "task_crashed",
  CANCELLED = "cancelled",
  RETRIES_EXHAUSTED = "retries_exhausted",
  INVALID_ARGUMENT = "invalid_argument",
}

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
