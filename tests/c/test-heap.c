/* Tests of the timer heap of runtime/loop: the order (deadline, then
 * addition), cancellation anywhere in the heap, ids that never come back,
 * and a long random run checked against a plain sorted reference.
 */
#include <stdlib.h>

#include "task.h"
#include "../../runtime/loop/internal.h"

/* A small deterministic generator, so a failure can be replayed. */
static uint64_t rng_state = 88172645463325252ULL;

static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

TEST_IMPL(heap_order_deadline_then_insertion) {
  static const uint64_t deadlines[] = { 30, 10, 20, 10, 10, 0, 20 };
  static const uint64_t expected[] = { 5, 1, 3, 4, 2, 6, 0 };
  sp__heap_t heap;
  uint64_t id;
  size_t i;

  sp__heap_init(&heap);
  ASSERT_NULL(sp__heap_peek(&heap));
  for (i = 0; i < sizeof(deadlines) / sizeof(deadlines[0]); i++)
    ASSERT_EQ(sp__heap_add(&heap, deadlines[i], i, &id), 0);
  ASSERT_EQ(heap.count, 7);
  for (i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
    ASSERT_NOT_NULL(sp__heap_peek(&heap));
    ASSERT_UINT64_EQ(sp__heap_pop(&heap), expected[i]);
  }
  ASSERT_NULL(sp__heap_peek(&heap));
  sp__heap_free(&heap);
  return 0;
}

TEST_IMPL(heap_cancel_from_middle) {
  sp__heap_t heap;
  uint64_t ids[20];
  uint64_t i;

  sp__heap_init(&heap);
  /* Deadlines 19, 18, ... 0: the heap is shuffled by the additions. */
  for (i = 0; i < 20; i++)
    ASSERT_EQ(sp__heap_add(&heap, 19 - i, i, &ids[i]), 0);
  /* Cancel the timers with deadlines 10 and 5 (tokens 9 and 14), the
   * latest (token 0), and the earliest (token 19). */
  ASSERT_EQ(sp__heap_cancel(&heap, ids[9]), 0);
  ASSERT_EQ(sp__heap_cancel(&heap, ids[14]), 0);
  ASSERT_EQ(sp__heap_cancel(&heap, ids[0]), 0);
  ASSERT_EQ(sp__heap_cancel(&heap, ids[19]), 0);
  ASSERT_EQ(sp__heap_cancel(&heap, ids[9]), UV_ENOENT);
  ASSERT_EQ(heap.count, 16);
  for (i = 18; i >= 1; i--) {
    if (i == 9 || i == 14)
      continue;
    ASSERT_UINT64_EQ(sp__heap_pop(&heap), i);
  }
  ASSERT_EQ(heap.count, 0);
  /* A popped timer cannot be cancelled either. */
  ASSERT_EQ(sp__heap_cancel(&heap, ids[1]), UV_ENOENT);
  ASSERT_EQ(sp__heap_cancel(&heap, 0), UV_ENOENT);
  ASSERT_EQ(sp__heap_cancel(&heap, UINT64_MAX), UV_ENOENT);
  sp__heap_free(&heap);
  return 0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *) a;
  uint64_t y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

TEST_IMPL(heap_ids_not_reused) {
  enum { N = 20000 };
  sp__heap_t heap;
  uint64_t *ids;
  uint64_t keep;
  uint64_t extra;
  size_t i;

  ids = malloc(N * sizeof(*ids));
  ASSERT_NOT_NULL(ids);
  sp__heap_init(&heap);
  ASSERT_EQ(sp__heap_add(&heap, 5, 999, &keep), 0);
  /* The same slot is used over and over. */
  for (i = 0; i < N; i++) {
    ASSERT_EQ(sp__heap_add(&heap, i, i, &ids[i]), 0);
    ASSERT_UINT64_NE(ids[i], 0);
    ASSERT_UINT64_LE(ids[i], (UINT64_C(1) << 53) - 1);
    ASSERT_EQ(sp__heap_cancel(&heap, ids[i]), 0);
    ASSERT_EQ(sp__heap_cancel(&heap, ids[i]), UV_ENOENT);
  }
  /* A stale id never touches the timer that now owns its slot. */
  ASSERT_EQ(sp__heap_add(&heap, 1, 7, &extra), 0);
  for (i = 0; i < N; i++)
    ASSERT_EQ(sp__heap_cancel(&heap, ids[i]), UV_ENOENT);
  ASSERT_EQ(heap.count, 2);
  ASSERT_UINT64_EQ(sp__heap_pop(&heap), 7);
  ASSERT_UINT64_EQ(sp__heap_pop(&heap), 999);
  qsort(ids, N, sizeof(*ids), cmp_u64);
  for (i = 1; i < N; i++)
    ASSERT_UINT64_NE(ids[i], ids[i - 1]);
  ASSERT_UINT64_NE(extra, keep);
  sp__heap_free(&heap);
  free(ids);
  return 0;
}

typedef struct {
  uint64_t deadline;
  uint64_t seq;
  uint64_t token;
  uint64_t id;
} ref_timer_t;

static int ref_less(const ref_timer_t *a, const ref_timer_t *b) {
  if (a->deadline != b->deadline)
    return a->deadline < b->deadline;
  return a->seq < b->seq;
}

static int cmp_ref(const void *a, const void *b) {
  const ref_timer_t *x = a;
  const ref_timer_t *y = b;

  return ref_less(x, y) ? -1 : ref_less(y, x);
}

/* 100,000 random additions, cancellations and pops; each pop must give the
 * reference's earliest timer, and draining at the end the sorted rest. */
TEST_IMPL(heap_random_against_reference) {
  enum { OPS = 100000, MAX_LIVE = 3000 };
  sp__heap_t heap;
  ref_timer_t *ref;
  size_t live = 0;
  uint64_t seq = 0;
  uint64_t next_token = 1;
  size_t i, j, best;
  uint64_t r;

  ref = malloc(MAX_LIVE * sizeof(*ref));
  ASSERT_NOT_NULL(ref);
  sp__heap_init(&heap);
  for (i = 0; i < OPS; i++) {
    r = rng() % 6;
    if (live == 0 || (live < MAX_LIVE && r < 3)) {
      ref_timer_t *t = &ref[live++];
      /* Few distinct deadlines, so that ties are common. */
      t->deadline = rng() % 500;
      t->seq = seq++;
      t->token = next_token++;
      ASSERT_EQ(sp__heap_add(&heap, t->deadline, t->token, &t->id), 0);
    } else if (r < 5) {
      j = (size_t) (rng() % live);
      ASSERT_EQ(sp__heap_cancel(&heap, ref[j].id), 0);
      ASSERT_EQ(sp__heap_cancel(&heap, ref[j].id), UV_ENOENT);
      ref[j] = ref[--live];
    } else {
      best = 0;
      for (j = 1; j < live; j++)
        if (ref_less(&ref[j], &ref[best]))
          best = j;
      ASSERT_NOT_NULL(sp__heap_peek(&heap));
      ASSERT_UINT64_EQ(sp__heap_peek(&heap)->deadline, ref[best].deadline);
      ASSERT_UINT64_EQ(sp__heap_pop(&heap), ref[best].token);
      ref[best] = ref[--live];
    }
    ASSERT_EQ(heap.count, live);
  }
  qsort(ref, live, sizeof(*ref), cmp_ref);
  for (j = 0; j < live; j++)
    ASSERT_UINT64_EQ(sp__heap_pop(&heap), ref[j].token);
  ASSERT_NULL(sp__heap_peek(&heap));
  sp__heap_free(&heap);
  free(ref);
  return 0;
}

/* A million timers: they all come out in order, and the heap stays well
 * under 100 bytes a timer. */
TEST_IMPL(heap_million_timers) {
  enum { N = 1000000 };
  sp__heap_t heap;
  uint64_t prev_deadline = 0;
  uint64_t id;
  size_t i;

  sp__heap_init(&heap);
  for (i = 0; i < N; i++)
    ASSERT_EQ(sp__heap_add(&heap, rng() % 100000, i, &id), 0);
  ASSERT_EQ(heap.count, N);
  ASSERT_LE(sp__heap_memory(&heap) / N, 64);
  for (i = 0; i < N; i++) {
    const sp__heap_node_t *top = sp__heap_peek(&heap);
    ASSERT_NOT_NULL(top);
    ASSERT_UINT64_GE(top->deadline, prev_deadline);
    prev_deadline = top->deadline;
    (void) sp__heap_pop(&heap);
  }
  ASSERT_NULL(sp__heap_peek(&heap));
  sp__heap_free(&heap);
  return 0;
}

/* A slot whose generation ran out is retired, so the largest id is never
 * followed by a wrapped-around one. */
TEST_IMPL(heap_exhausted_slot_retired) {
  sp__heap_t heap;
  uint64_t id;
  uint64_t last;

  sp__heap_init(&heap);
  ASSERT_EQ(sp__heap_add(&heap, 1, 1, &id), 0);
  ASSERT_EQ(sp__heap_cancel(&heap, id), 0);
  /* Age slot 0 to its last generation (free slots have even ones). */
  heap.slots[0].gen = (UINT32_C(1) << SP__HEAP_GEN_BITS) - 2;
  ASSERT_EQ(sp__heap_add(&heap, 1, 2, &last), 0);
  ASSERT_UINT64_EQ(last, (UINT64_C(1) << 53) - (UINT64_C(1) << 26));
  ASSERT_EQ(sp__heap_cancel(&heap, last), 0);
  ASSERT_EQ(sp__heap_add(&heap, 1, 3, &id), 0);
  ASSERT_UINT64_EQ(id & ((UINT64_C(1) << SP__HEAP_SLOT_BITS) - 1), 1);
  ASSERT_EQ(heap.slots_used, 2);
  ASSERT_EQ(sp__heap_cancel(&heap, last), UV_ENOENT);
  ASSERT_UINT64_EQ(sp__heap_pop(&heap), 3);
  sp__heap_free(&heap);
  return 0;
}
