-- The whole C surface of sprun that Lua reaches through the FFI: one guarded
-- ffi.cdef mirroring runtime/include/sprun.h (checked field by field by
-- tests/lua/ffi_layout_spec.lua), plus the clock of runtime/lua/module.c.
--
-- Inside the `sprun` executable the symbols are in the process (it links
-- with -Wl,-E), so ffi.C has them. Under a plain luajit, `require` loads C
-- modules RTLD_LOCAL, so the symbols of sprun/core.so are reached by
-- ffi.load on the very file `require` found.

local ffi = require "ffi"

local pcall = pcall
local error = error
local ipairs = ipairs
local require = require
local tonumber = tonumber
local tostring = tostring
local searchpath = package.searchpath

if not pcall(ffi.typeof, "sp_breaker_t") then
  ffi.cdef [[
typedef enum {
  SP_EINVAL = -1,
  SP_ENOMEM = -2,
  SP_ECIRCUITOPEN = -3,
  SP_ETIMEDOUT = -4,
  SP_ECANCELED = -5,
  SP_ENOENT = -6,
  SP_ERANGE = -7,
  SP_EFULL = -8,
  SP_ERRNO_MIN = -8
} sp_errno_t;

const char *sp_err_name(int err);
const char *sp_strerror(int err);
const char *sp_version_string(void);

typedef enum {
  SP_BREAKER_STATE_CLOSED = 0,
  SP_BREAKER_STATE_OPEN = 1,
  SP_BREAKER_STATE_HALF_OPEN = 2,
  SP_BREAKER_STATE_FORCED_OPEN = 3,
  SP_BREAKER_STATE_DISABLED = 4,
  SP_BREAKER_STATE_ISOLATED = 5
} sp_breaker_state_t;

enum {
  SP_BREAKER_OPENED = 1 << 0,
  SP_BREAKER_HALF_OPENED = 1 << 1,
  SP_BREAKER_CLOSED = 1 << 2,
  SP_BREAKER_FORCED_OPENED = 1 << 3,
  SP_BREAKER_DISABLED = 1 << 4,
  SP_BREAKER_ISOLATED = 1 << 5,
  SP_BREAKER_IGNORED = 1 << 8
};

typedef enum {
  SP_OUTCOME_SUCCESS = 0,
  SP_OUTCOME_FAILURE = 1,
  SP_OUTCOME_NEUTRAL = 2
} sp_outcome_t;

typedef enum {
  SP_WINDOW_CONSECUTIVE = 0,
  SP_WINDOW_COUNT = 1,
  SP_WINDOW_TIME = 2
} sp_window_type_t;

typedef enum {
  SP_OPEN_REASON_NONE = 0,
  SP_OPEN_REASON_FAILURES = 1,
  SP_OPEN_REASON_FAILURE_RATE = 2,
  SP_OPEN_REASON_SLOW_CALL_RATE = 3,
  SP_OPEN_REASON_FLEET = 4
} sp_open_reason_t;

enum {
  SP_BREAKER_MAX_WINDOW_SIZE = 100000,
  SP_BREAKER_MAX_BUCKETS = 1000
};

typedef struct sp_breaker_config_s {
  uint32_t failure_threshold;
  uint32_t half_open_max_calls;
  uint64_t reset_timeout_ms;
  int window_type;
  uint32_t window_size;
  uint64_t window_ms;
  uint32_t window_buckets;
  uint32_t min_calls;
  double failure_rate;
  double slow_call_rate;
  uint64_t slow_call_ms;
} sp_breaker_config_t;

typedef struct sp_breaker_bucket_s {
  uint64_t epoch;
  uint32_t calls;
  uint32_t failures;
  uint32_t slow;
  uint32_t pad_;
} sp_breaker_bucket_t;

typedef struct sp_breaker_s {
  sp_breaker_config_t config;
  int state;
  uint32_t generation;
  uint32_t failure_count;
  uint32_t success_count;
  uint32_t half_open_calls;
  uint64_t opened_at_ms;
  uint64_t rejected_count;
  uint64_t total_successes;
  uint64_t total_failures;
  uint64_t ignored_count;
  uint64_t window_calls;
  uint64_t window_failures;
  uint64_t window_slow;
  int open_reason;
  uint32_t half_open_admitted;
  uint64_t failures_since_close;
  uint64_t total_slow;
  uint32_t held;
  uint32_t head_;
  uint64_t epoch_;
  unsigned char *ring_;
  sp_breaker_bucket_t *buckets_;
} sp_breaker_t;

int sp_breaker_init(sp_breaker_t *b, const sp_breaker_config_t *config);
void sp_breaker_close(sp_breaker_t *b);
int sp_breaker_tick(sp_breaker_t *b, uint64_t now_ms);
int sp_breaker_acquire(sp_breaker_t *b, uint64_t now_ms);
int sp_breaker_would_admit(const sp_breaker_t *b);
int sp_breaker_record(sp_breaker_t *b, uint32_t generation, int outcome,
                      uint64_t now_ms, uint64_t duration_ms);
int sp_breaker_record_success(sp_breaker_t *b, uint64_t now_ms);
int sp_breaker_record_failure(sp_breaker_t *b, uint64_t now_ms);
int sp_breaker_reset(sp_breaker_t *b);
int sp_breaker_force_open(sp_breaker_t *b);
int sp_breaker_disable(sp_breaker_t *b);
int sp_breaker_isolate(sp_breaker_t *b);
int sp_breaker_trip(sp_breaker_t *b, uint64_t now_ms, int reason);
int sp_breaker_recover(sp_breaker_t *b);
uint64_t sp_breaker_half_open_at(const sp_breaker_t *b);
const char *sp_breaker_state_name(int state);

typedef struct sp_health_config_s {
  uint32_t max_crashes;
  uint32_t max_workers;
  uint64_t crash_window_ms;
} sp_health_config_t;

typedef struct sp_worker_stats_s {
  uint32_t crashes_in_window;
  uint32_t pad_;
  uint64_t total_crashes;
  uint64_t last_crash_ms;
} sp_worker_stats_t;

typedef struct sp_health_slot_s sp_health_slot_t;

typedef struct sp_health_s {
  sp_health_config_t config;
  uint64_t total_crashes;
  uint32_t crashes_in_window;
  uint32_t workers_with_crashes;
  uint32_t worker_count;
  uint32_t head_;
  uint64_t latest_;
  uint64_t *times_;
  uint32_t *owners_;
  sp_health_slot_t *slots_;
  uint32_t idle_head_, idle_tail_;
  uint32_t free_head_;
} sp_health_t;

int sp_health_init(sp_health_t *h, const sp_health_config_t *config);
void sp_health_close(sp_health_t *h);
int sp_health_worker_add(sp_health_t *h, uint32_t *slot, uint32_t *evicted);
int sp_health_record(sp_health_t *h, uint32_t slot, uint64_t now_ms);
uint32_t sp_health_expire(sp_health_t *h, uint64_t now_ms);
int sp_health_is_healthy(sp_health_t *h, uint64_t now_ms);
int sp_health_worker(sp_health_t *h, uint32_t slot, uint64_t now_ms,
                     sp_worker_stats_t *out);

enum { SP_RETRY_MAX_BACKOFF = 64 };

typedef enum {
  SP_BACKOFF_LIST = 0,
  SP_BACKOFF_EXPONENTIAL = 1
} sp_backoff_t;

typedef enum {
  SP_JITTER_NONE = 0,
  SP_JITTER_PROPORTIONAL = 1,
  SP_JITTER_FULL = 2,
  SP_JITTER_EQUAL = 3,
  SP_JITTER_DECORRELATED = 4
} sp_jitter_t;

typedef struct sp_retry_config_s {
  uint32_t max_attempts;
  uint32_t backoff_count;
  double backoff_ms[SP_RETRY_MAX_BACKOFF];
  int backoff;
  double base_backoff_ms;
  double multiplier;
  double max_backoff_ms;
  int jitter;
  double jitter_factor;
  uint64_t seed;
} sp_retry_config_t;

typedef struct sp_retry_s {
  sp_retry_config_t config;
  uint64_t rng_[4];
  double previous_;
} sp_retry_t;

int sp_retry_init(sp_retry_t *r, const sp_retry_config_t *config);
int sp_retry_should_retry(const sp_retry_t *r, uint32_t attempt);
double sp_retry_backoff(sp_retry_t *r, uint32_t attempt);
void sp_retry_seed(sp_retry_t *r, uint64_t seed);
double sp_retry_random(sp_retry_t *r);

double sp_clock_ms(void);
double sp_clock_ns(void);
double sp_loop_now_ms(void);
void sp_loop_update_time(void);

typedef struct {
  const uint64_t *now_ms;
} sp_loop_clock_t;

const sp_loop_clock_t *sp_loop_clock(void);

double sp_lua_timer_deadline(void *h, double ms);
double sp_lua_timer_after(void *h, double ms, double token, double seq);
double sp_lua_timer_add(void *h, double deadline, double token, double seq);
double sp_lua_timer_cancel(void *h, double id);
double sp_lua_timer_reserve(void *h);
]]
end

local function has_symbols(lib)
  return pcall(function() return lib.sp_breaker_init end)
end

local function load()
  if has_symbols(ffi.C) then
    return ffi.C
  end
  local ok, err = pcall(require, "sprun.core")
  if not ok then
    error("sprun: the C core is neither linked into this program nor "
          .. "loadable as the module sprun.core: " .. tostring(err), 0)
  end
  local path = searchpath("sprun.core", package.cpath)
  if path == nil then
    error("sprun: the module sprun.core is loaded but not found on "
          .. "package.cpath, so the FFI cannot open it", 0)
  end
  local lib = ffi.load(path)
  if not has_symbols(lib) then
    error("sprun: " .. path .. " does not export the sprun C API", 0)
  end
  return lib
end

local C = load()

local _M = { C = C, ffi = ffi }

-- The constants of sprun.h, under their C names.
for _, name in ipairs {
  "SP_EINVAL", "SP_ENOMEM", "SP_ECIRCUITOPEN", "SP_ETIMEDOUT", "SP_ECANCELED",
  "SP_ENOENT", "SP_ERANGE", "SP_EFULL",
  "SP_BREAKER_STATE_CLOSED", "SP_BREAKER_STATE_OPEN",
  "SP_BREAKER_STATE_HALF_OPEN", "SP_BREAKER_STATE_FORCED_OPEN",
  "SP_BREAKER_STATE_DISABLED", "SP_BREAKER_STATE_ISOLATED",
  "SP_BREAKER_OPENED", "SP_BREAKER_HALF_OPENED", "SP_BREAKER_CLOSED",
  "SP_BREAKER_FORCED_OPENED", "SP_BREAKER_DISABLED", "SP_BREAKER_ISOLATED",
  "SP_BREAKER_IGNORED",
  "SP_OUTCOME_SUCCESS", "SP_OUTCOME_FAILURE", "SP_OUTCOME_NEUTRAL",
  "SP_WINDOW_CONSECUTIVE", "SP_WINDOW_COUNT", "SP_WINDOW_TIME",
  "SP_OPEN_REASON_NONE", "SP_OPEN_REASON_FAILURES",
  "SP_OPEN_REASON_FAILURE_RATE", "SP_OPEN_REASON_SLOW_CALL_RATE",
  "SP_OPEN_REASON_FLEET",
  "SP_BREAKER_MAX_WINDOW_SIZE", "SP_BREAKER_MAX_BUCKETS",
  "SP_RETRY_MAX_BACKOFF",
  "SP_BACKOFF_LIST", "SP_BACKOFF_EXPONENTIAL",
  "SP_JITTER_NONE", "SP_JITTER_PROPORTIONAL", "SP_JITTER_FULL",
  "SP_JITTER_EQUAL", "SP_JITTER_DECORRELATED",
} do
  _M[name] = tonumber(ffi.C[name])
end

-- The adaptive concurrency limit (runtime/core/adaptive.c), in a block of
-- its own so that it can be declared apart from the rest.
if not pcall(ffi.typeof, "sp_adaptive_t") then
  ffi.cdef [[
enum { SP_ADAPTIVE_MAX_LIMIT = 1000000 };

typedef enum {
  SP_ADAPTIVE_AIMD = 0,
  SP_ADAPTIVE_GRADIENT2 = 1
} sp_adaptive_algorithm_t;

typedef enum {
  SP_ADAPTIVE_SUCCESS = 0,
  SP_ADAPTIVE_DROPPED = 1,
  SP_ADAPTIVE_IGNORED = 2
} sp_adaptive_outcome_t;

typedef enum {
  SP_ADAPTIVE_QUEUE_FIXED = 0,
  SP_ADAPTIVE_QUEUE_SQRT = 1
} sp_adaptive_queue_t;

typedef struct sp_adaptive_config_s {
  int algorithm;
  int queue_mode;
  uint32_t min_limit;
  uint32_t max_limit;
  uint32_t initial_limit;
  uint32_t long_window;
  double backoff_ratio;
  double timeout_ms;
  double rtt_tolerance;
  double smoothing;
  double queue_size;
  uint64_t window_ms;
  uint32_t window_min_samples;
  uint32_t pad_;
} sp_adaptive_config_t;

typedef struct sp_adaptive_s {
  sp_adaptive_config_t config;
  double limit;
  uint32_t in_flight;
  uint32_t max_in_flight;
  uint64_t acquired;
  uint64_t rejected;
  uint64_t successes;
  uint64_t dropped;
  uint64_t ignored;
  uint64_t updates;
  double long_rtt;
  double short_rtt;
  double gradient;
  uint32_t long_count_;
  uint32_t window_count_;
  double long_sum_;
  double window_rtt_sum_;
  uint64_t window_start_;
  uint32_t window_in_flight_;
  int window_dropped_;
} sp_adaptive_t;

int sp_adaptive_init(sp_adaptive_t *a, const sp_adaptive_config_t *config);
int sp_adaptive_acquire(sp_adaptive_t *a);
int sp_adaptive_release(sp_adaptive_t *a, int outcome, double rtt_ms,
                        uint64_t now_ms);
uint32_t sp_adaptive_limit(const sp_adaptive_t *a);
]]
end

for _, name in ipairs {
  "SP_ADAPTIVE_MAX_LIMIT", "SP_ADAPTIVE_AIMD", "SP_ADAPTIVE_GRADIENT2",
  "SP_ADAPTIVE_SUCCESS", "SP_ADAPTIVE_DROPPED", "SP_ADAPTIVE_IGNORED",
  "SP_ADAPTIVE_QUEUE_FIXED", "SP_ADAPTIVE_QUEUE_SQRT",
} do
  _M[name] = tonumber(ffi.C[name])
end

-- The rate limiter (runtime/core/rate.c), in a block of its own.
if not pcall(ffi.typeof, "sp_rate_t") then
  ffi.cdef [[
typedef struct sp_rate_config_s {
  double rate;
  uint64_t per_ms;
  uint64_t burst;
} sp_rate_config_t;

typedef struct sp_rate_state_s {
  uint64_t last_ms_;
  uint64_t ahead_;
  uint64_t seq_;
} sp_rate_state_t;

typedef struct sp_rate_s {
  sp_rate_config_t config;
  uint64_t rate_num;
  uint64_t rate_den;
  uint64_t taken;
  uint64_t rejected;
  uint64_t reserved;
  uint64_t refused;
  uint64_t returned;
  sp_rate_state_t state;
  uint64_t unit_ms_;
  uint64_t interval_;
  uint64_t limit_;
  uint64_t seq_;
} sp_rate_t;

int sp_rate_init(sp_rate_t *r, const sp_rate_config_t *config);
uint64_t sp_rate_max_burst(double rate, uint64_t per_ms);
int sp_rate_take(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                 uint64_t now_ms, double *retry_after_ms);
int sp_rate_reserve(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                    uint64_t now_ms, double max_wait_ms, double *wait_ms,
                    uint64_t *ticket);
int sp_rate_cancel(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                   uint64_t ticket, uint64_t now_ms);
int sp_rate_set(sp_rate_t *r, const sp_rate_config_t *config,
                uint64_t now_ms);
void sp_rate_rescale(const sp_rate_t *from, const sp_rate_t *to,
                     sp_rate_state_t *s, uint64_t now_ms);
uint64_t sp_rate_available(const sp_rate_t *r, const sp_rate_state_t *s,
                           uint64_t now_ms);
uint64_t sp_rate_full_at(const sp_rate_t *r, const sp_rate_state_t *s);
]]
end

-- sprun.h's #defines, which the FFI cannot read.
_M.SP_RATE_MIN_RATE = 1e-6
_M.SP_RATE_MAX_RATE = 1e9
_M.SP_RATE_MAX_DENOM = 1048576

return _M
