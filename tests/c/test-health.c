/* Tests of the health monitor (runtime/core/health.c), with literal times:
 * the inclusive window boundary, the unhealthy threshold, the ring
 * overwrite, per-worker counts, the eviction order of idle workers, unknown
 * slots, times going backwards, large crash counts checked against a naive
 * model, and validation.
 */
#include "task.h"

static int health_start(sp_health_t *h, uint32_t max_crashes,
                        uint32_t max_workers, uint64_t window_ms) {
  sp_health_config_t config;

  memset(&config, 0, sizeof(config));
  config.max_crashes = max_crashes;
  config.max_workers = max_workers;
  config.crash_window_ms = window_ms;
  ASSERT_EQ(sp_health_init(h, &config), 0);
  return 0;
}

/* Adds a worker that must take a fresh slot, evicting no one. */
static int add_fresh(sp_health_t *h, uint32_t *slot) {
  uint32_t evicted;

  evicted = 0;
  ASSERT_EQ(sp_health_worker_add(h, slot, &evicted), 0);
  ASSERT_EQ(evicted, UINT32_MAX);
  return 0;
}

static int expect_worker(sp_health_t *h, uint32_t slot, uint64_t now_ms,
                         uint32_t in_window, uint64_t total,
                         uint64_t last_crash_ms) {
  sp_worker_stats_t st;

  memset(&st, 0xa5, sizeof(st));
  ASSERT_EQ(sp_health_worker(h, slot, now_ms, &st), 0);
  ASSERT_EQ(st.crashes_in_window, in_window);
  ASSERT_UINT64_EQ(st.total_crashes, total);
  ASSERT_UINT64_EQ(st.last_crash_ms, last_crash_ms);
  return 0;
}

TEST_IMPL(health_init_validation) {
  sp_health_config_t config;
  sp_health_t h;

  memset(&config, 0, sizeof(config));
  config.max_crashes = 3;
  config.max_workers = 8;
  config.crash_window_ms = 1000;

  ASSERT_EQ(sp_health_init(&h, NULL), SP_EINVAL);
  ASSERT_EQ(sp_health_init(NULL, &config), SP_EINVAL);
  config.max_crashes = 0;
  ASSERT_EQ(sp_health_init(&h, &config), SP_EINVAL);
  /* max_crashes + 1 slots would not be numbered below UINT32_MAX. */
  config.max_crashes = UINT32_MAX;
  ASSERT_EQ(sp_health_init(&h, &config), SP_EINVAL);
  config.max_crashes = UINT32_MAX - 1;
  ASSERT_EQ(sp_health_init(&h, &config), SP_EINVAL);
  config.max_crashes = 3;
  config.max_workers = 0;
  ASSERT_EQ(sp_health_init(&h, &config), SP_EINVAL);
  config.max_workers = 8;

  memset(&h, 0xa5, sizeof(h));
  ASSERT_EQ(sp_health_init(&h, &config), 0);
  ASSERT_EQ(h.config.max_crashes, 3);
  ASSERT_EQ(h.config.max_workers, 8);
  ASSERT_UINT64_EQ(h.config.crash_window_ms, 1000);
  ASSERT_UINT64_EQ(h.total_crashes, 0);
  ASSERT_EQ(h.crashes_in_window, 0);
  ASSERT_EQ(h.workers_with_crashes, 0);
  ASSERT_EQ(h.worker_count, 0);
  ASSERT_EQ(sp_health_is_healthy(&h, 0), 1);

  /* Closing twice is safe, and leaves a monitor every call refuses. */
  sp_health_close(&h);
  ASSERT_NULL(h.times_);
  ASSERT_NULL(h.owners_);
  ASSERT_NULL(h.slots_);
  sp_health_close(&h);
  ASSERT_EQ(sp_health_record(&h, 0, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_expire(&h, 10), 0);

  /* So is closing a zeroed monitor that was never initialised. */
  memset(&h, 0, sizeof(h));
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_capacity) {
  sp_health_t h;
  uint32_t slot;
  uint32_t evicted;
  uint32_t i;

  /* Room for max_crashes + 1 workers even if max_workers is smaller. */
  ASSERT_PASS(health_start(&h, 3, 1, 1000));
  ASSERT_EQ(h.config.max_workers, 4);
  for (i = 0; i < 4; i++) {
    ASSERT_PASS(add_fresh(&h, &slot));
    ASSERT_EQ(slot, i);
    ASSERT_EQ(h.worker_count, i + 1);
  }
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, 0);
  ASSERT_EQ(slot, 0);
  ASSERT_EQ(h.worker_count, 4);
  /* A NULL slot is refused; evicted may be left out. */
  ASSERT_EQ(sp_health_worker_add(&h, NULL, &evicted), SP_EINVAL);
  ASSERT_EQ(sp_health_worker_add(&h, &slot, NULL), 0);
  ASSERT_EQ(slot, 1);
  sp_health_close(&h);

  ASSERT_PASS(health_start(&h, 2, 10, 1000));
  ASSERT_EQ(h.config.max_workers, 10);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_window_boundary_inclusive) {
  sp_health_t h;
  uint32_t w;

  ASSERT_PASS(health_start(&h, 5, 4, 1000));
  ASSERT_PASS(add_fresh(&h, &w));
  ASSERT_EQ(sp_health_record(&h, w, 0), 0);
  ASSERT_EQ(sp_health_expire(&h, 999), 1);
  /* Exactly crash_window_ms old: still in the window. */
  ASSERT_EQ(sp_health_expire(&h, 1000), 1);
  ASSERT_PASS(expect_worker(&h, w, 1000, 1, 1, 0));
  /* One millisecond older: gone. */
  ASSERT_EQ(sp_health_expire(&h, 1001), 0);
  ASSERT_EQ(h.crashes_in_window, 0);
  ASSERT_EQ(h.workers_with_crashes, 0);
  ASSERT_PASS(expect_worker(&h, w, 1001, 0, 1, 0));
  ASSERT_UINT64_EQ(h.total_crashes, 1);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_unhealthy_at_max_crashes) {
  sp_health_t h;
  uint32_t w;

  ASSERT_PASS(health_start(&h, 3, 4, 1000));
  ASSERT_PASS(add_fresh(&h, &w));
  ASSERT_EQ(sp_health_record(&h, w, 100), 0);
  ASSERT_EQ(sp_health_record(&h, w, 200), 0);
  ASSERT_EQ(sp_health_is_healthy(&h, 200), 1);
  /* The third crash is the one that turns it unhealthy. */
  ASSERT_EQ(sp_health_record(&h, w, 300), 1);
  ASSERT_EQ(sp_health_is_healthy(&h, 300), 0);
  /* Already unhealthy: a fourth crash turns nothing. */
  ASSERT_EQ(sp_health_record(&h, w, 400), 0);
  ASSERT_EQ(h.crashes_in_window, 3);
  ASSERT_EQ(sp_health_is_healthy(&h, 1199), 0);
  /* The crash at 200 leaves at 1201: two left, healthy again. */
  ASSERT_EQ(sp_health_is_healthy(&h, 1200), 0);
  ASSERT_EQ(sp_health_is_healthy(&h, 1201), 1);
  ASSERT_EQ(h.crashes_in_window, 2);
  /* And the next crash turns it unhealthy once more. */
  ASSERT_EQ(sp_health_record(&h, w, 1250), 1);
  ASSERT_UINT64_EQ(h.total_crashes, 5);

  /* max_crashes 1: the first crash is already too many. */
  sp_health_close(&h);
  ASSERT_PASS(health_start(&h, 1, 1, 10));
  ASSERT_PASS(add_fresh(&h, &w));
  ASSERT_EQ(sp_health_is_healthy(&h, 0), 1);
  ASSERT_EQ(sp_health_record(&h, w, 0), 1);
  ASSERT_EQ(sp_health_record(&h, w, 5), 0);
  ASSERT_EQ(sp_health_is_healthy(&h, 15), 0);
  ASSERT_EQ(sp_health_is_healthy(&h, 16), 1);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_ring_overwrite) {
  sp_health_t h;
  uint32_t a;
  uint32_t b;

  ASSERT_PASS(health_start(&h, 3, 4, 1000));
  ASSERT_PASS(add_fresh(&h, &a));
  ASSERT_PASS(add_fresh(&h, &b));
  ASSERT_EQ(sp_health_record(&h, a, 0), 0);
  ASSERT_EQ(sp_health_record(&h, a, 1), 0);
  ASSERT_EQ(sp_health_record(&h, b, 2), 1);
  ASSERT_EQ(h.workers_with_crashes, 2);
  /* Over capacity: the oldest crashes (a's) are overwritten. */
  ASSERT_EQ(sp_health_record(&h, b, 3), 0);
  ASSERT_EQ(sp_health_record(&h, b, 4), 0);
  ASSERT_EQ(h.crashes_in_window, 3);
  ASSERT_EQ(h.workers_with_crashes, 1);
  ASSERT_UINT64_EQ(h.total_crashes, 5);
  ASSERT_PASS(expect_worker(&h, a, 4, 0, 2, 1));
  ASSERT_PASS(expect_worker(&h, b, 4, 3, 3, 4));

  /* What is kept are the latest three: 2, 3 and 4. */
  ASSERT_EQ(sp_health_expire(&h, 1002), 3);
  ASSERT_EQ(sp_health_expire(&h, 1003), 2);
  ASSERT_EQ(sp_health_expire(&h, 1004), 1);
  ASSERT_EQ(sp_health_expire(&h, 1005), 0);
  ASSERT_EQ(h.workers_with_crashes, 0);
  ASSERT_PASS(expect_worker(&h, b, 1005, 0, 3, 4));

  /* Overwriting the worker's own oldest crash keeps its count right. */
  sp_health_close(&h);
  ASSERT_PASS(health_start(&h, 1, 1, 100));
  ASSERT_PASS(add_fresh(&h, &a));
  ASSERT_EQ(sp_health_record(&h, a, 0), 1);
  ASSERT_EQ(sp_health_record(&h, a, 1), 0);
  ASSERT_EQ(h.workers_with_crashes, 1);
  ASSERT_PASS(expect_worker(&h, a, 1, 1, 2, 1));
  ASSERT_EQ(sp_health_expire(&h, 101), 1);
  ASSERT_EQ(sp_health_expire(&h, 102), 0);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_per_worker_counts) {
  sp_health_t h;
  uint32_t a;
  uint32_t b;
  uint32_t c;

  ASSERT_PASS(health_start(&h, 10, 8, 1000));
  ASSERT_PASS(add_fresh(&h, &a));
  ASSERT_PASS(add_fresh(&h, &b));
  ASSERT_PASS(add_fresh(&h, &c));
  ASSERT_NE(a, b);
  ASSERT_NE(b, c);
  ASSERT_EQ(h.worker_count, 3);

  ASSERT_EQ(sp_health_record(&h, a, 100), 0);
  ASSERT_EQ(sp_health_record(&h, b, 200), 0);
  ASSERT_EQ(sp_health_record(&h, a, 300), 0);
  ASSERT_EQ(sp_health_record(&h, a, 400), 0);
  ASSERT_EQ(h.workers_with_crashes, 2);
  ASSERT_EQ(h.crashes_in_window, 4);
  ASSERT_PASS(expect_worker(&h, a, 400, 3, 3, 400));
  ASSERT_PASS(expect_worker(&h, b, 400, 1, 1, 200));
  ASSERT_PASS(expect_worker(&h, c, 400, 0, 0, 0));

  /* At 1201 the crashes at 100 and 200 have left. */
  ASSERT_PASS(expect_worker(&h, a, 1201, 2, 3, 400));
  ASSERT_EQ(h.workers_with_crashes, 1);
  ASSERT_PASS(expect_worker(&h, b, 1201, 0, 1, 200));
  ASSERT_EQ(sp_health_record(&h, c, 1300), 0);
  ASSERT_EQ(h.workers_with_crashes, 2);
  ASSERT_EQ(sp_health_expire(&h, 1401), 1);
  ASSERT_EQ(h.workers_with_crashes, 1);
  ASSERT_PASS(expect_worker(&h, c, 1401, 1, 1, 1300));
  ASSERT_PASS(expect_worker(&h, a, 1401, 0, 3, 400));
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_eviction_order) {
  sp_health_t h;
  uint32_t a, b, c;
  uint32_t slot;
  uint32_t evicted;

  ASSERT_PASS(health_start(&h, 2, 3, 100));
  ASSERT_PASS(add_fresh(&h, &a));
  ASSERT_PASS(add_fresh(&h, &b));
  ASSERT_PASS(add_fresh(&h, &c));
  ASSERT_EQ(sp_health_record(&h, a, 0), 0);
  ASSERT_EQ(sp_health_record(&h, b, 10), 1);
  /* c never crashed; a's crash leaves at 101, b's at 111: idle since then,
   * in that order. */
  ASSERT_EQ(sp_health_expire(&h, 101), 1);
  ASSERT_EQ(sp_health_expire(&h, 111), 0);

  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, c);
  ASSERT_EQ(slot, c);
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, a);
  ASSERT_EQ(slot, a);
  /* A forgotten worker's slot starts from nothing. */
  ASSERT_PASS(expect_worker(&h, a, 111, 0, 0, 0));
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, b);
  /* Then the newcomers, in the order they came. */
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, c);
  ASSERT_EQ(h.worker_count, 3);
  ASSERT_UINT64_EQ(h.total_crashes, 2);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_crashed_workers_never_evicted) {
  sp_health_t h;
  uint32_t a, b, c;
  uint32_t slot;
  uint32_t evicted;
  int i;

  /* max_workers 1, but room for 3: a and b crash, only c can go. */
  ASSERT_PASS(health_start(&h, 2, 1, 1000));
  ASSERT_PASS(add_fresh(&h, &a));
  ASSERT_PASS(add_fresh(&h, &b));
  ASSERT_PASS(add_fresh(&h, &c));
  ASSERT_EQ(sp_health_record(&h, a, 0), 0);
  ASSERT_EQ(sp_health_record(&h, b, 0), 1);
  for (i = 0; i < 5; i++) {
    ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
    ASSERT_EQ(evicted, c);
    ASSERT_EQ(slot, c);
  }
  ASSERT_PASS(expect_worker(&h, a, 0, 1, 1, 0));
  ASSERT_PASS(expect_worker(&h, b, 0, 1, 1, 0));

  /* A crash takes c out of the idle line; it overwrites a's crash, which
   * puts a in the line. Each then joins at the end as its crash expires. */
  ASSERT_EQ(sp_health_record(&h, c, 5), 0);
  ASSERT_EQ(h.workers_with_crashes, 2);
  ASSERT_PASS(expect_worker(&h, a, 5, 0, 1, 0));
  ASSERT_EQ(sp_health_expire(&h, 1000), 2);
  ASSERT_EQ(sp_health_expire(&h, 1001), 1);
  ASSERT_EQ(sp_health_expire(&h, 1006), 0);
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, a);
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, b);
  ASSERT_EQ(sp_health_worker_add(&h, &slot, &evicted), 0);
  ASSERT_EQ(evicted, c);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_unknown_slot) {
  sp_health_t h;
  sp_worker_stats_t st;
  uint32_t w;

  ASSERT_PASS(health_start(&h, 3, 4, 1000));
  ASSERT_EQ(sp_health_record(&h, 0, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_worker(&h, 0, 10, &st), SP_ENOENT);
  ASSERT_PASS(add_fresh(&h, &w));
  ASSERT_EQ(sp_health_record(&h, w, 10), 0);
  ASSERT_EQ(sp_health_record(&h, w + 1, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_record(&h, 3, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_record(&h, 4, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_record(&h, UINT32_MAX, 10), SP_ENOENT);
  ASSERT_EQ(sp_health_worker(&h, UINT32_MAX, 10, &st), SP_ENOENT);
  /* A refused record counts nothing. */
  ASSERT_UINT64_EQ(h.total_crashes, 1);
  ASSERT_EQ(h.crashes_in_window, 1);
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_earlier_times_clamped) {
  sp_health_t h;
  uint32_t w;

  ASSERT_PASS(health_start(&h, 5, 4, 1000));
  ASSERT_PASS(add_fresh(&h, &w));
  ASSERT_EQ(sp_health_record(&h, w, 5000), 0);
  /* A crash reported at an earlier time is taken as at 5000. */
  ASSERT_EQ(sp_health_record(&h, w, 1000), 0);
  ASSERT_PASS(expect_worker(&h, w, 0, 2, 2, 5000));
  ASSERT_UINT64_EQ(h.latest_, 5000);

  ASSERT_EQ(sp_health_expire(&h, 6000), 2);
  /* Going back to 3000 does not bring the window back. */
  ASSERT_EQ(sp_health_expire(&h, 3000), 2);
  ASSERT_EQ(sp_health_expire(&h, 6001), 0);
  ASSERT_EQ(sp_health_expire(&h, 0), 0);
  ASSERT_UINT64_EQ(h.latest_, 6001);
  ASSERT_EQ(sp_health_record(&h, w, 10), 0);
  ASSERT_PASS(expect_worker(&h, w, 10, 1, 3, 6001));
  sp_health_close(&h);
  return 0;
}

TEST_IMPL(health_ten_thousand_crashes) {
  sp_health_t h;
  uint32_t w[5];
  uint32_t i;
  int turned;

  /* All 10,000 crashes in one window, under max_crashes. */
  ASSERT_PASS(health_start(&h, 20000, 5, 1000000));
  for (i = 0; i < 5; i++)
    ASSERT_PASS(add_fresh(&h, &w[i]));
  for (i = 0; i < 10000; i++)
    ASSERT_EQ(sp_health_record(&h, w[i % 5], i), 0);
  ASSERT_EQ(h.crashes_in_window, 10000);
  ASSERT_EQ(h.workers_with_crashes, 5);
  ASSERT_EQ(sp_health_is_healthy(&h, 9999), 1);
  for (i = 0; i < 5; i++)
    ASSERT_PASS(expect_worker(&h, w[i], 9999, 2000, 2000, 9995 + i));
  /* The crashes still in the window at 1,004,999 are those from 4999. */
  ASSERT_EQ(sp_health_expire(&h, 1004999), 5001);
  ASSERT_EQ(sp_health_expire(&h, 1009999), 1);
  ASSERT_EQ(h.workers_with_crashes, 1);
  ASSERT_EQ(sp_health_expire(&h, 1010000), 0);
  ASSERT_EQ(h.workers_with_crashes, 0);
  sp_health_close(&h);

  /* 10,000 crashes in one window over max_crashes 100: the ring keeps the
   * latest 100, and it turns unhealthy exactly once. */
  ASSERT_PASS(health_start(&h, 100, 5, 1000000));
  for (i = 0; i < 5; i++)
    ASSERT_PASS(add_fresh(&h, &w[i]));
  turned = 0;
  for (i = 0; i < 10000; i++) {
    int rc = sp_health_record(&h, w[i % 5], i);

    ASSERT_GE(rc, 0);
    turned += rc;
    ASSERT_LE(h.crashes_in_window, 100);
  }
  ASSERT_EQ(turned, 1);
  ASSERT_EQ(h.crashes_in_window, 100);
  ASSERT_UINT64_EQ(h.total_crashes, 10000);
  ASSERT_EQ(sp_health_is_healthy(&h, 10000), 0);
  ASSERT_PASS(expect_worker(&h, w[0], 10000, 20, 2000, 9995));
  /* The oldest kept crash is at 9900; at 1,009,900 one more is gone. */
  ASSERT_EQ(sp_health_expire(&h, 1009900), 100);
  ASSERT_EQ(sp_health_is_healthy(&h, 1009901), 1);
  ASSERT_EQ(h.crashes_in_window, 99);
  sp_health_close(&h);
  return 0;
}

/* A naive model: every crash kept in a list, counted from scratch. */
typedef struct {
  uint64_t t;
  uint32_t worker;
} model_crash_t;

static uint32_t lcg(uint64_t *state) {
  *state = *state * UINT64_C(6364136223846793005) + 1442695040888963407;
  return (uint32_t) (*state >> 33);
}

/* Counts per worker the latest `kept` of the n crashes. */
static void model_counts(const model_crash_t *all, size_t n, uint32_t kept,
                         uint32_t *counts, int workers) {
  uint32_t i;

  memset(counts, 0, workers * sizeof(*counts));
  for (i = 0; i < kept; i++)
    counts[all[n - 1 - i].worker]++;
}

TEST_IMPL(health_matches_naive_model) {
  enum { MAX_CRASHES = 7, WORKERS = 6, STEPS = 4000, WINDOW = 50 };
  model_crash_t all[STEPS];
  sp_worker_stats_t st;
  sp_health_t h;
  uint32_t w[WORKERS];
  uint32_t counts[WORKERS];
  uint64_t state;
  uint64_t now;
  size_t n;
  size_t i;
  int step;
  int k;

  ASSERT_PASS(health_start(&h, MAX_CRASHES, WORKERS, WINDOW));
  for (k = 0; k < WORKERS; k++)
    ASSERT_PASS(add_fresh(&h, &w[k]));

  state = 1;
  now = 0;
  n = 0;
  for (step = 0; step < STEPS; step++) {
    uint32_t in_window;
    uint32_t kept;
    uint32_t busy;
    int was_healthy;

    /* Steps of 0 to 11 ms: crashes at the same time, and gaps longer than
     * the window, both happen. */
    now += lcg(&state) % 12;
    k = (int) (lcg(&state) % WORKERS);

    in_window = 0;
    for (i = 0; i < n; i++)
      if (now - all[i].t <= WINDOW)
        in_window++;
    was_healthy = in_window < MAX_CRASHES;

    if (lcg(&state) % 3 != 0) {
      int rc = sp_health_record(&h, w[k], now);

      all[n].t = now;
      all[n].worker = (uint32_t) k;
      n++;
      in_window++;
      ASSERT_EQ(rc, was_healthy && in_window >= MAX_CRASHES);
    } else {
      sp_health_expire(&h, now);
    }

    /* Times only grow, so the crashes in the window are the latest ones,
     * and the monitor keeps the latest MAX_CRASHES of those. */
    kept = in_window < MAX_CRASHES ? in_window : MAX_CRASHES;
    model_counts(all, n, kept, counts, WORKERS);
    busy = 0;
    for (k = 0; k < WORKERS; k++)
      busy += counts[k] > 0;

    ASSERT_EQ(h.crashes_in_window, kept);
    ASSERT_EQ(h.workers_with_crashes, busy);
    ASSERT_EQ(sp_health_is_healthy(&h, now), in_window < MAX_CRASHES);
    for (k = 0; k < WORKERS; k++) {
      ASSERT_EQ(sp_health_worker(&h, w[k], now, &st), 0);
      ASSERT_EQ(st.crashes_in_window, counts[k]);
    }
  }
  ASSERT_UINT64_EQ(h.total_crashes, n);
  sp_health_close(&h);
  return 0;
}
