/* Tests of the retry policy (runtime/core/retry.c): should_retry, list and
 * exponential delays with their cap, every jitter mode's bounds over 10,000
 * samples, seeding, the decorrelated restart, the generator against known
 * xoshiro256** values, and every case init refuses.
 */
#include <math.h>

#include "task.h"

enum { SAMPLES = 10000 };

/* A valid list policy: 100, 200, 400 ms, cap 30 s, no jitter. */
static void list_config(sp_retry_config_t *c) {
  memset(c, 0, sizeof(*c));
  c->max_attempts = 3;
  c->backoff = SP_BACKOFF_LIST;
  c->backoff_count = 3;
  c->backoff_ms[0] = 100;
  c->backoff_ms[1] = 200;
  c->backoff_ms[2] = 400;
  c->max_backoff_ms = 30000;
  c->jitter = SP_JITTER_NONE;
  c->jitter_factor = 0.25;
  c->seed = 1;
}

static void exp_config(sp_retry_config_t *c, double base, double multiplier,
                       double cap) {
  list_config(c);
  c->backoff = SP_BACKOFF_EXPONENTIAL;
  c->backoff_count = 0;
  c->base_backoff_ms = base;
  c->multiplier = multiplier;
  c->max_backoff_ms = cap;
}

static int retry_start(sp_retry_t *r, const sp_retry_config_t *c) {
  ASSERT_EQ(sp_retry_init(r, c), 0);
  return 0;
}

/* Every sample of a jittered delay is a whole number in [lo, hi], and the
 * samples reach within `slack` of both ends (so they do spread). */
static int check_spread(sp_retry_t *r, uint32_t attempt, double lo,
                        double hi, double slack) {
  double min;
  double max;
  int i;

  min = INFINITY;
  max = -INFINITY;
  for (i = 0; i < SAMPLES; i++) {
    double d = sp_retry_backoff(r, attempt);

    ASSERT_DOUBLE_GE(d, lo);
    ASSERT_DOUBLE_LE(d, hi);
    ASSERT_DOUBLE_EQ(d, floor(d));
    if (d < min)
      min = d;
    if (d > max)
      max = d;
  }
  ASSERT_DOUBLE_LE(min, lo + slack);
  ASSERT_DOUBLE_GE(max, hi - slack);
  return 0;
}

TEST_IMPL(retry_should_retry) {
  sp_retry_config_t c;
  sp_retry_t r;

  list_config(&c);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_EQ(sp_retry_should_retry(&r, 0), 1);
  ASSERT_EQ(sp_retry_should_retry(&r, 1), 1);
  ASSERT_EQ(sp_retry_should_retry(&r, 2), 1);
  ASSERT_EQ(sp_retry_should_retry(&r, 3), 0);
  ASSERT_EQ(sp_retry_should_retry(&r, 4), 0);
  ASSERT_EQ(sp_retry_should_retry(&r, UINT32_MAX), 0);

  /* One attempt in all: never a retry. */
  c.max_attempts = 1;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_EQ(sp_retry_should_retry(&r, 1), 0);
  return 0;
}

TEST_IMPL(retry_list_repeats_last) {
  sp_retry_config_t c;
  sp_retry_t r;
  int i;

  list_config(&c);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 100);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 200);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 400);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 4), 400);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1000), 400);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, UINT32_MAX), 400);
  /* Attempt 0 is taken as 1. */
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 0), 100);

  /* A single value repeats from the start; fractions are floored. */
  c.backoff_count = 1;
  c.backoff_ms[0] = 250.9;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 250);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 7), 250);

  /* The full 64 values. */
  c.backoff_count = SP_RETRY_MAX_BACKOFF;
  for (i = 0; i < SP_RETRY_MAX_BACKOFF; i++)
    c.backoff_ms[i] = i * 10;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 0);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 64), 630);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 65), 630);
  return 0;
}

TEST_IMPL(retry_cap) {
  sp_retry_config_t c;
  sp_retry_t r;

  list_config(&c);
  c.backoff_ms[1] = 5000;
  c.backoff_ms[2] = 50000;
  c.max_backoff_ms = 3000;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 100);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 3000);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 3000);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 9), 3000);

  /* A zero cap allows no wait at all, whatever the jitter. */
  c.max_backoff_ms = 0;
  c.jitter = SP_JITTER_PROPORTIONAL;
  c.jitter_factor = 1;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 0);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 0);
  return 0;
}

TEST_IMPL(retry_exponential) {
  sp_retry_config_t c;
  sp_retry_t r;

  exp_config(&c, 100, 2, 1e9);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 0), 100);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 100);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 200);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 400);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 11), 102400);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 24), 838860800);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 25), 1e9);
  /* Huge attempts reach the cap, not infinity or NaN. */
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 1e9);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, UINT32_MAX), 1e9);

  exp_config(&c, 100, 1.5, 30000);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 150);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 225);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 4), 337);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 30000);

  /* Multiplier 1: the base every time, even for the largest attempt. */
  exp_config(&c, 250, 1, 30000);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 250);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, UINT32_MAX), 250);

  /* Base 0 stays 0: no 0 * infinity. */
  exp_config(&c, 0, 10, 30000);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 0);

  /* The largest finite cap, and a multiplier whose square overflows. */
  exp_config(&c, 1, 10, 1e308);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 1e308);
  exp_config(&c, 1, 1e300, 1e308);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 1e300);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 3), 1e308);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 10000), 1e308);

  /* A base above the cap is capped from the first attempt. */
  exp_config(&c, 5000, 2, 1000);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 1000);
  return 0;
}

TEST_IMPL(retry_jitter_none_draws_nothing) {
  sp_retry_config_t c;
  sp_retry_t r;
  sp_retry_t fresh;

  list_config(&c);
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(retry_start(&fresh, &c));
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 1), 100);
  ASSERT_DOUBLE_EQ(sp_retry_backoff(&r, 2), 200);
  ASSERT_DOUBLE_EQ(sp_retry_random(&r), sp_retry_random(&fresh));
  return 0;
}

TEST_IMPL(retry_jitter_proportional) {
  sp_retry_config_t c;
  sp_retry_t r;
  double sum;
  int i;

  list_config(&c);
  c.backoff_ms[0] = 1000;
  c.jitter = SP_JITTER_PROPORTIONAL;
  c.jitter_factor = 0.25;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 750, 1250, 5));

  /* Centred on the delay. */
  sum = 0;
  for (i = 0; i < SAMPLES; i++)
    sum += sp_retry_backoff(&r, 1);
  ASSERT_DOUBLE_GE(sum / SAMPLES, 990);
  ASSERT_DOUBLE_LE(sum / SAMPLES, 1010);

  /* Factor 0: no spread at all. */
  c.jitter_factor = 0;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 1000, 1000, 0));

  /* Factor 1: from 0 to twice the delay. */
  c.jitter_factor = 1;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 0, 2000, 5));

  /* At the cap the upper half is clamped to it, never above. */
  c.jitter_factor = 0.5;
  c.max_backoff_ms = 1000;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 500, 1000, 5));
  return 0;
}

TEST_IMPL(retry_jitter_full) {
  sp_retry_config_t c;
  sp_retry_t r;

  list_config(&c);
  c.backoff_ms[0] = 1000;
  c.jitter = SP_JITTER_FULL;
  ASSERT_PASS(retry_start(&r, &c));
  /* Flooring makes 1000 itself unreachable: uniform over [0, 1000). */
  ASSERT_PASS(check_spread(&r, 1, 0, 1000, 5));

  /* The cap applies before the spread. */
  c.max_backoff_ms = 300;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 3, 0, 300, 5));
  return 0;
}

TEST_IMPL(retry_jitter_equal) {
  sp_retry_config_t c;
  sp_retry_t r;

  exp_config(&c, 1000, 2, 30000);
  c.jitter = SP_JITTER_EQUAL;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 500, 1000, 5));
  ASSERT_PASS(check_spread(&r, 2, 1000, 2000, 5));
  ASSERT_PASS(check_spread(&r, 100, 15000, 30000, 10));
  return 0;
}

TEST_IMPL(retry_jitter_decorrelated) {
  sp_retry_config_t c;
  sp_retry_t r;
  double previous;
  double max;
  int i;

  exp_config(&c, 100, 2, 10000);
  c.jitter = SP_JITTER_DECORRELATED;
  ASSERT_PASS(retry_start(&r, &c));

  /* Series of 20 attempts: each delay in [base, 3 * previous], capped. The
   * previous delay is kept before flooring, hence the + 2. */
  max = 0;
  previous = 100;
  for (i = 0; i < SAMPLES; i++) {
    uint32_t attempt = (uint32_t) (i % 20) + 1;
    double d;

    if (attempt == 1)
      previous = 100;
    d = sp_retry_backoff(&r, attempt);
    ASSERT_DOUBLE_GE(d, 100);
    ASSERT_DOUBLE_LE(d, 10000);
    ASSERT_DOUBLE_LE(d, previous * 3 + 2);
    ASSERT_DOUBLE_EQ(d, floor(d));
    if (d > max)
      max = d;
    previous = d;
  }
  /* Long series do reach the cap. */
  ASSERT_DOUBLE_EQ(max, 10000);

  /* With a list, the base is the first value. */
  list_config(&c);
  c.jitter = SP_JITTER_DECORRELATED;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_PASS(check_spread(&r, 1, 100, 300, 5));
  return 0;
}

TEST_IMPL(retry_decorrelated_restarts_at_attempt_one) {
  sp_retry_config_t c;
  sp_retry_t r;
  double d;
  int i;
  int j;

  exp_config(&c, 100, 2, 1e9);
  c.jitter = SP_JITTER_DECORRELATED;
  ASSERT_PASS(retry_start(&r, &c));
  for (i = 0; i < 1000; i++) {
    /* Grow the previous delay well past the base... */
    for (j = 2; j < 12; j++)
      sp_retry_backoff(&r, (uint32_t) j);
    /* ...then a new series starts again from the base (0 counts as 1). */
    d = sp_retry_backoff(&r, i % 2 ? 1 : 0);
    ASSERT_DOUBLE_GE(d, 100);
    ASSERT_DOUBLE_LE(d, 300);
  }

  /* Reseeding restarts the series too. */
  for (j = 2; j < 12; j++)
    sp_retry_backoff(&r, (uint32_t) j);
  sp_retry_seed(&r, 5);
  d = sp_retry_backoff(&r, 2);
  ASSERT_DOUBLE_LE(d, 300);
  return 0;
}

TEST_IMPL(retry_seed_reproducible) {
  sp_retry_config_t c;
  sp_retry_t a;
  sp_retry_t b;
  double first[100];
  int differ;
  int i;

  list_config(&c);
  c.backoff_ms[0] = 1000000;
  c.max_backoff_ms = 1e9;
  c.jitter = SP_JITTER_FULL;
  c.seed = 42;
  ASSERT_PASS(retry_start(&a, &c));
  ASSERT_PASS(retry_start(&b, &c));
  for (i = 0; i < 100; i++) {
    first[i] = sp_retry_backoff(&a, 1);
    ASSERT_DOUBLE_EQ(first[i], sp_retry_backoff(&b, 1));
  }

  /* Reseeding with the same seed replays the sequence. */
  sp_retry_seed(&a, 42);
  for (i = 0; i < 100; i++)
    ASSERT_DOUBLE_EQ(sp_retry_backoff(&a, 1), first[i]);

  /* Another seed gives another sequence. */
  sp_retry_seed(&b, 43);
  differ = 0;
  for (i = 0; i < 100; i++)
    differ += sp_retry_backoff(&b, 1) != first[i];
  ASSERT_GE(differ, 90);
  return 0;
}

TEST_IMPL(retry_random_known_values) {
  sp_retry_config_t c;
  sp_retry_t r;
  int i;

  /* xoshiro256** seeded by splitmix64, as computed independently. */
  list_config(&c);
  c.seed = 0;
  ASSERT_PASS(retry_start(&r, &c));
  ASSERT_DOUBLE_EQ(sp_retry_random(&r),
                   (double) (UINT64_C(0x99ec5f36cb75f2b4) >> 11) * 0x1p-53);
  ASSERT_DOUBLE_EQ(sp_retry_random(&r),
                   (double) (UINT64_C(0xbf6e1f784956452a) >> 11) * 0x1p-53);
  ASSERT_DOUBLE_EQ(sp_retry_random(&r),
                   (double) (UINT64_C(0x1a5f849d4933e6e0) >> 11) * 0x1p-53);
  sp_retry_seed(&r, 42);
  ASSERT_DOUBLE_EQ(sp_retry_random(&r),
                   (double) (UINT64_C(0x15780b2e0c2ec716) >> 11) * 0x1p-53);

  for (i = 0; i < SAMPLES; i++) {
    double u = sp_retry_random(&r);

    ASSERT_DOUBLE_GE(u, 0);
    ASSERT_DOUBLE_LT(u, 1);
  }
  return 0;
}

TEST_IMPL(retry_init_validation) {
  sp_retry_config_t c;
  sp_retry_t r;

  list_config(&c);
  ASSERT_EQ(sp_retry_init(&r, NULL), SP_EINVAL);
  ASSERT_EQ(sp_retry_init(NULL, &c), SP_EINVAL);

#define REFUSED(field, value)                                                \
  do {                                                                       \
    sp_retry_config_t bad_ = c;                                              \
    bad_.field = (value);                                                    \
    if (sp_retry_init(&r, &bad_) != SP_EINVAL) {                             \
      printf("# %s:%d: %s = %s accepted\n", __FILE__, __LINE__, #field,      \
             #value);                                                        \
      return 1;                                                              \
    }                                                                        \
  } while (0)

#define ACCEPTED(field, value)                                               \
  do {                                                                       \
    sp_retry_config_t ok_ = c;                                               \
    ok_.field = (value);                                                     \
    if (sp_retry_init(&r, &ok_) != 0) {                                      \
      printf("# %s:%d: %s = %s refused\n", __FILE__, __LINE__, #field,       \
             #value);                                                        \
      return 1;                                                              \
    }                                                                        \
  } while (0)

  /* Common to both backoffs. */
  REFUSED(max_attempts, 0);
  ACCEPTED(max_attempts, UINT32_MAX);
  REFUSED(backoff, 2);
  REFUSED(backoff, -1);
  REFUSED(max_backoff_ms, -1);
  REFUSED(max_backoff_ms, NAN);
  REFUSED(max_backoff_ms, INFINITY);
  ACCEPTED(max_backoff_ms, 0);
  REFUSED(jitter, -1);
  REFUSED(jitter, 5);
  ACCEPTED(jitter, SP_JITTER_DECORRELATED);
  REFUSED(jitter_factor, -0.01);
  REFUSED(jitter_factor, 1.01);
  REFUSED(jitter_factor, NAN);
  REFUSED(jitter_factor, INFINITY);
  ACCEPTED(jitter_factor, 0);
  ACCEPTED(jitter_factor, 1);

  /* List backoff. */
  REFUSED(backoff_count, 0);
  REFUSED(backoff_count, SP_RETRY_MAX_BACKOFF + 1);
  REFUSED(backoff_count, UINT32_MAX);
  REFUSED(backoff_ms[0], -1);
  REFUSED(backoff_ms[2], -0.5);
  REFUSED(backoff_ms[1], NAN);
  REFUSED(backoff_ms[1], INFINITY);
  ACCEPTED(backoff_ms[0], 0);
  /* Values past backoff_count are not looked at. */
  ACCEPTED(backoff_ms[3], NAN);
  /* Neither are the exponential fields. */
  ACCEPTED(multiplier, 0);
  ACCEPTED(base_backoff_ms, -1);

  /* Exponential backoff. */
  exp_config(&c, 100, 2, 30000);
  ASSERT_EQ(sp_retry_init(&r, &c), 0);
  REFUSED(base_backoff_ms, -1);
  REFUSED(base_backoff_ms, NAN);
  REFUSED(base_backoff_ms, INFINITY);
  ACCEPTED(base_backoff_ms, 0);
  REFUSED(multiplier, 0.99);
  REFUSED(multiplier, 0);
  REFUSED(multiplier, -2);
  REFUSED(multiplier, NAN);
  REFUSED(multiplier, INFINITY);
  ACCEPTED(multiplier, 1);
  /* The list is not looked at. */
  ACCEPTED(backoff_count, 0);
  ACCEPTED(backoff_ms[0], NAN);

#undef REFUSED
#undef ACCEPTED
  return 0;
}
