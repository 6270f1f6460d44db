-- The options of a pipeline (internal to sprun.pipeline): checked and
-- turned into a spec of stages, each stage's options checked with the
-- rules of the module it comes from; a policy file's names of breakers,
-- retry policies and bulkheads resolved or named as unknown.

local check = require "sprun.check"
local options = require "sprun.options"
local errors = require "sprun.errors"
local retry_policy = require "sprun.retry_policy"
local circuit_breaker = require "sprun.circuit_breaker"
local bulkhead = require "sprun.bulkhead"
local tables = require "sprun.tables"
local retry = require "sprun.retry"

local type = type
local each_key = next -- never `pairs` in a loop: see tables.lua
local tostring = tostring
local format = string.format
local copy = tables.copy

local _M = {}

--- Option errors with a key path ------------------------------------------

-- Every stage is checked under sprun.options' capture: the option errors
-- of the stage's own constructor come back as values with the stage's
-- path in front, and build() (or a policy file) renders them.

local fail = options.throw
local at = options.nested
local path_plus = options.path_plus

--- Options -----------------------------------------------------------------

local BUDGET_SPEC = retry.BUDGET_SPEC
local parse_budget = options.parser("pipeline.retry.budget", BUDGET_SPEC)

local ANY = { check = function() return nil end }

local parse_retry = retry_policy._options_parser("pipeline.retry", {
  policy = ANY,
  budget = ANY,
})

local parse_top = options.parser("pipeline", {
  name = { "string", default = "pipeline" },
  timeout_ms = { "number", min = 0, limit = check.MS_MAX },
  deadline_ms = { "number", min = 0, limit = check.MS_MAX },
  retry = ANY,
  breaker = ANY,
  bulkhead = ANY,
  fallback = { "function" },
  hedge = ANY,
  adaptive_limit = ANY,
  rate_limit = ANY,
})

local parse_hedge = options.parser("pipeline.hedge", {
  delay_ms = { "number", min = 0, limit = check.MS_MAX, required = true },
  max_hedges = { "integer", min = 1, limit = 64, default = 1 },
  hedge_on = { "function" },
})

local NOT_POLICY = { policy = true, budget = true }

-- names: for policy files, { breakers = set, retry_policies = set,
-- bulkheads = set, rate_limiters = set } of the names a stage may give
-- instead of options;
-- nil for pipeline.new. Returns { kind = "ref", name = } for a name.
local function ref(names, section, what, path, v)
  if names == nil then
    return nil
  end
  if type(v) ~= "string" then
    return nil
  end
  local set = names[section]
  if set[v] then
    return { ref = v }
  end
  local known, best, best_d = {}, nil, nil
  for k in each_key, set do
    known[#known + 1] = k
    local d = check.distance(v, k)
    if d <= 2 and (best_d == nil or d < best_d) then
      best, best_d = k, d
    end
  end
  table.sort(known)
  if best then
    fail(path, format("names no %s %s (did you mean %q?)", what,
                      check.describe(v), best))
  end
  fail(path, format("names no %s %s (%s: %s)", what, check.describe(v),
                    section, #known > 0 and table.concat(known, ", ")
                    or "none defined"))
end


local function parse_retry_stage(v, names, path)
  if retry_policy.is_policy(v) then
    return { policy = v }
  end
  local r = ref(names, "retry_policies", "retry policy", path, v)
  if r then
    return { policy_ref = r.ref }
  end
  if type(v) ~= "table" then
    fail(path, names and "must be a retry policy name or a table of options"
         or "must be a retry policy or a table of options",
         check.describe(v))
  end
  local o = at(path, parse_retry, v)
  local out = {}
  if o.budget ~= nil then
    out.budget = at(path_plus(path, "budget"), parse_budget, o.budget)
  end
  if v.policy ~= nil then
    local keys = {}
    for k in each_key, v do
      if not NOT_POLICY[k] then
        keys[#keys + 1] = k
      end
    end
    table.sort(keys)
    if #keys > 0 then
      fail(path_plus(path, keys[1]), "cannot be given with 'policy'")
    end
    if retry_policy.is_policy(v.policy) then
      out.policy = v.policy
    else
      local pr = ref(names, "retry_policies", "retry policy",
                     path_plus(path, "policy"), v.policy)
      if pr == nil then
        fail(path_plus(path, "policy"), names
             and "must be a retry policy name" or "must be a retry policy",
             check.describe(v.policy))
      end
      out.policy_ref = pr.ref
    end
    return out
  end
  out.policy = retry_policy._from_options(o)
  return out
end

-- A breaker rejection of an attempt that a bulkhead refused must not count
-- against the dependency: breakers made from options here ignore
-- bulkhead_full unless given their own is_failure.
local function not_bulkhead_full(err)
  return errors.kind(err) ~= "bulkhead_full"
end

-- What a stage that makes an object was given: "instance" and the object
-- (is_kind says), "ref" and { ref = name } for a policy file's name of an
-- entry of `section`, or "options" and a copy of the table, its name
-- defaulting to the pipeline's. `what` is the entry's kind in a policy
-- file's errors ("breaker"), `object` the object's ("a circuit breaker").
local function stage_input(v, names, path, name, is_kind, section, what,
                           object)
  if is_kind(v) then
    return "instance", v
  end
  local r = section and ref(names, section, what, path, v)
  if r then
    return "ref", r
  end
  if type(v) ~= "table" then
    fail(path, (names and section)
         and "must be a " .. what .. " name or a table of options"
         or "must be " .. object .. " or a table of options",
         check.describe(v))
  end
  local o = copy(v)
  if o.name == nil then
    o.name = name
  end
  return "options", o
end

local function parse_breaker_stage(v, names, path, name)
  local kind, o = stage_input(v, names, path, name, circuit_breaker.is_breaker,
                              "breakers", "breaker", "a circuit breaker")
  if kind == "instance" then
    return { instance = o }
  elseif kind == "ref" then
    return o
  end
  if o.is_failure == nil then
    o.is_failure = not_bulkhead_full
  end
  local cb, err = at(path, circuit_breaker.start_link, o)
  if cb == nil then
    fail(path, "could not be made: " .. tostring(err))
  end
  return { fresh = cb }
end

local function parse_bulkhead_stage(v, names, path, name)
  local kind, o = stage_input(v, names, path, name, bulkhead.is_bulkhead,
                              "bulkheads", "bulkhead", "a bulkhead")
  if kind == "instance" then
    return { instance = o }
  elseif kind == "ref" then
    return o
  end
  return { fresh = at(path, bulkhead.new, o), opts = o }
end

local function parse_hedge_stage(v, path, name)
  if type(v) ~= "table" then
    fail(path, "must be a table of options (delay_ms, max_hedges, "
         .. "hedge_on)", check.describe(v))
  end
  local o = at(path, parse_hedge, v)
  o.name = name
  return o
end

local function parse_adaptive_stage(v, path, name)
  local adaptive_limit = require "sprun.adaptive_limit"
  local kind, o = stage_input(v, nil, path, name,
                              adaptive_limit.is_adaptive_limit, nil, nil,
                              "an adaptive limit")
  if kind == "instance" then
    return o
  end
  return at(path, adaptive_limit.new, o)
end

-- A rate limiter, or its options with max_wait_ms (how long an attempt
-- may wait for its slot; 0 by default: refused at once).
local function parse_rate_stage(v, names, path, name)
  local rate_limiter = require "sprun.rate_limiter"
  local kind, o = stage_input(v, names, path, name,
                              rate_limiter.is_rate_limiter, "rate_limiters",
                              "rate limiter", "a rate limiter")
  if kind == "instance" then
    return { limiter = o, wait_ms = 0 }
  elseif kind == "ref" then
    return { ref = o.ref, wait_ms = 0 }
  end
  local wait = o.max_wait_ms
  o.max_wait_ms = nil
  if wait ~= nil and (type(wait) ~= "number" or not (wait >= 0)
                      or wait > check.MS_MAX) then
    fail(path_plus(path, "max_wait_ms"), "must be a number >= 0",
         check.describe(wait))
  end
  return { limiter = at(path, rate_limiter.new, o), wait_ms = wait or 0 }
end

-- Checks pipeline options; raises an option error (as a value: call it
-- under options.capture). names: see ref().
function _M.parse(opts, names, path)
  path = path or {}
  local o = at(path, parse_top, opts)
  local spec = { name = o.name, timeout_ms = o.timeout_ms,
                 deadline_ms = o.deadline_ms, fallback = o.fallback }
  if o.retry ~= nil then
    spec.retry = parse_retry_stage(o.retry, names, path_plus(path, "retry"))
  end
  if o.hedge ~= nil then
    spec.hedge = parse_hedge_stage(o.hedge, path_plus(path, "hedge"), o.name)
  end
  if o.rate_limit ~= nil then
    spec.rate = parse_rate_stage(o.rate_limit, names,
                                 path_plus(path, "rate_limit"), o.name)
  end
  if o.adaptive_limit ~= nil then
    spec.adaptive = parse_adaptive_stage(o.adaptive_limit,
      path_plus(path, "adaptive_limit"), o.name)
  end
  if o.breaker ~= nil then
    spec.breaker = parse_breaker_stage(o.breaker, names,
                                       path_plus(path, "breaker"), o.name)
  end
  if o.bulkhead ~= nil then
    spec.bulkhead = parse_bulkhead_stage(o.bulkhead, names,
                                         path_plus(path, "bulkhead"), o.name)
  end
  return spec
end

return _M
