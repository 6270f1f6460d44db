-- Pipelines: fallback, a deadline, retry (with an optional retry budget),
-- circuit breaker, bulkhead and a per-attempt timeout around an
-- operation, in that fixed order, outermost first:
--
--   fallback( deadline( retry( breaker( bulkhead( timeout( fn ) ) ) ) ) )
--
-- so the deadline bounds every attempt and backoff together, each attempt
-- is timed out on its own and counts once in the breaker
-- (a call waiting for a bulkhead slot was admitted by the breaker already;
-- a bulkhead_full rejection is not a failure of a breaker the pipeline
-- made from options). Every stage is optional.
--
-- Options are checked with the rules of the module each stage comes from
-- (retry_policy, circuit_breaker, bulkhead); their option errors come back
-- as values (sprun.options) with the key path in front, and read
-- "pipeline.new: option 'retry.max_attempts' must be an integer >= 1,
-- got 0". Policy files (sprun.policy) reuse the same parser and render the
-- same values in their own form.
--
-- The trap: a raised error inside an attempt must reach the retry loop as
-- an error value, but a cancellation of the calling task must go straight
-- up (kernel.reraise_cancel), never be retried or handed to the fallback.

local check = require "sprun.check"
local options = require "sprun.options"
local sched = require "sprun.sched"
local kernel = require "sprun.sched.kernel"
local inline = require "sprun.sched.inline"
local errors = require "sprun.errors"
local retry_policy = require "sprun.retry_policy"
local circuit_breaker = require "sprun.circuit_breaker"
local bulkhead = require "sprun.bulkhead"
local tables = require "sprun.tables"
local retry = require "sprun.retry"
local hedge = require "sprun.hedge"
local adaptive_limit = require "sprun.adaptive_limit"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local pcall = pcall
local error = error
local select = select
local unpack = unpack
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local format = string.format
local copy = tables.copy
local pack = tables.pack
local retry_run = retry.run
local deadline_outcome = retry.deadline_outcome
local now = require("sprun.clock").now

local WHAT = "a pipeline"

local _M = {
  -- A hook for tests: _trace(stage, pipeline) on entering each stage,
  -- stage one of "fallback", "retry", "breaker", "bulkhead", "timeout",
  -- "call".
  _trace = nil,
}

local mt = { __index = _M }

_M._parse = require("sprun.pipeline.parse").parse

--- Pipelines ---------------------------------------------------------------

-- Sets the stages from a parsed spec. lookup(section, name) gives the
-- instance a name stands for (policy files). The breaker, bulkhead and
-- budget a pipeline made itself are kept across reconfigurations, with
-- the new settings, so their state survives a reload.
function _M._configure(self, spec, lookup, reconf_breaker)
  local c = { name = spec.name, timeout_ms = spec.timeout_ms,
              deadline_ms = spec.deadline_ms, fallback = spec.fallback }
  local r = spec.retry
  if r then
    c.policy = r.policy or lookup("retry_policies", r.policy_ref)
    if r.budget then
      if self._budget then
        self._budget:configure(r.budget)
      else
        self._budget = retry.budget(r.budget)
      end
    else
      self._budget = nil
    end
  else
    self._budget = nil
  end
  local b = spec.breaker
  if b then
    if b.ref then
      c.breaker = lookup("breakers", b.ref)
      self._own_breaker = nil
    elseif b.fresh then
      if self._own_breaker and reconf_breaker then
        reconf_breaker(self._own_breaker, b.fresh)
      else
        self._own_breaker = b.fresh
      end
      c.breaker = self._own_breaker
    else
      c.breaker = b.instance
      self._own_breaker = nil
    end
  else
    self._own_breaker = nil
  end
  local h = spec.bulkhead
  if h then
    if h.ref then
      c.bulkhead = lookup("bulkheads", h.ref)
      self._own_bulkhead = nil
    elseif h.fresh then
      if self._own_bulkhead then
        bulkhead._reconfigure(self._own_bulkhead, h.opts)
      else
        self._own_bulkhead = h.fresh
      end
      c.bulkhead = self._own_bulkhead
    else
      c.bulkhead = h.instance
      self._own_bulkhead = nil
    end
  else
    self._own_bulkhead = nil
  end
  c.hedge = spec.hedge
  c.adaptive = spec.adaptive
  local rs = spec.rate
  if rs and rs.ref then
    rs = { limiter = lookup("rate_limiters", rs.ref), wait_ms = rs.wait_ms }
  end
  c.rate = rs
  self._name = spec.name
  self._c = c
end

local function build(opts)
  local ok, spec = options.capture({}, _M._parse, opts)
  if not ok then
    error(options.message(spec, "pipeline.new"), 3)
  end
  local p = setmetatable({ _closed = false }, mt)
  _M._configure(p, spec)
  return p
end

-- pipeline.new{ name, timeout_ms, retry, breaker, bulkhead, fallback }
function _M.new(opts)
  local p = build(opts)
  return p
end

-- A pipeline with no stages yet, for _configure (policy files).
function _M._blank()
  return setmetatable({ _closed = false, _c = {}, _name = "pipeline" }, mt)
end

function _M.is_pipeline(v)
  return getmetatable(v) == mt
end

--- Running ------------------------------------------------------------------

local function trace(stage, self)
  local t = _M._trace
  if t then
    t(stage, self)
  end
end

local function failed(r1, r2)
  return (r1 == nil or r1 == false) and r2 ~= nil
end

-- unpack with a count that is not a constant ends a trace: the common
-- arities are spelled out.
local function call_stage(self, fn, args)
  trace("call", self)
  local n = args.n
  if n == 0 then
    return fn()
  elseif n == 1 then
    return fn(args[1])
  elseif n == 2 then
    return fn(args[1], args[2])
  elseif n == 3 then
    return fn(args[1], args[2], args[3])
  end
  return fn(unpack(args, 1, n))
end

local function timeout_stage(self, c, fn, args)
  if c.timeout_ms == nil then
    return call_stage(self, fn, args)
  end
  trace("timeout", self)
  kernel.check_caller("pipeline.execute")
  -- A child task, run inline until it first waits (inline.run_child).
  return inline.run_child(c.timeout_ms, call_stage, 3, self, fn, args)
end

-- The stages below the breaker return what pcall would: true and the
-- values, or false and the raised error. There is one pcall, around the
-- timeout stage, and the stages above work on its outcome: LuaJIT cannot
-- compile a vararg function returning straight into a pcall frame, so a
-- stage that passed results through under its own pcall would keep the
-- whole call out of its traces.
local function bulkhead_done(bh, ...)
  bulkhead._release(bh)
  return ...
end

-- pcall(call_stage, ...), with the operation itself under pcall: a Lua
-- function run by pcall cannot be the root of a trace (LuaJIT 2.1 cannot
-- return from it to the lower frame), and one of sprun's own that got hot
-- on its own that way would end up blacklisted, and with it every trace
-- through it. The operation is the caller's, and the loop's trace still
-- takes it in.
local function call_pcall(self, fn, args)
  trace("call", self)
  local n = args.n
  if n == 0 then
    return pcall(fn)
  elseif n == 1 then
    return pcall(fn, args[1])
  elseif n == 2 then
    return pcall(fn, args[1], args[2])
  elseif n == 3 then
    return pcall(fn, args[1], args[2], args[3])
  end
  return pcall(fn, unpack(args, 1, n))
end

-- The timeout stage as an outcome.
local function timeout_pcall(self, c, fn, args)
  if c.timeout_ms == nil then
    return call_pcall(self, fn, args)
  end
  return pcall(timeout_stage, self, c, fn, args)
end

local function bulkhead_attempt(self, c, fn, args)
  local bh = c.bulkhead
  if bh == nil then
    return timeout_pcall(self, c, fn, args)
  end
  trace("bulkhead", self)
  if not bulkhead._take(bh) then
    -- Waiting for a slot may raise (a cancellation): an outcome too.
    local caught, ok, err = pcall(bulkhead._acquire, bh, "pipeline.execute")
    if not caught then
      return false, ok
    end
    if not ok then
      return true, nil, err
    end
  end
  return bulkhead_done(bh, timeout_pcall(self, c, fn, args))
end

local function reraise(ok, ...)
  if not ok then
    error((...), 0)
  end
  return ...
end

-- bulkhead_attempt as an operation for cb:_pcall.
local function bulkhead_stage(self, c, fn, args)
  return reraise(bulkhead_attempt(self, c, fn, args))
end

-- One attempt, as pcall would give it. A breaker on its fast path admits
-- and counts the call here; on any other path its _pcall runs the call.
local function breaker_attempt(self, c, fn, args)
  local cb = c.breaker
  if cb == nil then
    return bulkhead_attempt(self, c, fn, args)
  end
  trace("breaker", self)
  local generation = cb:_fast_admit()
  if generation ~= nil then
    return cb:_finish(generation, bulkhead_attempt(self, c, fn, args))
  end
  return cb:_pcall(bulkhead_stage, self, c, fn, args)
end

-- The adaptive limit's stage, around the breaker: a call past the limit
-- is refused (limit_exceeded) before the breaker sees it; each admitted
-- one gives its permit back with its outcome and RTT.
local attempt_values

local adaptive_take, adaptive_settle = adaptive_limit._take,
                                       adaptive_limit._settle

local function adaptive_attempt(self, c, fn, args)
  local al = c.adaptive
  if al == nil then
    return breaker_attempt(self, c, fn, args)
  end
  trace("adaptive_limit", self)
  local permit, err = adaptive_take(al)
  if permit == nil then
    return true, nil, err
  end
  return adaptive_settle(al, permit, breaker_attempt(self, c, fn, args))
end

-- The rate limit's stage, outermost of an attempt's: each attempt (and
-- each hedge) takes its slot, waiting at most max_wait_ms for it, or is
-- refused (rate_limited, details.retry_after_ms) before anything else.
local function limited_attempt(self, c, fn, args)
  local rl = c.rate
  if rl == nil then
    return adaptive_attempt(self, c, fn, args)
  end
  trace("rate_limit", self)
  local lim = rl.limiter
  if rl.wait_ms > 0 then
    local ok, err = lim:wait(1, rl.wait_ms)
    if not ok then
      return true, nil, err
    end
  else
    local ok, after = lim:take()
    if not ok then
      return true, nil, errors.error("rate_limited", format(
        "rate limiter '%s': the next slot is %s ms away", lim:name(),
        after), { name = lim:name(), retry_after_ms = after })
    end
  end
  return adaptive_attempt(self, c, fn, args)
end

-- The hedge stage: the attempt, hedged (sprun/hedge.lua), its outcome
-- as pcall would give it; hedges draw on the retry budget.
local function hedge_body(self, c, fn, args)
  return attempt_values(limited_attempt(self, c, fn, args))
end

local function hedge_outcome(r1, ...)
  return true, r1, ...
end

local function attempt(self, c, fn, args)
  local hc = c.hedge
  if hc == nil then
    return limited_attempt(self, c, fn, args)
  end
  trace("hedge", self)
  kernel.check_caller("pipeline.execute")
  return hedge_outcome(hedge.run(hc, self._budget, hedge_body, 4,
                                 { self, c, fn, args }))
end

-- The values of one attempt from what attempt() returned: fn's values, or
-- nil and the error (a raised error as a value).
attempt_values = function(ok, ...)
  if not ok then
    local e = ...
    kernel.reraise_cancel(e)
    return nil, errors.raised(e)
  end
  return ...
end

local function retry_stage(self, c, fn, args)
  if c.policy == nil then
    return attempt_values(attempt(self, c, fn, args))
  end
  trace("retry", self)
  local budget = self._budget
  if budget then
    budget:deposit()
  end
  return retry_run(c.policy, c.name, nil, budget or false, "pipeline.execute",
                   attempt, self, c, fn, args)
end

-- What the fallback makes of a failure; anything else goes through.
local function fallback_values(c, args, ...)
  local r1, r2 = ...
  if failed(r1, r2) then
    return c.fallback(r2, unpack(args, 1, args.n))
  end
  return ...
end

-- deadline_ms: the retry stage (every attempt and backoff) as a child
-- cancelled at the deadline; a backoff past it is not taken (retry.lua).
local function deadline_stage(self, c, fn, args)
  local ms = c.deadline_ms
  if ms == nil then
    return retry_stage(self, c, fn, args)
  end
  kernel.check_caller("pipeline.execute")
  return deadline_outcome(now() + ms,
    inline.run_child(ms, retry_stage, 4, self, c, fn, { self, c, fn, args }))
end

local function run(self, fn, args)
  local c = self._c
  if c.fallback == nil then
    return deadline_stage(self, c, fn, args)
  end
  trace("fallback", self)
  return fallback_values(c, args, deadline_stage(self, c, fn, args))
end

local NO_ARGS = { n = 0 }

-- Runs fn(...) through the stages. Returns fn's values, or nil and the
-- error (a raised error is returned as an error object, as the executor's
-- retry does), or what the fallback returns. Outside a task it runs a
-- loop until done.
function _M.execute(self, fn, ...)
  check.self(self, mt, "pipeline.execute", WHAT)
  check.func("pipeline.execute", "fn", fn)
  local args = NO_ARGS
  if select("#", ...) > 0 then
    args = pack(...)
  end
  if self._closed then
    return nil, errors.error("closed", "pipeline '" .. self._name
                             .. "' was removed from its policy file",
                             { name = self._name })
  end
  -- Inside a running loop the stages run where they are called; those that
  -- wait (a backoff, a bulkhead's queue, a timeout) check that the caller
  -- is a task first. Asking for the running coroutine on every call would
  -- keep the whole call out of LuaJIT's traces.
  if kernel.running() == nil then
    return sched.in_task(run, self, fn, args)
  end
  return run(self, fn, args)
end

function _M.name(self)
  check.self(self, mt, "pipeline.name", WHAT)
  return self._name
end

-- The stages' objects and counts.
function _M.stats(self)
  check.self(self, mt, "pipeline.stats", WHAT)
  local c, b = self._c, self._budget
  return {
    name = self._name,
    closed = self._closed,
    timeout_ms = c.timeout_ms,
    deadline_ms = c.deadline_ms,
    breaker = c.breaker and c.breaker:stats() or nil,
    bulkhead = c.bulkhead and c.bulkhead:stats() or nil,
    adaptive_limit = c.adaptive and c.adaptive:stats() or nil,
    rate_limit = c.rate and c.rate.limiter:stats() or nil,
    hedge = c.hedge and { delay_ms = c.hedge.delay_ms,
                          max_hedges = c.hedge.max_hedges } or nil,
    budget = b and b:stats() or nil,
  }
end

function _M.breaker(self)
  check.self(self, mt, "pipeline.breaker", WHAT)
  return self._c.breaker
end

function _M.bulkhead(self)
  check.self(self, mt, "pipeline.bulkhead", WHAT)
  return self._c.bulkhead
end

function _M.retry_policy(self)
  check.self(self, mt, "pipeline.retry_policy", WHAT)
  return self._c.policy
end

-- sprun.pipeline{...} is pipeline.new{...}.
return setmetatable(_M, { __call = function(_, opts)
  local p = build(opts)
  return p
end })
