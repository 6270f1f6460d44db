-- Model-based tests: random operation sequences run against the real,
-- C-backed breaker, health monitor and retry policy and against reference
-- models in plain Lua (tests/lua/model/), compared after every step.
--
-- The seed is fixed and printed (`# model seed: N`); SPRUN_SEED=N runs
-- with another, and SPRUN_MODEL_RUNS=K scales every group to K sequences
-- (SPRUN_SEED=S SPRUN_MODEL_RUNS=1 replays the one sequence of seed S). A
-- failure shows the shortest failing sequence the shrinker found.
local driver = require "model.driver"

local SEED = tonumber(os.getenv("SPRUN_SEED") or "") or 20240917
local RUNS = tonumber(os.getenv("SPRUN_MODEL_RUNS") or "")

-- Sequences per group in one `make test` run: 100,000 in all.
local GROUPS = {
  { "breaker", false, 52000, "circuit breaker, literal times" },
  { "breaker", true, 6000, "circuit breaker, virtual time" },
  { "health", false, 22000, "health monitor, literal times" },
  { "health", true, 2000, "health monitor, virtual time" },
  { "retry", nil, 18000, "retry policy" },
}

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
    local kind, virtual, count, what = g[1], g[2], RUNS or g[3], g[4]
    it(string.format("%s: %d sequences agree with the model (seed %d)",
                     what, count, SEED), function()
      local t0 = os.clock()
      local steps = driver.check(kind, SEED, count, virtual)
      local t = os.clock() - t0
      total_seqs, total_steps = total_seqs + count, total_steps + steps
      total_time = total_time + t
      io.write(string.format("# %s: %d sequences, %d steps, %.1f s cpu\n",
                             what, count, steps, t))
    end)
  end

  it("reached every behaviour it is meant to exercise", function()
    io.write(string.format("# model: %d sequences, %d steps, %.1f s cpu; "
      .. "%s\n", total_seqs, total_steps,
      total_time, driver.observers()))
    local missing = {}
    for _, what in ipairs(MUST_REACH) do
      io.write(string.format("#   %-46s %d\n", what,
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
