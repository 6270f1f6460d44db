-- A full pipeline (retry + breaker + bulkhead + per-attempt timeout) on an
-- operation that succeeds at once, next to the bare call and to each
-- stage alone.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local sprun = require "sprun"
local H = require "harness"

local function op(x) return x end

local bare = H.case("bare call of the operation", 1e7, function(n)
  local f = op
  for i = 1, n do f(i) end
end)

local function bench(name, opts, n)
  local p = sprun.pipeline(opts)
  H.case(name, n, function(k)
    for i = 1, k do p:execute(op, i) end
  end, bare)
end

bench("pipeline: retry only", { name = "r", retry = { max_attempts = 3 } }, 1e6)
bench("pipeline: breaker only", { name = "b", breaker = {} }, 1e6)
bench("pipeline: bulkhead only",
      { name = "h", bulkhead = { max_concurrent = 10, max_queue = 100 } }, 1e6)
bench("pipeline: timeout only", { name = "t", timeout_ms = 2000 }, 1e5)
bench("pipeline: retry + breaker + bulkhead + timeout", {
  name = "full", timeout_ms = 2000, retry = { max_attempts = 3 },
  breaker = { failure_threshold = 5 },
  bulkhead = { max_concurrent = 10, max_queue = 100 },
}, 1e5)
