/* fuzz_core: random sequences of calls to the C core, checked against a
 * reference model after every call.
 *
 * The input is decoded into a circuit breaker (consecutive failures, or a
 * COUNT or TIME rate window; its manual states too), a health monitor and a
 * retry policy (configurations included, invalid ones too), then into a
 * sequence of calls on them with random times and arguments: a clock that
 * mostly moves forward, sometimes stands still, steps back or jumps to the
 * far end of uint64_t. After each call the objects are compared with simple
 * models written from the documented rules (runtime/include/sprun.h and
 * DESIGN.md), not from the code: any difference, or any broken invariant
 * (a count that went negative or wrapped, a state out of range, more
 * half-open probes than allowed, a generation that moved without a
 * transition, a crash older than the window still counted, a delay outside
 * [0, max_backoff_ms] or outside its jitter mode's bounds), aborts.
 *
 * The trap: the models must stay independent of the code they check. The
 * health model keeps the whole (bounded) history of crashes and counts the
 * window by brute force; the breaker model is the state table of DESIGN.md
 * with its rate window kept as a plain list of calls; the retry bounds come
 * from the formulas, with a tolerance only where floating point rounds.
 *
 * Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sprun.h"

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "fuzz_core: %s:%d: invariant broken: %s\n", __FILE__,  \
              __LINE__, #cond);                                              \
      abort();                                                               \
    }                                                                        \
  } while (0)

/* Calls made per input at most: it bounds the health history below. */
#define MAX_OPS 2048

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- decoding the input --------------------------------------------------- */

typedef struct {
  const uint8_t *p;
  size_t n;
} input_t;

/* Past the end every read gives zeros, so any input decodes. */
static uint8_t take8(input_t *in) {
  if (in->n == 0)
    return 0;
  in->n--;
  return *in->p++;
}

static uint32_t take32(input_t *in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v = v << 8 | take8(in);
  return v;
}

static uint64_t take64(input_t *in) {
  return (uint64_t) take32(in) << 32 | take32(in);
}

/* A count: mostly small, sometimes at the edges of uint32_t. */
static uint32_t take_count(input_t *in) {
  uint8_t k = take8(in);
  switch (k >> 5) {
  case 0:
  case 1:
  case 2:
    return k & 7;
  case 3:
    return k & 31;
  case 4:
    return take8(in);
  case 5:
    return UINT32_MAX - (k & 3);
  default:
    return take32(in);
  }
}

/* A delay or a factor: the values that break arithmetic, then any bits. */
static double take_double(input_t *in) {
  static const double special[] = {
      0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 3.0, 100.0, 1000.0, 30000.0,
      0.25, 1.5, 0.999999, 1.000001, 9007199254740992.0, 1e15, 1e300,
      1.7976931348623157e308, 4.9e-324, 2.2250738585072014e-308,
      4294967295.0, 4294967296.0, -1e-300,
  };
  uint8_t k = take8(in);
  uint64_t bits;
  double d;

  if (k < 128)
    return special[k % (sizeof(special) / sizeof(special[0]))];
  if (k < 160)
    return (double) take8(in);
  if (k < 192)
    return (double) take32(in);
  if (k < 200)
    return NAN;
  if (k < 204)
    return k & 1 ? INFINITY : -INFINITY;
  bits = take64(in);
  memcpy(&d, &bits, sizeof(d));
  return d;
}

/* The next time of the caller's clock. */
static uint64_t take_time(input_t *in, uint64_t now) {
  uint8_t k = take8(in);
  uint64_t d;

  switch (k >> 4) {
  case 0:
  case 1:
  case 2:
  case 3:
  case 4:
  case 5:
    return now + (k & 15) > now ? now + (k & 15) : now;
  case 6:
  case 7:
    d = take8(in) * 100u;
    return now + d > now ? now + d : now;
  case 8:
    d = take32(in);
    return now + d > now ? now + d : now;
  case 9:
  case 10:
    return now;
  case 11:
    return now > (k & 15) ? now - (k & 15) : 0; /* a clock stepping back */
  case 12:
    return UINT64_MAX - (k & 15);
  case 13:
    return 0;
  default:
    return take64(in);
  }
}

/* ---- circuit breaker ------------------------------------------------------ */

/* A call in a rate window, as the model keeps it. */
typedef struct {
  uint64_t epoch; /* TIME: the bucket it went into */
  int failed;
  int slow;
} wcall_t;

/* The breaker as sprun.h and DESIGN.md state it. The rate window is kept as
 * the plain list of the calls added since it was last emptied, and counted
 * by brute force. */
typedef struct {
  sp_breaker_config_t c;
  int state;
  uint32_t gen;
  uint32_t fail, succ, hoc;
  uint32_t admitted;      /* probes admitted in this half-open period */
  uint64_t since_close;   /* failures since it last closed or was reset */
  uint64_t opened_at;
  uint64_t rejected, tsucc, tfail, ignored;
  int open_reason;
  wcall_t calls[MAX_OPS];
  uint32_t ncalls;
  /* Failures and slow calls among calls[0 .. i), so that a window (a
   * suffix of the list: epochs only grow) is counted in O(1). */
  uint32_t failed_before[MAX_OPS + 1];
  uint32_t slow_before[MAX_OPS + 1];
  uint32_t first;  /* TIME: calls before it have left the window */
  uint64_t newest; /* TIME: the newest bucket the window moved on to */
} mbreaker_t;

static uint32_t sat32(uint32_t n) {
  return n == UINT32_MAX ? n : n + 1;
}

static uint64_t sat64(uint64_t n) {
  return n == UINT64_MAX ? n : n + 1;
}

static int mb_rate(const mbreaker_t *m) {
  return m->c.window_type == SP_WINDOW_COUNT ||
         m->c.window_type == SP_WINDOW_TIME;
}

/* The window now: the last window_size calls (COUNT), or the calls whose
 * bucket is one of the last window_buckets ones (TIME). */
static void mb_window(mbreaker_t *m, uint64_t *calls, uint64_t *failed,
                      uint64_t *slow) {
  uint32_t first = 0;

  if (m->c.window_type == SP_WINDOW_COUNT && m->ncalls > m->c.window_size)
    first = m->ncalls - m->c.window_size;
  if (m->c.window_type == SP_WINDOW_TIME) {
    while (m->first < m->ncalls &&
           m->newest - m->calls[m->first].epoch >= m->c.window_buckets)
      m->first++;
    first = m->first;
  }
  *calls = m->ncalls - first;
  *failed = m->failed_before[m->ncalls] - m->failed_before[first];
  *slow = m->slow_before[m->ncalls] - m->slow_before[first];
}

static void mb_empty(mbreaker_t *m) {
  m->ncalls = 0;
  m->first = 0;
}

static uint64_t mb_width(const mbreaker_t *m) {
  return m->c.window_ms / m->c.window_buckets;
}

/* TIME: the window moves on to now (never back). */
static void mb_move(mbreaker_t *m, uint64_t now) {
  if (m->c.window_type == SP_WINDOW_TIME && now / mb_width(m) > m->newest)
    m->newest = now / mb_width(m);
}

static int mb_enter(mbreaker_t *m, int state, uint64_t now) {
  m->state = state;
  m->gen++;
  m->succ = 0;
  m->hoc = 0;
  m->admitted = 0;
  mb_empty(m); /* the window starts empty in every state */
  if (state == SP_BREAKER_STATE_OPEN) {
    m->opened_at = now;
    return SP_BREAKER_OPENED;
  }
  m->fail = 0;
  if (state == SP_BREAKER_STATE_CLOSED) {
    m->since_close = 0;
    return SP_BREAKER_CLOSED;
  }
  if (m->c.half_open_max_calls == 0)
    return SP_BREAKER_HALF_OPENED | mb_enter(m, SP_BREAKER_STATE_CLOSED, now);
  return SP_BREAKER_HALF_OPENED;
}

static int mb_manual(mbreaker_t *m, int state, int bit) {
  if (m->state == state)
    return 0;
  m->state = state;
  m->gen++;
  m->fail = m->succ = m->hoc = m->admitted = 0;
  mb_empty(m);
  return bit;
}

static int mb_tick(mbreaker_t *m, uint64_t now) {
  if (m->state != SP_BREAKER_STATE_ISOLATED)
    mb_move(m, now);
  if (m->state == SP_BREAKER_STATE_OPEN && now >= m->opened_at &&
      now - m->opened_at >= m->c.reset_timeout_ms)
    return mb_enter(m, SP_BREAKER_STATE_HALF_OPEN, now);
  return 0;
}

static int mb_count(mbreaker_t *m, int outcome, uint64_t now,
                    uint64_t duration) {
  int counting = m->state == SP_BREAKER_STATE_CLOSED ||
                 m->state == SP_BREAKER_STATE_DISABLED;
  uint64_t calls, failed, slow, need;

  if (outcome == SP_OUTCOME_NEUTRAL || m->state == SP_BREAKER_STATE_ISOLATED)
    return 0;
  if (counting && mb_rate(m)) {
    uint32_t i = m->ncalls++;
    wcall_t *w = &m->calls[i];

    CHECK(m->ncalls <= MAX_OPS);
    mb_move(m, now);
    w->epoch = m->newest; /* a time before the newest bucket: the newest */
    w->failed = outcome == SP_OUTCOME_FAILURE;
    w->slow = m->c.slow_call_ms > 0 && duration >= m->c.slow_call_ms;
    m->failed_before[i + 1] = m->failed_before[i] + (w->failed != 0);
    m->slow_before[i + 1] = m->slow_before[i] + (w->slow != 0);
  }
  if (outcome == SP_OUTCOME_SUCCESS) {
    m->tsucc = sat64(m->tsucc);
    if (counting) {
      m->fail = 0;
      m->succ = sat32(m->succ);
    } else if (m->state == SP_BREAKER_STATE_HALF_OPEN) {
      m->succ = sat32(m->succ);
      if (m->succ >= m->c.half_open_max_calls)
        return mb_enter(m, SP_BREAKER_STATE_CLOSED, now);
      return 0;
    } else {
      return 0;
    }
  } else {
    m->tfail = sat64(m->tfail);
    m->since_close = sat64(m->since_close);
    if (counting) {
      m->fail = sat32(m->fail);
      m->succ = 0;
      if (m->state == SP_BREAKER_STATE_CLOSED && !mb_rate(m) &&
          m->fail >= m->c.failure_threshold) {
        m->open_reason = SP_OPEN_REASON_FAILURES;
        return mb_enter(m, SP_BREAKER_STATE_OPEN, now);
      }
    } else if (m->state == SP_BREAKER_STATE_HALF_OPEN) {
      m->fail = 1;
      m->open_reason = SP_OPEN_REASON_FAILURES;
      return mb_enter(m, SP_BREAKER_STATE_OPEN, now);
    } else {
      return 0;
    }
  }
  if (m->state != SP_BREAKER_STATE_CLOSED || !mb_rate(m))
    return 0;
  /* Closed with a rate window: a rate at its threshold opens it, once
   * min_calls calls (at most the whole COUNT window) are in. */
  mb_window(m, &calls, &failed, &slow);
  need = m->c.min_calls;
  if (m->c.window_type == SP_WINDOW_COUNT && need > m->c.window_size)
    need = m->c.window_size;
  if (calls == 0 || calls < need)
    return 0;
  if ((double) failed / (double) calls >= m->c.failure_rate)
    m->open_reason = SP_OPEN_REASON_FAILURE_RATE;
  else if (m->c.slow_call_ms > 0 &&
           (double) slow / (double) calls >= m->c.slow_call_rate)
    m->open_reason = SP_OPEN_REASON_SLOW_CALL_RATE;
  else
    return 0;
  m->fail = failed > UINT32_MAX ? UINT32_MAX : (uint32_t) failed;
  return mb_enter(m, SP_BREAKER_STATE_OPEN, now);
}

static int popcount_transitions(int mask) {
  int n = 0;

  for (int bit = 1; bit <= SP_BREAKER_ISOLATED; bit <<= 1)
    n += (mask & bit) != 0;
  return n;
}

static void breaker_compare(const sp_breaker_t *b, mbreaker_t *m) {
  uint64_t calls, failed, slow;

  CHECK(b->state >= SP_BREAKER_STATE_CLOSED &&
        b->state <= SP_BREAKER_STATE_ISOLATED);
  CHECK(sp_breaker_state_name(b->state) != NULL);
  CHECK(b->state == m->state);
  CHECK(b->generation == m->gen);
  CHECK(b->failure_count == m->fail);
  CHECK(b->success_count == m->succ);
  CHECK(b->half_open_calls == m->hoc);
  CHECK(b->half_open_admitted == m->admitted);
  CHECK(b->failures_since_close == m->since_close);
  CHECK(b->half_open_admitted >= b->half_open_calls);
  CHECK(b->failures_since_close >= b->failure_count ||
        b->state == SP_BREAKER_STATE_FORCED_OPEN ||
        b->state == SP_BREAKER_STATE_DISABLED ||
        b->state == SP_BREAKER_STATE_ISOLATED || mb_rate(m));
  CHECK(b->half_open_calls <= b->config.half_open_max_calls);
  CHECK(b->state == SP_BREAKER_STATE_HALF_OPEN || b->half_open_calls == 0);
  CHECK(b->state != SP_BREAKER_STATE_CLOSED || mb_rate(m) ||
        b->failure_count < b->config.failure_threshold);
  CHECK(b->state != SP_BREAKER_STATE_OPEN || b->success_count == 0);
  CHECK(b->opened_at_ms == m->opened_at);
  CHECK(b->rejected_count == m->rejected);
  CHECK(b->total_successes == m->tsucc);
  CHECK(b->total_failures == m->tfail);
  CHECK(b->ignored_count == m->ignored);
  CHECK(b->open_reason == m->open_reason);

  /* The window: as the model counts it, never more failures or slow calls
   * than calls, never more calls than a COUNT window holds, and empty
   * whenever the breaker does not count (nor ever in consecutive mode). */
  mb_window(m, &calls, &failed, &slow);
  CHECK(b->window_calls == calls);
  CHECK(b->window_failures == failed);
  CHECK(b->window_slow == slow);
  CHECK(b->window_failures <= b->window_calls);
  CHECK(b->window_slow <= b->window_calls);
  CHECK(b->config.window_type != SP_WINDOW_COUNT ||
        b->window_calls <= b->config.window_size);
  CHECK(b->window_calls == 0 || (mb_rate(m) &&
        (b->state == SP_BREAKER_STATE_CLOSED ||
         b->state == SP_BREAKER_STATE_DISABLED)));

  CHECK(sp_breaker_would_admit(b) ==
        (b->state == SP_BREAKER_STATE_CLOSED ||
         b->state == SP_BREAKER_STATE_DISABLED ||
         (b->state == SP_BREAKER_STATE_HALF_OPEN &&
          b->half_open_calls < b->config.half_open_max_calls)));
  if (b->state == SP_BREAKER_STATE_OPEN) {
    uint64_t at = b->opened_at_ms + b->config.reset_timeout_ms;
    if (at < b->opened_at_ms)
      at = UINT64_MAX;
    CHECK(sp_breaker_half_open_at(b) == at);
  } else {
    CHECK(sp_breaker_half_open_at(b) == 0);
  }
}

/* Generations handed out by acquire and not yet given back. */
#define PERMITS 16

typedef struct {
  sp_breaker_t b;
  mbreaker_t m;
  int ok;
  uint32_t permits[PERMITS];
  int npermits;
  uint64_t now;
} breaker_run_t;

/* Would sp_breaker_init accept c? From the ranges in sprun.h. */
static int breaker_config_valid(const sp_breaker_config_t *c) {
  switch (c->window_type) {
  case SP_WINDOW_CONSECUTIVE:
    return c->failure_threshold >= 1;
  case SP_WINDOW_COUNT:
    if (c->window_size < 1 || c->window_size > SP_BREAKER_MAX_WINDOW_SIZE)
      return 0;
    break;
  case SP_WINDOW_TIME:
    if (c->window_buckets < 1 || c->window_buckets > SP_BREAKER_MAX_BUCKETS ||
        c->window_ms < 1 || c->window_ms % c->window_buckets != 0)
      return 0;
    break;
  default:
    return 0;
  }
  return c->min_calls >= 1 && c->failure_rate >= 0 &&
         c->failure_rate <= 1 && c->slow_call_rate >= 0 &&
         c->slow_call_rate <= 1;
}

/* A rate: mostly the round ones, sometimes anything (NaN and out of
 * range included, which init must refuse). */
static double take_rate(input_t *in) {
  uint8_t k = take8(in);
  return k < 200 ? (k % 11) / 10.0 : take_double(in);
}

static void breaker_setup(breaker_run_t *r, input_t *in) {
  sp_breaker_config_t c;
  uint8_t k;
  int rc;

  memset(&c, 0, sizeof(c));
  c.failure_threshold = take_count(in);
  c.half_open_max_calls = take_count(in);
  c.reset_timeout_ms = take8(in) & 1 ? take64(in) : take8(in) * 10u;
  k = take8(in);
  c.window_type = k < 100 ? SP_WINDOW_CONSECUTIVE
                  : k < 170 ? SP_WINDOW_COUNT
                  : k < 240 ? SP_WINDOW_TIME : (int) take8(in) - 128;
  /* Every field is set whatever the type: the consecutive mode must
   * ignore them. */
  k = take8(in);
  c.window_size = k < 200 ? 1 + k % 20
                  : k < 250 ? SP_BREAKER_MAX_WINDOW_SIZE + (k & 1)
                            : take32(in) % (2 * SP_BREAKER_MAX_WINDOW_SIZE);
  k = take8(in);
  c.window_buckets = k < 200 ? 1 + k % 10
                     : k < 250 ? SP_BREAKER_MAX_BUCKETS + (k & 1)
                               : take32(in);
  k = take8(in);
  c.window_ms = k < 200 ? (uint64_t) (k % 20) * c.window_buckets
                        : (k < 250 ? take32(in) : take64(in));
  c.min_calls = take8(in) < 200 ? take8(in) % 12 : take_count(in);
  c.failure_rate = take_rate(in);
  c.slow_call_rate = take_rate(in);
  k = take8(in);
  c.slow_call_ms = k < 100 ? 0 : k < 240 ? k % 50 : take64(in);

  rc = sp_breaker_init(&r->b, &c);
  if (!breaker_config_valid(&c)) {
    CHECK(rc == SP_EINVAL);
    r->ok = 0;
    return;
  }
  CHECK(rc == 0);
  memset(&r->m, 0, sizeof(r->m));
  r->m.c = c;
  r->m.state = SP_BREAKER_STATE_CLOSED;
  r->ok = 1;
  r->npermits = 0;
  r->now = take64(in) >> (take8(in) & 63);
  breaker_compare(&r->b, &r->m);
}

static void breaker_step(breaker_run_t *r, input_t *in) {
  sp_breaker_t *b = &r->b;
  mbreaker_t *m = &r->m;
  uint32_t gen_before = b->generation;
  uint8_t op = take8(in);
  int rc, want;

  r->now = take_time(in, r->now);
  switch (op % 10) {
  case 0:
  case 1: /* acquire */
    rc = sp_breaker_acquire(b, r->now);
    want = mb_tick(m, r->now);
    if (m->state == SP_BREAKER_STATE_CLOSED ||
        m->state == SP_BREAKER_STATE_DISABLED) {
      CHECK(rc == want);
    } else if (m->state == SP_BREAKER_STATE_HALF_OPEN &&
               m->hoc < m->c.half_open_max_calls) {
      m->hoc++;
      m->admitted = sat32(m->admitted);
      CHECK(rc == want);
    } else {
      /* A rejection never comes with a transition; an isolated breaker
       * does not count it. */
      CHECK(want == 0);
      if (m->state != SP_BREAKER_STATE_ISOLATED)
        m->rejected = sat64(m->rejected);
      CHECK(rc == SP_ECIRCUITOPEN);
    }
    CHECK(b->generation - gen_before ==
          (uint32_t) popcount_transitions(rc > 0 ? rc : 0));
    if (rc >= 0 && r->npermits < PERMITS)
      r->permits[r->npermits++] = b->generation;
    break;
  case 2:
  case 3:
  case 4: { /* record, with a permit or a made-up generation */
    uint8_t k = take8(in);
    uint32_t gen;
    int outcome = take8(in);
    uint64_t duration = take8(in);

    if (duration >= 250)
      duration = take64(in);
    outcome = outcome < 250 ? outcome % 3 : outcome - 253; /* -3 .. 2 */
    if (r->npermits > 0 && k < 200) {
      int i = k % r->npermits;
      gen = r->permits[i];
      r->permits[i] = r->permits[--r->npermits];
    } else {
      gen = k & 1 ? b->generation : take32(in);
    }
    rc = sp_breaker_record(b, gen, outcome, r->now, duration);
    if (outcome < 0 || outcome > 2) {
      want = SP_EINVAL;
    } else if (gen != m->gen) {
      m->ignored = sat64(m->ignored);
      want = SP_BREAKER_IGNORED;
    } else {
      if (m->state == SP_BREAKER_STATE_HALF_OPEN && m->hoc > 0)
        m->hoc--;
      want = mb_count(m, outcome, r->now, duration);
    }
    CHECK(rc == want);
    CHECK(b->generation - gen_before ==
          (uint32_t) (rc > 0 ? popcount_transitions(rc) : 0));
    break;
  }
  case 5:
    rc = sp_breaker_record_success(b, r->now);
    want = mb_tick(m, r->now);
    want |= mb_count(m, SP_OUTCOME_SUCCESS, r->now, 0);
    CHECK(rc == want);
    CHECK(b->generation - gen_before == (uint32_t) popcount_transitions(rc));
    break;
  case 6:
    rc = sp_breaker_record_failure(b, r->now);
    want = mb_tick(m, r->now);
    want |= mb_count(m, SP_OUTCOME_FAILURE, r->now, 0);
    CHECK(rc == want);
    /* Half-open, then closed (no probe allowed), then open again: each
     * transition moves the generation once. */
    CHECK(b->generation - gen_before == (uint32_t) popcount_transitions(rc));
    break;
  case 7:
    rc = sp_breaker_tick(b, r->now);
    CHECK(rc == mb_tick(m, r->now));
    CHECK(b->generation - gen_before == (uint32_t) popcount_transitions(rc));
    break;
  case 8: { /* the manual states, rarely */
    uint8_t k = take8(in);

    if (k < 200)
      break;
    switch (k % 3) {
    case 0:
      rc = sp_breaker_force_open(b);
      want = mb_manual(m, SP_BREAKER_STATE_FORCED_OPEN,
                       SP_BREAKER_FORCED_OPENED);
      break;
    case 1:
      rc = sp_breaker_disable(b);
      want = mb_manual(m, SP_BREAKER_STATE_DISABLED, SP_BREAKER_DISABLED);
      break;
    default:
      rc = sp_breaker_isolate(b);
      want = mb_manual(m, SP_BREAKER_STATE_ISOLATED, SP_BREAKER_ISOLATED);
      break;
    }
    CHECK(rc == want);
    CHECK(b->generation - gen_before == (rc != 0));
    break;
  }
  default: {
    int was_closed = m->state == SP_BREAKER_STATE_CLOSED;

    if (take8(in) < 240)
      break; /* resets are rare, or nothing would ever open */
    rc = sp_breaker_reset(b);
    CHECK(rc == (was_closed ? 0 : SP_BREAKER_CLOSED));
    m->state = SP_BREAKER_STATE_CLOSED;
    m->gen = gen_before + 1;
    m->fail = m->succ = m->hoc = m->admitted = 0;
    m->since_close = 0;
    m->opened_at = 0;
    m->rejected = m->tsucc = m->tfail = m->ignored = 0;
    m->open_reason = SP_OPEN_REASON_NONE;
    mb_empty(m);
    CHECK(b->generation == gen_before + 1);
    break;
  }
  }
  breaker_compare(b, m);
}

/* ---- health monitor ------------------------------------------------------- */

#define NIL UINT32_MAX
#define MAX_SLOTS 128

typedef struct {
  uint64_t t;
  uint32_t worker; /* a unique id: a reused slot gets a new one */
} crash_t;

typedef struct {
  sp_health_t h;
  int ok;
  uint32_t max_crashes, capacity;
  uint64_t window;
  uint64_t latest; /* the latest time the monitor saw */
  uint64_t now;
  crash_t hist[MAX_OPS];
  uint32_t nhist;
  uint32_t slot_worker[MAX_SLOTS]; /* worker id in each slot */
  uint32_t nslots;                 /* slots handed out */
  uint32_t next_worker;
  /* Workers with no crash in the window, idle longest first. */
  uint32_t idle[MAX_SLOTS];
  uint32_t nidle;
} health_run_t;

/* The window at time t, by brute force: of the latest max_crashes crashes,
 * those at most `window` old. Fills per_worker (indexed by worker id) and
 * last_index (the history index of each worker's latest crash there). */
static uint32_t window_count(const health_run_t *r, uint64_t t,
                             uint32_t *per_worker, uint32_t *last_index) {
  uint32_t first, count = 0;

  if (per_worker != NULL)
    memset(per_worker, 0, sizeof(uint32_t) * (r->next_worker + 1));
  first = r->nhist > r->max_crashes ? r->nhist - r->max_crashes : 0;
  for (uint32_t i = first; i < r->nhist; i++) {
    /* Kept times are never later than t: the monitor clamps. */
    if (t - r->hist[i].t > r->window)
      continue;
    count++;
    if (per_worker != NULL) {
      per_worker[r->hist[i].worker]++;
      last_index[r->hist[i].worker] = i;
    }
  }
  return count;
}

static uint32_t slot_of_worker(const health_run_t *r, uint32_t w) {
  for (uint32_t s = 0; s < r->nslots; s++)
    if (r->slot_worker[s] == w)
      return s;
  return NIL;
}

static void idle_remove_worker(health_run_t *r, uint32_t w) {
  for (uint32_t i = 0; i < r->nidle; i++)
    if (r->idle[i] == w) {
      memmove(&r->idle[i], &r->idle[i + 1], (r->nidle - i - 1) * sizeof(w));
      r->nidle--;
      return;
    }
}

/* Moves the model from its window at `before` to the one at `after`:
 * workers that left the window join the idle line in the order their last
 * crash left, workers that entered it leave the line. */
static void health_advance(health_run_t *r, const uint32_t *was,
                           const uint32_t *was_last, uint64_t after) {
  uint32_t now_count[MAX_OPS + 1], now_last[MAX_OPS + 1];
  uint32_t gone[MAX_SLOTS], ngone = 0;

  window_count(r, after, now_count, now_last);
  for (uint32_t s = 0; s < r->nslots; s++) {
    uint32_t w = r->slot_worker[s];
    if (was[w] > 0 && now_count[w] == 0)
      gone[ngone++] = w;
    else if (was[w] == 0 && now_count[w] > 0)
      idle_remove_worker(r, w);
  }
  /* Sort by the history index of the crash that left last. */
  for (uint32_t i = 1; i < ngone; i++)
    for (uint32_t j = i; j > 0 && was_last[gone[j - 1]] > was_last[gone[j]];
         j--) {
      uint32_t t = gone[j];
      gone[j] = gone[j - 1];
      gone[j - 1] = t;
    }
  for (uint32_t i = 0; i < ngone; i++)
    r->idle[r->nidle++] = gone[i];
}

static void health_compare(health_run_t *r) {
  const sp_health_t *h = &r->h;
  uint32_t per[MAX_OPS + 1], last[MAX_OPS + 1];
  uint32_t count, workers = 0;

  count = window_count(r, r->latest, per, last);
  for (uint32_t s = 0; s < r->nslots; s++)
    workers += per[r->slot_worker[s]] > 0;
  CHECK(h->crashes_in_window == count);
  CHECK(h->crashes_in_window <= h->config.max_crashes);
  CHECK(h->workers_with_crashes == workers);
  CHECK(h->workers_with_crashes <= h->crashes_in_window);
  CHECK(h->worker_count == r->nslots);
  CHECK(h->worker_count <= h->config.max_workers);
  CHECK(h->total_crashes == r->nhist);
}

static void health_setup(health_run_t *r, input_t *in) {
  sp_health_config_t c;
  uint8_t k = take8(in);
  int rc;

  memset(&c, 0, sizeof(c));
  /* Small sizes only: the monitor allocates them up front. The invalid
   * values allocate nothing and must be refused. */
  c.max_crashes = k < 8 ? (k == 0 ? 0 : UINT32_MAX - (k & 1))
                        : 1 + take8(in) % 40;
  c.max_workers = take8(in) < 8 ? 0 : 1 + take8(in) % 80;
  c.crash_window_ms = take8(in) & 1 ? take64(in) : take8(in) * 7u;

  rc = sp_health_init(&r->h, &c);
  if (c.max_crashes == 0 || c.max_workers == 0 ||
      c.max_crashes >= UINT32_MAX - 1) {
    CHECK(rc == SP_EINVAL);
    r->ok = 0;
    return;
  }
  CHECK(rc == 0);
  r->ok = 1;
  r->max_crashes = c.max_crashes;
  r->capacity = c.max_workers > c.max_crashes ? c.max_workers
                                              : c.max_crashes + 1;
  CHECK(r->h.config.max_workers == r->capacity);
  CHECK(r->capacity <= MAX_SLOTS);
  r->window = c.crash_window_ms;
  r->latest = 0;
  r->now = take64(in) >> (take8(in) & 63);
  r->nhist = 0;
  r->nslots = 0;
  r->next_worker = 0;
  r->nidle = 0;
  health_compare(r);
}

/* The time the monitor takes `now` as. */
static uint64_t health_time(health_run_t *r, uint64_t now) {
  if (now > r->latest)
    r->latest = now;
  return r->latest;
}

static void health_step(health_run_t *r, input_t *in) {
  sp_health_t *h = &r->h;
  uint32_t was[MAX_OPS + 1], was_last[MAX_OPS + 1];
  uint8_t op = take8(in);
  uint32_t slot;
  uint64_t t;
  int rc;

  r->now = take_time(in, r->now);
  window_count(r, r->latest, was, was_last);

  switch (op % 6) {
  case 0: { /* a new worker */
    uint32_t evicted = 0;

    rc = sp_health_worker_add(h, &slot, &evicted);
    CHECK(rc == 0); /* the sizing rules out SP_EFULL */
    if (r->nslots < r->capacity) {
      CHECK(slot == r->nslots);
      CHECK(evicted == NIL);
      r->nslots++;
    } else {
      /* The worker idle longest goes, never one with a crash in the
       * window. */
      CHECK(r->nidle > 0);
      CHECK(evicted == slot);
      CHECK(slot < r->nslots);
      CHECK(r->slot_worker[slot] == r->idle[0]);
      CHECK(was[r->idle[0]] == 0);
      idle_remove_worker(r, r->idle[0]);
    }
    r->slot_worker[slot] = ++r->next_worker;
    r->idle[r->nidle++] = r->next_worker;
    was[r->next_worker] = 0; /* it had no crash before it existed */
    break;
  }
  case 1:
  case 2: { /* a crash of a known worker, or of a slot out of range */
    uint8_t k = take8(in);
    uint32_t before;

    slot = k < 240 && r->nslots > 0 ? k % r->nslots : take32(in);
    rc = sp_health_record(h, slot, r->now);
    if (slot >= r->nslots) {
      CHECK(rc == SP_ENOENT);
      break;
    }
    t = health_time(r, r->now);
    before = window_count(r, t, NULL, NULL);
    CHECK(r->nhist < MAX_OPS);
    r->hist[r->nhist].t = t;
    r->hist[r->nhist].worker = r->slot_worker[slot];
    r->nhist++;
    CHECK(rc == (before < r->max_crashes &&
                 window_count(r, t, NULL, NULL) == r->max_crashes));
    break;
  }
  case 3:
    t = health_time(r, r->now);
    CHECK(sp_health_expire(h, r->now) == window_count(r, t, NULL, NULL));
    break;
  case 4:
    t = health_time(r, r->now);
    CHECK(sp_health_is_healthy(h, r->now) ==
          (window_count(r, t, NULL, NULL) < r->max_crashes));
    break;
  default: { /* one worker's stats */
    sp_worker_stats_t ws;
    uint8_t k = take8(in);
    uint32_t per[MAX_OPS + 1], last[MAX_OPS + 1];
    uint64_t total = 0, last_ms = 0;

    slot = k < 240 && r->nslots > 0 ? k % r->nslots : take32(in);
    memset(&ws, 0xa5, sizeof(ws));
    rc = sp_health_worker(h, slot, r->now, &ws);
    if (slot >= r->nslots) {
      CHECK(rc == SP_ENOENT);
      break;
    }
    CHECK(rc == 0);
    t = health_time(r, r->now);
    window_count(r, t, per, last);
    for (uint32_t i = 0; i < r->nhist; i++)
      if (r->hist[i].worker == r->slot_worker[slot]) {
        total++;
        last_ms = r->hist[i].t;
      }
    CHECK(ws.crashes_in_window == per[r->slot_worker[slot]]);
    CHECK(ws.total_crashes == total);
    CHECK(ws.last_crash_ms == last_ms);
    CHECK(ws.pad_ == 0);
    break;
  }
  }
  health_advance(r, was, was_last, r->latest);
  CHECK(slot_of_worker(r, 0) == NIL);
  health_compare(r);
}

/* ---- retry policy --------------------------------------------------------- */

typedef struct {
  sp_retry_t r;
  int ok;
} retry_run_t;

static int is_delay(double d) {
  return isfinite(d) && d >= 0;
}

/* Would sp_retry_init accept c? From the ranges in sprun.h. */
static int retry_config_valid(const sp_retry_config_t *c) {
  if (c->max_attempts < 1)
    return 0;
  if (c->backoff == SP_BACKOFF_LIST) {
    if (c->backoff_count < 1 || c->backoff_count > SP_RETRY_MAX_BACKOFF)
      return 0;
    for (uint32_t i = 0; i < c->backoff_count; i++)
      if (!is_delay(c->backoff_ms[i]))
        return 0;
  } else if (c->backoff == SP_BACKOFF_EXPONENTIAL) {
    if (!is_delay(c->base_backoff_ms))
      return 0;
    if (!isfinite(c->multiplier) || c->multiplier < 1)
      return 0;
  } else {
    return 0;
  }
  if (!is_delay(c->max_backoff_ms))
    return 0;
  if (c->jitter < SP_JITTER_NONE || c->jitter > SP_JITTER_DECORRELATED)
    return 0;
  return c->jitter_factor >= 0 && c->jitter_factor <= 1;
}

static void retry_setup(retry_run_t *r, input_t *in) {
  sp_retry_config_t c;
  uint8_t k;
  int rc;

  memset(&c, 0, sizeof(c));
  c.max_attempts = take_count(in);
  k = take8(in);
  c.backoff = k < 120 ? SP_BACKOFF_LIST
              : k < 250 ? SP_BACKOFF_EXPONENTIAL : (int) k - 252;
  k = take8(in);
  c.backoff_count = k < 250 ? 1 + k % SP_RETRY_MAX_BACKOFF : k - 250 + 63;
  for (uint32_t i = 0; i < c.backoff_count && i < SP_RETRY_MAX_BACKOFF; i++)
    c.backoff_ms[i] = take8(in) < 240 ? take8(in) * 10.0 : take_double(in);
  c.base_backoff_ms = take8(in) < 128 ? take8(in) : take_double(in);
  c.multiplier = take8(in) < 128 ? 1 + take8(in) / 16.0 : take_double(in);
  c.max_backoff_ms = take8(in) < 128 ? take8(in) * 100.0 : take_double(in);
  k = take8(in);
  c.jitter = k < 250 ? k % 5 : (int) k - 252;
  c.jitter_factor = take8(in) < 128 ? take8(in) / 255.0 : take_double(in);
  c.seed = take64(in);

  rc = sp_retry_init(&r->r, &c);
  r->ok = retry_config_valid(&c);
  CHECK(rc == (r->ok ? 0 : SP_EINVAL));
}

/* The delay before jitter: the list or the curve, then the cap. The curve
 * is computed in long double; the code squares in double, so the two may
 * differ by rounding (see near()). */
static double retry_base(const sp_retry_config_t *c, uint32_t attempt) {
  long double p, v;

  if (c->backoff == SP_BACKOFF_LIST) {
    uint32_t i = attempt < c->backoff_count ? attempt : c->backoff_count;
    v = c->backoff_ms[i - 1];
  } else if (c->base_backoff_ms == 0) {
    v = 0;
  } else {
    p = powl((long double) c->multiplier, (long double) (attempt - 1));
    v = (long double) c->base_backoff_ms * p;
  }
  if (v > (long double) c->max_backoff_ms)
    return c->max_backoff_ms;
  return (double) v;
}

/* lo - tol <= d <= hi + tol, with room for rounding: a relative error of
 * the curve (up to about attempt * 2^-52 after squaring) and one whole ms
 * from flooring. */
static int near(double d, double lo, double hi) {
  double tol = 1 + fmax(fabs(lo), fabs(hi)) * 1e-6;
  return d >= floor(lo) - tol && d <= hi + tol;
}

static void retry_step(retry_run_t *r, input_t *in) {
  const sp_retry_config_t *c = &r->r.config;
  uint8_t op = take8(in);
  uint32_t attempt;
  double d, base, prev, lo, hi;

  switch (op % 8) {
  case 0:
    attempt = take_count(in);
    CHECK(sp_retry_should_retry(&r->r, attempt) ==
          (attempt < c->max_attempts));
    break;
  case 1:
    sp_retry_seed(&r->r, take64(in));
    break;
  case 2:
    d = sp_retry_random(&r->r);
    CHECK(d >= 0 && d < 1);
    break;
  default:
    attempt = take_count(in);
    prev = r->r.previous_;
    d = sp_retry_backoff(&r->r, attempt);
    if (attempt == 0)
      attempt = 1;
    CHECK(!isnan(d));
    CHECK(d >= 0);
    CHECK(d <= c->max_backoff_ms);
    CHECK(d == floor(d));
    base = retry_base(c, attempt);
    switch (c->jitter) {
    case SP_JITTER_NONE:
      CHECK(near(d, base, base));
      break;
    case SP_JITTER_PROPORTIONAL:
      CHECK(near(d, base - base * c->jitter_factor,
                 fmin(c->max_backoff_ms, base + base * c->jitter_factor)));
      break;
    case SP_JITTER_FULL:
      CHECK(near(d, 0, base));
      break;
    case SP_JITTER_EQUAL:
      CHECK(near(d, base / 2, base));
      break;
    default: /* decorrelated: between the first delay and 3 * previous */
      lo = c->backoff == SP_BACKOFF_LIST ? c->backoff_ms[0]
                                         : c->base_backoff_ms;
      if (attempt == 1)
        prev = lo;
      hi = prev * 3;
      CHECK(near(d, fmin(fmin(lo, hi), c->max_backoff_ms),
                 fmin(fmax(lo, hi), c->max_backoff_ms)));
      /* The next one grows from this one, before flooring. */
      CHECK(r->r.previous_ <= c->max_backoff_ms);
      CHECK(d == floor(r->r.previous_));
      break;
    }
    break;
  }
}

/* ---- the driver ----------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static breaker_run_t br;
  static health_run_t hr;
  static retry_run_t rr;
  input_t in = {data, size};

  breaker_setup(&br, &in);
  health_setup(&hr, &in);
  retry_setup(&rr, &in);

  for (int i = 0; i < MAX_OPS && in.n > 0; i++) {
    uint8_t which = take8(&in);
    if (which < 100 && br.ok)
      breaker_step(&br, &in);
    else if (which < 190 && hr.ok)
      health_step(&hr, &in);
    else if (rr.ok)
      retry_step(&rr, &in);
  }

  if (br.ok) {
    sp_breaker_close(&br.b);
    sp_breaker_close(&br.b); /* safe twice, says sprun.h */
  }
  if (hr.ok) {
    sp_health_close(&hr.h);
    sp_health_close(&hr.h); /* safe twice, says sprun.h */
    CHECK(sp_health_record(&hr.h, 0, 0) == SP_ENOENT);
    CHECK(sp_health_worker_add(&hr.h, &(uint32_t){0}, NULL) == SP_EINVAL);
  }
  return 0;
}
