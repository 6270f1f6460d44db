-- Policies for HTTP-like services (run with:
--   build/sprun --policy scripts/policies/http.lua scripts/policies/use_http.lua)
local function service(timeout_ms)
  return {
    timeout_ms = timeout_ms,
    retry = { policy = "idempotent",
              budget = { ratio = 0.1, min_retries_per_s = 2 } },
    bulkhead = { max_concurrent = 16, max_queue = 32 },
  }
end

local catalog = service(300)
catalog.breaker = "catalog"
catalog.fallback = function(err)
  return { items = {}, stale = true, error = tostring(err) }
end

local payments = service(1000)
payments.breaker = { failure_threshold = 3, reset_timeout_ms = 10000 }
payments.retry = nil -- never retry a payment

return {
  breakers = {
    catalog = { failure_threshold = 5, reset_timeout_ms = 5000 },
  },
  retry_policies = {
    idempotent = { max_attempts = 3, backoff_ms = { 20, 50 },
                   retriable_errors = { "timeout", "unavailable",
                                        "connection_refused" } },
  },
  pipelines = { catalog = catalog, payments = payments },
}
