/* sprun: the public C API of the fault-tolerance core.
 *
 * The core is pure C11: it never reads a clock, never allocates on a hot
 * path and keeps no global state. Every function that depends on time takes
 * `now_ms`, a monotonic time in milliseconds chosen by the caller, so that
 * every rule can be driven with literal times from tests.
 *
 * Conventions (after libuv):
 *  - functions return `int`: 0 (or a non-negative event mask, where said)
 *    on success, or a negative SP_E* error code;
 *  - results go through out-parameters;
 *  - struct fields are marked public (the caller may set them before init),
 *    read-only (the caller may read them at any time) or private.
 */
#ifndef SPRUN_H
#define SPRUN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SP_VERSION_MAJOR 0
#define SP_VERSION_MINOR 1
#define SP_VERSION_PATCH 0
#define SP_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

/* One table gives the codes, their names and their messages. */
#define SP_ERRNO_MAP(XX)                                                     \
  XX(EINVAL, -1, "invalid argument")                                         \
  XX(ENOMEM, -2, "out of memory")                                            \
  XX(ECIRCUITOPEN, -3, "circuit open")                                       \
  XX(ETIMEDOUT, -4, "timed out")                                             \
  XX(ECANCELED, -5, "cancelled")                                             \
  XX(ENOENT, -6, "no such entry")                                            \
  XX(ERANGE, -7, "value out of range")                                       \
  XX(EFULL, -8, "capacity reached")

typedef enum {
#define XX(code, value, _) SP_##code = value,
  SP_ERRNO_MAP(XX)
#undef XX
  SP_ERRNO_MIN = -8
} sp_errno_t;

/* "SP_EINVAL" for SP_EINVAL, "SP_EUNKNOWN" for anything else. */
const char *sp_err_name(int err);
/* "invalid argument" for SP_EINVAL, "unknown error" for anything else. */
const char *sp_strerror(int err);

const char *sp_version_string(void);

/* ------------------------------------------------------------------------ */
/* Circuit breaker                                                           */

typedef enum {
  SP_BREAKER_STATE_CLOSED = 0,
  SP_BREAKER_STATE_OPEN = 1,
  SP_BREAKER_STATE_HALF_OPEN = 2,
  /* Manual states: entered and left only by the calls that name them
   * (sp_breaker_force_open, sp_breaker_disable, sp_breaker_isolate; left
   * by sp_breaker_reset or another manual call). */
  /* Rejects every call (counted in rejected_count); no half-open. */
  SP_BREAKER_STATE_FORCED_OPEN = 3,
  /* Admits every call and counts it, but never changes state. */
  SP_BREAKER_STATE_DISABLED = 4,
  /* Rejects every call like FORCED_OPEN but counts nothing: rejections are
   * not added to rejected_count and manual records are ignored. */
  SP_BREAKER_STATE_ISOLATED = 5
} sp_breaker_state_t;

/* Transitions a call caused, returned as a bit mask by every function that
 * can change the breaker. When several bits are set they happened in this
 * order: HALF_OPENED, then CLOSED, then OPENED. (A manual failure right
 * after the reset timeout turns the breaker half-open, then opens it
 * again. With half_open_max_calls 0 the half-open breaker closes at once,
 * and with failure_threshold 1 that failure then opens it: all three.) */
enum {
  SP_BREAKER_OPENED = 1 << 0,
  SP_BREAKER_HALF_OPENED = 1 << 1,
  SP_BREAKER_CLOSED = 1 << 2,
  /* Manual transitions, each returned alone by the call that makes it. */
  SP_BREAKER_FORCED_OPENED = 1 << 3,
  SP_BREAKER_DISABLED = 1 << 4,
  SP_BREAKER_ISOLATED = 1 << 5,
  /* Not a transition: the result was ignored because the breaker changed
   * state (its generation moved on) after the call was admitted. */
  SP_BREAKER_IGNORED = 1 << 8
};

/* Outcome of one call, as the breaker counts it. */
typedef enum {
  SP_OUTCOME_SUCCESS = 0,
  SP_OUTCOME_FAILURE = 1,
  /* A failure for the caller that the breaker does not count (the
   * `is_failure` predicate said no). It still returns a half-open permit. */
  SP_OUTCOME_NEUTRAL = 2
} sp_outcome_t;

typedef enum {
  /* `failure_threshold` consecutive failures open the breaker. */
  SP_WINDOW_CONSECUTIVE = 0,
  /* Rate windows (Resilience4j style): closed, the breaker opens when, with
   * at least min_calls calls in the window, the failure rate or the
   * slow-call rate reaches its threshold (>=). The rates are checked only
   * when a call is recorded. Neutral outcomes are not in the window. */
  /* The last window_size calls: a ring with running counts. */
  SP_WINDOW_COUNT = 1,
  /* The calls of the last window_ms, in window_buckets buckets of
   * window_ms / window_buckets ms each, aligned on multiples of that width
   * from time 0. A call counts until window_buckets bucket widths have
   * begun after the start of its own bucket. */
  SP_WINDOW_TIME = 2
} sp_window_type_t;

/* Why the breaker last opened (sp_breaker_t.open_reason). */
typedef enum {
  SP_OPEN_REASON_NONE = 0,
  SP_OPEN_REASON_FAILURES = 1,      /* consecutive failures, failed probe */
  SP_OPEN_REASON_FAILURE_RATE = 2,  /* rate window: failure rate */
  SP_OPEN_REASON_SLOW_CALL_RATE = 3, /* rate window: slow-call rate */
  SP_OPEN_REASON_FLEET = 4           /* sp_breaker_trip: evidence elsewhere */
} sp_open_reason_t;

#define SP_BREAKER_MAX_WINDOW_SIZE 100000 /* count window */
#define SP_BREAKER_MAX_BUCKETS 1000       /* time window */

typedef struct sp_breaker_config_s {
  uint32_t failure_threshold;   /* >= 1 (consecutive mode only) */
  uint32_t half_open_max_calls; /* 0 closes as soon as the timeout ends */
  uint64_t reset_timeout_ms;    /* from the moment it opened */
  int window_type;              /* sp_window_type_t */
  /* The fields below are read only by rate windows (COUNT, TIME); the
   * consecutive mode ignores them whatever they hold. */
  uint32_t window_size;    /* COUNT: 1..SP_BREAKER_MAX_WINDOW_SIZE calls */
  uint64_t window_ms;      /* TIME: >= 1, a multiple of window_buckets */
  uint32_t window_buckets; /* TIME: 1..SP_BREAKER_MAX_BUCKETS */
  /* >= 1: calls needed in the window before a rate can open it. In a
   * COUNT window a value above window_size acts as window_size. */
  uint32_t min_calls;
  /* [0, 1]; 0 opens it as soon as min_calls calls are in the window. */
  double failure_rate;
  double slow_call_rate; /* [0, 1], read only when slow_call_ms > 0 */
  /* A call that took >= slow_call_ms is slow (successful or not); 0 counts
   * no call as slow. */
  uint64_t slow_call_ms;
} sp_breaker_config_t;

/* One bucket of a time window (private). */
typedef struct sp_breaker_bucket_s {
  uint64_t epoch; /* start time / width of the bucket's span */
  uint32_t calls;
  uint32_t failures;
  uint32_t slow;
  uint32_t pad_;
} sp_breaker_bucket_t;

/* The Lua binding (lua/sprun/circuit_breaker.lua) does two cases of
 * consecutive mode itself, on this struct, to spare a call: a closed
 * breaker admitting a call and counting its success (as sp_breaker_acquire
 * and sp_breaker_record do), and an open breaker rejecting a call before
 * its reset timeout (as sp_breaker_acquire does). A change to either here
 * must be made there too; the model-based tests compare the two. */
typedef struct sp_breaker_s {
  /* read-only: configuration, as given to sp_breaker_init. */
  sp_breaker_config_t config;
  /* read-only: sp_breaker_state_t. */
  int state;
  /* read-only: moves on at every transition (and at reset). A result is
   * counted only if it carries the generation current at that moment. */
  uint32_t generation;
  /* read-only: consecutive failures (closed), or the failures that
   * opened the breaker (open). */
  uint32_t failure_count;
  /* read-only: consecutive successes since the last failure or
   * transition; in half-open, the successful probes so far. */
  uint32_t success_count;
  /* read-only: probes in flight (half-open). */
  uint32_t half_open_calls;
  /* read-only: when it last opened; 0 if it never did. */
  uint64_t opened_at_ms;
  /* read-only: running totals, never reset except by sp_breaker_reset. */
  uint64_t rejected_count;
  uint64_t total_successes;
  uint64_t total_failures;
  uint64_t ignored_count;
  /* read-only: rate windows, the calls now in the window, the failures
   * and the slow calls among them (0 in consecutive mode). Zeroed when
   * the breaker opens, closes, is reset or enters a manual state. */
  uint64_t window_calls;
  uint64_t window_failures;
  uint64_t window_slow;
  /* read-only: sp_open_reason_t, why it last opened. */
  int open_reason;
  /* read-only: the probes admitted since the breaker went half-open
   * (Snakepit's half_open_calls: in flight or done); 0 in other states. */
  uint32_t half_open_admitted;
  /* read-only: every failure counted since the breaker last closed or was
   * reset, in every state (Snakepit's failure_count). */
  uint64_t failures_since_close;
  /* read-only: running total of the slow calls a rate window counted
   * (never reset except by sp_breaker_reset). */
  uint64_t total_slow;
  /* read-write: while non-zero, an open breaker stays open past its reset
   * timeout (sp_breaker_tick does not half-open it). A fleet holds the
   * breakers of the nodes that wait for another node's probe. */
  uint32_t held;
  /* private */
  uint32_t head_;                  /* COUNT: the slot of the next call */
  uint64_t epoch_;                 /* TIME: epoch of the newest bucket */
  unsigned char *ring_;            /* COUNT: window_size outcome bits */
  sp_breaker_bucket_t *buckets_;   /* TIME: window_buckets buckets */
} sp_breaker_t;

/* Checks the configuration and starts closed. SP_EINVAL if
 * failure_threshold is 0 (consecutive mode) or window_type is unknown, or,
 * for a rate window, if a window field is out of its range; SP_ENOMEM when
 * the window's memory cannot be allocated. A rate window allocates its ring
 * or buckets here, once: call sp_breaker_close to free them. */
int sp_breaker_init(sp_breaker_t *b, const sp_breaker_config_t *config);

/* Frees what sp_breaker_init allocated; safe to call twice, and a no-op in
 * consecutive mode. The breaker must not be used afterwards. */
void sp_breaker_close(sp_breaker_t *b);

/* Applies the open -> half-open transition if its time has come, and moves
 * a TIME window on to now_ms (which never opens the breaker by itself).
 * Returns the transitions made (0 or HALF_OPENED, possibly with CLOSED when
 * half_open_max_calls is 0). */
int sp_breaker_tick(sp_breaker_t *b, uint64_t now_ms);

/* Admits or rejects one call. On admission returns the (non-negative)
 * transitions made; the caller reads b->generation right after and passes it
 * to sp_breaker_record. On rejection returns SP_ECIRCUITOPEN and counts it
 * in rejected_count. */
int sp_breaker_acquire(sp_breaker_t *b, uint64_t now_ms);

/* Would sp_breaker_acquire admit a call now? Reserves nothing, changes
 * nothing: call sp_breaker_tick first. Returns 1 or 0. */
int sp_breaker_would_admit(const sp_breaker_t *b);

/* Ends a call admitted under `generation`. Returns the transitions made,
 * or SP_BREAKER_IGNORED if the breaker has moved on since the admission.
 * SP_EINVAL for an unknown outcome. `duration_ms` is read only by rate
 * windows with slow_call_ms set: the call is slow if it is >= slow_call_ms.
 * Manual records (below) are never slow. */
int sp_breaker_record(sp_breaker_t *b, uint32_t generation, int outcome,
                      uint64_t now_ms, uint64_t duration_ms);

/* Counts a success or a failure that did not go through acquire (the
 * seed's record_success / record_failure). No permit is returned. */
int sp_breaker_record_success(sp_breaker_t *b, uint64_t now_ms);
int sp_breaker_record_failure(sp_breaker_t *b, uint64_t now_ms);

/* Closes the breaker and zeroes every count. Returns SP_BREAKER_CLOSED if
 * it was not closed, 0 otherwise. */
int sp_breaker_reset(sp_breaker_t *b);

/* Manual states. Each moves the generation on, zeroes the counts of the
 * current state and the window (not the running totals), and returns its
 * bit (SP_BREAKER_FORCED_OPENED, SP_BREAKER_DISABLED, SP_BREAKER_ISOLATED),
 * or 0 if the breaker was already in that state. sp_breaker_reset leaves
 * any of them for closed. */
int sp_breaker_force_open(sp_breaker_t *b);
int sp_breaker_disable(sp_breaker_t *b);
int sp_breaker_isolate(sp_breaker_t *b);

/* Opens a closed or half-open breaker on evidence from elsewhere (a fleet's
 * quorum): as if its own failures had, with open_reason `reason`. Returns
 * SP_BREAKER_OPENED, or 0 in any other state (open already, manual). */
int sp_breaker_trip(sp_breaker_t *b, uint64_t now_ms, int reason);

/* Closes an open or half-open breaker at once (a probe elsewhere
 * succeeded); unlike sp_breaker_reset the running totals stay. Returns
 * SP_BREAKER_CLOSED, or 0 in any other state. */
int sp_breaker_recover(sp_breaker_t *b);

/* When the open breaker turns half-open; 0 when it is not open (a held
 * breaker gives UINT64_MAX). */
uint64_t sp_breaker_half_open_at(const sp_breaker_t *b);

/* "closed", "open", "half_open", "forced_open", "disabled", "isolated";
 * NULL for an unknown value. */
const char *sp_breaker_state_name(int state);

/* ------------------------------------------------------------------------ */
/* Health monitor                                                            */

typedef struct sp_health_config_s {
  /* 1 .. UINT32_MAX - 2: unhealthy at this many in the window. */
  uint32_t max_crashes;
  /* >= 1: workers remembered at once. The monitor keeps room for at least
   * max_crashes + 1, so a worker with a crash in the window is never
   * forgotten to make room for a new one. */
  uint32_t max_workers;
  uint64_t crash_window_ms; /* the window, boundary inclusive */
} sp_health_config_t;

/* What the monitor knows of one worker. */
typedef struct sp_worker_stats_s {
  uint32_t crashes_in_window;
  uint32_t pad_;
  uint64_t total_crashes;
  uint64_t last_crash_ms;
} sp_worker_stats_t;

typedef struct sp_health_slot_s sp_health_slot_t; /* private */

typedef struct sp_health_s {
  /* read-only */
  sp_health_config_t config;
  uint64_t total_crashes;
  /* read-only: crashes in the window as of the last call that passed
   * `now_ms` (record, expire, ...). Never more than max_crashes: the monitor
   * keeps the times of the latest max_crashes crashes, which is exactly
   * what the health decision needs. */
  uint32_t crashes_in_window;
  /* read-only: workers with at least one crash in the window, as above. */
  uint32_t workers_with_crashes;
  /* read-only: workers remembered now (<= config.max_workers, which init
   * raises to max_crashes + 1 when it was given lower). */
  uint32_t worker_count;
  /* private */
  uint32_t head_;    /* index of the oldest crash kept */
  uint64_t latest_;  /* latest time seen; earlier times are taken as it */
  uint64_t *times_;  /* ring of crash times, max_crashes long */
  uint32_t *owners_; /* ring of worker slots, parallel to times_ */
  sp_health_slot_t *slots_;
  uint32_t idle_head_, idle_tail_; /* workers with no crash in the window */
  uint32_t free_head_;             /* slots never used */
} sp_health_t;

/* Allocates the rings (the only allocation a monitor makes). SP_EINVAL for a
 * zero max_crashes or max_workers, SP_ENOMEM when memory runs out. */
int sp_health_init(sp_health_t *h, const sp_health_config_t *config);
/* Frees what sp_health_init allocated; safe to call twice. */
void sp_health_close(sp_health_t *h);

/* Finds a slot for a new worker. If every slot is taken, the worker that
 * has gone longest without a crash in the window is forgotten and its slot
 * is reused: *evicted receives that slot (UINT32_MAX if none), so the caller
 * can drop its name. SP_EFULL only if every slot holds a worker with a crash
 * in the window, which the sizing above rules out. */
int sp_health_worker_add(sp_health_t *h, uint32_t *slot, uint32_t *evicted);

/* Records one crash of the worker in `slot` at `now_ms`. O(1) amortised.
 * Returns 1 if this crash made the monitor unhealthy, 0 otherwise;
 * SP_ENOENT for a slot not in use. */
int sp_health_record(sp_health_t *h, uint32_t slot, uint64_t now_ms);

/* Forgets crashes older than the window. Returns crashes_in_window. */
uint32_t sp_health_expire(sp_health_t *h, uint64_t now_ms);

/* 1 while fewer than max_crashes crashes are in the window at now_ms. */
int sp_health_is_healthy(sp_health_t *h, uint64_t now_ms);

/* Fills *out for the worker in `slot` as of now_ms; SP_ENOENT if unused. */
int sp_health_worker(sp_health_t *h, uint32_t slot, uint64_t now_ms,
                     sp_worker_stats_t *out);

/* ------------------------------------------------------------------------ */
/* Retry policy                                                              */

#define SP_RETRY_MAX_BACKOFF 64

typedef enum {
  SP_BACKOFF_LIST = 0,       /* backoff_ms[attempt], last value repeats */
  SP_BACKOFF_EXPONENTIAL = 1 /* base * multiplier^(attempt - 1) */
} sp_backoff_t;

typedef enum {
  SP_JITTER_NONE = 0,
  SP_JITTER_PROPORTIONAL = 1, /* uniform over delay +- delay * factor */
  SP_JITTER_FULL = 2,         /* uniform over [0, delay] */
  SP_JITTER_EQUAL = 3,        /* delay / 2 + uniform over [0, delay / 2] */
  SP_JITTER_DECORRELATED = 4  /* uniform over [base, previous * 3] */
} sp_jitter_t;

typedef struct sp_retry_config_s {
  uint32_t max_attempts; /* >= 1: the total number of calls */
  uint32_t backoff_count;      /* 1..SP_RETRY_MAX_BACKOFF (list backoff) */
  double backoff_ms[SP_RETRY_MAX_BACKOFF];
  int backoff;                 /* sp_backoff_t */
  double base_backoff_ms;      /* exponential: the first delay, >= 0 */
  double multiplier;           /* exponential: >= 1 */
  double max_backoff_ms;       /* the cap, >= 0 */
  int jitter;                  /* sp_jitter_t */
  double jitter_factor;        /* proportional: 0..1 */
  uint64_t seed;
} sp_retry_config_t;

typedef struct sp_retry_s {
  /* read-only */
  sp_retry_config_t config;
  /* private: xoshiro256** state and the previous decorrelated delay. */
  uint64_t rng_[4];
  double previous_;
} sp_retry_t;

/* Checks the configuration (SP_EINVAL on any value out of its range) and
 * seeds the generator. */
int sp_retry_init(sp_retry_t *r, const sp_retry_config_t *config);

/* 1 while attempt (the attempts made so far, from 1) < max_attempts. */
int sp_retry_should_retry(const sp_retry_t *r, uint32_t attempt);

/* The delay in whole milliseconds before the attempt after `attempt`
 * (attempt >= 1; 0 is taken as 1). Never negative, never above
 * max_backoff_ms. Advances the generator when jitter is on. */
double sp_retry_backoff(sp_retry_t *r, uint32_t attempt);

/* Reseeds the generator (the same seed gives the same delays). */
void sp_retry_seed(sp_retry_t *r, uint64_t seed);

/* A uniform double in [0, 1) from the policy's generator. */
double sp_retry_random(sp_retry_t *r);

/* ------------------------------------------------------------------------ */
/* Rate limiter                                                              */
/*
 * GCRA (the generic cell rate algorithm): a state is one timestamp, the
 * theoretical arrival time (TAT) of the next cell. `rate` cells per
 * `per_ms` ms make an emission interval T = per_ms / rate; a take of n is
 * admitted when TAT' = max(TAT, now) + n * T is at most now + burst * T,
 * and then TAT becomes TAT'. That is a token bucket of `burst` tokens
 * refilled at the rate, with no tokens to count.
 *
 * Time is kept in units of 1/D ms, chosen so that T is a whole number of
 * units: rate is taken as a fraction p / q (read-only rate_num / rate_den,
 * the simplest one that is the same double, denominator at most
 * SP_RATE_MAX_DENOM; else the nearest such one), so 3 per 1000 ms is 1000
 * units of 1/3 ms and stays exact for ever. The caller's time is whole ms.
 */

#define SP_RATE_MIN_RATE 1e-6
#define SP_RATE_MAX_RATE 1e9
#define SP_RATE_MAX_DENOM 1048576 /* 2^20 */

typedef struct sp_rate_config_s {
  double rate;     /* SP_RATE_MIN_RATE .. SP_RATE_MAX_RATE cells per per_ms */
  uint64_t per_ms; /* >= 1 */
  /* >= 1: the most a full state admits at once. burst * T must stay below
   * 2^62 units (sp_rate_max_burst gives the largest burst allowed). */
  uint64_t burst;
} sp_rate_config_t;

/* One GCRA state. A zeroed state is a full one (a burst available at any
 * time), so a caller that keeps many (one per key) may memset them. */
typedef struct sp_rate_state_s {
  uint64_t last_ms_; /* private: the latest time seen */
  uint64_t ahead_;   /* private: TAT - last_ms_, in units, at most 2^63 */
  uint64_t seq_;     /* private: the commit that made it (0: none) */
} sp_rate_state_t;

typedef struct sp_rate_s {
  /* read-only: configuration, as given to sp_rate_init or sp_rate_set. */
  sp_rate_config_t config;
  /* read-only: the rate as used, rate_num / rate_den cells per per_ms. */
  uint64_t rate_num;
  uint64_t rate_den;
  /* read-only: running totals, over every state given with this limiter:
   * takes admitted and refused (n > burst included), reservations made
   * and refused (too far, or n > burst), reservations given back. */
  uint64_t taken;
  uint64_t rejected;
  uint64_t reserved;
  uint64_t refused;
  uint64_t returned;
  /* private: the limiter's own state (a NULL state means this one). */
  sp_rate_state_t state;
  uint64_t unit_ms_;  /* D: units per ms */
  uint64_t interval_; /* T in units */
  uint64_t limit_;    /* burst * T in units */
  uint64_t seq_;      /* the last commit made with this limiter */
} sp_rate_t;

/* Checks the configuration and starts full. SP_EINVAL for a rate, per_ms
 * or burst out of its range (a NaN rate too), SP_ERANGE when burst * T
 * does not fit. Allocates nothing. */
int sp_rate_init(sp_rate_t *r, const sp_rate_config_t *config);

/* The largest burst sp_rate_init accepts with this rate and per_ms; 0 if
 * the rate or per_ms is out of its range. */
uint64_t sp_rate_max_burst(double rate, uint64_t per_ms);

/* Takes n cells at now_ms. Returns 1 if admitted (*retry_after_ms = 0), 0
 * if not (*retry_after_ms: the whole ms after which the same take would
 * be, >= 1; nothing taken). SP_ERANGE when n > burst: never admitted
 * (*retry_after_ms = INFINITY), counted in rejected. SP_EINVAL for n 0.
 * retry_after_ms may be NULL; s NULL is the limiter's own state. A time
 * earlier than one already seen is taken as that one. */
int sp_rate_take(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                 uint64_t now_ms, double *retry_after_ms);

/* Commits the next n cells now, however far their slot is, unless it is
 * further than max_wait_ms (INFINITY: no bound): returns 0 and *wait_ms,
 * the whole ms to wait before the cells may be used (0: now), and
 * *ticket for sp_rate_cancel. Reservations are served in the order they
 * were made, and takes cannot pass them. SP_ETIMEDOUT when the slot is
 * further than max_wait_ms or than the 2^63 units a state can hold
 * ahead (*wait_ms says how far; nothing reserved); SP_ERANGE when n >
 * burst (*wait_ms = INFINITY); SP_EINVAL for n 0 or a negative or NaN
 * max_wait_ms. wait_ms and ticket may be NULL. */
int sp_rate_reserve(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                    uint64_t now_ms, double max_wait_ms, double *wait_ms,
                    uint64_t *ticket);

/* Gives back the n cells of the reservation `ticket` that will not be
 * used, if it is still the last commit of the state: the state is then
 * as if it had never been made. Returns 1 if given back, 0 if not (a take
 * or reservation came after it, it was given back already, or the slot
 * was reused: giving back a slot in the middle would let later cells
 * through early). SP_EINVAL for n 0 or n > burst. */
int sp_rate_cancel(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                   uint64_t ticket, uint64_t now_ms);

/* New rate, per_ms and burst, keeping the running totals and the cells
 * the own state has used (a token bucket keeps its tokens: a state that
 * had used k of its burst has used k under the new one, rounded up to a
 * whole unit). Reservations already made keep their wait times. On an
 * error (as sp_rate_init's) nothing changes. */
int sp_rate_set(sp_rate_t *r, const sp_rate_config_t *config,
                uint64_t now_ms);

/* Converts a state kept under `from` to `to` as sp_rate_set converts the
 * own state (for the states a caller keeps itself, after sp_rate_set). */
void sp_rate_rescale(const sp_rate_t *from, const sp_rate_t *to,
                     sp_rate_state_t *s, uint64_t now_ms);

/* The whole cells a take could have at now_ms (0 while reservations or
 * takes are ahead of the burst). Changes nothing. */
uint64_t sp_rate_available(const sp_rate_t *r, const sp_rate_state_t *s,
                           uint64_t now_ms);

/* The first ms at which the state is full again (TAT <= now), UINT64_MAX
 * if later than that: from then on it can be dropped (replaced by a zeroed
 * one) without changing any answer. */
uint64_t sp_rate_full_at(const sp_rate_t *r, const sp_rate_state_t *s);

/* ------------------------------------------------------------------------ */
/* Adaptive concurrency limit                                                */

/* The largest limit a configuration may give (in_flight is a uint32_t). */
#define SP_ADAPTIVE_MAX_LIMIT 1000000

typedef enum {
  /* Additive increase, multiplicative decrease, on drops. */
  SP_ADAPTIVE_AIMD = 0,
  /* Netflix's Gradient2: the ratio of a long-term to a short-term RTT. */
  SP_ADAPTIVE_GRADIENT2 = 1
} sp_adaptive_algorithm_t;

/* How a call that held a permit ended, as the limit counts it. */
typedef enum {
  SP_ADAPTIVE_SUCCESS = 0, /* a sample: its RTT counts */
  /* a sample that also says "overloaded" (aimd backs off; gradient2
   * reads only its RTT, as Netflix's does) */
  SP_ADAPTIVE_DROPPED = 1,
  SP_ADAPTIVE_IGNORED = 2  /* no sample: only the permit comes back */
} sp_adaptive_outcome_t;

/* Gradient2's queue allowance (sp_adaptive_config_t.queue_mode). */
typedef enum {
  SP_ADAPTIVE_QUEUE_FIXED = 0, /* queue_size */
  /* max(queue_size, floor(sqrt(floor(limit)))), Netflix's square root */
  SP_ADAPTIVE_QUEUE_SQRT = 1
} sp_adaptive_queue_t;

/* A field marked aimd or gradient2 is read only by that algorithm; the
 * other one ignores it whatever it holds. */
typedef struct sp_adaptive_config_s {
  int algorithm;           /* sp_adaptive_algorithm_t */
  int queue_mode;          /* gradient2: sp_adaptive_queue_t */
  uint32_t min_limit;      /* >= 1 */
  uint32_t max_limit;      /* min_limit .. SP_ADAPTIVE_MAX_LIMIT */
  uint32_t initial_limit;  /* min_limit .. max_limit */
  /* gradient2: >= 1 updates, the long-term RTT's averaging window. */
  uint32_t long_window;
  double backoff_ratio;    /* aimd: the decrease factor, 0 < r < 1 */
  double timeout_ms;       /* aimd: an RTT above it is a drop; 0: none */
  double rtt_tolerance;    /* gradient2: >= 1 */
  double smoothing;        /* gradient2: 0 < s <= 1 */
  /* gradient2: >= 0. Read at every update, so a caller may change it
   * between calls (the Lua binding does, for a function of the limit). */
  double queue_size;
  /* 0: every sample updates the limit. Else samples are gathered in
   * windows: a window opens at its first sample and closes with the first
   * sample at or after window_ms from then that brings it to
   * window_min_samples (>= 1) samples; that sample runs one update. */
  uint64_t window_ms;
  uint32_t window_min_samples;
  uint32_t pad_;
} sp_adaptive_config_t;

typedef struct sp_adaptive_s {
  /* read-only: configuration, as given to sp_adaptive_init (queue_size is
   * read-write, see above). */
  sp_adaptive_config_t config;
  /* read-only: the estimated limit, in [min_limit, max_limit]; acquire
   * admits floor(limit) calls at once. */
  double limit;
  /* read-only: calls admitted and not yet released. Never negative: a
   * release with none in flight is refused. It can exceed floor(limit)
   * right after the limit went down. */
  uint32_t in_flight;
  uint32_t max_in_flight; /* read-only: the most ever in flight at once */
  /* read-only: running totals. */
  uint64_t acquired;
  uint64_t rejected;
  uint64_t successes;
  uint64_t dropped;
  uint64_t ignored;
  uint64_t updates; /* runs of the algorithm (samples, or windows) */
  /* read-only, gradient2: the long-term RTT (below 1e-9 ms it is 0), the
   * last short-term RTT (the sample, or the window's mean) and the last
   * gradient (1 until the first update, and for a short RTT of 0). */
  double long_rtt;
  double short_rtt;
  double gradient;
  /* private: the long-term average's warm-up, then the open window. */
  uint32_t long_count_;
  uint32_t window_count_;
  double long_sum_;
  double window_rtt_sum_;
  uint64_t window_start_;
  uint32_t window_in_flight_; /* the most in flight at a sample */
  int window_dropped_;
} sp_adaptive_t;

/* Checks the configuration (SP_EINVAL on any value out of its range) and
 * starts at initial_limit with nothing in flight. Allocates nothing. */
int sp_adaptive_init(sp_adaptive_t *a, const sp_adaptive_config_t *config);

/* Admits one call if fewer than floor(limit) are in flight: 0, and the
 * call is counted in in_flight until sp_adaptive_release. Else SP_EFULL,
 * counted in rejected. */
int sp_adaptive_acquire(sp_adaptive_t *a);

/* Ends an admitted call: `outcome` (sp_adaptive_outcome_t), its RTT in ms
 * (read for every outcome but IGNORED) and the time now (read by windows
 * only). Returns 1 if the sample went to the algorithm, alone or as the
 * one that closed its window (counted in updates; the limit may or may
 * not have moved), 0 if not (an ignored call, a window still open).
 * Refuses, changing nothing: SP_EINVAL for an unknown outcome or an RTT
 * that is not a finite number >= 0, SP_ENOENT when no call is in flight.
 * Must not be called for a call that acquire refused. */
int sp_adaptive_release(sp_adaptive_t *a, int outcome, double rtt_ms,
                        uint64_t now_ms);

/* floor(limit): how many calls acquire admits at once. */
uint32_t sp_adaptive_limit(const sp_adaptive_t *a);

/* ------------------------------------------------------------------------ */
/* DNS and HTTP on a libuv loop                                              */
/*
 * Unlike the rest of this header, these do I/O: they run on the caller's
 * libuv loop (they need libuv and libcurl at link time: pkg-config
 * --static sprun names them) and report through callbacks, libuv-style.
 * Errors are negative libuv codes (uv_err_name() and uv_strerror() describe
 * them). A callback is never called from inside the start function, and
 * never after its request was cancelled or freed.
 */

struct uv_loop_s;

/* -- DNS: getaddrinfo on libuv's thread pool -- */

typedef struct sp_dns_s sp_dns_t;

enum { SP_DNS_ANY = 0, SP_DNS_INET = 4, SP_DNS_INET6 = 6 };

/* status: 0, or a negative libuv code (UV_EAI_NONAME, ...). addrs: the
 * numeric addresses in the resolver's order, each once; valid only during
 * the call. The request is freed once the callback returns. */
typedef void (*sp_dns_cb)(sp_dns_t *req, int status,
                          const char *const *addrs, int count, void *data);

/* Starts a lookup of `host` (family: SP_DNS_*). */
int sp_dns_resolve(struct uv_loop_s *loop, const char *host, int family,
                   sp_dns_cb cb, void *data, sp_dns_t **out);
/* Gives the lookup up: the callback is not called. A lookup the thread
 * pool already runs cannot be stopped; its result is dropped, and its
 * memory goes when it ends (the loop stays alive until then). */
void sp_dns_cancel(sp_dns_t *req);

/* -- HTTP: libcurl's multi_socket interface driven by the loop --
 *
 * One sp_http_t is one connection pool: requests to the same origin reuse
 * its connections (HTTP/1.1 keep-alive, HTTP/2 streams on one
 * connection). It owns the sockets (curl opens and closes them through
 * it), one uv_poll per socket and one uv_timer. No name is ever resolved
 * by curl: a request names its host's addresses in `resolve` (or uses a
 * numeric host), so that nothing blocks and a request is freed at once,
 * whatever it is doing. */

typedef struct sp_http_s sp_http_t;
typedef struct sp_http_req_s sp_http_req_t;

typedef enum {
  SP_HTTP_DEFAULT = 0, /* HTTP/2 over TLS where the server offers it */
  SP_HTTP_1_1 = 1,     /* HTTP/1.1 only */
  SP_HTTP_2 = 2,       /* HTTP/2 over TLS, HTTP/1.1 without TLS */
  SP_HTTP_H2C = 3      /* HTTP/2 without TLS, by prior knowledge */
} sp_http_version_t;

typedef struct sp_http_options_s {
  const char *method;          /* NULL: GET */
  const char *url;
  const char *const *headers;  /* "Name: value", NULL-terminated, or NULL */
  const char *body;            /* copied; NULL for none */
  size_t body_len;
  /* "host:port:addr[,addr...]" (IPv6 addresses in brackets), or NULL. */
  const char *resolve;
  long timeout_ms;             /* the whole transfer; 0: none */
  long connect_timeout_ms;     /* 0: curl's default (300 s) */
  long low_speed_bytes;        /* a transfer slower than this ... */
  long low_speed_s;            /* ... for this many seconds fails */
  size_t max_body_bytes;       /* 0: no limit */
  int version;                 /* sp_http_version_t */
  int verify;                  /* 1: verify the peer's certificate */
  const char *ca_file;         /* NULL: the system's CAs */
  /* 1: the body is handed over in pieces (SP_HTTP_EV_BODY and
   * sp_http_take_body) instead of kept whole; max_body_bytes applies to
   * what is held at once. */
  int stream;
} sp_http_options_t;

enum {
  SP_HTTP_EV_BODY = 1, /* a streamed request holds new body bytes */
  SP_HTTP_EV_DONE = 2  /* the request ended: see sp_http_result */
};

typedef void (*sp_http_cb)(sp_http_req_t *req, int event, void *data);

/* How a request ended. */
typedef enum {
  SP_HTTP_OK = 0,
  SP_HTTP_TIMEOUT,          /* timeout_ms passed */
  SP_HTTP_CONNECT_TIMEOUT,  /* connect_timeout_ms passed, not connected */
  SP_HTTP_REFUSED,          /* the connection was refused */
  SP_HTTP_UNREACHABLE,      /* no route to the host or network */
  SP_HTTP_CONNECT_FAILED,   /* connecting failed otherwise */
  SP_HTTP_TLS_FAILED,       /* handshake or certificate verification */
  SP_HTTP_RESET,            /* the connection broke or closed early */
  SP_HTTP_TOO_LARGE,        /* the body passed max_body_bytes */
  SP_HTTP_STALLED,          /* slower than low_speed_bytes for too long */
  SP_HTTP_BAD_RESPONSE,     /* not HTTP (status line, chunk sizes, ...) */
  SP_HTTP_FAILED            /* anything else (the message says what) */
} sp_http_outcome_t;

typedef struct sp_http_result_s {
  int outcome;               /* sp_http_outcome_t */
  const char *message;       /* what curl said, "" on success */
  long status;               /* 0 when no response came */
  int http_version;          /* 10, 11, 20, 30; 0 when none */
  /* The last response's header block as received ("HTTP/1.1 200 OK\r\n
   * Name: value\r\n...\r\n"), and the body (all of it, or what streaming
   * left untaken). Valid until the request is freed. */
  const char *head;
  size_t head_len;
  const char *body;
  size_t body_len;
  long retry_after_s;        /* Retry-After in seconds, -1 without one */
  /* Milliseconds from the start: connected, TLS done, first byte, end. */
  double connect_ms, tls_ms, ttfb_ms, total_ms;
} sp_http_result_t;

int sp_http_new(struct uv_loop_s *loop, sp_http_t **out);
/* Ends every request (no callback), closes every connection and frees the
 * pool once the loop has run the handles' close callbacks. Requests not
 * freed yet stay valid for sp_http_req_free and nothing else. */
void sp_http_close(sp_http_t *http);

/* Starts a request; cb(req, SP_HTTP_EV_*, data) reports it. */
int sp_http_start(sp_http_t *http, const sp_http_options_t *options,
                  sp_http_cb cb, void *data, sp_http_req_t **out);
/* After SP_HTTP_EV_DONE: how it ended (SP_ENOENT before). */
int sp_http_result(const sp_http_req_t *req, sp_http_result_t *out);
/* A streamed request's body bytes held so far (*len 0: none); the next
 * call or sp_http_take_done hands them back, and a transfer paused
 * because too much was held resumes. */
const char *sp_http_take_body(sp_http_req_t *req, size_t *len);
void sp_http_take_done(sp_http_req_t *req);
/* Frees a request; one still running is aborted at once and its
 * connection closed (an HTTP/2 stream is reset instead). */
void sp_http_req_free(sp_http_req_t *req);

typedef struct sp_http_stats_s {
  unsigned running;  /* started, not done */
  unsigned live;     /* not freed */
  unsigned sockets;  /* open sockets (connections, idle ones too) */
  unsigned polls;    /* uv_poll handles open */
} sp_http_stats_t;

void sp_http_stats(const sp_http_t *http, sp_http_stats_t *out);

#ifdef __cplusplus
}
#endif

#endif /* SPRUN_H */
