/* health: the crash-rate health monitor of a worker pool.
 *
 * The pool is healthy while fewer than max_crashes crashes happened in the
 * sliding window of crash_window_ms ending now, boundary inclusive: a crash
 * exactly crash_window_ms old still counts. The monitor keeps the times of
 * the latest max_crashes crashes only, in a ring, with a parallel ring
 * naming the worker of each. That is exactly what the decision needs: once
 * max_crashes crashes are in the window, older ones cannot change it. So
 * memory is bounded and recording or querying is O(1) amortised, whatever
 * the crash rate: each crash enters the ring once and leaves it once.
 *
 * Workers live in slots. A worker whose crashes have all left the window
 * sits in an idle FIFO, in the order its last crash left; when every slot is
 * taken, the head of that FIFO (idle the longest) is forgotten to make room.
 * There are at least max_crashes + 1 slots and at most max_crashes workers
 * with a crash in the window, so some worker is always idle.
 *
 * The trap: time must not go backwards. The ring is ordered by time and
 * expires from its oldest end; an earlier now_ms would leave a newer crash
 * behind an older one and expiry would stop at the wrong place. So every
 * time passed in is taken as at least the latest time seen (latest_): a
 * clock that steps back sees a frozen window until it catches up.
 */
#include <stdlib.h>

#include "sprun.h"

/* Marks the end of the idle FIFO; slot indices stay below it. */
#define NIL UINT32_MAX

struct sp_health_slot_s {
  uint64_t total_crashes;
  uint64_t last_crash_ms;
  uint32_t crashes_in_window;
  /* The idle FIFO's links; meaningful only while crashes_in_window is 0,
   * which is exactly when the worker is in the FIFO. */
  uint32_t prev;
  uint32_t next;
};

static uint32_t health_capacity(const sp_health_config_t *config) {
  if (config->max_workers > config->max_crashes)
    return config->max_workers;
  return config->max_crashes + 1;
}

/* Whether n elements of `size` bytes can be asked of malloc: only a 32-bit
 * size_t can fall short. */
static int size_fits(uint32_t n, size_t size) {
  return n <= SIZE_MAX / size;
}

static void idle_push(sp_health_t *h, uint32_t slot) {
  sp_health_slot_t *s;

  s = &h->slots_[slot];
  s->prev = h->idle_tail_;
  s->next = NIL;
  if (h->idle_tail_ == NIL)
    h->idle_head_ = slot;
  else
    h->slots_[h->idle_tail_].next = slot;
  h->idle_tail_ = slot;
}

static void idle_remove(sp_health_t *h, uint32_t slot) {
  sp_health_slot_t *s;

  s = &h->slots_[slot];
  if (s->prev == NIL)
    h->idle_head_ = s->next;
  else
    h->slots_[s->prev].next = s->next;
  if (s->next == NIL)
    h->idle_tail_ = s->prev;
  else
    h->slots_[s->next].prev = s->prev;
  s->prev = NIL;
  s->next = NIL;
}

/* Takes the oldest crash out of the ring; its worker goes idle if it was
 * that worker's last crash in the window. */
static void ring_drop_oldest(sp_health_t *h) {
  uint32_t owner;

  owner = h->owners_[h->head_];
  h->head_ = h->head_ + 1 == h->config.max_crashes ? 0 : h->head_ + 1;
  h->crashes_in_window--;

  h->slots_[owner].crashes_in_window--;
  if (h->slots_[owner].crashes_in_window == 0) {
    h->workers_with_crashes--;
    idle_push(h, owner);
  }
}

/* Clamps a caller's time to the latest seen (see the trap above). */
static uint64_t health_now(sp_health_t *h, uint64_t now_ms) {
  if (now_ms < h->latest_)
    return h->latest_;
  h->latest_ = now_ms;
  return now_ms;
}

static void health_expire(sp_health_t *h, uint64_t now) {
  /* now is never below a kept time, so the difference cannot wrap. */
  while (h->crashes_in_window > 0 &&
         now - h->times_[h->head_] > h->config.crash_window_ms)
    ring_drop_oldest(h);
}

int sp_health_init(sp_health_t *h, const sp_health_config_t *config) {
  uint32_t capacity;

  if (h == NULL || config == NULL)
    return SP_EINVAL;
  if (config->max_crashes == 0 || config->max_workers == 0)
    return SP_EINVAL;
  /* max_crashes + 1 slots must be numbered below NIL. */
  if (config->max_crashes >= UINT32_MAX - 1)
    return SP_EINVAL;

  capacity = health_capacity(config);
  /* NIL is no slot's index. */
  if (capacity == UINT32_MAX)
    capacity = UINT32_MAX - 1;
  if (!size_fits(capacity, sizeof(*h->slots_)) ||
      !size_fits(config->max_crashes, sizeof(*h->times_)))
    return SP_ENOMEM;

  h->times_ = malloc(config->max_crashes * sizeof(*h->times_));
  h->owners_ = malloc(config->max_crashes * sizeof(*h->owners_));
  h->slots_ = malloc(capacity * sizeof(*h->slots_));
  if (h->times_ == NULL || h->owners_ == NULL || h->slots_ == NULL) {
    free(h->times_);
    free(h->owners_);
    free(h->slots_);
    h->times_ = NULL;
    h->owners_ = NULL;
    h->slots_ = NULL;
    return SP_ENOMEM;
  }

  /* config.max_workers holds the number of slots actually kept, so that
   * worker_count <= config.max_workers always holds. */
  h->config = *config;
  h->config.max_workers = capacity;
  h->total_crashes = 0;
  h->crashes_in_window = 0;
  h->workers_with_crashes = 0;
  h->worker_count = 0;
  h->head_ = 0;
  h->latest_ = 0;
  h->idle_head_ = NIL;
  h->idle_tail_ = NIL;
  /* Slots are handed out in order and never given back, only reused: the
   * never-used ones are exactly those from free_head_ on. */
  h->free_head_ = 0;
  return 0;
}

void sp_health_close(sp_health_t *h) {
  free(h->times_);
  free(h->owners_);
  free(h->slots_);
  h->times_ = NULL;
  h->owners_ = NULL;
  h->slots_ = NULL;
  /* With no slot in use and no crash kept, every later call finds nothing
   * to read instead of following the freed pointers. */
  h->crashes_in_window = 0;
  h->workers_with_crashes = 0;
  h->worker_count = 0;
  h->free_head_ = 0;
  h->idle_head_ = NIL;
  h->idle_tail_ = NIL;
}

int sp_health_worker_add(sp_health_t *h, uint32_t *slot, uint32_t *evicted) {
  uint32_t s;
  uint32_t gone;

  /* No slots: the monitor was never initialised, or is closed. */
  if (slot == NULL || h->slots_ == NULL)
    return SP_EINVAL;

  gone = NIL;
  if (h->free_head_ < h->config.max_workers) {
    s = h->free_head_++;
    h->worker_count++;
  } else if (h->idle_head_ != NIL) {
    s = h->idle_head_;
    idle_remove(h, s);
    gone = s;
  } else {
    return SP_EFULL;
  }

  h->slots_[s].total_crashes = 0;
  h->slots_[s].last_crash_ms = 0;
  h->slots_[s].crashes_in_window = 0;
  /* A new worker has no crash in the window, so it is idle, and the last
   * in line to be forgotten. */
  idle_push(h, s);

  *slot = s;
  if (evicted != NULL)
    *evicted = gone;
  return 0;
}

int sp_health_record(sp_health_t *h, uint32_t slot, uint64_t now_ms) {
  sp_health_slot_t *s;
  uint64_t now;
  uint32_t tail;
  int was_healthy;

  if (slot >= h->free_head_)
    return SP_ENOENT;

  now = health_now(h, now_ms);
  health_expire(h, now);
  was_healthy = h->crashes_in_window < h->config.max_crashes;

  /* A full ring forgets its oldest crash: with max_crashes newer ones in
   * the window, it can no longer change the decision. */
  if (h->crashes_in_window == h->config.max_crashes)
    ring_drop_oldest(h);

  tail = (uint32_t) (((uint64_t) h->head_ + h->crashes_in_window) %
                     h->config.max_crashes);
  h->times_[tail] = now;
  h->owners_[tail] = slot;
  h->crashes_in_window++;

  s = &h->slots_[slot];
  if (s->crashes_in_window == 0) {
    idle_remove(h, slot);
    h->workers_with_crashes++;
  }
  s->crashes_in_window++;
  if (s->total_crashes != UINT64_MAX)
    s->total_crashes++;
  s->last_crash_ms = now;
  if (h->total_crashes != UINT64_MAX)
    h->total_crashes++;

  return was_healthy && h->crashes_in_window == h->config.max_crashes;
}

uint32_t sp_health_expire(sp_health_t *h, uint64_t now_ms) {
  health_expire(h, health_now(h, now_ms));
  return h->crashes_in_window;
}

int sp_health_is_healthy(sp_health_t *h, uint64_t now_ms) {
  return sp_health_expire(h, now_ms) < h->config.max_crashes;
}

int sp_health_worker(sp_health_t *h, uint32_t slot, uint64_t now_ms,
                     sp_worker_stats_t *out) {
  const sp_health_slot_t *s;

  if (slot >= h->free_head_)
    return SP_ENOENT;

  sp_health_expire(h, now_ms);
  s = &h->slots_[slot];
  out->crashes_in_window = s->crashes_in_window;
  out->pad_ = 0;
  out->total_crashes = s->total_crashes;
  out->last_crash_ms = s->last_crash_ms;
  return 0;
}
