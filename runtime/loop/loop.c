/* The loop: one libuv loop, its timers, its clock (real or virtual), and
 * sp__emit, the one way out of every event.
 *
 * The rule: sp__loop_step polls I/O once, then fires every due timer. A
 * timer is fired by sp__loop_step itself, never from a libuv callback: the
 * one uv_timer only ends the poll on time (it calls uv_stop). Timers fire
 * in (deadline, order of addition) order, and only those added before the
 * firing began: a timer added by a timer's callback, even one already due,
 * waits for the next step, after a poll, so a callback that keeps arming
 * zero-delay timers cannot starve I/O. A timer added by an I/O callback
 * during the poll is older than the firing, and fires in the same step if
 * it is due.
 *
 * Virtual time: the clock starts at the real time and jumps to the next
 * deadline whenever no I/O is in flight (no running child, no connect or
 * write pending, no socket reading). While I/O is in flight the step
 * waits for it, as in real time, but never longer than the real time left
 * until the next deadline, and the clock moves on by the real time the
 * wait took: time never jumps past an event that is still coming, and a
 * timeout around an operation that hangs still fires. Nor does it jump in
 * a step whose poll reported an event: the task that event woke runs first,
 * at the time it happened.
 *
 * The trap: libuv must be able to run the close callbacks, so nothing is
 * freed until they ran; sp__loop_free closes every handle (each with its
 * own close function, which kills the children), and runs the loop until
 * they are reaped and uv_loop_close can succeed. No event is reported while
 * the loop is being freed.
 */
#include <assert.h>
#include <signal.h>
#include <stdlib.h>

#include "internal.h"

/* ---- events -------------------------------------------------------------- */

/* In virtual time, while waiting for I/O: the clock moves with the real
 * time (libuv refreshes its time after every poll). */
static void follow_real_time(sp_loop_t *loop) {
  uint64_t v = loop->io_v0 + (uv_now(&loop->uv) - loop->io_real0);

  if (v > loop->vnow)
    loop->vnow = v;
}

void sp__emit(sp_loop_t *loop, uint64_t token, int type, int64_t a,
              int64_t b, const char *data, size_t len, void *handle) {
  sp_event_t ev;

  if (loop->cb == NULL)
    return;
  if (loop->io_clock)
    follow_real_time(loop);
  loop->emitted++;
  ev.type = type;
  ev.a = a;
  ev.b = b;
  ev.data = data;
  ev.len = len;
  ev.handle = handle;
  loop->cb(loop->ctx, token, &ev);
}

/* ---- the loop ------------------------------------------------------------ */

/* The uv_timer's only job is to end the poll; uv_stop makes the poll of the
 * current iteration non-blocking even if libuv ran the timer before it. */
static void wake_cb(uv_timer_t *timer) {
  sp_loop_t *loop = timer->data;

  loop->armed = 0;
  uv_stop(&loop->uv);
}

static void disarm(sp_loop_t *loop) {
  if (loop->armed) {
    uv_timer_stop(&loop->timer);
    loop->armed = 0;
  }
}

/* Arms the uv_timer to end the poll in `timeout` real ms. In real time a
 * deadline already armed is not re-armed: the wake-up time is the same. */
static void arm(sp_loop_t *loop, uint64_t deadline, uint64_t timeout) {
  if (loop->armed && !loop->virtual_time && loop->armed_deadline == deadline)
    return;
  uv_timer_start(&loop->timer, wake_cb, timeout, 0);
  loop->armed = 1;
  loop->armed_deadline = deadline;
}

static void fire_due(sp_loop_t *loop, uint64_t now) {
  uint64_t limit = loop->heap.next_seq;
  const sp__heap_node_t *top;

  while ((top = sp__heap_peek(&loop->heap)) != NULL &&
         top->deadline <= now && top->seq < limit) {
    uint64_t deadline = top->deadline;
    uint64_t id = sp__heap_id(&loop->heap, top);
    uint64_t token = sp__heap_pop(&loop->heap);

    sp__emit(loop, token, SP_EV_TIMER, (int64_t) deadline, (int64_t) id, NULL,
             0, NULL);
  }
  if (loop->heap.count == 0)
    disarm(loop);
}

/* The loops alive in this process. On exit (exit(3), os.exit), the
 * children of every one of them are killed: the process is going, and so
 * are they, whoever called exit. */
static sp_loop_t *alive;

static void kill_children_at_exit(void) {
  sp_loop_t *loop;

  for (loop = alive; loop != NULL; loop = loop->next_alive)
    sp__proc_kill_all(loop);
}

void sp__loop_kill_children(sp_loop_t *loop) {
  sp__proc_kill_all(loop);
}

int sp__loop_new(sp_loop_t **out, int virtual_time, sp_event_cb cb,
                 void *ctx) {
  static int at_exit;
  sp_loop_t *loop;
  int err;

  loop = calloc(1, sizeof(*loop));
  if (loop == NULL)
    return UV_ENOMEM;
  err = uv_loop_init(&loop->uv);
  if (err) {
    free(loop);
    return err;
  }
  uv_timer_init(&loop->uv, &loop->timer);
  uv_idle_init(&loop->uv, &loop->poll_idle);
  loop->timer.data = loop;
  sp__heap_init(&loop->heap);
  loop->handles.next = &loop->handles;
  loop->handles.prev = &loop->handles;
  loop->virtual_time = virtual_time != 0;
  loop->cb = cb;
  loop->ctx = ctx;
  uv_update_time(&loop->uv);
  loop->vnow = uv_now(&loop->uv);
  /* A write to a pipe or socket whose reader went away must fail with
   * EPIPE, not kill the whole process. Children get the default back
   * (libuv resets signal dispositions in the child). */
  signal(SIGPIPE, SIG_IGN);
  loop->watch_fd = -1;
  if (!at_exit && atexit(kill_children_at_exit) == 0)
    at_exit = 1;
  loop->next_alive = alive;
  alive = loop;
  *out = loop;
  return 0;
}

void sp__loop_free(sp_loop_t *loop) {
  sp_loop_t **link;
  int err;

  assert(!loop->stepping);
  loop->freeing = 1;
  loop->cb = NULL;
  sp__handle_close_all(loop);
  uv_close((uv_handle_t *) &loop->timer, NULL);
  uv_close((uv_handle_t *) &loop->poll_idle, NULL);
  /* Runs until every child is reaped and every close callback ran. */
  while (uv_run(&loop->uv, UV_RUN_DEFAULT) != 0)
    ;
  assert(loop->handles.next == &loop->handles);
  sp__watchdog_stop(loop);
  for (link = &alive; *link != NULL; link = &(*link)->next_alive) {
    if (*link == loop) {
      *link = loop->next_alive;
      break;
    }
  }
  err = uv_loop_close(&loop->uv);
  assert(err == 0);
  (void) err;
  sp__heap_free(&loop->heap);
  free(loop);
}

uint64_t sp__loop_now(const sp_loop_t *loop) {
  return loop->virtual_time ? loop->vnow : uv_now(&loop->uv);
}

/* uv_now() is a read of the loop's `time` field, which libuv keeps in
 * uv_loop_t itself (part of its ABI): pointing at it gives the same value
 * without a call. */
const uint64_t *sp__loop_now_ptr(const sp_loop_t *loop) {
  return loop->virtual_time ? &loop->vnow : &loop->uv.time;
}

void sp__loop_update_time(sp_loop_t *loop) {
  if (!loop->virtual_time)
    uv_update_time(&loop->uv);
}

static void idle_cb(uv_idle_t *idle) {
  (void) idle;
}

/* One uv_run. libuv polls only a loop it thinks alive, and the signal
 * watchers are not counted (they must not keep a loop alive): a step that
 * does not wait (a timer is due) must still pick up the signals and I/O
 * that are ready, so an idle handle keeps the loop alive for the one
 * iteration. */
static void poll_io(sp_loop_t *loop, uv_run_mode mode) {
  if (mode == UV_RUN_NOWAIT) {
    uv_idle_start(&loop->poll_idle, idle_cb);
    uv_run(&loop->uv, mode);
    uv_idle_stop(&loop->poll_idle);
    return;
  }
  uv_run(&loop->uv, mode);
}

static void step_real(sp_loop_t *loop, uv_run_mode mode) {
  const sp__heap_node_t *top = sp__heap_peek(&loop->heap);
  uint64_t now = uv_now(&loop->uv);

  if (top == NULL)
    disarm(loop);
  else if (top->deadline <= now)
    mode = UV_RUN_NOWAIT;
  else
    arm(loop, top->deadline, top->deadline - now);
  poll_io(loop, mode);
  fire_due(loop, uv_now(&loop->uv));
}

static void step_virtual(sp_loop_t *loop, uv_run_mode mode) {
  const sp__heap_node_t *top = sp__heap_peek(&loop->heap);
  int io = loop->inflight > 0;
  uint64_t emitted = loop->emitted;

  if (top == NULL) {
    disarm(loop);
  } else if (top->deadline <= loop->vnow || !io) {
    /* Due now, or about to be by a jump: only pick up what is ready. */
    disarm(loop);
    mode = UV_RUN_NOWAIT;
  } else {
    arm(loop, top->deadline, top->deadline - loop->vnow);
  }
  if (io) {
    uv_update_time(&loop->uv);
    /* I/O still in flight since the last step: the clock kept running at
     * the real speed meanwhile, while the caller ran its tasks, so the
     * anchor stays where it was and that time is not lost. */
    if (!loop->io_anchored) {
      loop->io_real0 = uv_now(&loop->uv);
      loop->io_v0 = loop->vnow;
      loop->io_anchored = 1;
    }
    loop->io_clock = 1;
  } else {
    loop->io_anchored = 0;
  }
  poll_io(loop, mode);
  if (io) {
    uv_update_time(&loop->uv);
    follow_real_time(loop);
    loop->io_clock = 0;
  }
  if (loop->inflight == 0)
    loop->io_anchored = 0;
  top = sp__heap_peek(&loop->heap);
  /* No jump after a poll that reported something: the task it woke must
   * run at the time it happened, before the clock moves on. */
  if (top != NULL && loop->inflight == 0 && loop->emitted == emitted &&
      top->deadline > loop->vnow)
    loop->vnow = top->deadline;
  fire_due(loop, loop->vnow);
}

int sp__loop_step(sp_loop_t *loop, int nowait) {
  uv_run_mode mode = nowait ? UV_RUN_NOWAIT : UV_RUN_ONCE;

  assert(!loop->stepping && !loop->freeing);
  loop->stepping = 1;
  if (loop->virtual_time)
    step_virtual(loop, mode);
  else
    step_real(loop, mode);
  loop->stepping = 0;
  return loop->heap.count > 0 || uv_loop_alive(&loop->uv);
}

int sp__loop_idle(sp_loop_t *loop) {
  return loop->handles.next == &loop->handles && loop->handle_count == 0
         && loop->inflight == 0 && loop->heap.count == 0
         && loop->watch_fd < 0 && !uv_loop_alive(&loop->uv);
}

unsigned sp__loop_timer_count(const sp_loop_t *loop) {
  return loop->heap.count;
}

/* ---- timers -------------------------------------------------------------- */

int sp__timer_add(sp_loop_t *loop, uint64_t deadline_ms, uint64_t token,
                  uint64_t *id) {
  /* The uv_timer is armed before the next poll, so nothing else to do. */
  return sp__heap_add(&loop->heap, deadline_ms, token, id);
}

uint64_t sp__timer_reserve(sp_loop_t *loop) {
  return sp__heap_reserve(&loop->heap);
}

int sp__timer_add_seq(sp_loop_t *loop, uint64_t deadline_ms, uint64_t token,
                      uint64_t seq, uint64_t *id) {
  if (seq >= loop->heap.next_seq)
    return UV_EINVAL;
  return sp__heap_add_seq(&loop->heap, deadline_ms, token, seq, id);
}

int sp__timer_cancel(sp_loop_t *loop, uint64_t id) {
  int err = sp__heap_cancel(&loop->heap, id);

  /* An armed uv_timer would keep the loop alive for nothing. */
  if (err == 0 && loop->heap.count == 0)
    disarm(loop);
  return err;
}

/* ---- I/O run for others (DNS, HTTP) --------------------------------------- */

struct uv_loop_s *sp__loop_uv(sp_loop_t *loop) {
  return &loop->uv;
}

/* Such I/O may report from a uv timer's callback, which libuv runs before
 * it polls: uv_stop keeps that poll from waiting (it returns at once and
 * uv_run with it), so that the task the event woke runs now, not at the
 * next unrelated I/O. */
void sp__loop_report(sp_loop_t *loop, uint64_t token, int type, int64_t a,
                     int64_t b, const char *data, size_t len, void *handle) {
  if (loop->cb == NULL)
    return;
  sp__emit(loop, token, type, a, b, data, len, handle);
  uv_stop(&loop->uv);
}

void sp__loop_io(sp_loop_t *loop, int delta) {
  loop->inflight += delta;
}
