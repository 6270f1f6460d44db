-- sprun.pool.serve(handlers): a sprun script as a pool's worker.
--
--   local sprun = require "sprun"
--   sprun.pool.serve {
--     echo = function(args) return args end,
--     slow = function(args) sprun.sleep(args.ms); return "done" end,
--   }
--
-- It speaks the pool's protocol on the channel the pool gave it (fd 3, or
-- stdin and stdout; SPRUN_CHANNEL and SPRUN_PROTOCOL say which): it sends
-- { ready = true }, then runs each request's handler as a task of its own
-- (so handlers may sleep and wait, and several run at once when the pool's
-- concurrency allows), and answers each with its value, or with the error
-- it returned (nil, err) or raised: an error object keeps its kind,
-- message and details, any other raised value is kind "error". The
-- replies of one turn go out in one write. serve returns when the pool
-- closes the channel, once the handlers that run are done.

local check = require "sprun.check"
local core = require "sprun.core"
local errors = require "sprun.errors"
local kernel = require "sprun.sched.kernel"
local sched = require "sprun.sched"
local tcp = require "sprun.io.tcp"
local protocol = require "sprun.pool.protocol"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local pcall = pcall
local error = error
local tostring = tostring
local concat = table.concat
local getenv = os.getenv

local _M = {}

local HEARTBEAT_OP = "sprun.heartbeat"

local function reply_error(id, e)
  local kind, message, details
  if errors.is_error(e) then
    kind, message, details = e.kind, e.message, e.details
  elseif type(e) == "string" then
    kind = e
  else
    kind, message = "error", errors.text(e)
  end
  local err = { kind = kind, message = message }
  local ok = protocol.encode(details)
  if ok then
    err.details = details
  end
  return { id = id, error = err }
end

-- The reply to one request, as a table to encode.
local function run_handler(fn, id, args)
  local ok, v, e = pcall(fn, args)
  if not ok then
    kernel.reraise_cancel(v)
    return reply_error(id, errors.raised(v))
  end
  if (v == nil or v == false) and e ~= nil then
    return reply_error(id, e)
  end
  return { id = id, ok = v }
end

local function serve_in_task(handlers)
  local framing = getenv("SPRUN_PROTOCOL") or "ndjson"
  local channel = getenv("SPRUN_CHANNEL")
  if channel == nil then
    error("pool.serve: not started by a pool (SPRUN_CHANNEL is not set)", 0)
  end
  local input, output
  if channel == "stdio" then
    -- The channel gets fds 0 and 1 for itself; print and io.write then
    -- go to stderr, which the pool logs.
    io.stdout:flush()
    local in_fd, out_fd = core.stdio_take()
    if in_fd == nil then
      error("pool.serve: cannot take stdin and stdout for the channel: "
            .. tostring(out_fd), 0)
    end
    input = assert(tcp._open_fd(in_fd))
    output = assert(tcp._open_fd(out_fd))
  else
    input = assert(tcp._open_fd(3))
    output = input
  end
  local pending = {}
  local writer = {}
  local running = 0
  local closed = false

  local function push(msg)
    local s, why = protocol.encode(msg)
    if s == nil then
      s = protocol.encode(reply_error(msg.id, errors.error("bad_reply",
        "the handler's value cannot be sent as JSON: " .. why)))
    end
    pending[#pending + 1] = protocol.frame(framing, s)
    kernel.wake(writer)
  end

  -- The writer: what the handlers answered, one write per turn.
  local wtask = sched.spawn(function()
    while true do
      if pending[1] == nil then
        if closed and running == 0 then
          return
        end
        kernel.block(writer, kernel.current())
      else
        local data = concat(pending)
        pending = {}
        local ok = output:write(data)
        if not ok then
          return
        end
      end
    end
  end)

  local function on_message(msg)
    local id, op = msg.id, msg.op
    if type(id) ~= "number" or type(op) ~= "string" then
      io.stderr:write("pool.serve: a message that is not a request: ",
                      tostring(op), "\n")
      if type(id) == "number" then
        push(reply_error(id, errors.error("bad_request",
                                          "a request needs an op")))
      end
      return
    end
    if op == HEARTBEAT_OP then
      return push({ id = id, ok = true })
    end
    local fn = handlers[op]
    if fn == nil then
      local known = {}
      for k in each_key, handlers do
        known[#known + 1] = tostring(k)
      end
      table.sort(known)
      return push(reply_error(id, errors.error("unknown_op", "no handler "
        .. "for " .. check.describe(op) .. " (known: "
        .. concat(known, ", ") .. ")")))
    end
    local args = msg.args
    if args == protocol.null then
      args = nil
    end
    running = running + 1
    sched.spawn(function()
      local r = run_handler(fn, id, args)
      running = running - 1
      push(r)
    end)
  end

  local reader = protocol.reader(framing, on_message,
    function(why, text)
      io.stderr:write("pool.serve: ", why, ": ", text:sub(1, 200), "\n")
    end,
    function(why)
      io.stderr:write("pool.serve: ", why, "\n")
      closed = true
    end)
  push({ ready = true })
  while not closed do
    local data = input:read()
    if data == nil then
      break
    end
    reader:feed(data)
  end
  closed = true
  kernel.wake(writer)
  wtask:await()
  return true
end

function _M.serve(handlers)
  if type(handlers) ~= "table" then
    check.arg_error("pool.serve", "handlers", "must be a table of op = "
                    .. "function", handlers)
  end
  for k, v in each_key, handlers do
    if type(k) ~= "string" or type(v) ~= "function" then
      check.arg_error("pool.serve", "handlers", "must map op names to "
                      .. "functions, got " .. check.describe(k) .. " = ",
                      v)
    end
  end
  kernel.check_caller("pool.serve")
  return sched.in_task(serve_in_task, handlers)
end

return _M
