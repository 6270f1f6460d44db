-- Streams as tasks see them (internal): what a child process's stdout and
-- a TCP connection share. A stream object has a `handle` (sprun.core's
-- process or socket), a `token` for its events, an `owner` task, a
-- buffer of chunks read and not yet taken (`buf`), `eof` once the peer
-- ended the stream, `closed` once it was closed here, and a queue of
-- tasks waiting for their writes (`writers`).
--
-- Reading takes what the buffer holds first; a reader that needs more
-- waits in obj:_fill(task), which the stream's module provides (a child's
-- output arrives whether or not anyone reads; a socket reads only while
-- someone waits). A line is what comes before "\n" (a "\r" before it is
-- dropped); at the end of the stream, what is left is returned as the
-- last line, then nil and obj:_end_error().
--
-- The trap: writes complete in the order they were made, after the loop
-- ran, so a writer waits in a queue of its own, apart from readers: the
-- loop's EV_WRITE for the stream's token pops the oldest writer. A write
-- nobody waits for (a process's stdin given as a string) is queued as
-- false.

local core = require "sprun.core"
local kernel = require "sprun.sched.kernel"

local concat = table.concat
local remove = table.remove
local find = string.find
local sub = string.sub
local gsub = string.gsub

local EV_WRITE = core.EV_WRITE
local EV_CLOSED = core.EV_CLOSED

local _M = {}

-- The buffer as one string in buf[1] (or nothing), in place.
local function joined(buf)
  local n = #buf
  if n > 1 then
    buf[1] = concat(buf)
    for i = n, 2, -1 do
      buf[i] = nil
    end
  end
  return buf[1]
end

-- The next line of the buffer without its newline, or what is left once
-- the stream `ended`; nil when neither is there yet.
local function take_line(buf, ended)
  local s = joined(buf)
  if s == nil then
    return nil
  end
  local nl = find(s, "\n", 1, true)
  if nl then
    local rest = sub(s, nl + 1)
    buf[1] = rest ~= "" and rest or nil
    return (gsub(sub(s, 1, nl - 1), "\r$", ""))
  end
  if ended then
    buf[1] = nil
    return s
  end
  return nil
end

-- Everything buffered, taken ("" when nothing is).
function _M.take_all(obj)
  local s = joined(obj.buf) or ""
  obj.buf[1] = nil
  return s
end

-- Up to `max` bytes of the buffer (all of it without max), taken; nil
-- when it is empty.
function _M.take(obj, max)
  local s = joined(obj.buf)
  if s == nil then
    return nil
  end
  if max and #s > max then
    obj.buf[1] = sub(s, max + 1)
    return sub(s, 1, max)
  end
  obj.buf[1] = nil
  return s
end

-- A chunk read from the peer.
function _M.push(obj, data)
  local buf = obj.buf
  buf[#buf + 1] = data
end

-- The next line, waiting as `task` for it if need be (see the top).
function _M.read_line(obj, task)
  while true do
    local ended = obj.eof or obj.closed
    local line = take_line(obj.buf, ended)
    if line then
      return line
    end
    if ended then
      return nil, obj:_end_error()
    end
    obj:_fill(task)
  end
end

-- Writes `data` through obj.handle and waits, as `task`, until the write
-- is done. Returns true, or nil and the libuv error's name and message
-- (the write could not start, or it failed).
function _M.write(obj, task, data)
  local ok, ename, emsg = obj.handle:write(data, obj.token)
  if not ok then
    return nil, ename, emsg
  end
  local w = { task = task }
  local writers = obj.writers
  writers[#writers + 1] = w
  while w.result == nil do
    kernel.wait(task)
  end
  local rc = w.result
  if rc ~= 0 then
    return nil, core.uv_err_name(rc), core.uv_strerror(rc)
  end
  return true
end

-- A write whose end nobody waits for.
function _M.write_detached(obj, data)
  obj.handle:write(data, obj.token)
  obj.writers[#obj.writers + 1] = false
end

-- The events every stream handles alike: a write done, the handle gone.
-- True if `kind` was one of them.
function _M.event(obj, kind, a)
  if kind == EV_WRITE then
    local w = remove(obj.writers, 1)
    if w then
      w.result = a
      kernel.wake_task(w.task)
    end
    return true
  elseif kind == EV_CLOSED then
    kernel.free_token(obj.token)
    return true
  end
  return false
end

-- Closes the stream here: its handle goes (a child is killed and reaped,
-- a socket closed), its owner no longer holds it, and whoever waits on it
-- looks again. Idempotent.
function _M.close(obj)
  if not obj.closed then
    obj.closed = true
    obj.handle:close()
    kernel.disown(obj.owner, obj)
    kernel.wake(obj)
  end
end

return _M
