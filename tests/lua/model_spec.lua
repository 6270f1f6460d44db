-- Model-based tests: random operation sequences run against the real,
-- C-backed breaker, health monitor and retry policy and against reference
-- models in plain Lua (tests/lua/model/), compared after every step. The
-- breaker runs in each of its modes (consecutive failures, count window,
-- time window), with its manual states in all of them.
--
-- The seed is fixed and printed (`# model seed: N`); SPRUN_SEED=N runs
-- with another, and SPRUN_MODEL_RUNS=K scales every group to K sequences
-- (SPRUN_SEED=S SPRUN_MODEL_RUNS=1 replays the one sequence of seed S). A
-- failure shows the shortest failing sequence the shrinker found.
local driver = require "model.driver"

local SEED = tonumber(os.getenv("SPRUN_SEED") or "") or 20240917
local RUNS = tonumber(os.getenv("SPRUN_MODEL_RUNS") or "")

-- Sequences per group in one `make test` run: 100,000 in all. A breaker
-- group runs one mode: nil for the others.
local GROUPS = {
  { "breaker", false, 16000, "circuit breaker, consecutive, literal times",
    "consecutive" },
  { "breaker", true, 2000, "circuit breaker, consecutive, virtual time",
    "consecutive" },
  { "breaker", false, 16000, "circuit breaker, count window, literal times",
    "count" },
  { "breaker", true, 2000, "circuit breaker, count window, virtual time",
    "count" },
  { "breaker", false, 16000, "circuit breaker, time window, literal times",
    "time" },
  { "breaker", true, 2000, "circuit breaker, time window, virtual time",
    "time" },
  { "health", false, 22000, "health monitor, literal times" },
  { "health", true, 2000, "health monitor, virtual time" },
  { "retry", nil, 22000, "retry policy" },
}
local BREAKER_MODES = { "consecutive", "count", "time" }

-- What the default run must reach at least once (see driver.counts).
local MUST_REACH = {
  "breaker transitions to opened",
  "breaker transitions to half_open",
  "breaker transitions to closed",
  "breaker steps with three transitions",
  "breaker calls rejected",
  "breaker late results ignored",
  "breaker half-open probes finished",
  "breaker calls finished out of order",
  "breaker transitions made by the loop's timer",
  "breaker openings by failures",
  "breaker openings by failure_rate",
  "breaker openings by slow_call_rate",
  "breaker openings at a rate exactly the threshold",
  "breaker slow calls in the window",
  "breaker window calls evicted (count)",
  "breaker window calls expired (time)",
  "breaker transitions to forced_open",
  "breaker transitions to disabled",
  "breaker transitions to isolated",
  "breaker calls rejected while forced open",
  "breaker calls rejected while isolated",
  "breaker calls admitted while disabled",
  "breaker sequences with per-call events checked",
  "health crashes exactly crash_window_ms old",
  "health unhealthy steps",
  "health crashes at a time before the latest",
  "health workers forgotten",
  "retry delays jittered",
  "retry delays at the cap",
}

io.write(string.format("# model seed: %d\n", SEED))

describe("model-based tests", function()
  local restore
  local total_seqs, total_steps, total_time = 0, 0, 0
  -- per breaker mode: sequences, steps
  local mode_seqs, mode_steps = {}, {}
  for _, mode in ipairs(BREAKER_MODES) do
    mode_seqs[mode], mode_steps[mode] = 0, 0
  end

  setup(function()
    restore = driver.wire()
    driver.reset_counts()
  end)

  teardown(function()
    if restore then
      restore()
    end
  end)

  for _, g in ipairs(GROUPS) do
    local kind, virtual, count, what, mode = g[1], g[2], RUNS or g[3], g[4],
                                             g[5]
    it(string.format("%s: %d sequences agree with the model (seed %d)",
                     what, count, SEED), function()
      local t0 = os.clock()
      local steps = driver.check(kind, SEED, count, virtual, mode)
      local t = os.clock() - t0
      total_seqs, total_steps = total_seqs + count, total_steps + steps
      total_time = total_time + t
      if mode then
        mode_seqs[mode] = mode_seqs[mode] + count
        mode_steps[mode] = mode_steps[mode] + steps
      end
      io.write(string.format("# %s: %d sequences, %d steps, %.1f s cpu\n",
                             what, count, steps, t))
    end)
  end

  it("reached every behaviour it is meant to exercise", function()
    local modes = {}
    for _, mode in ipairs(BREAKER_MODES) do
      modes[#modes + 1] = string.format("%s %d sequences, %d steps", mode,
                                        mode_seqs[mode], mode_steps[mode])
    end
    io.write(string.format("# model: %d sequences, %d steps, %.1f s cpu; "
      .. "breaker modes: %s; %s\n", total_seqs, total_steps, total_time,
      table.concat(modes, "; "), driver.observers()))
    local missing = {}
    for _, what in ipairs(MUST_REACH) do
      io.write(string.format("#   %-50s %d\n", what,
                             driver.counts[what] or 0))
      if (driver.counts[what] or 0) == 0 then
        missing[#missing + 1] = what
      end
    end
    -- A replay of a few sequences need not reach them all.
    if RUNS == nil then
      assert.are.same({}, missing)
    end
  end)
end)
