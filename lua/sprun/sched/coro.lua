-- The coroutines tasks run on, reused, and what bulk spawning does to the
-- collector (internal to sprun.sched).
--
-- Each coroutine runs `worker`, a loop of jobs: resumed with a function
-- and its arguments, it calls it, yields DONE with its values, and waits
-- for the next job. A task's coroutine goes back to the pool when its
-- function returned; one that raised is dead, and one left suspended in
-- the middle of a job (a task cancelled before it started, or one that
-- called coroutine.yield itself) is never reused.
--
-- A job is resumed in as (fn, n, a1, a2, a3, args, park): the function,
-- its argument count, the first three arguments, and all of them in
-- `args` when there are more (a fixed arity, so that no table is made for
-- the common calls and the JIT never meets a vararg here). With `park`,
-- the job parks at once, its function and arguments kept on the
-- coroutine's stack, until the scheduler first resumes its task.
--
-- The trap: a coroutine starts with a stack of 40 slots, and a task
-- asleep in a function called from worker's frame (which its eight
-- arguments make large) would double it. The job is therefore called from
-- a small frame of its own (run0 ... runn), through id() so that the
-- frame has no name in a traceback (a task's function is not "fn"), and
-- that last frame is cut from the tracebacks of tasks (traceback below).

local co_create = coroutine.create
local co_yield = coroutine.yield
local traceback = debug.traceback
local getfenv = getfenv
local setfenv = setfenv
local select = select
local unpack = unpack
local ipairs = ipairs
local type = type
local collectgarbage = collectgarbage

local _M = {}

-- What a coroutine yields when its job has returned (a private value: no
-- user code can yield it).
local DONE = {}
_M.DONE = DONE

-- The values of a job that returned none (shared, never written).
local NO_VALUES = { n = 0 }

-- Hands a job's values over to whoever resumed the coroutine: DONE, their
-- count, and the first three, or all of them in a table when there are
-- more. Fixed positions, so that the code that takes them has a fixed
-- arity and compiles. Returns the next job.
local function hand_over(...)
  local n = select("#", ...)
  if n <= 3 then
    return co_yield(DONE, n, ...)
  end
  return co_yield(DONE, n, { ... })
end

-- The values (n, r1, r2, r3) of hand_over as a table for unpack(t, 1, t.n).
function _M.values_of(n, r1, r2, r3)
  if n == 0 then
    return NO_VALUES
  elseif n > 3 then
    r1.n = n
    return r1
  end
  return { n = n, r1, r2, r3 }
end

local function id(f)
  return f
end

-- The body of every coroutine (boot starts it); see the top of this file.
-- The job's values are handed over, and the resume that ends that yield
-- brings the next job: tail calls all round, so a coroutine never grows
-- its stack. `env`, passed along from boot, is the environment the
-- coroutine was made with: a job that replaced it (setfenv(0, t)) does
-- not pass it on.
local worker

local function run0(env, fn)
  return worker(env, hand_over(id(fn)()))
end

local function run1(env, fn, a1)
  return worker(env, hand_over(id(fn)(a1)))
end

local function run2(env, fn, a1, a2)
  return worker(env, hand_over(id(fn)(a1, a2)))
end

local function run3(env, fn, a1, a2, a3)
  return worker(env, hand_over(id(fn)(a1, a2, a3)))
end

local function runn(env, fn, n, args)
  return worker(env, hand_over(id(fn)(unpack(args, 1, n))))
end

worker = function(env, fn, n, a1, a2, a3, args, park)
  if getfenv(0) ~= env then
    setfenv(0, env)
  end
  if park then
    co_yield()
  end
  if n == 0 then
    return run0(env, fn)
  elseif n == 1 then
    return run1(env, fn, a1)
  elseif n == 2 then
    return run2(env, fn, a1, a2)
  elseif n == 3 then
    return run3(env, fn, a1, a2, a3)
  end
  return runn(env, fn, n, args)
end

local function boot(...)
  return worker(getfenv(0), ...)
end

-- Finished coroutines waiting for a job, parked in hand_over's yield.
-- Shared by every loop (a coroutine belongs to no loop); bounded, and
-- trimmed when a loop ends.
local pool = {}
local npool = 0
local POOL_MAX = 1024
local POOL_KEEP = 32

-- A coroutine ready for a job.
function _M.take()
  local n = npool
  if n > 0 then
    local co = pool[n]
    pool[n] = false
    npool = n - 1
    return co
  end
  return co_create(boot)
end

-- Gives back a coroutine whose job returned (it waits in hand_over).
function _M.put(co)
  local n = npool
  if n < POOL_MAX then
    n = n + 1
    pool[n] = co
    npool = n
  end
end

-- Drops all but a few pooled coroutines (when a loop ends).
function _M.trim()
  for i = POOL_KEEP + 1, npool do
    pool[i] = false
  end
  if npool > POOL_KEEP then
    npool = POOL_KEEP
  end
end

-- The frames a job is called from, as a traceback names them.
local JOB_FRAMES = {}
for _, f in ipairs { run0, run1, run2, run3, runn } do
  local info = debug.getinfo(f, "S")
  JOB_FRAMES[info.short_src .. ":" .. info.linedefined] = true
end

-- A traceback cut to what concerns the caller: when the message starts
-- with the position of a frame further down (a misuse error, raised at
-- the caller's level), the frames above it (error, the checker, the API
-- function) are sprun's own, and go.
local function from_caller(tb, msg)
  local where = type(msg) == "string" and msg:match("^([^\n]-:%d+):")
  if not where then
    return tb
  end
  local head, frames = tb:match("^(.-\nstack traceback:)(\n.*)$")
  if not head then
    return tb
  end
  local at = frames:find("\n\t" .. where:gsub("%p", "%%%0") .. ":", 1)
  if at == nil or at == 1 then
    return tb
  end
  return head .. frames:sub(at)
end
_M.from_caller = from_caller

-- The traceback of a task's coroutine: what the task's function ran, as
-- if the function had been the coroutine's own, from the caller of a
-- misuse down (see from_caller).
function _M.traceback(co, msg)
  local tb = from_caller(traceback(co, msg), msg)
  local last = tb:match("\n\t[^\n]*: in function <([^\n]*)>$")
  if last and JOB_FRAMES[last] then
    return (tb:gsub("\n[^\n]*$", ""))
  end
  return tb
end

--- The collector during bulk work ----------------------------------------

-- A task that spawns thousands of tasks without yielding, or a group that
-- runs thousands of children, makes mostly objects that stay alive (the
-- tasks, their coroutines, the results), and the collector, paced by what
-- is allocated, would mark them over and over for little garbage. While
-- such bulk work lasts, the collector's pause is raised (it starts a cycle
-- when the heap has grown BULK_PAUSE percent, not the usual 200): fewer,
-- equally complete cycles. The pause is set back once the tasks of a
-- burst have all had their first run (the ready queue is empty), when the
-- group is done, and when the loop ends, whatever happened: never left
-- raised.
local BULK_SPAWNS = 4096
_M.BULK_SPAWNS = BULK_SPAWNS
local BULK_PAUSE = 1000
local bulk_depth = 0
local saved_pause = nil

function _M.bulk_begin()
  bulk_depth = bulk_depth + 1
  if bulk_depth == 1 then
    local p = collectgarbage("setpause", BULK_PAUSE)
    saved_pause = p
    if p > BULK_PAUSE then
      collectgarbage("setpause", p)
    end
  end
end

local function bulk_end()
  if bulk_depth > 0 then
    bulk_depth = bulk_depth - 1
    if bulk_depth == 0 then
      collectgarbage("setpause", saved_pause)
    end
  end
end
_M.bulk_end = bulk_end

-- Ends every bulk work still on (the loop ends).
function _M.bulk_end_all()
  while bulk_depth > 0 do
    bulk_end()
  end
end

return _M
