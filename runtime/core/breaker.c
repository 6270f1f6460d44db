/* breaker: the circuit breaker's state machine.
 *
 * Closed, every call is admitted and failure_threshold consecutive failures
 * open the breaker. Open, every call is rejected until reset_timeout_ms have
 * passed since the moment it opened; then it turns half-open. Half-open, at
 * most half_open_max_calls probes run at once; that many consecutive
 * successful probes close it and any failed probe opens it again, which
 * restarts the timeout. The open -> half-open move happens lazily, in
 * sp_breaker_tick, which acquire and the manual records call first.
 *
 * The trap: a result must be counted only by the state that admitted its
 * call. Every transition moves `generation` on, acquire hands the current
 * generation to the caller, and sp_breaker_record ignores a result carrying
 * any other one. Without that, a slow call admitted while closed could close
 * a breaker that has since opened, or a late failure could open a breaker
 * that a run of probes has just closed.
 */
#include <stdlib.h>

#include "sprun.h"

/* Outcome bits of one call in a COUNT window's ring. */
#define RING_FAILURE 1u
#define RING_SLOW 2u

static int rate_window(const sp_breaker_t *b) {
  return b->config.window_type == SP_WINDOW_COUNT ||
         b->config.window_type == SP_WINDOW_TIME;
}

/* Empties the window. A COUNT ring needs no clearing: window_calls says how
 * many of its slots hold calls, so this is O(1) for it; a TIME window clears
 * its buckets, at most SP_BREAKER_MAX_BUCKETS. */
static void window_clear(sp_breaker_t *b) {
  uint32_t i;

  b->window_calls = 0;
  b->window_failures = 0;
  b->window_slow = 0;
  b->head_ = 0;
  if (b->buckets_ != NULL) {
    for (i = 0; i < b->config.window_buckets; i++) {
      b->buckets_[i].calls = 0;
      b->buckets_[i].failures = 0;
      b->buckets_[i].slow = 0;
    }
  }
}

/* TIME: moves the window on to now_ms, dropping the buckets whose span has
 * left it. A time before the newest bucket's counts in the newest bucket. */
static void window_rotate(sp_breaker_t *b, uint64_t now_ms) {
  uint64_t width, epoch, k;
  uint32_t n;
  sp_breaker_bucket_t *bk;

  n = b->config.window_buckets;
  width = b->config.window_ms / n;
  epoch = now_ms / width;
  if (epoch <= b->epoch_)
    return;
  if (epoch - b->epoch_ >= n) {
    window_clear(b);
  } else {
    /* Counted up to epoch, not while k <= epoch: with 1 ms buckets the
     * last epoch is UINT64_MAX, past which k would wrap to 0. */
    for (k = b->epoch_; k != epoch;) {
      k++;
      bk = &b->buckets_[k % n];
      b->window_calls -= bk->calls;
      b->window_failures -= bk->failures;
      b->window_slow -= bk->slow;
      bk->calls = 0;
      bk->failures = 0;
      bk->slow = 0;
      bk->epoch = k;
    }
  }
  b->epoch_ = epoch;
}

/* Adds one call to the window. */
static void window_add(sp_breaker_t *b, int failed, int slow,
                       uint64_t now_ms) {
  unsigned char bits, old;
  sp_breaker_bucket_t *bk;

  if (b->config.window_type == SP_WINDOW_COUNT) {
    bits = (unsigned char) ((failed ? RING_FAILURE : 0) |
                            (slow ? RING_SLOW : 0));
    if (b->window_calls == b->config.window_size) {
      /* Full: the slot at head_ holds the oldest call, evicted here. */
      old = b->ring_[b->head_];
      b->window_calls--;
      b->window_failures -= (old & RING_FAILURE) != 0;
      b->window_slow -= (old & RING_SLOW) != 0;
    }
    b->ring_[b->head_] = bits;
    b->head_ = b->head_ + 1 == b->config.window_size ? 0 : b->head_ + 1;
    b->window_calls++;
    b->window_failures += failed != 0;
    b->window_slow += slow != 0;
    return;
  }

  window_rotate(b, now_ms);
  bk = &b->buckets_[b->epoch_ % b->config.window_buckets];
  /* A bucket that could overflow takes no more: its sums stay exact. */
  if (bk->calls == UINT32_MAX)
    return;
  bk->calls++;
  b->window_calls++;
  if (failed) {
    bk->failures++;
    b->window_failures++;
  }
  if (slow) {
    bk->slow++;
    b->window_slow++;
  }
}

/* Which rate, if any, has reached its threshold. */
static int window_tripped(const sp_breaker_t *b) {
  uint64_t need;
  double calls;

  need = b->config.min_calls;
  if (b->config.window_type == SP_WINDOW_COUNT &&
      need > b->config.window_size)
    need = b->config.window_size;
  if (b->window_calls == 0 || b->window_calls < need)
    return SP_OPEN_REASON_NONE;
  calls = (double) b->window_calls;
  /* failures / calls and the configured rate are both the correctly
   * rounded doubles of their exact values, so an exact tie compares
   * equal: 5 of 10 reaches 0.5, 3 of 10 reaches 0.3. */
  if ((double) b->window_failures / calls >= b->config.failure_rate)
    return SP_OPEN_REASON_FAILURE_RATE;
  if (b->config.slow_call_ms > 0 &&
      (double) b->window_slow / calls >= b->config.slow_call_rate)
    return SP_OPEN_REASON_SLOW_CALL_RATE;
  return SP_OPEN_REASON_NONE;
}

static uint32_t inc32(uint32_t n) {
  return n == UINT32_MAX ? n : n + 1;
}

static uint64_t inc64(uint64_t n) {
  return n == UINT64_MAX ? n : n + 1;
}

/* Each transition sets every count the next state starts from, so that no
 * state inherits a count it does not own. The generation only has to change
 * at each transition; wrapping around is harmless. */
static int breaker_open(sp_breaker_t *b, uint64_t now_ms, int reason) {
  b->state = SP_BREAKER_STATE_OPEN;
  b->generation++;
  b->opened_at_ms = now_ms;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->half_open_admitted = 0;
  b->open_reason = reason;
  window_clear(b);
  return SP_BREAKER_OPENED;
}

static int breaker_close(sp_breaker_t *b) {
  b->state = SP_BREAKER_STATE_CLOSED;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->half_open_admitted = 0;
  b->failures_since_close = 0;
  window_clear(b);
  return SP_BREAKER_CLOSED;
}

/* Enters a manual state: the counts of the state left go, the totals stay. */
static int breaker_manual(sp_breaker_t *b, int state, int bit) {
  if (b->state == state)
    return 0;
  b->state = state;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->half_open_admitted = 0;
  window_clear(b);
  return bit;
}

static int breaker_half_open(sp_breaker_t *b) {
  b->state = SP_BREAKER_STATE_HALF_OPEN;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->half_open_admitted = 0;
  /* With no probe allowed there is nothing to wait for: the breaker closes
   * as soon as the timeout ends. */
  if (b->config.half_open_max_calls == 0)
    return SP_BREAKER_HALF_OPENED | breaker_close(b);
  return SP_BREAKER_HALF_OPENED;
}

/* Counts one success or failure in the current state. Both the permit-based
 * and the manual records come here; only the former returns a permit, which
 * the caller does before. A record that reaches an open breaker (only the
 * manual ones can) is counted in the totals but changes nothing: the
 * breaker is already open and its timeout runs from the moment it opened.
 * The same goes for a forced-open one; an isolated one counts nothing; a
 * disabled one counts like a closed one but never opens. */
static int breaker_count(sp_breaker_t *b, int outcome, uint64_t now_ms,
                         uint64_t duration_ms) {
  int counting, reason, slow;

  if (outcome != SP_OUTCOME_SUCCESS && outcome != SP_OUTCOME_FAILURE)
    /* A neutral outcome is not the breaker's business. */
    return 0;
  if (b->state == SP_BREAKER_STATE_ISOLATED)
    return 0;

  /* Closed and disabled count in the window too. */
  counting = b->state == SP_BREAKER_STATE_CLOSED ||
             b->state == SP_BREAKER_STATE_DISABLED;
  if (counting && rate_window(b)) {
    slow = b->config.slow_call_ms > 0 && duration_ms >= b->config.slow_call_ms;
    window_add(b, outcome == SP_OUTCOME_FAILURE, slow, now_ms);
    if (slow)
      b->total_slow = inc64(b->total_slow);
  }

  if (outcome == SP_OUTCOME_SUCCESS) {
    b->total_successes = inc64(b->total_successes);
    switch (b->state) {
    case SP_BREAKER_STATE_CLOSED:
    case SP_BREAKER_STATE_DISABLED:
      b->failure_count = 0;
      b->success_count = inc32(b->success_count);
      break;
    case SP_BREAKER_STATE_HALF_OPEN:
      b->success_count = inc32(b->success_count);
      if (b->success_count >= b->config.half_open_max_calls)
        return breaker_close(b);
      return 0;
    default:
      return 0;
    }
  } else {
    b->total_failures = inc64(b->total_failures);
    b->failures_since_close = inc64(b->failures_since_close);
    switch (b->state) {
    case SP_BREAKER_STATE_CLOSED:
    case SP_BREAKER_STATE_DISABLED:
      b->failure_count = inc32(b->failure_count);
      b->success_count = 0;
      if (b->state == SP_BREAKER_STATE_CLOSED && !rate_window(b) &&
          b->failure_count >= b->config.failure_threshold)
        return breaker_open(b, now_ms, SP_OPEN_REASON_FAILURES);
      break;
    case SP_BREAKER_STATE_HALF_OPEN:
      /* failure_count counts what opened the breaker: this one probe. */
      b->failure_count = 1;
      return breaker_open(b, now_ms, SP_OPEN_REASON_FAILURES);
    default:
      return 0;
    }
  }

  if (b->state == SP_BREAKER_STATE_CLOSED && rate_window(b)) {
    reason = window_tripped(b);
    if (reason != SP_OPEN_REASON_NONE) {
      /* failure_count counts what opened the breaker: the window's
       * failures. */
      b->failure_count = b->window_failures > UINT32_MAX
                             ? UINT32_MAX
                             : (uint32_t) b->window_failures;
      return breaker_open(b, now_ms, reason);
    }
  }
  return 0;
}

int sp_breaker_init(sp_breaker_t *b, const sp_breaker_config_t *config) {
  if (b == NULL || config == NULL)
    return SP_EINVAL;
  switch (config->window_type) {
  case SP_WINDOW_CONSECUTIVE:
    if (config->failure_threshold == 0)
      return SP_EINVAL;
    break;
  case SP_WINDOW_COUNT:
    if (config->window_size == 0 ||
        config->window_size > SP_BREAKER_MAX_WINDOW_SIZE)
      return SP_EINVAL;
    break;
  case SP_WINDOW_TIME:
    if (config->window_buckets == 0 ||
        config->window_buckets > SP_BREAKER_MAX_BUCKETS ||
        config->window_ms == 0 ||
        config->window_ms % config->window_buckets != 0)
      return SP_EINVAL;
    break;
  default:
    return SP_EINVAL;
  }
  if (config->window_type != SP_WINDOW_CONSECUTIVE) {
    /* Written as negations so that NaN fails them. */
    if (config->min_calls == 0 ||
        !(config->failure_rate >= 0.0 && config->failure_rate <= 1.0) ||
        !(config->slow_call_rate >= 0.0 && config->slow_call_rate <= 1.0))
      return SP_EINVAL;
  }

  b->ring_ = NULL;
  b->buckets_ = NULL;
  if (config->window_type == SP_WINDOW_COUNT) {
    b->ring_ = calloc(config->window_size, 1);
    if (b->ring_ == NULL)
      return SP_ENOMEM;
  } else if (config->window_type == SP_WINDOW_TIME) {
    b->buckets_ = calloc(config->window_buckets, sizeof(*b->buckets_));
    if (b->buckets_ == NULL)
      return SP_ENOMEM;
  }

  b->config = *config;
  b->state = SP_BREAKER_STATE_CLOSED;
  b->generation = 0;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->opened_at_ms = 0;
  b->rejected_count = 0;
  b->total_successes = 0;
  b->total_failures = 0;
  b->ignored_count = 0;
  b->half_open_admitted = 0;
  b->failures_since_close = 0;
  b->total_slow = 0;
  b->held = 0;
  b->window_calls = 0;
  b->window_failures = 0;
  b->window_slow = 0;
  b->open_reason = SP_OPEN_REASON_NONE;
  b->head_ = 0;
  b->epoch_ = 0;
  return 0;
}

void sp_breaker_close(sp_breaker_t *b) {
  if (b == NULL)
    return;
  free(b->ring_);
  free(b->buckets_);
  b->ring_ = NULL;
  b->buckets_ = NULL;
}

int sp_breaker_tick(sp_breaker_t *b, uint64_t now_ms) {
  /* A time window is kept current, so that what it reports is the window
   * as of now_ms. Expiry alone never opens the breaker. */
  if (b->buckets_ != NULL && b->state != SP_BREAKER_STATE_ISOLATED)
    window_rotate(b, now_ms);
  if (b->state != SP_BREAKER_STATE_OPEN || b->held)
    return 0;
  /* A clock that went backwards (now before opened_at) must not make the
   * unsigned difference wrap into a huge elapsed time. */
  if (now_ms < b->opened_at_ms)
    return 0;
  if (now_ms - b->opened_at_ms < b->config.reset_timeout_ms)
    return 0;
  return breaker_half_open(b);
}

int sp_breaker_acquire(sp_breaker_t *b, uint64_t now_ms) {
  int events;

  events = sp_breaker_tick(b, now_ms);

  switch (b->state) {
  case SP_BREAKER_STATE_CLOSED:
  case SP_BREAKER_STATE_DISABLED:
    return events;
  case SP_BREAKER_STATE_HALF_OPEN:
    if (b->half_open_calls < b->config.half_open_max_calls) {
      b->half_open_calls++;
      b->half_open_admitted = inc32(b->half_open_admitted);
      return events;
    }
    break;
  case SP_BREAKER_STATE_ISOLATED:
    /* Rejected, and not counted. */
    return SP_ECIRCUITOPEN;
  default:
    break;
  }

  /* The tick above made no transition here: a breaker it had turned
   * half-open has a free permit, one it had closed admits. */
  b->rejected_count = inc64(b->rejected_count);
  return SP_ECIRCUITOPEN;
}

int sp_breaker_would_admit(const sp_breaker_t *b) {
  switch (b->state) {
  case SP_BREAKER_STATE_CLOSED:
  case SP_BREAKER_STATE_DISABLED:
    return 1;
  case SP_BREAKER_STATE_HALF_OPEN:
    return b->half_open_calls < b->config.half_open_max_calls;
  default:
    return 0;
  }
}

int sp_breaker_record(sp_breaker_t *b, uint32_t generation, int outcome,
                      uint64_t now_ms, uint64_t duration_ms) {
  if (outcome != SP_OUTCOME_SUCCESS && outcome != SP_OUTCOME_FAILURE &&
      outcome != SP_OUTCOME_NEUTRAL)
    return SP_EINVAL;

  /* No tick here: an open breaker admits nothing, so no result can carry
   * the generation of an open state, and a stale one is ignored below
   * whatever the time. */
  if (generation != b->generation) {
    b->ignored_count = inc64(b->ignored_count);
    return SP_BREAKER_IGNORED;
  }

  /* The permit goes back first, whatever the outcome, so that a probe that
   * closes or reopens the breaker leaves no call in flight behind it. */
  if (b->state == SP_BREAKER_STATE_HALF_OPEN && b->half_open_calls > 0)
    b->half_open_calls--;

  /* Only rate windows with slow_call_ms look at how long it took. */
  return breaker_count(b, outcome, now_ms, duration_ms);
}

int sp_breaker_record_success(sp_breaker_t *b, uint64_t now_ms) {
  int events;

  events = sp_breaker_tick(b, now_ms);
  return events | breaker_count(b, SP_OUTCOME_SUCCESS, now_ms, 0);
}

int sp_breaker_record_failure(sp_breaker_t *b, uint64_t now_ms) {
  int events;

  events = sp_breaker_tick(b, now_ms);
  return events | breaker_count(b, SP_OUTCOME_FAILURE, now_ms, 0);
}

int sp_breaker_reset(sp_breaker_t *b) {
  int was_closed;

  was_closed = b->state == SP_BREAKER_STATE_CLOSED;
  /* The generation moves on even from closed, so that results of calls
   * admitted before the reset do not count against the fresh breaker. */
  b->state = SP_BREAKER_STATE_CLOSED;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  b->opened_at_ms = 0;
  b->rejected_count = 0;
  b->total_successes = 0;
  b->total_failures = 0;
  b->ignored_count = 0;
  b->half_open_admitted = 0;
  b->failures_since_close = 0;
  b->total_slow = 0;
  b->held = 0;
  b->open_reason = SP_OPEN_REASON_NONE;
  window_clear(b);
  return was_closed ? 0 : SP_BREAKER_CLOSED;
}

int sp_breaker_trip(sp_breaker_t *b, uint64_t now_ms, int reason) {
  if (b->state != SP_BREAKER_STATE_CLOSED &&
      b->state != SP_BREAKER_STATE_HALF_OPEN)
    return 0;
  b->failure_count = 0;
  return breaker_open(b, now_ms, reason);
}

int sp_breaker_recover(sp_breaker_t *b) {
  if (b->state != SP_BREAKER_STATE_OPEN &&
      b->state != SP_BREAKER_STATE_HALF_OPEN)
    return 0;
  return breaker_close(b);
}

int sp_breaker_force_open(sp_breaker_t *b) {
  return breaker_manual(b, SP_BREAKER_STATE_FORCED_OPEN,
                        SP_BREAKER_FORCED_OPENED);
}

int sp_breaker_disable(sp_breaker_t *b) {
  return breaker_manual(b, SP_BREAKER_STATE_DISABLED, SP_BREAKER_DISABLED);
}

int sp_breaker_isolate(sp_breaker_t *b) {
  return breaker_manual(b, SP_BREAKER_STATE_ISOLATED, SP_BREAKER_ISOLATED);
}

uint64_t sp_breaker_half_open_at(const sp_breaker_t *b) {
  if (b->state != SP_BREAKER_STATE_OPEN)
    return 0;
  if (b->held)
    return UINT64_MAX;
  if (b->config.reset_timeout_ms > UINT64_MAX - b->opened_at_ms)
    return UINT64_MAX;
  return b->opened_at_ms + b->config.reset_timeout_ms;
}

const char *sp_breaker_state_name(int state) {
  switch (state) {
  case SP_BREAKER_STATE_CLOSED:
    return "closed";
  case SP_BREAKER_STATE_OPEN:
    return "open";
  case SP_BREAKER_STATE_HALF_OPEN:
    return "half_open";
  case SP_BREAKER_STATE_FORCED_OPEN:
    return "forced_open";
  case SP_BREAKER_STATE_DISABLED:
    return "disabled";
  case SP_BREAKER_STATE_ISOLATED:
    return "isolated";
  default:
    return NULL;
  }
}
