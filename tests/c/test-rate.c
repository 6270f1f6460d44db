/* Tests of the rate limiter (runtime/core/rate.c): init's checks, takes at
 * literal times, the burst and retry_after exact to the ms, long runs that
 * admit exactly rate * time + burst, n above the burst, reservations in
 * order with their give-back, set_rate keeping the cells used, and the
 * overflow guards (times near 2^64, rate 1e9 per 1 ms, huge waits).
 */
#include <math.h>

#include "task.h"

static int rate_start(sp_rate_t *r, double rate, uint64_t per_ms,
                      uint64_t burst) {
  sp_rate_config_t c;

  c.rate = rate;
  c.per_ms = per_ms;
  c.burst = burst;
  ASSERT_EQ(sp_rate_init(r, &c), 0);
  return 0;
}

/* Takes 1 at every ms of [from, to) and returns how many were admitted
 * through *admitted. */
static int take_every_ms(sp_rate_t *r, uint64_t from, uint64_t to,
                         uint64_t *admitted) {
  uint64_t t;
  int rc;

  *admitted = 0;
  for (t = from; t < to; t++) {
    rc = sp_rate_take(r, NULL, 1, t, NULL);
    ASSERT(rc == 0 || rc == 1);
    *admitted += (uint64_t) rc;
  }
  return 0;
}

TEST_IMPL(rate_init_validation) {
  sp_rate_config_t c;
  sp_rate_t r;

  c.rate = 10;
  c.per_ms = 1000;
  c.burst = 10;
  ASSERT_EQ(sp_rate_init(&r, &c), 0);
  ASSERT_EQ(sp_rate_init(NULL, &c), SP_EINVAL);
  ASSERT_EQ(sp_rate_init(&r, NULL), SP_EINVAL);

  c.rate = 0;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = -1;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = NAN;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = INFINITY;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = SP_RATE_MIN_RATE / 2;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = SP_RATE_MAX_RATE * 2;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.rate = SP_RATE_MIN_RATE;
  ASSERT_EQ(sp_rate_init(&r, &c), 0);
  ASSERT_UINT64_EQ(r.rate_num, 1);
  ASSERT_UINT64_EQ(r.rate_den, 1000000);
  c.rate = SP_RATE_MAX_RATE;
  ASSERT_EQ(sp_rate_init(&r, &c), 0);

  c.rate = 10;
  c.per_ms = 0;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);
  c.per_ms = 1000;
  c.burst = 0;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_EINVAL);

  /* 10 per 1000 ms: T is 100 ms, 100 units of 1 ms, so burst * 100 must
   * stay below 2^62. */
  ASSERT_UINT64_EQ(sp_rate_max_burst(10, 1000), (UINT64_C(1) << 62) / 100);
  c.burst = sp_rate_max_burst(10, 1000);
  ASSERT_EQ(sp_rate_init(&r, &c), 0);
  c.burst++;
  ASSERT_EQ(sp_rate_init(&r, &c), SP_ERANGE);
  ASSERT_UINT64_EQ(sp_rate_max_burst(0, 1000), 0);
  ASSERT_UINT64_EQ(sp_rate_max_burst(10, 0), 0);
  /* A refused init leaves the limiter as it was. */
  ASSERT_UINT64_EQ(r.config.burst, sp_rate_max_burst(10, 1000));
  return 0;
}

TEST_IMPL(rate_fraction) {
  sp_rate_t r;

  ASSERT_PASS(rate_start(&r, 0.1, 1000, 1));
  ASSERT_UINT64_EQ(r.rate_num, 1);
  ASSERT_UINT64_EQ(r.rate_den, 10);
  ASSERT_PASS(rate_start(&r, 2.5, 1000, 3));
  ASSERT_UINT64_EQ(r.rate_num, 5);
  ASSERT_UINT64_EQ(r.rate_den, 2);
  ASSERT_PASS(rate_start(&r, 1.0 / 3, 1000, 1));
  ASSERT_UINT64_EQ(r.rate_num, 1);
  ASSERT_UINT64_EQ(r.rate_den, 3);
  ASSERT_PASS(rate_start(&r, 1e9, 1, 1));
  ASSERT_UINT64_EQ(r.rate_num, 1000000000);
  ASSERT_UINT64_EQ(r.rate_den, 1);
  /* No small fraction is pi: the nearest with a denominator <= 2^20. */
  ASSERT_PASS(rate_start(&r, M_PI, 1000, 4));
  ASSERT_UINT64_LE(r.rate_den, SP_RATE_MAX_DENOM);
  ASSERT_DOUBLE_LT(fabs((double) r.rate_num / (double) r.rate_den - M_PI),
                   1e-11);
  return 0;
}

TEST_IMPL(rate_literal_times) {
  sp_rate_t r;
  double retry;
  int i;

  /* 10 per second, burst 10: T = 100 ms. */
  ASSERT_PASS(rate_start(&r, 10, 1000, 10));
  for (i = 0; i < 10; i++)
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, 5000, &retry), 1);
  ASSERT_DOUBLE_EQ(retry, 0);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 5000, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 100);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 5099, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 5100, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 5100, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 100);
  /* Three at once need three intervals. */
  ASSERT_EQ(sp_rate_take(&r, NULL, 3, 5100, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 300);
  ASSERT_EQ(sp_rate_take(&r, NULL, 3, 5400, &retry), 1);
  ASSERT_UINT64_EQ(r.taken, 12);
  ASSERT_UINT64_EQ(r.rejected, 4);
  /* A second later the bucket is full again, and no fuller. */
  ASSERT_UINT64_EQ(sp_rate_full_at(&r, NULL), 6400);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 6399), 9);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 6400), 10);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 99999), 10);
  ASSERT_EQ(sp_rate_take(&r, NULL, 0, 6400, &retry), SP_EINVAL);
  return 0;
}

TEST_IMPL(rate_burst_exact) {
  sp_rate_t r;
  double retry;
  int i;

  /* 1 per second with a burst of 5: five at once, then one a second. */
  ASSERT_PASS(rate_start(&r, 1, 1000, 5));
  ASSERT_EQ(sp_rate_take(&r, NULL, 5, 1000, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 1000, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1000);
  /* Refilled at 6000 exactly, not a ms before. */
  ASSERT_EQ(sp_rate_take(&r, NULL, 5, 5999, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 5, 6000, &retry), 1);
  /* The burst, then its own refill, in one-cell takes. */
  for (i = 0; i < 4; i++)
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, 10000, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 10000, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1000);
  /* Burst 1: strictly one per interval. */
  ASSERT_PASS(rate_start(&r, 2, 1000, 1));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 499, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 500, &retry), 1);
  return 0;
}

TEST_IMPL(rate_retry_after_exact) {
  sp_rate_t r;
  double retry;
  uint64_t t;
  int i;

  /* 3 per second: T = 333.33... ms, kept as 1000 units of 1/3 ms. */
  ASSERT_PASS(rate_start(&r, 3, 1000, 3));
  for (i = 0; i < 3; i++)
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 334);
  /* Every retry_after is the first ms at which the take passes: 334,
   * 667, 1000 (exactly, the third interval ends on the ms), 1334... */
  t = 0;
  for (i = 0; i < 9; i++) {
    static const uint64_t at[] = { 334, 667, 1000, 1334, 1667, 2000,
                                   2334, 2667, 3000 };

    ASSERT_EQ(sp_rate_take(&r, NULL, 1, t, &retry), 0);
    t += (uint64_t) retry;
    ASSERT_UINT64_EQ(t, at[i]);
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, t - 1, &retry), 0);
    ASSERT_DOUBLE_EQ(retry, 1);
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, t, &retry), 1);
  }
  return 0;
}

TEST_IMPL(rate_long_run_exact) {
  sp_rate_t r;
  uint64_t admitted;
  double retry;
  uint64_t t;

  /* One take a ms for an hour at 3 per second: the burst, then exactly
   * 3 a second (the 10800th interval ends at 3,600,000, outside). */
  ASSERT_PASS(rate_start(&r, 3, 1000, 3));
  ASSERT_PASS(take_every_ms(&r, 0, 3600000, &admitted));
  ASSERT_UINT64_EQ(admitted, 3 + 3 * 3600 - 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 3600000, &retry), 1);

  /* 1/3 per second, as the double 0.333...: one every 3 s exactly. */
  ASSERT_PASS(rate_start(&r, 1.0 / 3, 1000, 1));
  ASSERT_PASS(take_every_ms(&r, 0, 3000001, &admitted));
  ASSERT_UINT64_EQ(admitted, 1001);

  /* 0.1 per ms with a burst of 1: one every 10 ms. */
  ASSERT_PASS(rate_start(&r, 0.1, 1, 1));
  ASSERT_PASS(take_every_ms(&r, 7, 1000007, &admitted));
  ASSERT_UINT64_EQ(admitted, 100000);

  /* 1e9 per ms, taken a billion at a time for 100,000 ms. */
  ASSERT_PASS(rate_start(&r, 1e9, 1, 1000000000));
  admitted = 0;
  for (t = 0; t < 100000; t++) {
    ASSERT_EQ(sp_rate_take(&r, NULL, 1000000000, t, &retry), 1);
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, t, &retry), 0);
    ASSERT_DOUBLE_EQ(retry, 1);
    admitted++;
  }
  ASSERT_UINT64_EQ(r.taken, admitted);
  return 0;
}

TEST_IMPL(rate_n_above_burst) {
  sp_rate_t r;
  double retry, wait;
  uint64_t ticket;

  ASSERT_PASS(rate_start(&r, 10, 1000, 4));
  ASSERT_EQ(sp_rate_take(&r, NULL, 5, 0, &retry), SP_ERANGE);
  ASSERT(isinf(retry));
  ASSERT_UINT64_EQ(r.rejected, 1);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 5, 0, INFINITY, &wait, &ticket),
            SP_ERANGE);
  ASSERT(isinf(wait));
  ASSERT_UINT64_EQ(r.refused, 1);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 5, 1, 0), SP_EINVAL);
  /* Nothing was taken: the whole burst is still there. */
  ASSERT_EQ(sp_rate_take(&r, NULL, 4, 0, &retry), 1);
  ASSERT_UINT64_EQ(r.taken, 1);
  return 0;
}

TEST_IMPL(rate_reserve_in_order) {
  sp_rate_t r;
  double wait, retry;
  uint64_t t1, t2, t3, t4;

  /* 10 per second, burst 1: the slots are 0, 100, 200, ... */
  ASSERT_PASS(rate_start(&r, 10, 1000, 1));
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &t1), 0);
  ASSERT_DOUBLE_EQ(wait, 0);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &t2), 0);
  ASSERT_DOUBLE_EQ(wait, 100);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 10, INFINITY, &wait, &t3), 0);
  ASSERT_DOUBLE_EQ(wait, 190);
  /* A take cannot pass the reservations. */
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 10, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 290);
  /* Too far: refused, nothing reserved (the next gets the same slot). */
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 10, 289, &wait, &t4), SP_ETIMEDOUT);
  ASSERT_DOUBLE_EQ(wait, 290);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 10, 290, &wait, &t4), 0);
  ASSERT_DOUBLE_EQ(wait, 290);
  ASSERT_UINT64_EQ(r.reserved, 4);
  ASSERT_UINT64_EQ(r.refused, 1);

  /* Only the last reservation can be given back, once. */
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, t3, 20), 0);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, t4, 20), 1);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, t4, 20), 0);
  ASSERT_UINT64_EQ(r.returned, 1);
  /* Its slot is free again: at 20 the next one is 280 ms away. */
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 20, INFINITY, &wait, &t4), 0);
  ASSERT_DOUBLE_EQ(wait, 280);
  /* A take after a reservation makes it not the last any more. */
  ASSERT_PASS(rate_start(&r, 10, 1000, 2));
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &t1), 0);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, t1, 0), 0);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, 0, 0), 0);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 0, 0, INFINITY, &wait, &t1),
            SP_EINVAL);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, -1, &wait, &t1), SP_EINVAL);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, NAN, &wait, &t1), SP_EINVAL);
  return 0;
}

TEST_IMPL(rate_cancel_after_time_passed) {
  sp_rate_t r;
  double wait, retry;
  uint64_t ticket;

  /* A reservation given back after its slot's time came (the waiter was
   * cancelled late): the state is full, as if it had never been made. */
  ASSERT_PASS(rate_start(&r, 10, 1000, 1));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &ticket), 0);
  ASSERT_DOUBLE_EQ(wait, 100);
  ASSERT_EQ(sp_rate_cancel(&r, NULL, 1, ticket, 150), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 150, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 249, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1);
  return 0;
}

TEST_IMPL(rate_set_keeps_cells_used) {
  sp_rate_config_t c;
  sp_rate_t r, old;
  sp_rate_state_t s;
  double retry;

  ASSERT_PASS(rate_start(&r, 10, 1000, 10));
  ASSERT_EQ(sp_rate_take(&r, NULL, 6, 0, &retry), 1);
  /* Twice the rate and the burst: 6 of 20 used. */
  c.rate = 20;
  c.per_ms = 1000;
  c.burst = 20;
  ASSERT_EQ(sp_rate_set(&r, &c, 0), 0);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 0), 14);
  ASSERT_UINT64_EQ(r.taken, 1);
  /* Down to 5 per second, burst 5: 6 used is one more than the burst, so
   * a take of one waits for two intervals of 200 ms. */
  c.rate = 5;
  c.burst = 5;
  ASSERT_EQ(sp_rate_set(&r, &c, 0), 0);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 0), 0);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 400);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 400, &retry), 1);
  /* 3 per second, burst 3, from 5 used: 3 intervals of 333.33 ms. */
  c.rate = 3;
  c.burst = 3;
  ASSERT_EQ(sp_rate_set(&r, &c, 400), 0);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 400, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1000);
  /* A bad configuration changes nothing. */
  c.burst = 0;
  ASSERT_EQ(sp_rate_set(&r, &c, 400), SP_EINVAL);
  ASSERT_UINT64_EQ(r.config.burst, 3);
  ASSERT_DOUBLE_EQ(r.config.rate, 3);

  /* A state kept apart, rescaled the same way. */
  ASSERT_PASS(rate_start(&r, 10, 1000, 10));
  memset(&s, 0, sizeof(s));
  ASSERT_EQ(sp_rate_take(&r, &s, 4, 50, &retry), 1);
  old = r;
  c.rate = 100;
  c.burst = 100;
  ASSERT_EQ(sp_rate_set(&r, &c, 50), 0);
  sp_rate_rescale(&old, &r, &s, 50);
  ASSERT_UINT64_EQ(sp_rate_available(&r, &s, 50), 96);
  return 0;
}

TEST_IMPL(rate_states_apart) {
  sp_rate_state_t a, b;
  sp_rate_t r;
  double retry;

  /* One limiter, two keys: each has its own burst; totals are shared. */
  ASSERT_PASS(rate_start(&r, 1, 1000, 2));
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  ASSERT_EQ(sp_rate_take(&r, &a, 2, 100, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, &a, 1, 100, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1000);
  ASSERT_EQ(sp_rate_take(&r, &b, 2, 100, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 2, 100, &retry), 1);
  ASSERT_UINT64_EQ(r.taken, 3);
  ASSERT_UINT64_EQ(r.rejected, 1);
  ASSERT_UINT64_EQ(sp_rate_full_at(&r, &a), 2100);
  ASSERT_UINT64_EQ(sp_rate_full_at(&r, &b), 2100);
  /* A zeroed state is full at time 0. */
  memset(&a, 0, sizeof(a));
  ASSERT_UINT64_EQ(sp_rate_full_at(&r, &a), 0);
  return 0;
}

TEST_IMPL(rate_overflow_guards) {
  sp_rate_t r;
  double retry, wait;
  uint64_t ticket;
  uint64_t huge = UINT64_MAX - 10;
  int i;

  /* Times near 2^64: a take, a refusal, a refill. */
  ASSERT_PASS(rate_start(&r, 10, 1000, 1));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, huge, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, huge, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 100);
  ASSERT_UINT64_EQ(sp_rate_full_at(&r, NULL), UINT64_MAX);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, UINT64_MAX, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 90);
  /* Time going backwards is taken as the latest time seen. */
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 90);

  /* Rate 1e9 per 1 ms: T is one unit of 1e-9 ms; a jump from 0 to 2^63
   * ms does not wrap elapsed * D. */
  ASSERT_PASS(rate_start(&r, 1e9, 1, 1000));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1000, 0, &retry), 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 0);
  ASSERT_DOUBLE_EQ(retry, 1);
  ASSERT_EQ(sp_rate_take(&r, NULL, 1000, UINT64_C(1) << 63, &retry), 1);

  /* Reservations pile up to the 2^63 units a state holds, never more. 1
   * per 2^40 ms with a burst of 2^20: each reservation of the whole burst
   * is 2^60 units ahead. */
  ASSERT_PASS(rate_start(&r, 1, UINT64_C(1) << 40, UINT64_C(1) << 20));
  for (i = 0; i < 8; i++)
    ASSERT_EQ(sp_rate_reserve(&r, NULL, UINT64_C(1) << 20, 0, INFINITY,
                              &wait, &ticket), 0);
  ASSERT_DOUBLE_EQ(wait, 7 * 0x1p60);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &ticket),
            SP_ETIMEDOUT);
  ASSERT_DOUBLE_EQ(wait, 7 * 0x1p60 + 0x1p40);
  ASSERT_UINT64_EQ(r.reserved, 8);
  ASSERT_UINT64_EQ(sp_rate_available(&r, NULL, 0), 0);
  /* A wait past 2^53 ms is compared exactly: 2^54 + 1 is 2^54 as a
   * double, and must still be refused with a max_wait_ms of 2^54 (the
   * next double, 2^54 + 4, admits it). */
  ASSERT_PASS(rate_start(&r, 1, (UINT64_C(1) << 54) + 1, 1));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, 0x1p54, &wait, &ticket),
            SP_ETIMEDOUT);
  ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, 0x1p54 + 4, &wait, &ticket), 0);

  /* set_rate on a state 2^63 units ahead, to an interval twice as long:
   * the cells used would be 2^64 units; they saturate at 2^63. */
  ASSERT_PASS(rate_start(&r, 1, UINT64_C(1) << 40, UINT64_C(1) << 20));
  for (i = 0; i < 8; i++)
    ASSERT_EQ(sp_rate_reserve(&r, NULL, UINT64_C(1) << 20, 0, INFINITY,
                              &wait, &ticket), 0);
  {
    sp_rate_config_t c = { 1, UINT64_C(1) << 41, UINT64_C(1) << 20 };

    ASSERT_EQ(sp_rate_set(&r, &c, 0), 0);
    ASSERT_EQ(sp_rate_reserve(&r, NULL, 1, 0, INFINITY, &wait, &ticket),
              SP_ETIMEDOUT);
    ASSERT_DOUBLE_EQ(wait, 0x1p63 + 0x1p41 - 0x1p61);
  }

  /* The smallest rate, from 1 ms to 1000 ms: one cell used is one
   * interval of 1e9 ms; an interval past 2^62 units is refused. */
  ASSERT_PASS(rate_start(&r, SP_RATE_MIN_RATE, 1, 1));
  ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 1);
  {
    sp_rate_config_t c = { SP_RATE_MIN_RATE, UINT64_C(1) << 43, 1 };

    ASSERT_EQ(sp_rate_set(&r, &c, 0), SP_ERANGE);
    c.per_ms = 1000;
    ASSERT_EQ(sp_rate_set(&r, &c, 0), 0);
    ASSERT_EQ(sp_rate_take(&r, NULL, 1, 0, &retry), 0);
    ASSERT_DOUBLE_EQ(retry, 1e9);
  }
  return 0;
}

TEST_IMPL(rate_layout) {
  /* Every field is 8 bytes, so the FFI's declaration (lua/sprun/ffi.lua)
   * lays it out the same way; tests/lua/rate_limiter_spec.lua checks the
   * same figures on its side. */
  ASSERT_EQ(sizeof(sp_rate_state_t), 24);
  ASSERT_EQ(sizeof(sp_rate_config_t), 24);
  ASSERT_EQ(sizeof(sp_rate_t), 136);
  ASSERT_EQ(offsetof(sp_rate_t, state), 80);
  ASSERT_EQ(offsetof(sp_rate_t, seq_), 128);
  return 0;
}
