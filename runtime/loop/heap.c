/* The timer heap: a binary min-heap of nodes keyed by (deadline, seq), and
 * a slot array that ids point into.
 *
 * The rule: timers come out by deadline, and timers with the same deadline
 * in the order they were added (seq counts additions). A caller may also
 * take a seq ahead and add its timer with it later: that timer then ranks
 * as if it had been added when the seq was taken. Add, cancel and pop
 * are O(log n): every slot knows where its node sits in the heap, and ids
 * find slots directly. Both arrays grow by doubling; a live timer costs 40
 * bytes (a 24-byte node and a 16-byte slot), so at most 80 with the slack.
 *
 * The trap: nodes move on every swap, and a moved node must update its
 * slot's `link`, or a later cancel removes the wrong timer. And ids must
 * never come back: a slot's generation changes on every use (odd while
 * live, even while free), and a slot whose generation would run out of
 * bits is retired instead of reused.
 */
#include <stdlib.h>

#include "internal.h"

#define SLOT_MASK ((UINT32_C(1) << SP__HEAP_SLOT_BITS) - 1)
#define GEN_LIMIT ((UINT32_C(1) << SP__HEAP_GEN_BITS) - 1)

static int node_less(const sp__heap_node_t *a, const sp__heap_node_t *b) {
  if (a->deadline != b->deadline)
    return a->deadline < b->deadline;
  return a->seq < b->seq;
}

static void place(sp__heap_t *heap, uint32_t i, const sp__heap_node_t *n) {
  heap->nodes[i] = *n;
  heap->slots[n->slot].link = i;
}

static void sift_up(sp__heap_t *heap, uint32_t i) {
  sp__heap_node_t n = heap->nodes[i];

  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!node_less(&n, &heap->nodes[parent]))
      break;
    place(heap, i, &heap->nodes[parent]);
    i = parent;
  }
  place(heap, i, &n);
}

static void sift_down(sp__heap_t *heap, uint32_t i) {
  sp__heap_node_t n = heap->nodes[i];
  uint32_t count = heap->count;

  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= count)
      break;
    if (child + 1 < count &&
        node_less(&heap->nodes[child + 1], &heap->nodes[child]))
      child++;
    if (!node_less(&heap->nodes[child], &n))
      break;
    place(heap, i, &heap->nodes[child]);
    i = child;
  }
  place(heap, i, &n);
}

static uint32_t next_cap(uint32_t cap, uint32_t need) {
  uint32_t n = cap ? cap : 64;

  while (n < need)
    n *= 2;
  return n;
}

static int grow_nodes(sp__heap_t *heap, uint32_t need) {
  sp__heap_node_t *p;
  uint32_t cap;

  if (need <= heap->nodes_cap)
    return 0;
  cap = next_cap(heap->nodes_cap * 2, need);
  p = realloc(heap->nodes, (size_t) cap * sizeof(*p));
  if (p == NULL)
    return UV_ENOMEM;
  heap->nodes = p;
  heap->nodes_cap = cap;
  return 0;
}

static int grow_slots(sp__heap_t *heap, uint32_t need) {
  sp__heap_slot_t *p;
  uint32_t cap;

  if (need <= heap->slots_cap)
    return 0;
  cap = next_cap(heap->slots_cap * 2, need);
  p = realloc(heap->slots, (size_t) cap * sizeof(*p));
  if (p == NULL)
    return UV_ENOMEM;
  heap->slots = p;
  heap->slots_cap = cap;
  return 0;
}

static void free_slot(sp__heap_t *heap, uint32_t slot) {
  sp__heap_slot_t *s = &heap->slots[slot];

  s->gen++;
  /* A slot whose next generation would not fit in an id is retired. */
  if (s->gen < GEN_LIMIT) {
    s->link = heap->free_head;
    heap->free_head = slot;
  }
}

static void remove_at(sp__heap_t *heap, uint32_t i) {
  uint32_t last = --heap->count;
  sp__heap_node_t n;

  if (i == last)
    return;
  n = heap->nodes[last];
  place(heap, i, &n);
  if (i > 0 && node_less(&n, &heap->nodes[(i - 1) / 2]))
    sift_up(heap, i);
  else
    sift_down(heap, i);
}

/* Removes the earliest node. The hole it leaves goes down to a leaf, each
 * step taking the earlier child (one compare a level, where a sift-down
 * from the root takes two), and the last node fills it and sifts up: taken
 * from the bottom, it belongs near the bottom (with equal deadlines, at
 * once: it is the latest added). */
static void remove_root(sp__heap_t *heap) {
  uint32_t last = --heap->count;
  uint32_t i = 0;

  if (last == 0)
    return;
  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= last)
      break;
    if (child + 1 < last &&
        node_less(&heap->nodes[child + 1], &heap->nodes[child]))
      child++;
    place(heap, i, &heap->nodes[child]);
    i = child;
  }
  if (i != last) {
    sp__heap_node_t n = heap->nodes[last];
    place(heap, i, &n);
    sift_up(heap, i);
  }
}

void sp__heap_init(sp__heap_t *heap) {
  heap->nodes = NULL;
  heap->count = 0;
  heap->nodes_cap = 0;
  heap->slots = NULL;
  heap->slots_used = 0;
  heap->slots_cap = 0;
  heap->free_head = SP__HEAP_NONE;
  heap->next_seq = 0;
}

void sp__heap_free(sp__heap_t *heap) {
  free(heap->nodes);
  free(heap->slots);
  sp__heap_init(heap);
}

uint64_t sp__heap_reserve(sp__heap_t *heap) {
  return heap->next_seq++;
}

int sp__heap_add(sp__heap_t *heap, uint64_t deadline, uint64_t token,
                 uint64_t *id) {
  return sp__heap_add_seq(heap, deadline, token, heap->next_seq, id);
}

int sp__heap_add_seq(sp__heap_t *heap, uint64_t deadline, uint64_t token,
                     uint64_t seq, uint64_t *id) {
  sp__heap_node_t n;
  sp__heap_slot_t *s;
  uint32_t slot;
  int err;

  err = grow_nodes(heap, heap->count + 1);
  if (err)
    return err;
  if (heap->free_head != SP__HEAP_NONE) {
    slot = heap->free_head;
    heap->free_head = heap->slots[slot].link;
  } else {
    if (heap->slots_used > SLOT_MASK)
      return UV_ENOMEM;
    err = grow_slots(heap, heap->slots_used + 1);
    if (err)
      return err;
    slot = heap->slots_used++;
    heap->slots[slot].gen = 0;
  }
  s = &heap->slots[slot];
  s->gen++;
  s->token = token;
  n.deadline = deadline;
  n.seq = seq;
  if (seq == heap->next_seq)
    heap->next_seq++;
  n.slot = slot;
  heap->nodes[heap->count++] = n;
  sift_up(heap, heap->count - 1);
  *id = ((uint64_t) s->gen << SP__HEAP_SLOT_BITS) | slot;
  return 0;
}

int sp__heap_cancel(sp__heap_t *heap, uint64_t id) {
  uint64_t gen = id >> SP__HEAP_SLOT_BITS;
  uint32_t slot = (uint32_t) (id & SLOT_MASK);

  if (gen > GEN_LIMIT || (gen & 1) == 0 || slot >= heap->slots_used ||
      heap->slots[slot].gen != gen)
    return UV_ENOENT;
  remove_at(heap, heap->slots[slot].link);
  free_slot(heap, slot);
  return 0;
}

const sp__heap_node_t *sp__heap_peek(const sp__heap_t *heap) {
  return heap->count ? &heap->nodes[0] : NULL;
}

uint64_t sp__heap_id(const sp__heap_t *heap, const sp__heap_node_t *node) {
  return ((uint64_t) heap->slots[node->slot].gen << SP__HEAP_SLOT_BITS) |
         node->slot;
}

uint64_t sp__heap_pop(sp__heap_t *heap) {
  uint32_t slot = heap->nodes[0].slot;
  uint64_t token = heap->slots[slot].token;

  remove_root(heap);
  free_slot(heap, slot);
  return token;
}

size_t sp__heap_memory(const sp__heap_t *heap) {
  return (size_t) heap->nodes_cap * sizeof(sp__heap_node_t) +
         (size_t) heap->slots_cap * sizeof(sp__heap_slot_t);
}
