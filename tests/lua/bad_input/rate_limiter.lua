-- Bad-input cases (see bad_input_spec.lua) of sprun.rate_limiter: every
-- option of new() and keyed() (wrong type, out of range, a burst the rate
-- and per_ms leave no room for, unknown names), the n, key and timeout_ms
-- of take() and wait(), set_rate()'s arguments, and what wait() returns
-- for a slot that can never come.
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local rlm = sprun.rate_limiter
local cb, noop = fx.cb, fx.noop

local NEW = "rate_limiter.new: "
local KEYED = "rate_limiter.keyed: "
local RATE = "must be a number between 1e-06 and 1000000000"
local OPTIONS = "burst, clock, fleet, name, per_ms, rate"

local lim = rlm.new { name = "bad", rate = 10, burst = 2 }
local kl = rlm.keyed { name = "bad_keys", rate = 10, burst = 2 }

return {
  -- new ---------------------------------------------------------------------
  { id = "rate: options a string",
    call = function() return rlm.new, "fast" end,
    raises = NEW .. 'options must be a table, got "fast"' },
  { id = "rate: no options",
    call = function() return rlm.new end,
    raises = NEW .. "options must be a table, got nil" },
  { id = "rate: no rate",
    call = function() return rlm.new, { name = "x" } end,
    raises = NEW .. "option 'rate' " .. RATE .. ", got nil" },
  { id = "rate: rate a string",
    call = function() return rlm.new, { rate = "10" } end,
    raises = NEW .. "option 'rate' " .. RATE .. ', got "10"' },
  { id = "rate: rate 0",
    call = function() return rlm.new, { rate = 0 } end,
    raises = NEW .. "option 'rate' " .. RATE .. ", got 0" },
  { id = "rate: rate nan",
    call = function() return rlm.new, { rate = 0 / 0 } end,
    raises = NEW .. "option 'rate' " .. RATE .. ", got nan" },
  { id = "rate: rate 2e9",
    call = function() return rlm.new, { rate = 2e9 } end,
    raises = NEW .. "option 'rate' " .. RATE .. ", got 2e+09" },
  { id = "rate: per_ms 0",
    call = function() return rlm.new, { rate = 1, per_ms = 0 } end,
    raises = NEW .. "option 'per_ms' must be an integer >= 1, got 0" },
  { id = "rate: per_ms 1.5",
    call = function() return rlm.new, { rate = 1, per_ms = 1.5 } end,
    raises = NEW .. "option 'per_ms' must be an integer >= 1, got 1.5" },
  { id = "rate: per_ms a string",
    call = function() return rlm.new, { rate = 1, per_ms = "1s" } end,
    raises = NEW .. "option 'per_ms' must be an integer >= 1, got \"1s\"" },
  { id = "rate: per_ms past 2^53",
    call = function() return rlm.new, { rate = 1, per_ms = 2 ^ 53 + 2 } end,
    raises = NEW .. "option 'per_ms' must be an integer between 1 and "
      .. "9007199254740992, got 9007199254740994" },
  { id = "rate: burst 0",
    call = function() return rlm.new, { rate = 1, burst = 0 } end,
    raises = NEW .. "option 'burst' must be an integer >= 1, got 0" },
  { id = "rate: burst 2.5",
    call = function() return rlm.new, { rate = 1, burst = 2.5 } end,
    raises = NEW .. "option 'burst' must be an integer >= 1, got 2.5" },
  { id = "rate: burst true",
    call = function() return rlm.new, { rate = 1, burst = true } end,
    raises = NEW .. "option 'burst' must be an integer >= 1, got true" },
  { id = "rate: burst past what the rate and per_ms leave room for",
    call = function()
      return rlm.new, { rate = 1, per_ms = 2 ^ 40, burst = 2 ^ 23 }
    end,
    raises = NEW .. "option 'burst' must be an integer between 1 and "
      .. "4194304 with rate 1 per 1099511627776 ms, got 8388608" },
  { id = "rate: the default burst past what per_ms leaves room for",
    call = function() return rlm.new, { rate = 1e9, per_ms = 2 ^ 53 } end,
    raises = NEW .. "option 'burst' must be an integer between 1 and 262144 "
      .. "with rate 1000000000 per 9007199254740992 ms, got 1000000000 (the "
      .. "default: rate rounded up)" },
  { id = "rate: name empty",
    call = function() return rlm.new, { rate = 1, name = "" } end,
    raises = NEW .. "option 'name' must be a non-empty string, got \"\"" },
  { id = "rate: name a number",
    call = function() return rlm.new, { rate = 1, name = 7 } end,
    raises = NEW .. "option 'name' must be a non-empty string, got 7" },
  { id = "rate: clock a number",
    call = function() return rlm.new, { rate = 1, clock = 0 } end,
    raises = NEW .. "option 'clock' must be a function, got 0" },
  { id = "rate: burst misspelt",
    call = function() return rlm.new, { rate = 1, brust = 5 } end,
    raises = NEW .. "unknown option 'brust' (did you mean 'burst'?)" },
  { id = "rate: an unknown option",
    call = function() return rlm.new, { rate = 1, window = 5 } end,
    raises = NEW .. "unknown option 'window' (valid options: " .. OPTIONS
      .. ")" },
  { id = "rate: max_keys given to new",
    call = function() return rlm.new, { rate = 1, max_keys = 5 } end,
    raises = NEW .. "unknown option 'max_keys' (valid options: " .. OPTIONS
      .. ")" },
  { id = "rate: a clock that returns a string",
    call = function()
      local l = rlm.new { rate = 1, clock = function() return "now" end }
      return l.take, l
    end,
    raises = "rate_limiter: option 'clock' must return a number >= 0, got "
      .. '"now"' },

  -- keyed -------------------------------------------------------------------
  { id = "rate.keyed: max_keys 0",
    call = function() return rlm.keyed, { rate = 1, max_keys = 0 } end,
    raises = KEYED .. "option 'max_keys' must be an integer >= 1, got 0" },
  { id = "rate.keyed: max_keys past 2^24",
    call = function()
      return rlm.keyed, { rate = 1, max_keys = 2 ^ 24 + 1 }
    end,
    raises = KEYED .. "option 'max_keys' must be an integer between 1 and "
      .. "16777216, got 16777217" },
  { id = "rate.keyed: max_keys a string",
    call = function() return rlm.keyed, { rate = 1, max_keys = "many" } end,
    raises = KEYED .. "option 'max_keys' must be an integer >= 1, got "
      .. '"many"' },
  { id = "rate.keyed: rate -1",
    call = function() return rlm.keyed, { rate = -1 } end,
    raises = KEYED .. "option 'rate' " .. RATE .. ", got -1" },
  { id = "rate.keyed: max_keys misspelt",
    call = function() return rlm.keyed, { rate = 1, max_key = 5 } end,
    raises = KEYED .. "unknown option 'max_key' (did you mean 'max_keys'?)" },
  { id = "rate.keyed: an unknown option",
    call = function() return rlm.keyed, { rate = 1, ttl_ms = 5 } end,
    raises = KEYED .. "unknown option 'ttl_ms' (valid options: burst, "
      .. "clock, max_keys, name, per_ms, rate)" },

  -- take, wait --------------------------------------------------------------
  { id = "rate.take: n 0",
    call = function() return lim.take, lim, 0 end,
    raises = "rate_limiter.take: n must be an integer >= 1, got 0" },
  { id = "rate.take: n 1.5",
    call = function() return lim.take, lim, 1.5 end,
    raises = "rate_limiter.take: n must be an integer >= 1, got 1.5" },
  { id = "rate.take: n a string",
    call = function() return lim.take, lim, "2" end,
    raises = 'rate_limiter.take: n must be an integer >= 1, got "2"' },
  { id = "rate.take: nil as self",
    call = function() return rlm.take, nil end,
    raises = "rate_limiter.take: self must be a rate limiter, got nil (did "
      .. "you mean obj:take(...)?)" },
  { id = "rate.take: a breaker as self",
    call = function() return rlm.take, cb end,
    raises = "rate_limiter.take: self must be a rate limiter, got table" },
  { id = "rate.take: a keyed limiter as self",
    call = function() return rlm.take, kl end,
    raises = "rate_limiter.take: self must be a rate limiter, got table" },
  { id = "rate.take: n above the burst",
    call = function() return lim.take, lim, 3 end,
    returns = { false, math.huge } },
  { id = "rate.keyed.take: no key",
    call = function() return kl.take, kl end,
    raises = "rate_limiter.take: key must be a string or a number, got nil" },
  { id = "rate.keyed.take: a table as key",
    call = function() return kl.take, kl, {} end,
    raises = "rate_limiter.take: key must be a string or a number, got "
      .. "table" },
  { id = "rate.keyed.take: nan as key",
    call = function() return kl.take, kl, 0 / 0 end,
    raises = "rate_limiter.take: key must be a string or a number, got nan" },
  { id = "rate.keyed.take: n -1",
    call = function() return kl.take, kl, "k", -1 end,
    raises = "rate_limiter.take: n must be an integer >= 1, got -1" },
  { id = "rate.wait: n 0",
    call = function() return lim.wait, lim, 0 end,
    raises = "rate_limiter.wait: n must be an integer >= 1, got 0" },
  { id = "rate.wait: timeout_ms -1",
    call = function() return lim.wait, lim, 1, -1 end,
    raises = "rate_limiter.wait: timeout_ms must be a number >= 0, got -1" },
  { id = "rate.wait: timeout_ms a string",
    call = function() return lim.wait, lim, 1, "1s" end,
    raises = 'rate_limiter.wait: timeout_ms must be a number >= 0, got "1s"' },
  { id = "rate.wait: timeout_ms past 2^53",
    call = function() return lim.wait, lim, 1, math.huge end,
    raises = "rate_limiter.wait: timeout_ms must be a number between 0 and "
      .. "9007199254740992, got inf" },
  { id = "rate.wait: from a coroutine of a task's own", task = true,
    call = function()
      return function()
        return coroutine.resume(coroutine.create(function()
          return pcall(lim.wait, lim)
        end))
      end
    end,
    returns = { true, false, "rate_limiter.wait: called from a coroutine "
      .. "that is not a sprun task" } },
  { id = "rate.wait: n above the burst", task = true,
    call = function() return lim.wait, lim, 3 end,
    returns = { nil, "rate_limited: rate limiter 'bad': n = 3 is above the "
      .. "burst (2): never admitted" } },
  { id = "rate.keyed.wait: a function as key",
    call = function() return kl.wait, kl, noop, 1, 10 end,
    raises = "rate_limiter.wait: key must be a string or a number, got "
      .. "function" },
  { id = "rate.keyed.wait: timeout_ms nan",
    call = function() return kl.wait, kl, "k", 1, 0 / 0 end,
    raises = "rate_limiter.wait: timeout_ms must be a number >= 0, got nan" },

  -- set_rate ----------------------------------------------------------------
  { id = "rate.set_rate: no rate",
    call = function() return lim.set_rate, lim end,
    raises = "rate_limiter.set_rate: rate " .. RATE .. ", got nil" },
  { id = "rate.set_rate: rate 1e-7",
    call = function() return lim.set_rate, lim, 1e-7 end,
    raises = "rate_limiter.set_rate: rate " .. RATE .. ", got 1e-07" },
  { id = "rate.set_rate: burst 0",
    call = function() return lim.set_rate, lim, 5, 0 end,
    raises = "rate_limiter.set_rate: burst must be an integer >= 1, got 0" },
  { id = "rate.set_rate: burst past what the rate leaves room for",
    call = function()
      local l = rlm.new { rate = 1, per_ms = 2 ^ 40 }
      return l.set_rate, l, 1, 2 ^ 23
    end,
    raises = "rate_limiter.set_rate: burst must be an integer between 1 and "
      .. "4194304 with rate 1 per 1099511627776 ms, got 8388608" },
  { id = "rate.set_rate: a keyed limiter, rate a string",
    call = function() return kl.set_rate, kl, "fast" end,
    raises = "rate_limiter.set_rate: rate " .. RATE .. ', got "fast"' },
  { id = "rate.stats: a keyed limiter as self",
    call = function() return rlm.stats, kl end,
    raises = "rate_limiter.stats: self must be a rate limiter, got table" },
}
