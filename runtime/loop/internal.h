/* Private to runtime/loop: the structures behind loop.h, shared by its
 * files (and the C tests, which check the heap directly). Nothing outside
 * runtime/loop and tests/c includes this.
 *
 * One file a job: loop.c the loop, its clock and its timers; heap.c the
 * timer heap; handle.c the list of open handles; stream.c the writes and
 * the read buffer of every stream; then one file a kind of handle
 * (process.c, tcp.c, signal.c). A new kind of handle is a new file whose
 * handles start with an sp__handle_t and pass their close function to
 * sp__handle_link: loop.c never learns what kinds there are.
 */
#ifndef SPRUN_LOOP_INTERNAL_H
#define SPRUN_LOOP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "loop.h"

/* ---- timer heap ---------------------------------------------------------- */

/* A heap node: the ordering key and the slot that describes the timer. The
 * key is (deadline, seq): seq counts additions, so equal deadlines come out
 * in the order they went in. */
typedef struct sp__heap_node_s {
  uint64_t deadline;
  uint64_t seq;
  uint32_t slot;
} sp__heap_node_t;

/* A slot: what an id points at. `gen` is odd while the slot holds a timer
 * and even while it is free; `link` is then the node's heap index, or the
 * next free slot. */
typedef struct sp__heap_slot_s {
  uint64_t token;
  uint32_t link;
  uint32_t gen;
} sp__heap_slot_t;

typedef struct sp__heap_s {
  sp__heap_node_t *nodes;
  uint32_t count;
  uint32_t nodes_cap;
  sp__heap_slot_t *slots;
  uint32_t slots_used;
  uint32_t slots_cap;
  uint32_t free_head; /* SP__HEAP_NONE when no slot is free */
  uint64_t next_seq;
} sp__heap_t;

#define SP__HEAP_NONE UINT32_MAX

/* Ids are (gen << SP__HEAP_SLOT_BITS) | slot and stay below 2^53, so that a
 * Lua number holds them exactly. */
#define SP__HEAP_SLOT_BITS 26
#define SP__HEAP_GEN_BITS 27

void sp__heap_init(sp__heap_t *heap);
void sp__heap_free(sp__heap_t *heap);
/* 0 or UV_ENOMEM. */
int sp__heap_add(sp__heap_t *heap, uint64_t deadline, uint64_t token,
                 uint64_t *id);
/* Takes the next seq ahead, for sp__heap_add_seq. */
uint64_t sp__heap_reserve(sp__heap_t *heap);
/* sp__heap_add with a seq taken by sp__heap_reserve (or next_seq itself):
 * the timer ranks among equal deadlines as of when the seq was taken. */
int sp__heap_add_seq(sp__heap_t *heap, uint64_t deadline, uint64_t token,
                     uint64_t seq, uint64_t *id);
/* 0 or UV_ENOENT. */
int sp__heap_cancel(sp__heap_t *heap, uint64_t id);
/* The earliest node, or NULL when the heap is empty. */
const sp__heap_node_t *sp__heap_peek(const sp__heap_t *heap);
/* The id sp__heap_add gave the timer of a node still in the heap. */
uint64_t sp__heap_id(const sp__heap_t *heap, const sp__heap_node_t *node);
/* Removes the earliest node and returns its token (the heap is not
 * empty). Its id is dead from here on. */
uint64_t sp__heap_pop(sp__heap_t *heap);
/* Bytes allocated, for the memory-per-timer check. */
size_t sp__heap_memory(const sp__heap_t *heap);

/* ---- handles ------------------------------------------------------------- */

typedef struct sp__handle_s sp__handle_t;

/* Closes a handle as its owner's sp__*_close does: at once if it is not
 * closing yet, nothing if it is; its memory goes in its close callback. */
typedef void (*sp__close_fn)(sp__handle_t *h);

/* What every process, socket and signal watcher starts with: the loop's
 * list of open handles (walked by sp__loop_free) and the accounting. */
struct sp__handle_s {
  sp_loop_t *loop;
  sp__handle_t *prev;
  sp__handle_t *next;
  uint64_t token;
  /* How sp__loop_free closes it, whatever kind of handle it is. */
  sp__close_fn close;
  /* 1 once the owner closed it (or the loop is closing it). */
  int closing;
  /* 0 for a handle whose creation failed: it is closed and freed without
   * an event, and was never counted. */
  int counted;
};

struct sp_loop_s {
  uv_loop_t uv;
  /* The one libuv timer: armed for the earliest deadline before each
   * poll, it only wakes the poll; the timers fire in sp__loop_step. */
  uv_timer_t timer;
  /* Keeps the loop alive for a step that must poll without waiting (see
   * poll_io in loop.c). */
  uv_idle_t poll_idle;
  uint64_t armed_deadline;
  int armed;
  int virtual_time;
  uint64_t vnow;
  /* While I/O is in flight the virtual clock follows the real time from
   * (io_real0, io_v0): during a step (io_clock) and, caught up at the next
   * step, between steps that find I/O still in flight (io_anchored). */
  int io_clock;
  int io_anchored;
  uint64_t io_real0;
  uint64_t io_v0;
  /* Events reported so far: a virtual-time step whose poll reported any
   * does not jump (a task it woke runs at the time it happened). */
  uint64_t emitted;
  sp__heap_t heap;
  sp_event_cb cb;
  void *ctx;
  sp__handle_t handles; /* sentinel of a circular list */
  unsigned handle_count;
  /* I/O a task awaits: children it waits on, pending connects and
   * writes, reading sockets. */
  unsigned inflight;
  int stepping;
  int freeing;
  /* The watchdog (watchdog.c): the write end of its pipe, or -1, and its
   * pid. */
  int watch_fd;
  int watch_pid;
  /* The loops alive in this process, for the exit handler (loop.c). */
  struct sp_loop_s *next_alive;
  char readbuf[65536];
};

/* handle.c. Links a handle its owner now holds into the loop's list and
 * counts it; `close` is how sp__loop_free closes it if the owner did not. */
void sp__handle_link(sp_loop_t *loop, sp__handle_t *h, sp__close_fn close,
                     uint64_t token);
/* Called once the handle's memory is about to go: unlinks it and reports
 * SP_EV_CLOSED if it was counted. */
void sp__handle_unlink(sp__handle_t *h);
/* Closes every linked handle not closing yet, each with its own close
 * function (for sp__loop_free; the memory goes in the close callbacks). */
void sp__handle_close_all(sp_loop_t *loop);

/* watchdog.c. Tells the loop's watchdog (started at the first call) of a
 * child's group that started, and of one that is gone; stop ends the
 * watchdog and reaps it (sp__loop_free, once every child is reaped). */
void sp__watchdog_add(sp_loop_t *loop, int pid);
void sp__watchdog_remove(sp_loop_t *loop, int pid);
void sp__watchdog_stop(sp_loop_t *loop);

/* exec.c. The file and argv uv_spawn gets to start `o` through the shim
 * (set with sp__proc_set_shim), or o->file and no argv (NULL) without
 * one; UV_ENOENT or UV_EACCES when the program cannot be found or run.
 * sp__exec_free frees the argv. */
int sp__exec_args(const sp_proc_options_t *o, const char **file,
                  char ***argv);
void sp__exec_free(char **argv);

/* process.c. Kills the group of every child of the loop still running,
 * at once and without waiting (the process is exiting). */
void sp__proc_kill_all(sp_loop_t *loop);

/* loop.c. Reports an event through the loop's callback (nothing while the
 * loop is being freed). */
void sp__emit(sp_loop_t *loop, uint64_t token, int type, int64_t a,
              int64_t b, const char *data, size_t len, void *handle);

/* stream.c. The shared read buffer (data is handed over synchronously). */
void sp__alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
/* Writes a copy of `data`; SP_EV_WRITE with `write_token` reports the end,
 * with stream->data as the event's handle. */
int sp__stream_write(sp_loop_t *loop, uv_stream_t *stream, const char *data,
                     size_t len, uint64_t write_token);

#endif /* SPRUN_LOOP_INTERNAL_H */
