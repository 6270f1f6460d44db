/* rate: GCRA, a rate limit with one timestamp of state.
 *
 * A state holds the theoretical arrival time (TAT) of the next cell. With
 * an emission interval T = per_ms / rate and a tolerance of burst * T, a
 * take of n at `now` is admitted when max(TAT, now) + n * T <= now +
 * burst * T; the new TAT is the left side. A reservation commits that TAT
 * whatever it is, and the caller waits until it is within the tolerance.
 * A state is kept relative to the latest time seen (`ahead_` = TAT - now,
 * never negative: a TAT in the past is a full state, and max() forgets
 * how far in the past it was), so the caller's clock may start anywhere
 * and run for ever.
 *
 * The trap: T must not be a rounded number of ms (or ns). 1000 / 3 ms
 * rounded makes every third cell early or late by the rounding, and a
 * take at exactly 1000 ms would be refused or one too many admitted over
 * time. Here time is counted in units of 1/D ms with T a whole number N
 * of units: the rate is the fraction p / q, T = per_ms * q / p ms, reduced
 * to N / D. Every comparison is then exact integer arithmetic, and every
 * product that could overflow is bounded at init (burst * N < 2^62) or
 * guarded where it is made.
 */
#include <math.h>
#include <string.h>

#include "sprun.h"

/* A state holds at most this much ahead of its time; burst * T < 2^62 is
 * checked at init, so ahead_ + n * T (n <= burst) never wraps. */
#define AHEAD_MAX (UINT64_C(1) << 63)
#define LIMIT_MAX (UINT64_C(1) << 62)

static uint64_t gcd64(uint64_t a, uint64_t b) {
  while (b != 0) {
    uint64_t t = a % b;

    a = b;
    b = t;
  }
  return a;
}

static uint64_t ceil_div(uint64_t a, uint64_t b) {
  return a / b + (a % b != 0);
}

/* The 128-bit product of a and b, as its high and low halves. */
static void mul64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo) {
  uint64_t a0 = a & 0xffffffffu, a1 = a >> 32;
  uint64_t b0 = b & 0xffffffffu, b1 = b >> 32;
  uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  uint64_t mid;

  mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
  *lo = (mid << 32) | (p00 & 0xffffffffu);
  *hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* ceil(a * b / c) for c >= 1, or UINT64_MAX when it does not fit: bit by
 * bit long division of the 128-bit product (only sp_rate_set and
 * sp_rate_rescale use it). */
static uint64_t muldiv_ceil(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t hi, lo, q, rem;
  int i;

  mul64(a, b, &hi, &lo);
  if (hi >= c)
    return UINT64_MAX;
  q = 0;
  rem = hi;
  for (i = 63; i >= 0; i--) {
    /* rem < c before the shift; a carry out means rem + 2^64 >= c, and the
     * subtraction below wraps to the right remainder. */
    uint64_t carry = rem >> 63;

    rem = (rem << 1) | ((lo >> i) & 1);
    q <<= 1;
    if (carry || rem >= c) {
      rem -= c;
      q |= 1;
    }
  }
  if (rem != 0) {
    if (q == UINT64_MAX)
      return UINT64_MAX;
    q++;
  }
  return q;
}

/* The rate as p / q: the first convergent of its continued fraction that
 * is the same double, or the last one with q <= SP_RATE_MAX_DENOM. 0.1
 * gives 1 / 10, 2.5 gives 5 / 2, 1.0 / 3 gives 1 / 3. Returns 0, or
 * SP_EINVAL if p would be 0 (a rate below SP_RATE_MIN_RATE cannot get
 * there, as 1 / floor(1 / rate) is a convergent). */
static int rate_fraction(double rate, uint64_t *num, uint64_t *den) {
  uint64_t h0 = 0, h1 = 1, k0 = 1, k1 = 0;
  double x = rate;
  int i;

  for (i = 0; i < 64; i++) {
    double a = floor(x);
    double frac;
    uint64_t ai, h2, k2;

    /* A partial quotient that large makes the next denominator too
     * large too (k1 >= 1 from the second step on, and the first one is
     * the integer part of a rate <= SP_RATE_MAX_RATE). */
    if (a > SP_RATE_MAX_DENOM && k1 != 0)
      break;
    ai = (uint64_t) a;
    h2 = ai * h1 + h0;
    k2 = ai * k1 + k0;
    if (k2 > SP_RATE_MAX_DENOM)
      break;
    h0 = h1;
    h1 = h2;
    k0 = k1;
    k1 = k2;
    if ((double) h1 / (double) k1 == rate)
      break;
    frac = x - a;
    if (frac <= 0)
      break;
    x = 1 / frac;
  }
  if (k1 == 0 || h1 == 0)
    return SP_EINVAL;
  *num = h1;
  *den = k1;
  return 0;
}

/* Fills the derived fields of r for `config`, or returns an error and
 * leaves r as it was. */
static int configure(sp_rate_t *r, const sp_rate_config_t *config) {
  uint64_t num, den, g, unit, interval;
  int rc;

  /* Written so that NaN fails it too. */
  if (!(config->rate >= SP_RATE_MIN_RATE && config->rate <= SP_RATE_MAX_RATE))
    return SP_EINVAL;
  if (config->per_ms == 0 || config->burst == 0)
    return SP_EINVAL;
  rc = rate_fraction(config->rate, &num, &den);
  if (rc != 0)
    return rc;
  /* T = per_ms * den / num ms; gcd(den, num) is 1, so the fraction
   * reduces by gcd(per_ms, num) alone. */
  g = gcd64(config->per_ms, num);
  unit = num / g;
  if (config->per_ms / g > LIMIT_MAX / den)
    return SP_ERANGE;
  interval = config->per_ms / g * den;
  if (config->burst > LIMIT_MAX / interval)
    return SP_ERANGE;

  r->config = *config;
  r->rate_num = num;
  r->rate_den = den;
  r->unit_ms_ = unit;
  r->interval_ = interval;
  r->limit_ = config->burst * interval;
  return 0;
}

int sp_rate_init(sp_rate_t *r, const sp_rate_config_t *config) {
  sp_rate_t next;
  int rc;

  if (r == NULL || config == NULL)
    return SP_EINVAL;
  memset(&next, 0, sizeof(next));
  rc = configure(&next, config);
  if (rc != 0)
    return rc;
  *r = next;
  return 0;
}

uint64_t sp_rate_max_burst(double rate, uint64_t per_ms) {
  sp_rate_config_t c = { rate, per_ms, 1 };
  sp_rate_t r;

  if (configure(&r, &c) != 0)
    return 0;
  return LIMIT_MAX / r.interval_;
}

/* Moves the state on to now_ms (never back). */
static void advance(const sp_rate_t *r, sp_rate_state_t *s, uint64_t now_ms) {
  uint64_t elapsed;

  if (now_ms <= s->last_ms_)
    return;
  elapsed = now_ms - s->last_ms_;
  s->last_ms_ = now_ms;
  /* elapsed * D >= ahead_ without computing a product that may wrap. */
  if (elapsed >= ceil_div(s->ahead_, r->unit_ms_))
    s->ahead_ = 0;
  else
    s->ahead_ -= elapsed * r->unit_ms_;
}

/* The whole ms until `after` (a state's ahead_ once n cells are added)
 * is within the tolerance. */
static uint64_t wait_for(const sp_rate_t *r, uint64_t after) {
  if (after <= r->limit_)
    return 0;
  return ceil_div(after - r->limit_, r->unit_ms_);
}

static void commit(sp_rate_t *r, sp_rate_state_t *s, uint64_t after) {
  s->ahead_ = after;
  s->seq_ = ++r->seq_;
}

int sp_rate_take(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                 uint64_t now_ms, double *retry_after_ms) {
  uint64_t after;
  double retry;

  if (s == NULL)
    s = &r->state;
  if (n == 0)
    return SP_EINVAL;
  if (n > r->config.burst) {
    r->rejected++;
    if (retry_after_ms != NULL)
      *retry_after_ms = INFINITY;
    return SP_ERANGE;
  }
  advance(r, s, now_ms);
  after = s->ahead_ + n * r->interval_;
  if (after <= r->limit_) {
    commit(r, s, after);
    r->taken++;
    if (retry_after_ms != NULL)
      *retry_after_ms = 0;
    return 1;
  }
  r->rejected++;
  retry = (double) wait_for(r, after);
  if (retry_after_ms != NULL)
    *retry_after_ms = retry;
  return 0;
}

int sp_rate_reserve(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                    uint64_t now_ms, double max_wait_ms, double *wait_ms,
                    uint64_t *ticket) {
  uint64_t after, wait;
  int fits;

  if (s == NULL)
    s = &r->state;
  if (n == 0 || !(max_wait_ms >= 0))
    return SP_EINVAL;
  if (n > r->config.burst) {
    r->refused++;
    if (wait_ms != NULL)
      *wait_ms = INFINITY;
    return SP_ERANGE;
  }
  advance(r, s, now_ms);
  after = s->ahead_ + n * r->interval_;
  wait = wait_for(r, after);
  if (wait_ms != NULL)
    *wait_ms = (double) wait;
  /* Compared as integers: a wait past 2^53 ms would round as a double. */
  fits = max_wait_ms >= 0x1p64 || wait <= (uint64_t) max_wait_ms;
  if (!fits || after > AHEAD_MAX) {
    r->refused++;
    return SP_ETIMEDOUT;
  }
  commit(r, s, after);
  r->reserved++;
  if (ticket != NULL)
    *ticket = s->seq_;
  return 0;
}

int sp_rate_cancel(sp_rate_t *r, sp_rate_state_t *s, uint64_t n,
                   uint64_t ticket, uint64_t now_ms) {
  uint64_t cost;

  if (s == NULL)
    s = &r->state;
  if (n == 0 || n > r->config.burst)
    return SP_EINVAL;
  if (ticket == 0 || s->seq_ != ticket)
    return 0;
  advance(r, s, now_ms);
  /* max(TAT_before, now_then) + n * T - n * T: the TAT before it, or a
   * time already past, which is the same full state. */
  cost = n * r->interval_;
  s->ahead_ = s->ahead_ > cost ? s->ahead_ - cost : 0;
  /* The commit before this one is not known: nothing more to give back. */
  s->seq_ = 0;
  r->returned++;
  return 1;
}

void sp_rate_rescale(const sp_rate_t *from, const sp_rate_t *to,
                     sp_rate_state_t *s, uint64_t now_ms) {
  uint64_t ahead;

  advance(from, s, now_ms);
  /* Cells used: ahead_ / T_from, and as many under `to`, rounded up so
   * that a conversion never admits more. */
  ahead = muldiv_ceil(s->ahead_, to->interval_, from->interval_);
  s->ahead_ = ahead > AHEAD_MAX ? AHEAD_MAX : ahead;
}

int sp_rate_set(sp_rate_t *r, const sp_rate_config_t *config,
                uint64_t now_ms) {
  sp_rate_t next;
  int rc;

  if (r == NULL || config == NULL)
    return SP_EINVAL;
  next = *r;
  rc = configure(&next, config);
  if (rc != 0)
    return rc;
  sp_rate_rescale(r, &next, &next.state, now_ms);
  *r = next;
  return 0;
}

uint64_t sp_rate_available(const sp_rate_t *r, const sp_rate_state_t *s,
                           uint64_t now_ms) {
  sp_rate_state_t t;

  t = s == NULL ? r->state : *s;
  advance(r, &t, now_ms);
  if (t.ahead_ >= r->limit_)
    return 0;
  return (r->limit_ - t.ahead_) / r->interval_;
}

uint64_t sp_rate_full_at(const sp_rate_t *r, const sp_rate_state_t *s) {
  uint64_t wait;

  if (s == NULL)
    s = &r->state;
  wait = ceil_div(s->ahead_, r->unit_ms_);
  if (wait > UINT64_MAX - s->last_ms_)
    return UINT64_MAX;
  return s->last_ms_ + wait;
}
