-- Bad-input cases (see bad_input_spec.lua) of sprun.adaptive_limit: the
-- options of new(), permits that are not, or no longer, permits, the
-- outcome and RTT of release(), and call()'s function.
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local alm = sprun.adaptive_limit
local noop, cb = fx.noop, fx.cb

local NEW = "adaptive_limit.new: "
local RELEASE = "adaptive_limit.release: "

-- A fresh limit and one permit of it.
local function held(opts)
  local lim = alm.new(opts)
  return lim, assert(lim:acquire())
end

return {
  -- new ---------------------------------------------------------------------
  { id = "adaptive: options a string",
    call = function() return alm.new, "aimd" end,
    raises = NEW .. 'options must be a table, got "aimd"' },
  { id = "adaptive: max_limt misspelt",
    call = function() return alm.new, { max_limt = 5 } end,
    raises = NEW .. "unknown option 'max_limt' (did you mean 'max_limit'?)" },
  { id = "adaptive: algorithm vegas",
    call = function() return alm.new, { algorithm = "vegas" } end,
    raises = NEW .. "option 'algorithm' must be \"aimd\" or \"gradient2\", "
      .. 'got "vegas"' },
  { id = "adaptive: name empty",
    call = function() return alm.new, { name = "" } end,
    raises = NEW .. "option 'name' must be a non-empty string, got \"\"" },
  { id = "adaptive: min_limit 0",
    call = function() return alm.new, { min_limit = 0 } end,
    raises = NEW .. "option 'min_limit' must be an integer >= 1, got 0" },
  { id = "adaptive: max_limit 2^31",
    call = function() return alm.new, { max_limit = 2 ^ 31 } end,
    raises = NEW .. "option 'max_limit' must be an integer between 1 and "
      .. "1000000, got 2147483648" },
  { id = "adaptive: initial_limit 1.5",
    call = function() return alm.new, { initial_limit = 1.5 } end,
    raises = NEW .. "option 'initial_limit' must be an integer >= 1, got 1.5" },
  { id = "adaptive: max_limit under min_limit",
    call = function() return alm.new, { min_limit = 5, max_limit = 3 } end,
    raises = NEW .. "option 'max_limit' must be >= min_limit (5), got 3" },
  { id = "adaptive: initial_limit over max_limit",
    call = function() return alm.new, { max_limit = 10, initial_limit = 11 }
    end,
    raises = NEW .. "option 'initial_limit' must be between min_limit (1) "
      .. "and max_limit (10), got 11" },
  { id = "adaptive: backoff_ratio 1",
    call = function() return alm.new, { backoff_ratio = 1 } end,
    raises = NEW .. "option 'backoff_ratio' must be a number > 0 and < 1, "
      .. "got 1" },
  { id = "adaptive: backoff_ratio nan",
    call = function() return alm.new, { backoff_ratio = 0 / 0 } end,
    raises = NEW .. "option 'backoff_ratio' must be a number > 0 and < 1, "
      .. "got nan" },
  { id = "adaptive: timeout_ms 0",
    call = function() return alm.new, { timeout_ms = 0 } end,
    raises = NEW .. "option 'timeout_ms' must be a number > 0, got 0" },
  { id = "adaptive: smoothing 0",
    call = function() return alm.new, { algorithm = "gradient2",
                                        smoothing = 0 } end,
    raises = NEW .. "option 'smoothing' must be a number > 0 and <= 1, got 0" },
  { id = "adaptive: rtt_tolerance 0.5",
    call = function() return alm.new, { algorithm = "gradient2",
                                        rtt_tolerance = 0.5 } end,
    raises = NEW .. "option 'rtt_tolerance' must be a number >= 1, got 0.5" },
  { id = "adaptive: long_window 0",
    call = function() return alm.new, { algorithm = "gradient2",
                                        long_window = 0 } end,
    raises = NEW .. "option 'long_window' must be an integer >= 1, got 0" },
  { id = "adaptive: queue_size \"log\"",
    call = function() return alm.new, { algorithm = "gradient2",
                                        queue_size = "log" } end,
    raises = NEW .. "option 'queue_size' must be a number >= 0, \"sqrt\" or "
      .. 'a function, got "log"' },
  { id = "adaptive: smoothing given to aimd",
    call = function() return alm.new, { smoothing = 0.3 } end,
    raises = NEW .. "option 'smoothing' is read only by algorithm "
      .. '"gradient2" (algorithm is "aimd"), got 0.3' },
  { id = "adaptive: timeout_ms given to gradient2",
    call = function() return alm.new, { algorithm = "gradient2",
                                        timeout_ms = 100 } end,
    raises = NEW .. "option 'timeout_ms' is read only by algorithm \"aimd\" "
      .. '(algorithm is "gradient2"), got 100' },
  { id = "adaptive: window_ms -1",
    call = function() return alm.new, { window_ms = -1 } end,
    raises = NEW .. "option 'window_ms' must be an integer >= 0, got -1" },
  { id = "adaptive: window_min_samples 0",
    call = function() return alm.new, { window_min_samples = 0 } end,
    raises = NEW .. "option 'window_min_samples' must be an integer >= 1, "
      .. "got 0" },

  -- methods -----------------------------------------------------------------
  { id = "adaptive.acquire: called with . (no self)",
    call = function() return alm.acquire end,
    raises = "adaptive_limit.acquire: self must be an adaptive limit, got "
      .. "nil (did you mean obj:acquire(...)?)" },
  { id = "adaptive.stats: a breaker as self",
    call = function() return alm.stats, cb end,
    raises = "adaptive_limit.stats: self must be an adaptive limit, got "
      .. "table" },
  { id = "adaptive.release: a permit released twice",
    call = function()
      local lim, p = held()
      lim:release(p, "success", 1)
      return alm.release, lim, p, "success", 1
    end,
    raises = RELEASE .. "permit 1048577 was already released" },
  { id = "adaptive.release: an old permit of a reused slot",
    call = function()
      local lim, p = held()
      lim:release(p, "ignored")
      assert(lim:acquire())
      return alm.release, lim, p, "ignored"
    end,
    raises = RELEASE .. "permit 1048577 was already released" },
  { id = "adaptive.release: a permit of another limit",
    call = function()
      local _, p = held()
      return alm.release, alm.new(), p, "success"
    end,
    raises = RELEASE .. "permit must be a permit that acquire() of this "
      .. "limit gave, got 1048577" },
  { id = "adaptive.release: no permit",
    call = function()
      local lim = held()
      return alm.release, lim, nil, "success"
    end,
    raises = RELEASE .. "permit must be a permit that acquire() of this "
      .. "limit gave, got nil" },
  { id = "adaptive.release: a made-up number",
    call = function()
      local lim = held()
      return alm.release, lim, 2 ^ 20 + 0.5, "success"
    end,
    raises = RELEASE .. "permit must be a permit that acquire() of this "
      .. "limit gave, got 1048576.5" },
  { id = "adaptive.release: outcome \"failure\"",
    call = function()
      local lim, p = held()
      return alm.release, lim, p, "failure"
    end,
    raises = RELEASE .. 'outcome must be "success", "dropped" or '
      .. '"ignored", got "failure"' },
  { id = "adaptive.release: no outcome",
    call = function()
      local lim, p = held()
      return alm.release, lim, p
    end,
    raises = RELEASE .. 'outcome must be "success", "dropped" or '
      .. '"ignored", got nil' },
  { id = "adaptive.release: rtt_ms nan",
    call = function()
      local lim, p = held()
      return alm.release, lim, p, "success", 0 / 0
    end,
    raises = RELEASE .. "rtt_ms must be a number >= 0 or nil, got nan" },
  { id = "adaptive.release: rtt_ms a string",
    call = function()
      local lim, p = held()
      return alm.release, lim, p, "dropped", "10"
    end,
    raises = RELEASE .. 'rtt_ms must be a number >= 0 or nil, got "10"' },
  { id = "adaptive.call: no function",
    call = function() return alm.call, alm.new(), nil end,
    raises = "adaptive_limit.call: fn must be a function, got nil" },
  { id = "adaptive.call: past the limit",
    call = function()
      local lim = held { name = "db", initial_limit = 1 }
      return alm.call, lim, noop
    end,
    returns = { nil, "limit_exceeded: adaptive limit 'db' reached: limit 1, "
                     .. "1 in flight" } },
  { id = "adaptive.call: a queue_size function returning nil",
    call = function()
      return alm.call, alm.new { algorithm = "gradient2",
                                 queue_size = noop }, noop
    end,
    raises = "adaptive_limit: option 'queue_size' function must return a "
      .. "number >= 0, got nil" },
}
