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
#include "sprun.h"

static uint32_t inc32(uint32_t n) {
  return n == UINT32_MAX ? n : n + 1;
}

static uint64_t inc64(uint64_t n) {
  return n == UINT64_MAX ? n : n + 1;
}

/* Each transition sets every count the next state starts from, so that no
 * state inherits a count it does not own. The generation only has to change
 * at each transition; wrapping around is harmless. */
static int breaker_open(sp_breaker_t *b, uint64_t now_ms) {
  b->state = SP_BREAKER_STATE_OPEN;
  b->generation++;
  b->opened_at_ms = now_ms;
  b->success_count = 0;
  b->half_open_calls = 0;
  return SP_BREAKER_OPENED;
}

static int breaker_close(sp_breaker_t *b) {
  b->state = SP_BREAKER_STATE_CLOSED;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
  return SP_BREAKER_CLOSED;
}

static int breaker_half_open(sp_breaker_t *b) {
  b->state = SP_BREAKER_STATE_HALF_OPEN;
  b->generation++;
  b->failure_count = 0;
  b->success_count = 0;
  b->half_open_calls = 0;
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
 * breaker is already open and its timeout runs from the moment it opened. */
static int breaker_count(sp_breaker_t *b, int outcome, uint64_t now_ms) {
  if (outcome == SP_OUTCOME_SUCCESS) {
    b->total_successes = inc64(b->total_successes);
    switch (b->state) {
    case SP_BREAKER_STATE_CLOSED:
      b->failure_count = 0;
      b->success_count = inc32(b->success_count);
      return 0;
    case SP_BREAKER_STATE_HALF_OPEN:
      b->success_count = inc32(b->success_count);
      if (b->success_count >= b->config.half_open_max_calls)
        return breaker_close(b);
      return 0;
    default:
      return 0;
    }
  }

  if (outcome == SP_OUTCOME_FAILURE) {
    b->total_failures = inc64(b->total_failures);
    switch (b->state) {
    case SP_BREAKER_STATE_CLOSED:
      b->failure_count = inc32(b->failure_count);
      b->success_count = 0;
      if (b->failure_count >= b->config.failure_threshold)
        return breaker_open(b, now_ms);
      return 0;
    case SP_BREAKER_STATE_HALF_OPEN:
      /* failure_count counts what opened the breaker: this one probe. */
      b->failure_count = 1;
      return breaker_open(b, now_ms);
    default:
      return 0;
    }
  }

  /* A neutral outcome is not the breaker's business. */
  return 0;
}

int sp_breaker_init(sp_breaker_t *b, const sp_breaker_config_t *config) {
  if (b == NULL || config == NULL)
    return SP_EINVAL;
  if (config->failure_threshold == 0)
    return SP_EINVAL;
  if (config->window_type != SP_WINDOW_CONSECUTIVE)
    return SP_EINVAL;

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
  return 0;
}

int sp_breaker_tick(sp_breaker_t *b, uint64_t now_ms) {
  if (b->state != SP_BREAKER_STATE_OPEN)
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
    return events;
  case SP_BREAKER_STATE_HALF_OPEN:
    if (b->half_open_calls < b->config.half_open_max_calls) {
      b->half_open_calls++;
      return events;
    }
    break;
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
    return 1;
  case SP_BREAKER_STATE_HALF_OPEN:
    return b->half_open_calls < b->config.half_open_max_calls;
  default:
    return 0;
  }
}

int sp_breaker_record(sp_breaker_t *b, uint32_t generation, int outcome,
                      uint64_t now_ms, uint64_t duration_ms) {
  /* Only rate windows will look at how long the call took. */
  (void) duration_ms;

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

  return breaker_count(b, outcome, now_ms);
}

int sp_breaker_record_success(sp_breaker_t *b, uint64_t now_ms) {
  int events;

  events = sp_breaker_tick(b, now_ms);
  return events | breaker_count(b, SP_OUTCOME_SUCCESS, now_ms);
}

int sp_breaker_record_failure(sp_breaker_t *b, uint64_t now_ms) {
  int events;

  events = sp_breaker_tick(b, now_ms);
  return events | breaker_count(b, SP_OUTCOME_FAILURE, now_ms);
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
  return was_closed ? 0 : SP_BREAKER_CLOSED;
}

uint64_t sp_breaker_half_open_at(const sp_breaker_t *b) {
  if (b->state != SP_BREAKER_STATE_OPEN)
    return 0;
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
  default:
    return NULL;
  }
}
