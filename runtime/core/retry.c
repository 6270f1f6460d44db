/* retry: how many times to call, and how long to wait between calls.
 *
 * A policy allows max_attempts calls in all. The delay after attempt n
 * (counted from 1) starts from a base: backoff_ms[n - 1] from a list whose
 * last value repeats, or base_backoff_ms * multiplier^(n - 1). It is capped
 * at max_backoff_ms, spread by the jitter mode (the AWS formulas, plus the
 * seed's proportional spread), clamped to [0, max_backoff_ms] again and
 * floored to whole milliseconds. Jitter draws from a per-policy
 * xoshiro256** generator, so a seed gives the same delays every run.
 *
 * The trap: the exponential delay must not be computed as
 * base * pow(multiplier, n - 1). For a large attempt the power overflows to
 * infinity, and with a zero base 0 * infinity is NaN, which slips through
 * every comparison with the cap. Here a zero base is answered at once, and
 * the power is built by squaring that stops as soon as the result is known
 * to pass the cap: O(log n) whatever the attempt, and never a NaN.
 */
#include <math.h>

#include "sprun.h"

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z;

  z = (*x += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static uint64_t xoshiro_next(uint64_t s[4]) {
  uint64_t result;
  uint64_t t;

  result = rotl(s[1] * 5, 7) * 9;
  t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static int is_delay(double ms) {
  return isfinite(ms) && ms >= 0;
}

/* The delay the jitter spreads around, before any cap. */
static double retry_first_base(const sp_retry_config_t *c) {
  if (c->backoff == SP_BACKOFF_LIST)
    return c->backoff_ms[0];
  return c->base_backoff_ms;
}

/* multiplier^n, or a value above `limit` as soon as the result is known to
 * be above it. Every factor is >= 1, so a partial product above the limit
 * proves the whole one is, and a square above it that still has a bit of n
 * to serve will be multiplied in. */
static double pow_capped(double multiplier, uint32_t n, double limit) {
  double r;

  r = 1;
  while (n != 0) {
    if (n & 1) {
      r *= multiplier;
      if (r > limit)
        return r;
    }
    n >>= 1;
    if (n != 0) {
      if (multiplier > limit)
        return multiplier;
      multiplier *= multiplier;
    }
  }
  return r;
}

static double retry_base(const sp_retry_t *r, uint32_t attempt) {
  const sp_retry_config_t *c;
  double cap;
  double p;

  c = &r->config;
  cap = c->max_backoff_ms;

  if (c->backoff == SP_BACKOFF_LIST) {
    if (attempt > c->backoff_count)
      attempt = c->backoff_count;
    return c->backoff_ms[attempt - 1];
  }

  /* Zero times anything is zero, and no limit can be derived from it. */
  if (c->base_backoff_ms == 0)
    return 0;
  p = pow_capped(c->multiplier, attempt - 1, cap / c->base_backoff_ms);
  if (p > cap / c->base_backoff_ms)
    return cap;
  return c->base_backoff_ms * p;
}

int sp_retry_init(sp_retry_t *r, const sp_retry_config_t *config) {
  uint32_t i;

  if (r == NULL || config == NULL)
    return SP_EINVAL;
  if (config->max_attempts == 0)
    return SP_EINVAL;

  switch (config->backoff) {
  case SP_BACKOFF_LIST:
    if (config->backoff_count == 0 ||
        config->backoff_count > SP_RETRY_MAX_BACKOFF)
      return SP_EINVAL;
    for (i = 0; i < config->backoff_count; i++)
      if (!is_delay(config->backoff_ms[i]))
        return SP_EINVAL;
    break;
  case SP_BACKOFF_EXPONENTIAL:
    if (!is_delay(config->base_backoff_ms))
      return SP_EINVAL;
    if (!isfinite(config->multiplier) || !(config->multiplier >= 1))
      return SP_EINVAL;
    break;
  default:
    return SP_EINVAL;
  }

  if (!is_delay(config->max_backoff_ms))
    return SP_EINVAL;

  switch (config->jitter) {
  case SP_JITTER_NONE:
  case SP_JITTER_PROPORTIONAL:
  case SP_JITTER_FULL:
  case SP_JITTER_EQUAL:
  case SP_JITTER_DECORRELATED:
    break;
  default:
    return SP_EINVAL;
  }
  /* Written so that NaN fails it too. */
  if (!(config->jitter_factor >= 0 && config->jitter_factor <= 1))
    return SP_EINVAL;

  r->config = *config;
  sp_retry_seed(r, config->seed);
  return 0;
}

int sp_retry_should_retry(const sp_retry_t *r, uint32_t attempt) {
  return attempt < r->config.max_attempts;
}

double sp_retry_backoff(sp_retry_t *r, uint32_t attempt) {
  const sp_retry_config_t *c;
  double cap;
  double d;
  double lo;
  double hi;

  c = &r->config;
  cap = c->max_backoff_ms;
  if (attempt == 0)
    attempt = 1;

  d = retry_base(r, attempt);
  if (d > cap)
    d = cap;

  switch (c->jitter) {
  case SP_JITTER_PROPORTIONAL:
    lo = d - d * c->jitter_factor;
    hi = d + d * c->jitter_factor;
    d = lo + (hi - lo) * sp_retry_random(r);
    break;
  case SP_JITTER_FULL:
    d = d * sp_retry_random(r);
    break;
  case SP_JITTER_EQUAL:
    d = d / 2 + d / 2 * sp_retry_random(r);
    break;
  case SP_JITTER_DECORRELATED:
    /* Each delay grows from the previous one, not from the attempt, so the
     * first attempt of a new series starts again from the base. */
    lo = retry_first_base(c);
    if (attempt == 1)
      r->previous_ = lo;
    hi = r->previous_ * 3;
    d = lo + (hi - lo) * sp_retry_random(r);
    if (d > cap)
      d = cap;
    r->previous_ = d;
    break;
  default:
    break;
  }

  /* A spread can leave the range: proportional goes above the cap when the
   * delay is at it, and rounding may step just outside either end. */
  if (!(d >= 0))
    d = 0;
  if (d > cap)
    d = cap;
  return floor(d);
}

void sp_retry_seed(sp_retry_t *r, uint64_t seed) {
  uint64_t x;
  int i;

  x = seed;
  for (i = 0; i < 4; i++)
    r->rng_[i] = splitmix64(&x);
  r->previous_ = retry_first_base(&r->config);
}

double sp_retry_random(sp_retry_t *r) {
  return (double) (xoshiro_next(r->rng_) >> 11) * 0x1.0p-53;
}
