/* Tests of the adaptive concurrency limit (runtime/core/adaptive.c): AIMD
 * and gradient2 driven by literal RTT sequences to exact limits (the
 * values are chosen to be exact in binary, so every comparison is ==),
 * the clamps, the windows, the in-flight accounting that never goes
 * negative, and every configuration init refuses.
 */
#include <math.h>

#include "task.h"

static void aimd_config(sp_adaptive_config_t *c, uint32_t min,
                        uint32_t max, uint32_t initial) {
  memset(c, 0, sizeof(*c));
  c->algorithm = SP_ADAPTIVE_AIMD;
  c->min_limit = min;
  c->max_limit = max;
  c->initial_limit = initial;
  c->backoff_ratio = 0.5;
  c->timeout_ms = 0;
}

/* Gradient2 with a long window of 3 (factor 2 / 4 = 0.5, a warm-up of 3
 * samples), smoothing 0.5 and a queue of 2: every step is exact. */
static void g2_config(sp_adaptive_config_t *c, uint32_t initial) {
  memset(c, 0, sizeof(*c));
  c->algorithm = SP_ADAPTIVE_GRADIENT2;
  c->min_limit = 1;
  c->max_limit = 100;
  c->initial_limit = initial;
  c->long_window = 3;
  c->rtt_tolerance = 1.5;
  c->smoothing = 0.5;
  c->queue_size = 2;
  c->queue_mode = SP_ADAPTIVE_QUEUE_FIXED;
}

static int start(sp_adaptive_t *a, const sp_adaptive_config_t *c) {
  ASSERT_EQ(sp_adaptive_init(a, c), 0);
  return 0;
}

/* One call that ends with `outcome` after `rtt` ms, with `extra` other
 * calls held in flight for it (so it ends with extra + 1 in flight).
 * Returns what release returned through *rc. */
static int sample(sp_adaptive_t *a, uint32_t extra, int outcome, double rtt,
                  uint64_t now, int *rc) {
  uint32_t i;

  for (i = 0; i < extra + 1; i++)
    ASSERT_EQ(sp_adaptive_acquire(a), 0);
  *rc = sp_adaptive_release(a, outcome, rtt, now);
  for (i = 0; i < extra; i++)
    ASSERT_EQ(sp_adaptive_release(a, SP_ADAPTIVE_IGNORED, 0, now), 0);
  return 0;
}

TEST_IMPL(adaptive_init_validation) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;

  aimd_config(&c, 1, 200, 20);
  ASSERT_EQ(sp_adaptive_init(&a, &c), 0);
  ASSERT_DOUBLE_EQ(a.limit, 20);
  ASSERT_EQ(a.in_flight, 0);
  ASSERT_EQ(sp_adaptive_limit(&a), 20);
  ASSERT_EQ(sp_adaptive_init(&a, NULL), SP_EINVAL);
  ASSERT_EQ(sp_adaptive_init(NULL, &c), SP_EINVAL);

#define REFUSED(field, value)                                                \
  do {                                                                       \
    sp_adaptive_config_t bad_ = c;                                           \
    bad_.field = (value);                                                    \
    if (sp_adaptive_init(&a, &bad_) != SP_EINVAL) {                          \
      printf("# %s:%d: %s = %s accepted\n", __FILE__, __LINE__, #field,      \
             #value);                                                        \
      return 1;                                                              \
    }                                                                        \
  } while (0)

#define ACCEPTED(field, value)                                               \
  do {                                                                       \
    sp_adaptive_config_t ok_ = c;                                            \
    ok_.field = (value);                                                     \
    if (sp_adaptive_init(&a, &ok_) != 0) {                                   \
      printf("# %s:%d: %s = %s refused\n", __FILE__, __LINE__, #field,       \
             #value);                                                        \
      return 1;                                                              \
    }                                                                        \
  } while (0)

  /* Common to both algorithms. */
  REFUSED(algorithm, 2);
  REFUSED(algorithm, -1);
  REFUSED(min_limit, 0);
  REFUSED(min_limit, 21); /* above initial_limit */
  REFUSED(max_limit, 19); /* below initial_limit */
  REFUSED(max_limit, SP_ADAPTIVE_MAX_LIMIT + 1);
  REFUSED(initial_limit, 0);
  REFUSED(initial_limit, 201);
  ACCEPTED(initial_limit, 1);
  ACCEPTED(initial_limit, 200);
  ACCEPTED(max_limit, 20);
  ACCEPTED(max_limit, SP_ADAPTIVE_MAX_LIMIT);
  ACCEPTED(min_limit, 20);
  /* A window needs at least one sample; without one the count is not
   * looked at. */
  ACCEPTED(window_min_samples, 0);
  c.window_ms = 100;
  REFUSED(window_min_samples, 0);
  ACCEPTED(window_min_samples, 1);
  c.window_ms = 0;

  /* AIMD. */
  REFUSED(backoff_ratio, 0);
  REFUSED(backoff_ratio, 1);
  REFUSED(backoff_ratio, -0.5);
  REFUSED(backoff_ratio, NAN);
  REFUSED(backoff_ratio, INFINITY);
  ACCEPTED(backoff_ratio, 0.999);
  ACCEPTED(backoff_ratio, 0.001);
  REFUSED(timeout_ms, -1);
  REFUSED(timeout_ms, NAN);
  REFUSED(timeout_ms, INFINITY);
  ACCEPTED(timeout_ms, 0);
  ACCEPTED(timeout_ms, 5000);
  /* Gradient2's fields are not looked at. */
  ACCEPTED(smoothing, NAN);
  ACCEPTED(rtt_tolerance, 0);
  ACCEPTED(long_window, 0);
  ACCEPTED(queue_mode, 7);

  /* Gradient2. */
  g2_config(&c, 20);
  ASSERT_EQ(sp_adaptive_init(&a, &c), 0);
  REFUSED(long_window, 0);
  ACCEPTED(long_window, 1);
  ACCEPTED(long_window, UINT32_MAX);
  REFUSED(rtt_tolerance, 0.99);
  REFUSED(rtt_tolerance, NAN);
  REFUSED(rtt_tolerance, INFINITY);
  ACCEPTED(rtt_tolerance, 1);
  REFUSED(smoothing, 0);
  REFUSED(smoothing, 1.01);
  REFUSED(smoothing, NAN);
  ACCEPTED(smoothing, 1);
  REFUSED(queue_size, -1);
  REFUSED(queue_size, NAN);
  REFUSED(queue_size, INFINITY);
  ACCEPTED(queue_size, 0);
  REFUSED(queue_mode, 2);
  REFUSED(queue_mode, -1);
  ACCEPTED(queue_mode, SP_ADAPTIVE_QUEUE_SQRT);
  /* AIMD's fields are not looked at. */
  ACCEPTED(backoff_ratio, 0);
  ACCEPTED(timeout_ms, NAN);

#undef REFUSED
#undef ACCEPTED
  return 0;
}

TEST_IMPL(adaptive_aimd_sequence) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;
  int i;

  aimd_config(&c, 1, 10, 4);
  ASSERT_PASS(start(&a, &c));

  /* Four calls fit, the fifth is refused and counted. */
  for (i = 0; i < 4; i++)
    ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  ASSERT_EQ(sp_adaptive_acquire(&a), SP_EFULL);
  ASSERT_UINT64_EQ(a.rejected, 1);
  ASSERT_UINT64_EQ(a.acquired, 4);

  /* Ends with 4 in flight: 4 * 2 >= 4, one more. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 10, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 5);
  /* 3 in flight: 6 >= 5, one more. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 10, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 6);
  /* A drop halves it. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_DROPPED, 10, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 3);
  /* 1 in flight: 2 < 3, the limit is not pressed on and stays. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 10, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 3);
  ASSERT_EQ(a.in_flight, 0);
  ASSERT_UINT64_EQ(a.successes, 3);
  ASSERT_UINT64_EQ(a.dropped, 1);
  ASSERT_UINT64_EQ(a.updates, 4);
  ASSERT_EQ(a.max_in_flight, 4);

  /* A fractional limit admits its floor: 3 * 0.5 = 1.5 admits one. */
  ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_DROPPED, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 1.5);
  ASSERT_EQ(sp_adaptive_limit(&a), 1);
  ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  ASSERT_EQ(sp_adaptive_acquire(&a), SP_EFULL);
  /* 1 * 2 >= 1.5: 2.5. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 1, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 2.5);

  /* The default ratio: 20 * 0.9, then 18 * 0.9, as the FPU makes them. */
  c.backoff_ratio = 0.9;
  c.max_limit = 20;
  c.initial_limit = 20;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_DROPPED, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 20 * 0.9);
  ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_DROPPED, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 20 * 0.9 * 0.9);
  ASSERT_EQ(sp_adaptive_limit(&a), 16);
  return 0;
}

TEST_IMPL(adaptive_aimd_clamps_and_timeout) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;
  int i;

  aimd_config(&c, 2, 6, 4);
  c.timeout_ms = 100;
  ASSERT_PASS(start(&a, &c));

  /* Successes pressed on the limit stop at max_limit. */
  for (i = 0; i < 10; i++)
    ASSERT_PASS(sample(&a, sp_adaptive_limit(&a) - 1, SP_ADAPTIVE_SUCCESS,
                       50, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 6);

  /* An RTT of exactly the timeout is not a drop; above it is. */
  ASSERT_PASS(sample(&a, 5, SP_ADAPTIVE_SUCCESS, 100, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 6);
  ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_SUCCESS, 100.5, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 3);
  /* Counted as the success it was reported as, though it backed off. */
  ASSERT_UINT64_EQ(a.dropped, 0);

  /* Drops stop at min_limit. */
  for (i = 0; i < 10; i++)
    ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_DROPPED, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 2);
  ASSERT_UINT64_EQ(a.dropped, 10);

  /* min_limit == max_limit: a fixed limit. */
  aimd_config(&c, 5, 5, 5);
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 4, SP_ADAPTIVE_SUCCESS, 1, 0, &rc));
  ASSERT_PASS(sample(&a, 4, SP_ADAPTIVE_DROPPED, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 5);
  return 0;
}

TEST_IMPL(adaptive_gradient2_sequence) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;

  g2_config(&c, 20);
  ASSERT_PASS(start(&a, &c));
  ASSERT_DOUBLE_EQ(a.gradient, 1);

  /* Ending with 15 in flight (>= 23 / 2): never app-limited below. */
  /* Warm-up: long is the plain mean, 10. g = min(1, 1.5) = 1, and the
   * limit goes half-way to limit + 2. */
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.long_rtt, 10);
  ASSERT_DOUBLE_EQ(a.short_rtt, 10);
  ASSERT_DOUBLE_EQ(a.limit, 21);
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 22);
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 23);
  ASSERT_DOUBLE_EQ(a.long_rtt, 10);

  /* Past the warm-up: long = 10 * 0.5 + 60 * 0.5 = 35,
   * g = 1.5 * 35 / 60 = 0.875, target = 23 * 0.875 + 2 = 22.125,
   * limit = (23 + 22.125) / 2 = 22.5625. */
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 60, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 35);
  ASSERT_DOUBLE_EQ(a.gradient, 0.875);
  ASSERT_DOUBLE_EQ(a.limit, 22.5625);
  ASSERT_EQ(sp_adaptive_limit(&a), 22);

  /* long = 17.5 + 120 = 137.5, g = 206.25 / 240 = 0.859375,
   * target = 22.5625 * 0.859375 + 2 = 21.3896484375,
   * limit = (22.5625 + 21.3896484375) / 2 = 21.97607421875. */
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 240, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 137.5);
  ASSERT_DOUBLE_EQ(a.gradient, 0.859375);
  ASSERT_DOUBLE_EQ(a.limit, 21.97607421875);

  /* A drop is a sample like any other (gradient2 reads RTTs only):
   * long = 68.75 + 68.75 = 137.5, g = min(1, 1.5) = 1, limit + 1. */
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_DROPPED, 137.5, 0, &rc));
  ASSERT_DOUBLE_EQ(a.gradient, 1);
  ASSERT_DOUBLE_EQ(a.limit, 22.97607421875);
  ASSERT_UINT64_EQ(a.dropped, 1);
  ASSERT_UINT64_EQ(a.updates, 6);

  /* App-limited: 2 in flight < 22.9 / 2. The RTTs move, the limit not. */
  ASSERT_PASS(sample(&a, 1, SP_ADAPTIVE_SUCCESS, 500, 0, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.long_rtt, 318.75);
  ASSERT_DOUBLE_EQ(a.short_rtt, 500);
  ASSERT_DOUBLE_EQ(a.limit, 22.97607421875);
  ASSERT_UINT64_EQ(a.updates, 7);
  return 0;
}

TEST_IMPL(adaptive_gradient2_clamps) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;
  int i;

  /* A long window so long that the baseline barely moves: a short RTT
   * 100 times the long one gives 0.015, clamped to 0.5. */
  g2_config(&c, 40);
  c.long_window = 1000000;
  ASSERT_PASS(start(&a, &c));
  for (i = 0; i < 10; i++)
    ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 8, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 8);
  ASSERT_DOUBLE_EQ(a.limit, 50);
  /* target = 50 * 0.5 + 2 = 27, limit = (50 + 27) / 2 = 38.5. */
  ASSERT_PASS(sample(&a, 25, SP_ADAPTIVE_SUCCESS, 800, 0, &rc));
  ASSERT_DOUBLE_EQ(a.gradient, 0.5);
  ASSERT_DOUBLE_EQ(a.limit, 38.5);

  /* Down to min_limit and no lower. */
  c.min_limit = 30;
  ASSERT_PASS(start(&a, &c));
  for (i = 0; i < 10; i++)
    ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 8, 0, &rc));
  for (i = 0; i < 10; i++)
    ASSERT_PASS(sample(&a, sp_adaptive_limit(&a) - 1, SP_ADAPTIVE_SUCCESS,
                       800, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 30);

  /* Up to max_limit and no higher: steady RTTs give g = 1. */
  g2_config(&c, 90);
  ASSERT_PASS(start(&a, &c));
  for (i = 0; i < 20; i++)
    ASSERT_PASS(sample(&a, 50, SP_ADAPTIVE_SUCCESS, 5, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 100);

  /* An RTT of 0 (faster than the caller's clock) gives no gradient: it
   * counts as no queueing, never as a division by zero. */
  g2_config(&c, 20);
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 0);
  ASSERT_DOUBLE_EQ(a.gradient, 1);
  ASSERT_DOUBLE_EQ(a.limit, 21);
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 0);
  ASSERT_DOUBLE_EQ(a.gradient, 1);
  ASSERT_DOUBLE_EQ(a.limit, 24);
  return 0;
}

/* A fast dependency on a coarse clock gives RTTs of 0 for ever: the
 * long-term average must reach 0, not crawl through the subnormals (where
 * the bench measured a call about 2.4 times slower). */
TEST_IMPL(adaptive_gradient2_zero_rtts_flush) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;
  int i;

  g2_config(&c, 20);
  ASSERT_PASS(start(&a, &c));
  for (i = 0; i < 3; i++)
    ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 1, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 1);
  /* Halved at each sample: 2^-29 > 1e-9 > 2^-30. */
  for (i = 0; i < 29; i++)
    ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 0x1p-29);
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 0);
  for (i = 0; i < 2000; i++)
    ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 0, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 0);
  ASSERT_DOUBLE_EQ(a.gradient, 1);
  return 0;
}

TEST_IMPL(adaptive_gradient2_long_rtt_drifts_down) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;

  g2_config(&c, 20);
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 40, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 40, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 40, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 40);
  /* long = 20 + 4 = 24, and 24 / 8 = 3 > 2: cut by 5%. */
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 8, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 24 * 0.95);
  /* long = 11.4 + 4.5 = 15.9 (as the FPU makes it); 15.9 / 9 < 2: kept. */
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 9, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 24 * 0.95 * 0.5 + 9 * 0.5);
  /* Exactly twice is not "more than twice". */
  g2_config(&c, 20);
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 30, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 30, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 30, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.long_rtt, 20);
  return 0;
}

TEST_IMPL(adaptive_gradient2_sqrt_queue) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;

  /* smoothing 1: the limit is the target. Steady RTTs: g = 1, so each
   * update adds max(1, floor(sqrt(floor(limit)))). */
  g2_config(&c, 16);
  c.smoothing = 1;
  c.queue_mode = SP_ADAPTIVE_QUEUE_SQRT;
  c.queue_size = 1;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 20);
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 24);
  ASSERT_PASS(sample(&a, 12, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 28);
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 33);
  /* queue_size is the floor of the allowance: 6 > sqrt(33). */
  a.config.queue_size = 6;
  ASSERT_PASS(sample(&a, 16, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 39);
  /* A queue_size changed to garbage between calls counts as 0 (plus the
   * square root here). */
  a.config.queue_size = NAN;
  ASSERT_PASS(sample(&a, 20, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 45);
  a.config.queue_mode = SP_ADAPTIVE_QUEUE_FIXED;
  a.config.queue_size = -3;
  ASSERT_PASS(sample(&a, 25, SP_ADAPTIVE_SUCCESS, 10, 0, &rc));
  ASSERT_DOUBLE_EQ(a.limit, 45);
  return 0;
}

TEST_IMPL(adaptive_windows) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int rc;

  /* AIMD, one update per 100 ms window of at least 2 samples. */
  aimd_config(&c, 1, 100, 40);
  c.window_ms = 100;
  c.window_min_samples = 2;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_DROPPED, 10, 1000, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_DROPPED, 10, 1050, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 1099, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_DOUBLE_EQ(a.limit, 40);
  /* 100 ms after the first sample: one window, one drop, one halving. */
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 1100, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.limit, 20);
  ASSERT_UINT64_EQ(a.updates, 1);
  ASSERT_UINT64_EQ(a.dropped, 2);

  /* A window without a drop: the most in flight in it (15, 15 * 2 >= 20)
   * says the limit was pressed on, though the last sample had 1. */
  ASSERT_PASS(sample(&a, 14, SP_ADAPTIVE_SUCCESS, 10, 2000, &rc));
  ASSERT_PASS(sample(&a, 0, SP_ADAPTIVE_SUCCESS, 10, 2100, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.limit, 21);

  /* A window past its time waits for its minimum of samples. */
  c.window_min_samples = 3;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 1000, &rc));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 5000, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 5001, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.limit, 41);

  /* A clock that went back counts as no time passed. */
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 9000, &rc));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 100, &rc));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 200, &rc));
  ASSERT_EQ(rc, 0);
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 10, 9100, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.limit, 42);

  /* AIMD's timeout within a window: the mean (55) is under it, but one
   * sample above it is a drop. */
  aimd_config(&c, 1, 100, 40);
  c.window_ms = 10;
  c.window_min_samples = 1;
  c.timeout_ms = 100;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 101, 0, &rc));
  ASSERT_PASS(sample(&a, 30, SP_ADAPTIVE_SUCCESS, 9, 10, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.limit, 20);

  /* Gradient2: the window's mean RTT is the short-term RTT. */
  g2_config(&c, 20);
  c.window_ms = 50;
  c.window_min_samples = 1;
  ASSERT_PASS(start(&a, &c));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 4, 0, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 8, 20, &rc));
  ASSERT_PASS(sample(&a, 10, SP_ADAPTIVE_SUCCESS, 24, 50, &rc));
  ASSERT_EQ(rc, 1);
  ASSERT_DOUBLE_EQ(a.short_rtt, 12);
  ASSERT_DOUBLE_EQ(a.long_rtt, 12);
  ASSERT_DOUBLE_EQ(a.limit, 21);
  ASSERT_UINT64_EQ(a.updates, 1);
  return 0;
}

TEST_IMPL(adaptive_in_flight_never_negative) {
  sp_adaptive_config_t c;
  sp_adaptive_t a;
  int i;

  aimd_config(&c, 1, 10, 3);
  ASSERT_PASS(start(&a, &c));

  /* Nothing in flight: refused, nothing counted. */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 1, 0), SP_ENOENT);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, 1, 0), SP_ENOENT);
  ASSERT_EQ(a.in_flight, 0);
  ASSERT_UINT64_EQ(a.successes, 0);
  ASSERT_UINT64_EQ(a.ignored, 0);

  ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  /* Bad arguments change nothing: the permits are still out. */
  ASSERT_EQ(sp_adaptive_release(&a, 3, 1, 0), SP_EINVAL);
  ASSERT_EQ(sp_adaptive_release(&a, -1, 1, 0), SP_EINVAL);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, -1, 0), SP_EINVAL);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_DROPPED, NAN, 0), SP_EINVAL);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, INFINITY, 0),
            SP_EINVAL);
  ASSERT_EQ(a.in_flight, 2);
  ASSERT_UINT64_EQ(a.updates, 0);
  ASSERT_DOUBLE_EQ(a.limit, 3);

  /* An ignored call gives its permit back and no sample (its RTT is not
   * read). */
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, NAN, 0), 0);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, -5, 0), 0);
  ASSERT_EQ(a.in_flight, 0);
  ASSERT_UINT64_EQ(a.ignored, 2);
  ASSERT_UINT64_EQ(a.updates, 0);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, 0, 0), SP_ENOENT);

  /* The limit going down under calls in flight: none is admitted until
   * they fall under the new limit, and in_flight counts down to 0. */
  for (i = 0; i < 3; i++)
    ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_DROPPED, 1, 0), 1);
  ASSERT_DOUBLE_EQ(a.limit, 1.5);
  ASSERT_EQ(a.in_flight, 2);
  ASSERT_EQ(sp_adaptive_acquire(&a), SP_EFULL);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, 0, 0), 0);
  ASSERT_EQ(sp_adaptive_acquire(&a), SP_EFULL);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, 0, 0), 0);
  ASSERT_EQ(sp_adaptive_acquire(&a), 0);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_IGNORED, 0, 0), 0);
  ASSERT_EQ(a.in_flight, 0);
  ASSERT_EQ(sp_adaptive_release(&a, SP_ADAPTIVE_SUCCESS, 1, 0), SP_ENOENT);
  ASSERT_UINT64_EQ(a.acquired, 6);
  ASSERT_UINT64_EQ(a.rejected, 2);
  ASSERT_EQ(a.max_in_flight, 3);

  /* A long random walk of acquires and releases against a count kept
   * here: the two agree at every step and neither goes below 0. */
  {
    uint64_t x = 88172645463325252u;
    uint32_t held = 0;

    c.initial_limit = 10;
    ASSERT_PASS(start(&a, &c));
    for (i = 0; i < 100000; i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      if (x % 2 == 0) {
        int rc = sp_adaptive_acquire(&a);

        if (rc == 0) {
          held++;
          ASSERT_LE(a.in_flight, sp_adaptive_limit(&a));
        } else {
          ASSERT_EQ(rc, SP_EFULL);
          ASSERT_GE(a.in_flight, sp_adaptive_limit(&a));
        }
      } else {
        int rc = sp_adaptive_release(&a, (int) (x / 2 % 3),
                                     (double) (x % 50), (uint64_t) i);

        if (held == 0) {
          ASSERT_EQ(rc, SP_ENOENT);
        } else {
          ASSERT_GE(rc, 0);
          held--;
        }
      }
      ASSERT_EQ(a.in_flight, held);
      ASSERT_DOUBLE_GE(a.limit, 1);
      ASSERT_DOUBLE_LE(a.limit, 10);
    }
  }
  return 0;
}
