-- Tasks waiting on I/O objects (internal), part of sched/kernel.lua's
-- API: kernel.block, has_waiters and wake. Installed into the kernel
-- table when it loads (requiring the kernel from here would be a cycle).

local _M = {}

function _M.install(K)
  local wait_or_cancel = K.wait_or_cancel
  local enqueue = K.enqueue
  local WAKE_IO = K.WAKE_IO
  local error = error

  -- I/O objects keep the tasks waiting on them in `obj.waiters`, in the
  -- order they started waiting (a reader and a task waiting for the exit
  -- may wait on one process): block waits as one of them (a cancellation
  -- passes through), wake ends the wait of them all; each checks again what
  -- it waits for.
  local function remove_waiter(obj, task)
    local ws = obj.waiters
    if ws ~= nil then
      for i = #ws, 1, -1 do
        if ws[i] == task then
          table.remove(ws, i)
          break
        end
      end
    end
  end

  -- Waits, as `task`, until obj is woken, the task's timer fires or it is
  -- cancelled (raised). Returns why (WAKE_IO, WAKE_TIMER).
  function K.block(obj, task)
    local ws = obj.waiters
    if ws == nil then
      ws = {}
      obj.waiters = ws
    end
    ws[#ws + 1] = task
    local ok, why = wait_or_cancel(task)
    -- Woken by something else (a timer, a cancellation): stop waiting here.
    remove_waiter(obj, task)
    if not ok then
      error(why, 0)
    end
    return why
  end

  -- Whether a task waits on obj (block).
  function K.has_waiters(obj)
    local ws = obj.waiters
    return ws ~= nil and ws[1] ~= nil
  end

  function K.wake(obj)
    local ws = obj.waiters
    if ws ~= nil and ws[1] ~= nil then
      obj.waiters = nil
      for i = 1, #ws do
        enqueue(ws[i], WAKE_IO)
      end
    end
  end
end

return _M
