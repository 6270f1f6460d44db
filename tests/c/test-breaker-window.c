/* Tests of the breaker's rate windows (count and time) and manual states
 * (runtime/core/breaker.c), with literal times: the exact call at which the
 * failure rate and the slow-call rate open it, min_calls, the count ring's
 * eviction, time buckets expiring, validation, and forced open, disabled,
 * isolated and reset.
 */
#include "task.h"

static void window_config(sp_breaker_config_t *c, int type) {
  memset(c, 0, sizeof(*c));
  c->half_open_max_calls = 1;
  c->reset_timeout_ms = 1000;
  c->window_type = type;
  c->window_size = 10;
  c->window_ms = 1000;
  c->window_buckets = 10;
  c->min_calls = 4;
  c->failure_rate = 0.5;
  c->slow_call_rate = 1.0;
}

/* One admitted call ending with `outcome` at now_ms after duration_ms. */
static int call(sp_breaker_t *b, uint64_t now_ms, int outcome,
                uint64_t duration_ms, int *events) {
  ASSERT_GE(sp_breaker_acquire(b, now_ms), 0);
  *events = sp_breaker_record(b, b->generation, outcome, now_ms,
                              duration_ms);
  ASSERT_GE(*events, 0);
  return 0;
}

#define S SP_OUTCOME_SUCCESS
#define F SP_OUTCOME_FAILURE
#define N SP_OUTCOME_NEUTRAL

TEST_IMPL(breaker_window_init_validation) {
  sp_breaker_config_t c;
  sp_breaker_t b;

  window_config(&c, SP_WINDOW_COUNT);
  c.failure_threshold = 0; /* ignored by rate windows */
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  sp_breaker_close(&b);
  sp_breaker_close(&b); /* twice is fine */

  c.window_size = 0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.window_size = SP_BREAKER_MAX_WINDOW_SIZE + 1;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.window_size = SP_BREAKER_MAX_WINDOW_SIZE;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  sp_breaker_close(&b);
  c.window_size = 10;

  c.min_calls = 0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.min_calls = 4;
  c.failure_rate = -0.1;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.failure_rate = 0.0; /* opens at min_calls, whatever the outcomes */
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  sp_breaker_close(&b);
  c.failure_rate = 1.0000001;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.failure_rate = 0.0 / 0.0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.failure_rate = 1.0;
  c.slow_call_rate = -1.0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.slow_call_rate = 1.5;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);

  window_config(&c, SP_WINDOW_TIME);
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  sp_breaker_close(&b);
  c.window_buckets = 0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.window_buckets = SP_BREAKER_MAX_BUCKETS + 1;
  c.window_ms = 1001000;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.window_buckets = 3; /* 1000 is not a multiple of 3 */
  c.window_ms = 1000;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  c.window_ms = 0;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);

  /* The consecutive mode ignores every window field, whatever it holds. */
  memset(&c, 0xff, sizeof(c));
  c.failure_threshold = 3;
  c.window_type = SP_WINDOW_CONSECUTIVE;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_NULL(b.ring_);
  ASSERT_NULL(b.buckets_);
  sp_breaker_close(&b);
  c.window_type = 3;
  ASSERT_EQ(sp_breaker_init(&b, &c), SP_EINVAL);
  return 0;
}

TEST_IMPL(breaker_window_count_failure_rate_exact) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev, i;

  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 6;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  /* S F F F F: 4 of 5 failed but only 5 calls: below min_calls. */
  ASSERT_PASS(call(&b, 10, S, 0, &ev));
  for (i = 0; i < 4; i++) {
    ASSERT_PASS(call(&b, 10, F, 0, &ev));
    ASSERT_EQ(ev, 0);
  }
  ASSERT_UINT64_EQ(b.window_calls, 5);
  ASSERT_UINT64_EQ(b.window_failures, 4);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  /* The sixth call, a success: 4/6 = 0.67 >= 0.5 at min_calls. */
  ASSERT_PASS(call(&b, 20, S, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_OPEN);
  ASSERT_EQ(b.open_reason, SP_OPEN_REASON_FAILURE_RATE);
  ASSERT_EQ(b.failure_count, 4);
  ASSERT_UINT64_EQ(b.opened_at_ms, 20);
  /* Opening empties the window. */
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_UINT64_EQ(b.window_failures, 0);
  sp_breaker_close(&b);

  /* Exactly at the threshold opens (>=); just below does not. */
  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 10;
  c.failure_rate = 0.3;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  for (i = 0; i < 7; i++)
    ASSERT_PASS(call(&b, 0, S, 0, &ev));
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  ASSERT_PASS(call(&b, 0, F, 0, &ev)); /* 3 of 10 = 0.3 */
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  sp_breaker_close(&b);

  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 10;
  c.failure_rate = 0.31;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  for (i = 0; i < 7; i++)
    ASSERT_PASS(call(&b, 0, S, 0, &ev));
  for (i = 0; i < 3; i++)
    ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_window_min_calls) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev, i;

  /* Every call fails; it opens at exactly the min_calls-th. */
  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 7;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  for (i = 1; i <= 6; i++) {
    ASSERT_PASS(call(&b, 0, F, 0, &ev));
    ASSERT_EQ(ev, 0);
  }
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  sp_breaker_close(&b);

  /* A min_calls above the ring's size acts as the size. */
  window_config(&c, SP_WINDOW_COUNT);
  c.window_size = 3;
  c.min_calls = 100;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  sp_breaker_close(&b);

  /* Neutral outcomes are not in the window. */
  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 2;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  for (i = 0; i < 5; i++)
    ASSERT_PASS(call(&b, 0, N, 0, &ev));
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  ASSERT_PASS(call(&b, 0, S, 0, &ev)); /* 1 of 2 */
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_window_count_ring_eviction) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev, i;

  window_config(&c, SP_WINDOW_COUNT);
  c.window_size = 4;
  c.min_calls = 4;
  c.failure_rate = 0.75;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  /* F F S S: 2/4. */
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_PASS(call(&b, 0, S, 0, &ev));
  ASSERT_PASS(call(&b, 0, S, 0, &ev));
  ASSERT_UINT64_EQ(b.window_calls, 4);
  ASSERT_UINT64_EQ(b.window_failures, 2);
  /* F evicts the first F: F S S F, still 2/4. */
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_calls, 4);
  ASSERT_UINT64_EQ(b.window_failures, 2);
  /* F evicts the second F: S S F F, 2/4. */
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_UINT64_EQ(b.window_failures, 2);
  ASSERT_EQ(ev, 0);
  /* F evicts an S: S F F F, 3/4 = 0.75. */
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_EQ(b.failure_count, 3);
  sp_breaker_close(&b);

  /* Many laps of a big ring stay exact. */
  window_config(&c, SP_WINDOW_COUNT);
  c.window_size = 1000;
  c.min_calls = 1000;
  c.failure_rate = 0.5;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  for (i = 0; i < 100000; i++) {
    /* One failure in five: 20%. */
    ASSERT_PASS(call(&b, (uint64_t) i, i % 5 == 0 ? F : S, 0, &ev));
    ASSERT_EQ(ev, 0);
  }
  ASSERT_UINT64_EQ(b.window_calls, 1000);
  ASSERT_UINT64_EQ(b.window_failures, 200);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_window_slow_call_rate) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev;

  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 4;
  c.failure_rate = 1.0;
  c.slow_call_ms = 100;
  c.slow_call_rate = 0.5;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, S, 99, &ev));  /* fast: 99 < 100 */
  ASSERT_PASS(call(&b, 0, S, 100, &ev)); /* slow: 100 >= 100 */
  ASSERT_PASS(call(&b, 0, S, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_slow, 1);
  ASSERT_PASS(call(&b, 0, F, 5000, &ev)); /* a slow failure: both */
  ASSERT_EQ(ev, SP_BREAKER_OPENED);       /* 2 slow of 4 */
  ASSERT_EQ(b.open_reason, SP_OPEN_REASON_SLOW_CALL_RATE);
  ASSERT_UINT64_EQ(b.window_slow, 0);
  /* The running total keeps the two slow calls the window let go. */
  ASSERT_UINT64_EQ(b.total_slow, 2);
  sp_breaker_close(&b);

  /* Without slow_call_ms no call is slow, however long. */
  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 2;
  c.slow_call_rate = 0.1;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, S, UINT64_MAX, &ev));
  ASSERT_PASS(call(&b, 0, S, UINT64_MAX, &ev));
  ASSERT_PASS(call(&b, 0, S, UINT64_MAX, &ev));
  ASSERT_UINT64_EQ(b.window_slow, 0);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  sp_breaker_close(&b);

  /* The failure rate is checked first when both are reached. */
  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 1;
  c.slow_call_ms = 1;
  c.slow_call_rate = 0.5;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, F, 10, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_EQ(b.open_reason, SP_OPEN_REASON_FAILURE_RATE);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_window_time_buckets_expire) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev;

  /* 1000 ms in 10 buckets of 100 ms. */
  window_config(&c, SP_WINDOW_TIME);
  c.min_calls = 3;
  c.failure_rate = 0.5;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 50, F, 0, &ev));  /* bucket [0, 100) */
  ASSERT_PASS(call(&b, 150, F, 0, &ev)); /* bucket [100, 200) */
  ASSERT_UINT64_EQ(b.window_calls, 2);
  /* At 999 both are in; at 1000 the first bucket has left. */
  ASSERT_EQ(sp_breaker_tick(&b, 999), 0);
  ASSERT_UINT64_EQ(b.window_calls, 2);
  ASSERT_EQ(sp_breaker_tick(&b, 1000), 0);
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_UINT64_EQ(b.window_failures, 1);
  /* 1 F + 2 S = 3 calls, 1/3 < 0.5. */
  ASSERT_PASS(call(&b, 1000, S, 0, &ev));
  ASSERT_PASS(call(&b, 1050, S, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_calls, 3);
  /* At 1100 the F of 150 leaves: S S + F = 1/3 again, closed. */
  ASSERT_PASS(call(&b, 1100, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_calls, 3);
  ASSERT_UINT64_EQ(b.window_failures, 1);
  /* One more F: 2/4 = 0.5 opens. */
  ASSERT_PASS(call(&b, 1150, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  sp_breaker_close(&b);

  /* A gap longer than the window empties it at once. */
  window_config(&c, SP_WINDOW_TIME);
  c.min_calls = 100;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 10, F, 0, &ev));
  ASSERT_PASS(call(&b, 510, F, 0, &ev));
  /* The call of 510 (bucket 5) is in until bucket 15 begins, at 1500. */
  ASSERT_EQ(sp_breaker_tick(&b, 1499), 0);
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_EQ(sp_breaker_tick(&b, 1500), 0);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_EQ(sp_breaker_tick(&b, 1000000), 0);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_UINT64_EQ(b.window_failures, 0);
  /* A time going backwards counts in the newest bucket. */
  ASSERT_PASS(call(&b, 5, F, 0, &ev));
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_EQ(sp_breaker_tick(&b, 1000999), 0);
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_EQ(sp_breaker_tick(&b, 1001000), 0);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  sp_breaker_close(&b);

  /* One bucket: the whole window expires at once. */
  window_config(&c, SP_WINDOW_TIME);
  c.window_buckets = 1;
  c.window_ms = 60000;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 59999, F, 0, &ev));
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_EQ(sp_breaker_tick(&b, 60000), 0);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  sp_breaker_close(&b);
  return 0;
}

/* A TIME window with 1 ms buckets reaches the last epoch of the clock,
 * UINT64_MAX: moving the window on to it must end (the bucket counter
 * wrapped to 0 and it looped forever) and keep counting. Found by
 * tests/fuzz/fuzz_core. */
TEST_IMPL(breaker_window_time_end_of_clock) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev;

  window_config(&c, SP_WINDOW_TIME);
  c.window_ms = 10;
  c.window_buckets = 10;
  c.min_calls = 100;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, UINT64_MAX - 3, F, 0, &ev));
  ASSERT_EQ(sp_breaker_tick(&b, UINT64_MAX), 0);
  ASSERT_UINT64_EQ(b.window_calls, 1);
  ASSERT_PASS(call(&b, UINT64_MAX, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_calls, 2);
  ASSERT_UINT64_EQ(b.window_failures, 2);
  ASSERT_EQ(sp_breaker_tick(&b, UINT64_MAX), 0);
  ASSERT_UINT64_EQ(b.window_calls, 2);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_window_half_open_and_close_reset) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev, i;

  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 2;
  c.half_open_max_calls = 2;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_EQ(sp_breaker_acquire(&b, 999), SP_ECIRCUITOPEN);
  /* Half-open probes work as in the consecutive mode. */
  ASSERT_EQ(sp_breaker_tick(&b, 1000), SP_BREAKER_HALF_OPENED);
  ASSERT_PASS(call(&b, 1000, S, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_PASS(call(&b, 1000, S, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_CLOSED);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  /* Closed again with an empty window: one failure is below min_calls. */
  ASSERT_PASS(call(&b, 1001, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_PASS(call(&b, 1001, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  /* A failed probe reopens. */
  ASSERT_EQ(sp_breaker_acquire(&b, 2001), SP_BREAKER_HALF_OPENED);
  ev = sp_breaker_record(&b, b.generation, F, 2001, 0);
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  ASSERT_EQ(b.open_reason, SP_OPEN_REASON_FAILURES);
  /* Reset empties the window. */
  ASSERT_EQ(sp_breaker_reset(&b), SP_BREAKER_CLOSED);
  ASSERT_PASS(call(&b, 3000, S, 0, &ev));
  for (i = 0; i < 1; i++)
    ASSERT_PASS(call(&b, 3000, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED); /* 1 of 2 */
  ASSERT_EQ(sp_breaker_reset(&b), SP_BREAKER_CLOSED);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_UINT64_EQ(b.total_failures, 0);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_manual_states) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  uint32_t gen;
  int ev, i;

  memset(&c, 0, sizeof(c));
  c.failure_threshold = 2;
  c.half_open_max_calls = 1;
  c.reset_timeout_ms = 100;
  c.window_type = SP_WINDOW_CONSECUTIVE;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);

  ASSERT_STR_EQ(sp_breaker_state_name(SP_BREAKER_STATE_FORCED_OPEN),
                "forced_open");
  ASSERT_STR_EQ(sp_breaker_state_name(SP_BREAKER_STATE_DISABLED), "disabled");
  ASSERT_STR_EQ(sp_breaker_state_name(SP_BREAKER_STATE_ISOLATED), "isolated");

  /* Forced open: rejects and counts the rejections; no half-open ever. */
  ASSERT_GE(sp_breaker_acquire(&b, 0), 0);
  gen = b.generation;
  ASSERT_EQ(sp_breaker_force_open(&b), SP_BREAKER_FORCED_OPENED);
  ASSERT_EQ(sp_breaker_force_open(&b), 0);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_FORCED_OPEN);
  /* The call admitted before is late. */
  ASSERT_EQ(sp_breaker_record(&b, gen, F, 0, 0), SP_BREAKER_IGNORED);
  ASSERT_EQ(sp_breaker_acquire(&b, 1000000), SP_ECIRCUITOPEN);
  ASSERT_EQ(sp_breaker_tick(&b, 2000000), 0);
  ASSERT_EQ(sp_breaker_would_admit(&b), 0);
  ASSERT_UINT64_EQ(b.rejected_count, 1);
  ASSERT_UINT64_EQ(sp_breaker_half_open_at(&b), 0);
  ASSERT_EQ(sp_breaker_record_failure(&b, 0), 0);
  ASSERT_UINT64_EQ(b.total_failures, 1);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_FORCED_OPEN);

  /* Disabled: admits all, counts, never opens. */
  ASSERT_EQ(sp_breaker_disable(&b), SP_BREAKER_DISABLED);
  ASSERT_EQ(sp_breaker_disable(&b), 0);
  ASSERT_EQ(sp_breaker_would_admit(&b), 1);
  for (i = 0; i < 10; i++) {
    ASSERT_PASS(call(&b, 0, F, 0, &ev));
    ASSERT_EQ(ev, 0);
  }
  ASSERT_EQ(sp_breaker_record_failure(&b, 0), 0);
  ASSERT_EQ(b.failure_count, 11);
  ASSERT_UINT64_EQ(b.total_failures, 12);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_DISABLED);

  /* Isolated: rejects, counts nothing. */
  ASSERT_EQ(sp_breaker_isolate(&b), SP_BREAKER_ISOLATED);
  ASSERT_EQ(sp_breaker_isolate(&b), 0);
  ASSERT_EQ(b.failure_count, 0);
  ASSERT_EQ(sp_breaker_acquire(&b, 0), SP_ECIRCUITOPEN);
  ASSERT_EQ(sp_breaker_would_admit(&b), 0);
  ASSERT_UINT64_EQ(b.rejected_count, 1);
  ASSERT_EQ(sp_breaker_record_failure(&b, 0), 0);
  ASSERT_EQ(sp_breaker_record_success(&b, 0), 0);
  ASSERT_UINT64_EQ(b.total_failures, 12);
  ASSERT_UINT64_EQ(b.total_successes, 0);

  /* From isolated straight to forced open, then reset to closed. */
  ASSERT_EQ(sp_breaker_force_open(&b), SP_BREAKER_FORCED_OPENED);
  ASSERT_EQ(sp_breaker_reset(&b), SP_BREAKER_CLOSED);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_CLOSED);
  ASSERT_UINT64_EQ(b.rejected_count, 0);
  ASSERT_UINT64_EQ(b.total_failures, 0);
  /* And it works as before. */
  ASSERT_PASS(call(&b, 5, F, 0, &ev));
  ASSERT_PASS(call(&b, 5, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  /* Forcing an open breaker open stops its timeout. */
  ASSERT_EQ(sp_breaker_force_open(&b), SP_BREAKER_FORCED_OPENED);
  ASSERT_EQ(sp_breaker_tick(&b, 1000), 0);
  ASSERT_EQ(b.state, SP_BREAKER_STATE_FORCED_OPEN);
  ASSERT_EQ(sp_breaker_reset(&b), SP_BREAKER_CLOSED);
  ASSERT_EQ(sp_breaker_reset(&b), 0);
  sp_breaker_close(&b);
  return 0;
}

TEST_IMPL(breaker_manual_states_rate_window) {
  sp_breaker_config_t c;
  sp_breaker_t b;
  int ev, i;

  window_config(&c, SP_WINDOW_COUNT);
  c.min_calls = 2;
  ASSERT_EQ(sp_breaker_init(&b, &c), 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  /* Disabled counts in the window but never opens. */
  ASSERT_EQ(sp_breaker_disable(&b), SP_BREAKER_DISABLED);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  for (i = 0; i < 20; i++) {
    ASSERT_PASS(call(&b, 0, F, 0, &ev));
    ASSERT_EQ(ev, 0);
  }
  ASSERT_UINT64_EQ(b.window_calls, 10);
  ASSERT_UINT64_EQ(b.window_failures, 10);
  /* Reset: closed with an empty window. */
  ASSERT_EQ(sp_breaker_reset(&b), SP_BREAKER_CLOSED);
  ASSERT_UINT64_EQ(b.window_calls, 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, 0);
  ASSERT_PASS(call(&b, 0, F, 0, &ev));
  ASSERT_EQ(ev, SP_BREAKER_OPENED);
  sp_breaker_close(&b);
  return 0;
}
