-- Policies for a pool of worker processes (run with:
--   build/sprun --policy scripts/policies/workers.lua scripts/policies/use_workers.lua)
-- A policy file is Lua: it may compute values and define functions.
local workers = 4

return {
  breakers = {
    -- Opens after 5 failures in a row; probes again after 2 s.
    workers = { failure_threshold = 5, reset_timeout_ms = 2000 },
  },
  retry_policies = {
    worker_crash = { max_attempts = 3, backoff = "exponential",
                     base_backoff_ms = 10, max_backoff_ms = 200,
                     jitter = "full", seed = 1,
                     retriable_errors = { "timeout", "worker_crash" } },
  },
  health_monitors = {
    workers = { max_crashes = 10, crash_window_ms = 60000 },
  },
  pipelines = {
    jobs = {
      timeout_ms = 500,
      retry = { policy = "worker_crash",
                budget = { ratio = 0.2, min_retries_per_s = 5 } },
      breaker = "workers",
      -- One job per worker at a time, and at most 4 waiting per worker.
      bulkhead = { max_concurrent = workers, max_queue = workers * 4 },
      fallback = function(err)
        return nil, err
      end,
    },
  },
}
