-- Policy files: a Lua script that returns a table of named breakers, retry
-- policies, health monitors, bulkheads, worker pools and pipelines:
--
--   return {
--     breakers = { db = { failure_threshold = 5 } },
--     retry_policies = { fast = { max_attempts = 3, backoff_ms = { 50 } } },
--     health_monitors = { workers = { max_crashes = 10 } },
--     bulkheads = { pool = { max_concurrent = 8, max_queue = 64 } },
--     pools = { py = { cmd = { "python3", "worker.py" }, size = 4,
--                      breaker = "db", health = "workers" } },
--     pipelines = { python_pool = { breaker = "db", retry = "fast",
--                                   bulkhead = "pool", timeout_ms = 2000 } },
--   }
--
-- A pool starts at its first reg:pool(name), owned by the registry (no
-- task); a reload resizes it, rolls its workers when its command changed
-- and hands it the rest of its new options; a pool removed from the file
-- drains and stops.
--
-- policy.load(path) checks it whole and returns a registry; reg:reload()
-- reads the file again and, only if all of it is valid, applies it: an
-- object whose name survives keeps its state and takes the new settings,
-- a removed one is dropped (a removed pipeline is closed).
--
-- Errors name the file, the key path and the rule:
--   policies.lua: pipelines.python_pool.retry.max_attempts must be an
--   integer >= 1, got 0
--
-- The trap: reload must not change anything until the whole new file has
-- been checked, so every object is first made (or checked) from the new
-- file on its own, and only then are the live objects updated.

local check = require "sprun.check"
local options = require "sprun.options"
local tables = require "sprun.tables"
local errors = require "sprun.errors"
local kernel = require "sprun.sched.kernel"
local pipeline = require "sprun.pipeline"
local bulkhead = require "sprun.bulkhead"
local rate_limiter = require "sprun.rate_limiter"
local retry_policy = require "sprun.retry_policy"
local circuit_breaker = require "sprun.circuit_breaker"
local health_monitor = require "sprun.health_monitor"
-- sprun.pool is loaded by the first file with a pools section (see
-- sprun/init.lua for why it is loaded late).
local pool = setmetatable({}, { __index = function(t, k)
  return require("sprun.pool")[k]
end })
local sched = require "sprun.sched"

local type = type
local pairs = pairs
local each_key = next -- never `pairs` in a loop: see tables.lua
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local format = string.format
local sort = table.sort
local concat = table.concat

local WHAT = "a policy registry"
local KIND = "policy_error"

local _M = {}

local Registry = {}
local mt = { __index = Registry }

-- The sections of a file, in the order they are built (pipelines last:
-- they name the others).
local SECTIONS = { "breakers", "retry_policies", "health_monitors",
                   "bulkheads", "rate_limiters", "pools", "pipelines" }

local ANY = { check = function() return nil end }
local TOP_SPEC = {}
for i = 1, #SECTIONS do
  TOP_SPEC[SECTIONS[i]] = ANY
end
local parse_top = options.parser("policy", TOP_SPEC)

local path_text = options.path_text
local copy = tables.copy
local sorted_keys = tables.keys_in_order

local fail = options.throw
local at = options.nested

-- "file: path rule, got x" or "file: path: unknown key 'k' (...)".
local function file_message(file, e)
  local p = path_text(e.path)
  local where = p == "" and "" or p .. ": "
  if e.rule == nil then
    local tail = e.mean and format(" (did you mean '%s'?)", e.mean)
                 or format(" (valid keys: %s)", concat(e.valid, ", "))
    return format("%s: %sunknown key %s%s", file, where,
                  options.key_text(e.key), tail)
  end
  local got = e.got and ", got " .. e.got or ""
  if p == "" then
    return format("%s: the file %s%s", file, e.rule, got)
  end
  return format("%s: %s %s%s", file, p, e.rule, got)
end

-- Runs build(name, options) for every entry of a section, in name
-- order, each on its own: an option error (a bad name, an entry that is
-- not a table, a bad option) is added to `errs`, its name to `broken`, and
-- the other entries go on, so that one reading of a file reports every
-- error in it.
local function each_entry(errs, broken, section, t, build)
  if t == nil then
    return
  end
  if type(t) ~= "table" then
    errs[#errs + 1] = options.error({ section },
                                    "must be a table of named entries",
                                    check.describe(t))
    return
  end
  local keys = sorted_keys(t)
  for i = 1, #keys do
    local k = keys[i]
    local e
    if type(k) ~= "string" or k == "" then
      e = options.error({ section, "[" .. check.describe(k) .. "]" },
                        "is not a valid name (names are non-empty strings)")
    elseif type(t[k]) ~= "table" then
      e = options.error({ section, k }, "must be a table of options",
                        check.describe(t[k]))
    else
      local ok, err = options.capture({}, build, k, t[k])
      if not ok then
        e = err
      end
    end
    if e then
      errs[#errs + 1] = e
      broken[section][k] = true
    end
  end
end

local function with_default(o, key, value)
  o = copy(o)
  if o[key] == nil then
    o[key] = value
  end
  return o
end

-- Checks and builds everything the file's table describes, touching no
-- live object. Returns the compiled set, or nil and the list of option
-- errors (every one the file has); a file that is no table raises one.
local function compile(t)
  if type(t) ~= "table" then
    fail({}, "must return a table", check.describe(t))
  end
  local errs = {}
  local ok, e = options.capture({}, parse_top, t)
  if not ok then
    errs[1] = e
  end
  local new = { breakers = {}, retry_policies = {}, health_monitors = {},
                bulkheads = {}, pools = {}, pipelines = {}, bulkhead_opts = {},
                monitor_opts = {}, rate_limiters = {} }
  local broken = { breakers = {}, retry_policies = {}, health_monitors = {},
                   bulkheads = {}, pools = {}, pipelines = {},
                   rate_limiters = {} }
  each_entry(errs, broken, "breakers", t.breakers, function(name, o)
    local cb, err = at({ "breakers", name }, circuit_breaker.start_link,
                       with_default(o, "name", name))
    if cb == nil then
      fail({ "breakers", name }, "could not be made: " .. tostring(err))
    end
    new.breakers[name] = cb
  end)
  each_entry(errs, broken, "retry_policies", t.retry_policies,
             function(name, o)
    new.retry_policies[name] = at({ "retry_policies", name },
                                  retry_policy.new, o)
  end)
  each_entry(errs, broken, "health_monitors", t.health_monitors,
             function(name, o)
    local opts = with_default(with_default(o, "name", name), "pool", name)
    local hm, err = at({ "health_monitors", name },
                       health_monitor.start_link, opts)
    if hm == nil then
      fail({ "health_monitors", name }, "could not be made: " .. tostring(err))
    end
    new.health_monitors[name] = hm
    new.monitor_opts[name] = opts
  end)
  each_entry(errs, broken, "bulkheads", t.bulkheads, function(name, o)
    local opts = with_default(o, "name", name)
    new.bulkheads[name] = at({ "bulkheads", name }, bulkhead.new, opts)
    new.bulkhead_opts[name] = opts
  end)
  each_entry(errs, broken, "rate_limiters", t.rate_limiters,
             function(name, o)
    new.rate_limiters[name] = at({ "rate_limiters", name },
                                 rate_limiter.new, with_default(o, "name", name))
  end)
  -- A pool names its breaker and health monitor among the file's.
  each_entry(errs, broken, "pools", t.pools, function(name, o)
    local opts = with_default(o, "name", name)
    local refs = {}
    for key, section in pairs { breaker = "breakers",
                                health = "health_monitors" } do
      local v = opts[key]
      if v ~= nil then
        if type(v) ~= "string" then
          fail({ "pools", name, key }, "must be the name of an entry of "
               .. section .. " (a policy file shares them by name)",
               check.describe(v))
        elseif new[section][v] == nil and not broken[section][v] then
          local known = sorted_keys(new[section])
          fail({ "pools", name, key }, format("names no entry of %s (%s: %s)",
               section, section, #known > 0 and concat(known, ", ")
               or "none"), check.describe(v))
        end
        refs[key] = v
        opts[key] = nil
      end
    end
    new.pools[name] = { o = pool._parse(opts, { "pools", name }),
                        refs = refs }
  end)
  -- A pipeline may name an entry that is broken: that entry's error is
  -- the one to report, not a second one for the name.
  local names = {}
  for _, section in ipairs { "breakers", "retry_policies", "bulkheads",
                             "rate_limiters" } do
    names[section] = copy(broken[section])
    for k, v in each_key, new[section] do
      names[section][k] = v
    end
  end
  each_entry(errs, broken, "pipelines", t.pipelines, function(name, o)
    new.pipelines[name] = pipeline._parse(with_default(o, "name", name),
                                          names, { "pipelines", name })
  end)
  if errs[1] then
    return nil, errs
  end
  return new
end

-- Errors of one file reported at once, at most.
local MAX_ERRORS = 20

-- The message of a file's option errors: one line each, in the order the
-- file was checked, the first MAX_ERRORS of them.
local function errors_message(path, errs)
  local lines = {}
  for i = 1, math.min(#errs, MAX_ERRORS) do
    lines[i] = file_message(path, errs[i])
  end
  if #errs > MAX_ERRORS then
    lines[#lines + 1] = format("%s: and %d more errors", path,
                               #errs - MAX_ERRORS)
  end
  return concat(lines, "\n")
end

-- Reads and compiles the file: the compiled set, or nil and the message.
local function read(path)
  local chunk, err = loadfile(path)
  if chunk == nil then
    return nil, err
  end
  local ok, t = pcall(chunk)
  if not ok then
    kernel.reraise_cancel(t)
    return nil, errors.text(t)
  end
  -- An option error comes back from capture as a value; anything else
  -- that went wrong is caught by the pcall.
  local ok2, compiled, new, errs = pcall(options.capture, {}, compile, t)
  if not ok2 then
    kernel.reraise_cancel(compiled)
    return nil, path .. ": " .. errors.text(compiled)
  end
  if not compiled then
    return nil, file_message(path, new)
  end
  if new == nil then
    return nil, errors_message(path, errs)
  end
  return new
end

--- Applying a compiled file ------------------------------------------------

-- The live breaker takes the settings of `fresh`, a breaker made from the
-- new options, and keeps its state and counts. Only the settings that can
-- change under a live breaker are copied (a rate window's size is not).
local function reconfigure_breaker(old, fresh)
  local oc, nc = old._b.config, fresh._b.config
  oc.failure_threshold = nc.failure_threshold
  oc.reset_timeout_ms = nc.reset_timeout_ms
  oc.half_open_max_calls = nc.half_open_max_calls
  old._reset_timeout_ms = fresh._reset_timeout_ms
  old._is_failure = fresh._is_failure
end

-- A monitor keeps its crashes unless max_crashes or max_workers changed
-- (they size its memory): then the new one replaces it.
local function merge_monitor(old, fresh)
  local oc, nc = old._h.config, fresh._h.config
  if oc.max_crashes ~= nc.max_crashes or oc.max_workers ~= nc.max_workers then
    return fresh
  end
  oc.crash_window_ms = nc.crash_window_ms
  old._check_interval_ms = fresh._check_interval_ms
  return old
end

local function apply(self, new)
  local live = self._live
  local out = { breakers = {}, retry_policies = new.retry_policies,
                health_monitors = {}, bulkheads = {}, pools = {},
                pipelines = {}, rate_limiters = {} }
  -- A rate limiter keeps what it has taken (a new rate applies from now
  -- on, sp_rate_set) unless its period changed.
  for name, fresh in each_key, new.rate_limiters do
    local old = live.rate_limiters[name]
    local f = fresh:stats()
    if old and old:stats().per_ms == f.per_ms then
      old:set_rate(f.rate, f.burst)
      out.rate_limiters[name] = old
    else
      out.rate_limiters[name] = fresh
    end
  end
  for name, fresh in each_key, new.breakers do
    local old = live.breakers[name]
    if old then
      reconfigure_breaker(old, fresh)
      out.breakers[name] = old
    else
      out.breakers[name] = fresh
    end
  end
  for name, fresh in each_key, new.health_monitors do
    local old = live.health_monitors[name]
    out.health_monitors[name] = old and merge_monitor(old, fresh) or fresh
  end
  for name, fresh in each_key, new.bulkheads do
    local old = live.bulkheads[name]
    if old then
      bulkhead._reconfigure(old, new.bulkhead_opts[name])
      out.bulkheads[name] = old
    else
      out.bulkheads[name] = fresh
    end
  end
  -- A pool is { spec, live = the pool once started }.
  for name, spec in each_key, new.pools do
    local o = spec.o
    o.breaker = spec.refs.breaker and out.breakers[spec.refs.breaker]
    o.health = spec.refs.health and out.health_monitors[spec.refs.health]
    local entry = live.pools[name]
    if entry then
      entry.o = o
      local p = entry.live
      if p and p._state ~= "stopped" then
        p:_reconfigure(o, o.health, o.breaker)
      end
    else
      entry = { o = o }
    end
    out.pools[name] = entry
  end
  for name, entry in each_key, live.pools do
    if out.pools[name] == nil and entry.live then
      local p = entry.live
      sched.spawn(function() p:drain() end)
    end
  end
  local function lookup(section, name)
    return out[section][name]
  end
  for name, spec in each_key, new.pipelines do
    local p = live.pipelines[name]
    if p == nil then
      p = pipeline._blank()
    end
    pipeline._configure(p, spec, lookup, reconfigure_breaker)
    out.pipelines[name] = p
  end
  for name, p in each_key, live.pipelines do
    if out.pipelines[name] == nil then
      p._closed = true
    end
  end
  self._live = out
end

--- The registry ---------------------------------------------------------------

local function load_error(path, msg)
  return errors.error(KIND, msg, { path = path })
end

-- Loads a policy file. Returns a registry, or nil and an error (kind
-- "policy_error") whose message names the file, the key and the rule.
function _M.load(path)
  if type(path) ~= "string" or path == "" then
    check.arg_error("policy.load", "path", "must be a non-empty string", path)
  end
  local new, msg = read(path)
  if new == nil then
    return nil, load_error(path, msg)
  end
  local reg = setmetatable({
    _path = path,
    _live = { breakers = {}, retry_policies = {}, health_monitors = {},
              bulkheads = {}, pools = {}, pipelines = {},
              rate_limiters = {} },
    _reloads = 0,
  }, mt)
  apply(reg, new)
  return reg
end

function _M.is_registry(v)
  return getmetatable(v) == mt
end

-- Reads the file again and applies it; a file with any error changes
-- nothing. Returns true, or nil and the error.
function Registry.reload(self)
  check.self(self, mt, "policy.reload", WHAT)
  local new, msg = read(self._path)
  if new == nil then
    return nil, load_error(self._path, msg)
  end
  for _, name in ipairs(sorted_keys(new.pools)) do
    local entry = self._live.pools[name]
    local why = entry and entry.live and entry.live._state ~= "stopped"
                and pool._live_error(entry.live, new.pools[name].o)
    if why then
      return nil, load_error(self._path, format("%s: pools.%s: %s",
                                                self._path, name, why))
    end
  end
  apply(self, new)
  self._reloads = self._reloads + 1
  return true
end

local function getter(section, fname)
  return function(self, name)
    check.self(self, mt, fname, WHAT)
    check.id(fname, "name", name)
    local v = self._live[section][name]
    if v == nil then
      local known = sorted_keys(self._live[section])
      return nil, errors.error("not_found", format(
        "%s: no %s named %s in %s (%s: %s)", fname, section,
        check.describe(name), self._path, section,
        #known > 0 and concat(known, ", ") or "none"), { name = name })
    end
    return v
  end
end

-- The pool declared as `name`, started by its first call (from a task),
-- owned by the registry: it lives until the file drops it or the process
-- ends. nil and a not_found error for a name the file does not declare.
function Registry.pool(self, name)
  check.self(self, mt, "policy.pool", WHAT)
  check.id("policy.pool", "name", name)
  local entry = self._live.pools[name]
  if entry == nil then
    local known = sorted_keys(self._live.pools)
    return nil, errors.error("not_found", format(
      "policy.pool: no pools named %s in %s (pools: %s)",
      check.describe(name), self._path,
      #known > 0 and concat(known, ", ") or "none"), { name = name })
  end
  local p = entry.live
  if p == nil or p._state == "stopped" then
    kernel.need_task("policy.pool")
    local o = {}
    for k, v in each_key, entry.o do
      o[k] = v
    end
    p = pool._start(o, nil)
    entry.live = p
  end
  return p
end

Registry.pipeline = getter("pipelines", "policy.pipeline")
Registry.breaker = getter("breakers", "policy.breaker")
Registry.health_monitor = getter("health_monitors", "policy.health_monitor")
Registry.retry_policy = getter("retry_policies", "policy.retry_policy")
Registry.bulkhead = getter("bulkheads", "policy.bulkhead")
Registry.rate_limiter = getter("rate_limiters", "policy.rate_limiter")

-- { pipelines = {...}, breakers = {...}, ... }: the names, sorted.
function Registry.names(self)
  check.self(self, mt, "policy.names", WHAT)
  local out = {}
  for i = 1, #SECTIONS do
    out[SECTIONS[i]] = sorted_keys(self._live[SECTIONS[i]])
  end
  return out
end

function Registry.path(self)
  check.self(self, mt, "policy.path", WHAT)
  return self._path
end

--- The sprun executable -----------------------------------------------------

local default = nil

-- The registry loaded by `sprun --policy PATH`. Without one, misuse.
function _M.default()
  if default == nil then
    error("policy.default: no policy file loaded: run with --policy FILE or "
          .. "call sprun.policy.load", 2)
  end
  return default
end

-- Loads the executable's policy file (sprun.cli): the registry, which
-- default() returns from then on, or nil and the error.
function _M.load_default(path)
  local reg, err = _M.load(path)
  if reg ~= nil then
    default = reg
  end
  return reg, err
end

-- What SIGHUP does under `sprun --policy`: reloads the default registry;
-- a broken file is reported on stderr and the old policies stay.
function _M.reload_default()
  local reg = default
  local ok, err = reg:reload()
  if ok then
    io.stderr:write("sprun: --policy: reloaded " .. reg._path .. "\n")
  else
    io.stderr:write("sprun: --policy: reload failed, the old policies "
                    .. "stay: " .. err.message .. "\n")
  end
end

return _M
