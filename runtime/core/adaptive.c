/* adaptive: a concurrency limit that follows what the calls measure.
 *
 * The limit admits floor(limit) calls at once; each call that ends gives a
 * sample (its RTT, whether it was dropped, how many calls were in flight
 * when it ended, itself included) and the algorithm moves the limit:
 *
 *  - aimd: a drop (or an RTT above timeout_ms) multiplies the limit by
 *    backoff_ratio; a success while at least half the limit was in flight
 *    adds 1 (a limit nobody presses against learns nothing).
 *  - gradient2 (Netflix concurrency-limits' Gradient2Limit): the long-term
 *    RTT is an exponential average over long_window updates (a plain mean
 *    over the first 10), the short-term RTT is the last sample (or the
 *    window's mean), gradient = clamp(rtt_tolerance * long / short, 0.5, 1)
 *    and the limit moves a `smoothing` share of the way to
 *    limit * gradient + queue. When short falls below half of long, long
 *    is cut by 5% per update, so a baseline learnt under a past overload
 *    comes back down quicker than the average alone would bring it.
 *
 * With window_ms set, samples are gathered first and one update runs per
 * window (its mean RTT, its largest in-flight count, any drop): a burst of
 * drops from calls that were all in flight together then backs off once,
 * not once per call.
 *
 * The trap: the RTTs of gradient2 are ratios' denominators. A short RTT of
 * 0 (a call faster than the caller's clock) gives no gradient, so it is
 * taken as 1 (no queueing seen), never as a division by zero, and a run
 * of them, which would decay the long-term average into the slow
 * subnormals, flushes it to 0 below 1e-9 ms. And under a long overload
 * the long-term RTT follows the short one up, so the limit creeps up at
 * the pace long_window sets (Netflix's behaviour, kept).
 */
#include <math.h>
#include <string.h>

#include "sprun.h"

/* Netflix's warm-up: the first samples of the long-term RTT are averaged
 * plainly, so the first one alone does not set the baseline. */
enum { LONG_WARMUP = 10 };

/* ms: an RTT below it is no RTT (see gradient2_update). */
#define TINY_RTT 1e-9

static int is_ratio(double v) {
  return v > 0 && v < 1;
}

static double clamp(double v, double lo, double hi) {
  if (v < lo)
    return lo;
  if (v > hi)
    return hi;
  return v;
}

static int config_check(const sp_adaptive_config_t *c) {
  if (c->min_limit < 1 || c->max_limit < c->min_limit ||
      c->max_limit > SP_ADAPTIVE_MAX_LIMIT)
    return SP_EINVAL;
  if (c->initial_limit < c->min_limit || c->initial_limit > c->max_limit)
    return SP_EINVAL;
  if (c->window_ms > 0 && c->window_min_samples < 1)
    return SP_EINVAL;

  switch (c->algorithm) {
  case SP_ADAPTIVE_AIMD:
    if (!is_ratio(c->backoff_ratio))
      return SP_EINVAL;
    /* Written so that NaN fails it too. */
    if (!(c->timeout_ms >= 0) || !isfinite(c->timeout_ms))
      return SP_EINVAL;
    return 0;
  case SP_ADAPTIVE_GRADIENT2:
    if (c->long_window < 1)
      return SP_EINVAL;
    if (!(c->rtt_tolerance >= 1) || !isfinite(c->rtt_tolerance))
      return SP_EINVAL;
    if (!(c->smoothing > 0 && c->smoothing <= 1))
      return SP_EINVAL;
    if (!(c->queue_size >= 0) || !isfinite(c->queue_size))
      return SP_EINVAL;
    if (c->queue_mode != SP_ADAPTIVE_QUEUE_FIXED &&
        c->queue_mode != SP_ADAPTIVE_QUEUE_SQRT)
      return SP_EINVAL;
    return 0;
  default:
    return SP_EINVAL;
  }
}

int sp_adaptive_init(sp_adaptive_t *a, const sp_adaptive_config_t *config) {
  int rc;

  if (a == NULL || config == NULL)
    return SP_EINVAL;
  rc = config_check(config);
  if (rc < 0)
    return rc;

  memset(a, 0, sizeof(*a));
  a->config = *config;
  a->limit = config->initial_limit;
  a->gradient = 1;
  return 0;
}

static void aimd_update(sp_adaptive_t *a, double rtt, uint32_t in_flight,
                        int dropped) {
  const sp_adaptive_config_t *c;

  c = &a->config;
  if (dropped || (c->timeout_ms > 0 && rtt > c->timeout_ms))
    a->limit = clamp(a->limit * c->backoff_ratio, c->min_limit,
                     c->max_limit);
  else if ((double) in_flight * 2 >= a->limit)
    a->limit = clamp(a->limit + 1, c->min_limit, c->max_limit);
}

/* The queue gradient2 allows for at the current limit. queue_size may have
 * been changed since init, so it is sanitised here. */
static double gradient2_queue(const sp_adaptive_t *a) {
  double q;
  double r;

  q = a->config.queue_size;
  if (!(q >= 0) || !isfinite(q))
    q = 0;
  if (a->config.queue_mode == SP_ADAPTIVE_QUEUE_SQRT) {
    r = floor(sqrt(floor(a->limit)));
    if (r > q)
      q = r;
  }
  return q;
}

static void gradient2_update(sp_adaptive_t *a, double rtt,
                             uint32_t in_flight) {
  const sp_adaptive_config_t *c;
  uint32_t warmup;
  double queue;
  double factor;
  double g;
  double target;

  c = &a->config;
  queue = gradient2_queue(a);

  warmup = c->long_window < LONG_WARMUP ? c->long_window : LONG_WARMUP;
  if (a->long_count_ < warmup) {
    a->long_count_++;
    a->long_sum_ += rtt;
    a->long_rtt = a->long_sum_ / a->long_count_;
  } else {
    factor = 2.0 / ((double) c->long_window + 1);
    a->long_rtt = a->long_rtt * (1 - factor) + rtt * factor;
    /* A run of zero RTTs decays the average towards 0 forever; left
     * alone it reaches the subnormals, where every operation on it is
     * many times slower. Below a picosecond it is 0. */
    if (a->long_rtt < TINY_RTT)
      a->long_rtt = 0;
  }
  a->short_rtt = rtt;

  /* Latency back to normal after a long overload: bring the baseline
   * down faster than the average would. */
  if (rtt > 0 && a->long_rtt / rtt > 2)
    a->long_rtt *= 0.95;

  /* App-limited: too few calls to say anything about the limit. */
  if ((double) in_flight < a->limit / 2)
    return;

  if (rtt > 0)
    g = clamp(c->rtt_tolerance * a->long_rtt / rtt, 0.5, 1.0);
  else
    g = 1;
  a->gradient = g;
  target = a->limit * g + queue;
  a->limit = clamp(a->limit * (1 - c->smoothing) + target * c->smoothing,
                   c->min_limit, c->max_limit);
}

static void update(sp_adaptive_t *a, double rtt, uint32_t in_flight,
                   int dropped) {
  a->updates++;
  if (a->config.algorithm == SP_ADAPTIVE_AIMD)
    aimd_update(a, rtt, in_flight, dropped);
  else
    gradient2_update(a, rtt, in_flight);
}

/* Adds a sample to the open window; 1 if it closed the window (and ran
 * the update). A clock that went back counts as no time passed. */
static int window_add(sp_adaptive_t *a, double rtt, uint32_t in_flight,
                      int dropped, uint64_t now_ms) {
  const sp_adaptive_config_t *c;
  double mean;
  int any_drop;
  uint32_t most;

  c = &a->config;
  if (a->window_count_ == 0)
    a->window_start_ = now_ms;
  a->window_count_++;
  a->window_rtt_sum_ += rtt;
  if (in_flight > a->window_in_flight_)
    a->window_in_flight_ = in_flight;
  if (dropped || (c->algorithm == SP_ADAPTIVE_AIMD && c->timeout_ms > 0 &&
                  rtt > c->timeout_ms))
    a->window_dropped_ = 1;

  if (now_ms < a->window_start_ ||
      now_ms - a->window_start_ < c->window_ms ||
      a->window_count_ < c->window_min_samples)
    return 0;

  mean = a->window_rtt_sum_ / a->window_count_;
  most = a->window_in_flight_;
  any_drop = a->window_dropped_;
  a->window_count_ = 0;
  a->window_rtt_sum_ = 0;
  a->window_in_flight_ = 0;
  a->window_dropped_ = 0;
  update(a, mean, most, any_drop);
  return 1;
}

int sp_adaptive_acquire(sp_adaptive_t *a) {
  if (a->in_flight >= sp_adaptive_limit(a)) {
    a->rejected++;
    return SP_EFULL;
  }
  a->in_flight++;
  a->acquired++;
  if (a->in_flight > a->max_in_flight)
    a->max_in_flight = a->in_flight;
  return 0;
}

int sp_adaptive_release(sp_adaptive_t *a, int outcome, double rtt_ms,
                        uint64_t now_ms) {
  uint32_t in_flight;
  int dropped;

  if (outcome != SP_ADAPTIVE_SUCCESS && outcome != SP_ADAPTIVE_DROPPED &&
      outcome != SP_ADAPTIVE_IGNORED)
    return SP_EINVAL;
  if (outcome != SP_ADAPTIVE_IGNORED && !(rtt_ms >= 0 && isfinite(rtt_ms)))
    return SP_EINVAL;
  if (a->in_flight == 0)
    return SP_ENOENT;

  in_flight = a->in_flight;
  a->in_flight--;
  if (outcome == SP_ADAPTIVE_IGNORED) {
    a->ignored++;
    return 0;
  }

  dropped = outcome == SP_ADAPTIVE_DROPPED;
  if (dropped)
    a->dropped++;
  else
    a->successes++;

  if (a->config.window_ms > 0)
    return window_add(a, rtt_ms, in_flight, dropped, now_ms);
  update(a, rtt_ms, in_flight, dropped);
  return 1;
}

uint32_t sp_adaptive_limit(const sp_adaptive_t *a) {
  /* limit is clamped to [min_limit, max_limit], which fit a uint32_t. */
  return (uint32_t) a->limit;
}
