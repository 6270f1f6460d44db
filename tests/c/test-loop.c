/* Tests of runtime/loop: timers in real and virtual time, child processes,
 * TCP over loopback, signals, and the accounting that must come back to
 * zero. Every test ends with sp__loop_free, so valgrind and ASan see any
 * handle or request that would leak.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "task.h"
#include "../../runtime/loop/loop.h"

#define MAX_EVENTS 512

typedef struct rec_s rec_t;

typedef struct {
  int type;
  uint64_t token;
  int64_t a;
  int64_t b;
  size_t len;
  void *handle;
  uint64_t now;
  int step;
} rec_ev_t;

/* Records every event of a loop; a test's hook may act on them too. */
struct rec_s {
  sp_loop_t *loop;
  rec_ev_t ev[MAX_EVENTS];
  int n;
  int step;
  char out[4096]; /* SP_EV_PROC_STDOUT and SP_EV_TCP_DATA */
  size_t out_len;
  char err[4096]; /* SP_EV_PROC_STDERR */
  size_t err_len;
  void (*hook)(rec_t *r, uint64_t token, const sp_event_t *ev);
  int failed;
  /* For the hooks. */
  sp_tcp_t *listener;
  sp_tcp_t *client;
  sp_tcp_t *conn;
  uint64_t count;
  uint64_t last_deadline;
  uint64_t last_token;
  int stop;
};

static void append(char *buf, size_t *len, const char *data, size_t n) {
  if (n == 0)
    return;
  if (*len + n >= 4096)
    n = 4095 - *len;
  memcpy(buf + *len, data, n);
  *len += n;
  buf[*len] = '\0';
}

static void rec_cb(void *ctx, uint64_t token, const sp_event_t *ev) {
  rec_t *r = ctx;

  if (r->n < MAX_EVENTS) {
    rec_ev_t *e = &r->ev[r->n];
    e->type = ev->type;
    e->token = token;
    e->a = ev->a;
    e->b = ev->b;
    e->len = ev->len;
    e->handle = ev->handle;
    e->now = sp__loop_now(r->loop);
    e->step = r->step;
  }
  r->n++;
  if (ev->type == SP_EV_PROC_STDOUT || ev->type == SP_EV_TCP_DATA)
    append(r->out, &r->out_len, ev->data, ev->len);
  else if (ev->type == SP_EV_PROC_STDERR)
    append(r->err, &r->err_len, ev->data, ev->len);
  if (r->hook != NULL)
    r->hook(r, token, ev);
}

static rec_t *rec_new(int virtual_time) {
  rec_t *r = calloc(1, sizeof(*r));

  if (r == NULL)
    return NULL;
  if (sp__loop_new(&r->loop, virtual_time, rec_cb, r) != 0) {
    free(r);
    return NULL;
  }
  return r;
}

static void rec_free(rec_t *r) {
  sp__loop_free(r->loop);
  free(r);
}

static uint64_t wall_ms(void) {
  return uv_hrtime() / 1000000;
}

/* Steps until nothing is pending; fails after `limit_ms` of wall time. */
static int run_all(rec_t *r, uint64_t limit_ms) {
  uint64_t start = wall_ms();

  for (;;) {
    r->step++;
    if (!sp__loop_step(r->loop, 0))
      return 0;
    if (wall_ms() - start > limit_ms) {
      printf("# the loop is still busy after %u ms\n", (unsigned) limit_ms);
      return 1;
    }
  }
}

/* Steps until an event of `type` (and `token`) was recorded. */
static int run_until(rec_t *r, int type, uint64_t token, uint64_t limit_ms) {
  uint64_t start = wall_ms();
  int i = 0;

  for (;;) {
    for (; i < r->n && i < MAX_EVENTS; i++)
      if (r->ev[i].type == type && r->ev[i].token == token)
        return 0;
    if (wall_ms() - start > limit_ms) {
      printf("# no event %d for token %u after %u ms\n", type,
             (unsigned) token, (unsigned) limit_ms);
      return 1;
    }
    r->step++;
    (void) sp__loop_step(r->loop, 0);
  }
}

/* The index of the first event of `type` and `token`, or -1. */
static int find(const rec_t *r, int type, uint64_t token) {
  int i;

  for (i = 0; i < r->n && i < MAX_EVENTS; i++)
    if (r->ev[i].type == type && r->ev[i].token == token)
      return i;
  return -1;
}

static int count(const rec_t *r, int type) {
  int i, c = 0;

  for (i = 0; i < r->n && i < MAX_EVENTS; i++)
    if (r->ev[i].type == type)
      c++;
  return c;
}

/* A process that is gone: no such pid, or a zombie waiting for a reaper
 * that is not ours (a grandchild handed to init). */
static int process_gone(int pid) {
  char path[64];
  char buf[256];
  FILE *f;
  char *p;

  if (kill(pid, 0) == -1 && errno == ESRCH)
    return 1;
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  f = fopen(path, "r");
  if (f == NULL)
    return 1;
  p = fgets(buf, sizeof(buf), f);
  fclose(f);
  if (p == NULL)
    return 1;
  p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' && p[2] == 'Z';
}

static int wait_gone(int pid, uint64_t limit_ms) {
  uint64_t start = wall_ms();

  while (!process_gone(pid)) {
    if (wall_ms() - start > limit_ms) {
      printf("# process %d still runs after %u ms\n", pid,
             (unsigned) limit_ms);
      return 1;
    }
    usleep(10000);
  }
  return 0;
}

static int spawn_sh(rec_t *r, const char *script, uint64_t token,
                    sp_proc_t **proc, int *pid) {
  char *args[] = { "sh", "-c", (char *) script, NULL };
  sp_proc_options_t opts;

  memset(&opts, 0, sizeof(opts));
  opts.file = "sh";
  opts.args = args;
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, token, proc, pid), 0);
  ASSERT_GT(*pid, 0);
  return 0;
}

/* ---- timers -------------------------------------------------------------- */

TEST_IMPL(loop_virtual_hour_timer) {
  rec_t *r = rec_new(1);
  uint64_t t0, start, id;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  ASSERT_UINT64_GE(t0, 1);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 3600000, 7, &id), 0);
  ASSERT_EQ(sp__loop_timer_count(r->loop), 1);
  start = wall_ms();
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_LT(wall_ms() - start, 10000);
  ASSERT_EQ(r->n, 1);
  ASSERT_EQ(r->ev[0].type, SP_EV_TIMER);
  ASSERT_UINT64_EQ(r->ev[0].token, 7);
  ASSERT_UINT64_EQ(r->ev[0].now, t0 + 3600000);
  ASSERT_UINT64_EQ(sp__loop_now(r->loop), t0 + 3600000);
  ASSERT_EQ(sp__loop_timer_count(r->loop), 0);
  ASSERT_EQ(sp__timer_cancel(r->loop, id), UV_ENOENT);
  rec_free(r);
  return 0;
}

/* Virtual time runs the same schedule 100 times longer: it must still
 * take far less than its 3 s of timers. */
static int timer_order(int virtual_time) {
  static const uint64_t base[] = { 30, 10, 20, 10, 0, 30 };
  static const uint64_t expected[] = { 5, 2, 4, 3, 1, 6 };
  uint64_t delays[6];
  rec_t *r = rec_new(virtual_time);
  uint64_t t0, start, id;
  int i;

  ASSERT_NOT_NULL(r);
  for (i = 0; i < 6; i++)
    delays[i] = base[i] * (virtual_time ? 100 : 1);
  sp__loop_update_time(r->loop);
  t0 = sp__loop_now(r->loop);
  start = wall_ms();
  for (i = 0; i < 6; i++)
    ASSERT_EQ(sp__timer_add(r->loop, t0 + delays[i], i + 1, &id), 0);
  ASSERT_PASS(run_all(r, 2000));
  ASSERT_EQ(r->n, 6);
  for (i = 0; i < 6; i++) {
    ASSERT_EQ(r->ev[i].type, SP_EV_TIMER);
    ASSERT_UINT64_EQ(r->ev[i].token, expected[i]);
    /* Never early; in virtual time, exactly on the deadline. */
    ASSERT_UINT64_GE(r->ev[i].now, t0 + delays[expected[i] - 1]);
    ASSERT_EQ(r->ev[i].a, t0 + delays[expected[i] - 1]);
    if (virtual_time)
      ASSERT_UINT64_EQ(r->ev[i].now, t0 + delays[expected[i] - 1]);
  }
  if (virtual_time)
    ASSERT_LT(wall_ms() - start, 2000);
  else
    ASSERT_UINT64_GE(wall_ms() - start, 29);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_timer_order_real) {
  return timer_order(0);
}

TEST_IMPL(loop_timer_order_virtual) {
  return timer_order(1);
}

TEST_IMPL(loop_timer_cancel) {
  rec_t *r = rec_new(0);
  uint64_t t0, a, b, c;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 5, 1, &a), 0);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 5, 2, &b), 0);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 5, 3, &c), 0);
  ASSERT_EQ(sp__timer_cancel(r->loop, b), 0);
  ASSERT_EQ(sp__timer_cancel(r->loop, b), UV_ENOENT);
  ASSERT_EQ(sp__loop_timer_count(r->loop), 2);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(r->n, 2);
  ASSERT_UINT64_EQ(r->ev[0].token, 1);
  ASSERT_UINT64_EQ(r->ev[1].token, 3);
  /* A loop whose only timer was cancelled has nothing left to do, even
   * with a long deadline armed before. */
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 100000, 4, &a), 0);
  ASSERT_EQ(sp__loop_step(r->loop, 1), 1);
  ASSERT_EQ(sp__timer_cancel(r->loop, a), 0);
  ASSERT_EQ(sp__loop_step(r->loop, 1), 0);
  ASSERT_EQ(r->n, 2);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_step_nowait_never_blocks) {
  rec_t *r = rec_new(0);
  uint64_t start, id;
  int i;

  ASSERT_NOT_NULL(r);
  ASSERT_EQ(sp__timer_add(r->loop, sp__loop_now(r->loop) + 10000, 1, &id),
            0);
  start = wall_ms();
  for (i = 0; i < 10; i++)
    ASSERT_EQ(sp__loop_step(r->loop, 1), 1);
  ASSERT_LT(wall_ms() - start, 5000);
  ASSERT_EQ(r->n, 0);
  /* Nothing pending at all: step returns 0 at once. */
  ASSERT_EQ(sp__timer_cancel(r->loop, id), 0);
  ASSERT_EQ(sp__loop_step(r->loop, 0), 0);
  rec_free(r);
  return 0;
}

/* A timer armed by a timer's callback fires in a later step, even when it
 * is already due. */
static void rearm_hook(rec_t *r, uint64_t token, const sp_event_t *ev) {
  uint64_t id;

  if (ev->type == SP_EV_TIMER && token == 1)
    if (sp__timer_add(r->loop, sp__loop_now(r->loop), 2, &id) != 0)
      r->failed = 1;
}

static int timer_added_in_callback(int virtual_time) {
  rec_t *r = rec_new(virtual_time);
  uint64_t id;
  int one, two;

  ASSERT_NOT_NULL(r);
  r->hook = rearm_hook;
  ASSERT_EQ(sp__timer_add(r->loop, sp__loop_now(r->loop) + 2, 1, &id), 0);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(r->failed, 0);
  one = find(r, SP_EV_TIMER, 1);
  two = find(r, SP_EV_TIMER, 2);
  ASSERT_GE(one, 0);
  ASSERT_GE(two, 0);
  ASSERT_EQ(r->ev[two].step, r->ev[one].step + 1);
  if (virtual_time)
    ASSERT_UINT64_EQ(r->ev[two].now, r->ev[one].now);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_timer_added_in_callback_real) {
  return timer_added_in_callback(0);
}

TEST_IMPL(loop_timer_added_in_callback_virtual) {
  return timer_added_in_callback(1);
}

/* A callback that re-arms a zero-delay timer forever cannot starve I/O. */
static void spin_hook(rec_t *r, uint64_t token, const sp_event_t *ev) {
  uint64_t id;

  if (ev->type == SP_EV_PROC_EXIT)
    r->stop = 1;
  if (ev->type == SP_EV_TIMER && !r->stop) {
    if (++r->count > 10000000)
      r->stop = 1;
    if (sp__timer_add(r->loop, sp__loop_now(r->loop), 1, &id) != 0)
      r->failed = 1;
  }
}

TEST_IMPL(loop_zero_delay_timers_do_not_starve_io) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  uint64_t id, start;
  int pid;

  ASSERT_NOT_NULL(r);
  r->hook = spin_hook;
  ASSERT_EQ(sp__timer_add(r->loop, sp__loop_now(r->loop), 1, &id), 0);
  /* The spinning has begun before the child starts. */
  while (r->count < 5)
    ASSERT_EQ(sp__loop_step(r->loop, 0), 1);
  ASSERT_PASS(spawn_sh(r, "echo hi", 2, &proc, &pid));
  start = wall_ms();
  while (!r->stop) {
    ASSERT(sp__loop_step(r->loop, 0) || r->stop);
    ASSERT_LT(wall_ms() - start, 5000);
  }
  ASSERT_LT(r->count, 10000000);
  ASSERT_GE(r->count, 5);
  ASSERT_STR_EQ(r->out, "hi\n");
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 2000));
  ASSERT_EQ(r->failed, 0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

static void order_hook(rec_t *r, uint64_t token, const sp_event_t *ev) {
  if (ev->type != SP_EV_TIMER)
    return;
  if ((uint64_t) ev->a < r->last_deadline ||
      ((uint64_t) ev->a == r->last_deadline && r->count > 0 &&
       token <= r->last_token))
    r->failed = 1;
  r->last_deadline = (uint64_t) ev->a;
  r->last_token = token;
  r->count++;
}

/* A million timers through the loop, in virtual time, all in order. */
TEST_IMPL(loop_million_timers_virtual) {
  enum { N = 1000000 };
  rec_t *r = rec_new(1);
  uint64_t t0, id, x = 12345;
  uint32_t i;

  ASSERT_NOT_NULL(r);
  r->hook = order_hook;
  t0 = sp__loop_now(r->loop);
  for (i = 0; i < N; i++) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    ASSERT_EQ(sp__timer_add(r->loop, t0 + (x >> 33) % 1000, i, &id), 0);
  }
  ASSERT_EQ(sp__loop_timer_count(r->loop), N);
  ASSERT_PASS(run_all(r, 60000));
  ASSERT_EQ(r->failed, 0);
  ASSERT_UINT64_EQ(r->count, N);
  ASSERT_EQ(sp__loop_timer_count(r->loop), 0);
  rec_free(r);
  return 0;
}

/* ---- processes ----------------------------------------------------------- */

TEST_IMPL(loop_process_output_and_code) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  int pid, out_eof, err_eof, ex, closed;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "echo out; echo err >&2; exit 3", 1, &proc, &pid));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 1);
  ASSERT_PASS(run_all(r, 5000));
  ASSERT_STR_EQ(r->out, "out\n");
  ASSERT_STR_EQ(r->err, "err\n");
  ex = find(r, SP_EV_PROC_EXIT, 1);
  ASSERT_EQ(ex, r->n - 1);
  ASSERT_EQ(r->ev[ex].a, 3);
  ASSERT_EQ(r->ev[ex].b, 0);
  ASSERT_PTR_BASE(r->ev[ex].handle, ==, proc);
  /* Both ends of file come before the exit, each exactly once. */
  out_eof = err_eof = 0;
  for (int i = 0; i < ex; i++) {
    if (r->ev[i].len == 0 && r->ev[i].type == SP_EV_PROC_STDOUT)
      out_eof++;
    if (r->ev[i].len == 0 && r->ev[i].type == SP_EV_PROC_STDERR)
      err_eof++;
  }
  ASSERT_EQ(out_eof, 1);
  ASSERT_EQ(err_eof, 1);
  /* Exited but not closed: still counted. */
  ASSERT_EQ(sp__loop_handle_count(r->loop), 1);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  closed = find(r, SP_EV_CLOSED, 1);
  ASSERT_EQ(closed, r->n - 1);
  ASSERT_PTR_BASE(r->ev[closed].handle, ==, proc);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_process_signal) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  int pid, ex;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "kill -SEGV $$", 1, &proc, &pid));
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ex = find(r, SP_EV_PROC_EXIT, 1);
  ASSERT_EQ(r->ev[ex].b, SIGSEGV);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_process_close_kills) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  int pid;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "exec sleep 30", 1, &proc, &pid));
  ASSERT_EQ(sp__loop_step(r->loop, 1), 1);
  ASSERT_EQ(kill(pid, 0), 0);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 5000));
  ASSERT_EQ(find(r, SP_EV_PROC_EXIT, 1), -1);
  ASSERT_EQ(find(r, SP_EV_CLOSED, 1), r->n - 1);
  ASSERT_EQ(kill(pid, 0), -1);
  ASSERT_EQ(errno, ESRCH);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

/* A signal reaches the whole group: the shell and its sleep. */
TEST_IMPL(loop_process_kill_group) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  int pid, ex, grandchild;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "sleep 30 & echo $!; wait", 1, &proc, &pid));
  while (strchr(r->out, '\n') == NULL) {
    ASSERT_EQ(sp__loop_step(r->loop, 0), 1);
  }
  grandchild = atoi(r->out);
  ASSERT_GT(grandchild, 0);
  ASSERT_EQ(sp__proc_kill(proc, SIGTERM), 0);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ex = find(r, SP_EV_PROC_EXIT, 1);
  ASSERT_EQ(r->ev[ex].b, SIGTERM);
  ASSERT_PASS(wait_gone(grandchild, 2000));
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

/* A grandchild that keeps the output pipes open does not hold the exit
 * back for long; closing the process kills the grandchild. */
TEST_IMPL(loop_process_grandchild_keeps_pipe) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  uint64_t start;
  int pid, ex, grandchild;

  ASSERT_NOT_NULL(r);
  start = wall_ms();
  ASSERT_PASS(spawn_sh(r, "sleep 30 & echo $!", 1, &proc, &pid));
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ASSERT_LT(wall_ms() - start, 2000);
  ex = find(r, SP_EV_PROC_EXIT, 1);
  ASSERT_EQ(r->ev[ex].a, 0);
  ASSERT_EQ(r->ev[ex - 1].type, SP_EV_PROC_STDERR);
  ASSERT_EQ(r->ev[ex - 1].len, 0);
  grandchild = atoi(r->out);
  ASSERT_GT(grandchild, 0);
  ASSERT_EQ(kill(grandchild, 0), 0);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_PASS(wait_gone(grandchild, 2000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

/* Output written within the grace period that follows the child's exit is
 * delivered even when the loop comes back late (a busy task, a loaded
 * machine): the grace timer must not close a pipe that still holds data.
 * Here the child exits at once, what it started writes 50 ms later and
 * keeps the pipe open, and the loop is not stepped until long after the
 * grace period: the timer and the data are then due in the same step. */
TEST_IMPL(loop_process_output_kept_when_loop_is_late) {
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  uint64_t start;
  int pid, ex, out;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "(sleep 0.05; echo late; exec sleep 30) & exit 0",
                       1, &proc, &pid));
  /* Step until libuv has reaped the child: from then on its exit waits
   * for the end of file, for the grace period at most. */
  start = wall_ms();
  while (!(kill(pid, 0) == -1 && errno == ESRCH)) {
    ASSERT_LT(wall_ms() - start, 5000);
    r->step++;
    (void) sp__loop_step(r->loop, 1);
    usleep(1000);
  }
  ASSERT_EQ(find(r, SP_EV_PROC_EXIT, 1), -1);
  usleep(400 * 1000);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ASSERT_STR_EQ(r->out, "late\n");
  ex = find(r, SP_EV_PROC_EXIT, 1);
  out = find(r, SP_EV_PROC_STDOUT, 1);
  ASSERT_GE(out, 0);
  ASSERT_LT(out, ex);
  ASSERT_EQ(r->ev[ex].a, 0);
  sp__proc_close(proc); /* kills the group: the sleep that holds the pipe */
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_process_stdin) {
  char *args[] = { "cat", NULL };
  sp_proc_options_t opts;
  rec_t *r = rec_new(0);
  sp_proc_t *proc, *other;
  int pid, w;

  ASSERT_NOT_NULL(r);
  memset(&opts, 0, sizeof(opts));
  opts.file = "cat";
  opts.args = args;
  opts.stdin_pipe = 1;
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, 1, &proc, &pid), 0);
  ASSERT_EQ(sp__proc_write(proc, "hello ", 6, 10), 0);
  ASSERT_EQ(sp__proc_write(proc, "world\n", 6, 11), 0);
  ASSERT_EQ(sp__proc_close_stdin(proc), 0);
  ASSERT_EQ(sp__proc_close_stdin(proc), 0);
  ASSERT_EQ(sp__proc_write(proc, "late", 4, 12), UV_EPIPE);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ASSERT_STR_EQ(r->out, "hello world\n");
  w = find(r, SP_EV_WRITE, 10);
  ASSERT_GE(w, 0);
  ASSERT_EQ(r->ev[w].a, 0);
  ASSERT_PTR_BASE(r->ev[w].handle, ==, proc);
  ASSERT_GE(find(r, SP_EV_WRITE, 11), 0);
  ASSERT_EQ(find(r, SP_EV_WRITE, 12), -1);
  ASSERT_EQ(r->ev[find(r, SP_EV_PROC_EXIT, 1)].a, 0);
  sp__proc_close(proc);

  /* Without a stdin pipe the child reads /dev/null. */
  opts.stdin_pipe = 0;
  r->out_len = 0;
  r->out[0] = '\0';
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, 2, &other, &pid), 0);
  ASSERT_EQ(sp__proc_write(other, "x", 1, 13), UV_EINVAL);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 2, 5000));
  ASSERT_STR_EQ(r->out, "");
  sp__proc_close(other);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_process_env_and_cwd) {
  char *args[] = { "sh", "-c", "echo \"$SPRUN_X\"; pwd", NULL };
  char *env[] = { "SPRUN_X=forty-two", "PATH=/usr/bin:/bin", NULL };
  sp_proc_options_t opts;
  rec_t *r = rec_new(0);
  sp_proc_t *proc;
  int pid;

  ASSERT_NOT_NULL(r);
  memset(&opts, 0, sizeof(opts));
  opts.file = "sh";
  opts.args = args;
  opts.env = env;
  opts.cwd = "/";
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, 1, &proc, &pid), 0);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ASSERT_STR_EQ(r->out, "forty-two\n/\n");
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_spawn_not_found) {
  char *args[] = { "sprun-no-such-program", NULL };
  sp_proc_options_t opts;
  rec_t *r = rec_new(0);
  sp_proc_t *proc = NULL;
  int pid = 0;

  ASSERT_NOT_NULL(r);
  memset(&opts, 0, sizeof(opts));
  opts.file = args[0];
  opts.args = args;
  opts.stdin_pipe = 1;
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, 1, &proc, &pid), UV_ENOENT);
  ASSERT_NULL(proc);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(r->n, 0);
  rec_free(r);
  return 0;
}

/* ---- virtual time and I/O ------------------------------------------------ */

/* Virtual time does not jump while a task awaits a child (sp__proc_await):
 * the exit comes first. */
TEST_IMPL(loop_virtual_time_waits_for_io) {
  rec_t *r = rec_new(1);
  sp_proc_t *proc;
  uint64_t t0, id;
  int pid, ex, tm;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 10000, 9, &id), 0);
  ASSERT_PASS(spawn_sh(r, "sleep 0.2; echo done", 1, &proc, &pid));
  sp__proc_await(proc, 1);
  ASSERT_PASS(run_until(r, SP_EV_TIMER, 9, 5000));
  ex = find(r, SP_EV_PROC_EXIT, 1);
  tm = find(r, SP_EV_TIMER, 9);
  ASSERT_GE(ex, 0);
  ASSERT_LT(ex, tm);
  /* Meanwhile the clock moved by about the real time the child took, also
   * as seen from the events that came during the wait. */
  ASSERT_UINT64_GE(r->ev[0].now, t0 + 150);
  ASSERT_EQ(r->ev[0].type, SP_EV_PROC_STDOUT);
  ASSERT_UINT64_GE(r->ev[ex].now, t0 + 150);
  ASSERT_UINT64_LE(r->ev[ex].now, t0 + 5000);
  ASSERT_UINT64_EQ(r->ev[tm].now, t0 + 10000);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  rec_free(r);
  return 0;
}

/* ... but a timer that falls due while I/O is in flight still fires: the
 * clock runs at the real speed meanwhile. */
TEST_IMPL(loop_virtual_timer_fires_during_io) {
  rec_t *r = rec_new(1);
  sp_proc_t *proc;
  uint64_t t0, start, id;
  int pid, tm;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  start = wall_ms();
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 50, 9, &id), 0);
  ASSERT_PASS(spawn_sh(r, "exec sleep 30", 1, &proc, &pid));
  sp__proc_await(proc, 1);
  ASSERT_PASS(run_until(r, SP_EV_TIMER, 9, 5000));
  ASSERT_LT(wall_ms() - start, 2000);
  tm = find(r, SP_EV_TIMER, 9);
  ASSERT_UINT64_GE(r->ev[tm].now, t0 + 50);
  ASSERT_EQ(find(r, SP_EV_PROC_EXIT, 1), -1);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 2000));
  ASSERT_EQ(kill(pid, 0), -1);
  rec_free(r);
  return 0;
}

/* ... and it keeps that speed across the time the caller spends between
 * steps (tasks running, a slow machine) while I/O is still in flight: that
 * time is not lost, so the clock never falls behind the child it waits
 * for. Here the caller is busy for 200 ms of the child's 300. */
TEST_IMPL(loop_virtual_time_counts_time_between_steps) {
  rec_t *r = rec_new(1);
  sp_proc_t *proc;
  uint64_t t0, start;
  int pid, ex;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  start = wall_ms();
  ASSERT_PASS(spawn_sh(r, "sleep 0.3", 1, &proc, &pid));
  sp__proc_await(proc, 1);
  r->step++;
  (void) sp__loop_step(r->loop, 1);
  usleep(200 * 1000);
  ASSERT_PASS(run_until(r, SP_EV_PROC_EXIT, 1, 5000));
  ex = find(r, SP_EV_PROC_EXIT, 1);
  ASSERT_UINT64_GE(r->ev[ex].now, t0 + 250);
  ASSERT_UINT64_LE(r->ev[ex].now, t0 + (wall_ms() - start) + 20);
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

/* A child nobody awaits does not hold virtual time: an idle worker lives
 * while an hour passes at once. Awaited again, it holds it again. */
TEST_IMPL(loop_virtual_time_jumps_past_idle_child) {
  rec_t *r = rec_new(1);
  sp_proc_t *proc;
  uint64_t t0, start, id;
  int pid, tm;

  ASSERT_NOT_NULL(r);
  t0 = sp__loop_now(r->loop);
  start = wall_ms();
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 3600000, 9, &id), 0);
  ASSERT_PASS(spawn_sh(r, "exec sleep 30", 1, &proc, &pid));
  ASSERT_PASS(run_until(r, SP_EV_TIMER, 9, 5000));
  ASSERT_LT(wall_ms() - start, 2000);
  tm = find(r, SP_EV_TIMER, 9);
  ASSERT_UINT64_EQ(r->ev[tm].now, t0 + 3600000);
  ASSERT_EQ(find(r, SP_EV_PROC_EXIT, 1), -1);
  ASSERT_EQ(kill(pid, 0), 0);
  /* Awaited: the next hour waits for it. */
  sp__proc_await(proc, 1);
  ASSERT_EQ(sp__timer_add(r->loop, t0 + 7200000, 10, &id), 0);
  r->step++;
  (void) sp__loop_step(r->loop, 1);
  ASSERT_UINT64_LE(sp__loop_now(r->loop), t0 + 3600000 + 1000);
  sp__proc_await(proc, 0);
  ASSERT_PASS(run_until(r, SP_EV_TIMER, 10, 5000));
  sp__proc_close(proc);
  ASSERT_PASS(run_all(r, 2000));
  ASSERT_EQ(kill(pid, 0), -1);
  rec_free(r);
  return 0;
}

/* ---- TCP ----------------------------------------------------------------- */

enum {
  T_LISTEN = 1,
  T_CLIENT,
  T_CLIENT_WRITE,
  T_CONN,
  T_CONN_WRITE
};

static void echo_hook(rec_t *r, uint64_t token, const sp_event_t *ev) {
  switch (ev->type) {
  case SP_EV_TCP_ACCEPT:
    if (token != T_LISTEN || ev->a != 0 || ev->handle == NULL) {
      r->failed = 1;
      break;
    }
    r->conn = ev->handle;
    sp__tcp_set_token(r->conn, T_CONN);
    if (sp__tcp_read_start(r->conn) != 0)
      r->failed = 1;
    break;
  case SP_EV_TCP_CONNECT:
    if (ev->a != 0 || sp__tcp_read_start(r->client) != 0 ||
        sp__tcp_write(r->client, "ping", 4, T_CLIENT_WRITE) != 0)
      r->failed = 1;
    break;
  case SP_EV_TCP_DATA:
    if (token == T_CONN) {
      if (ev->len > 0) {
        if (sp__tcp_write(r->conn, ev->data, ev->len, T_CONN_WRITE) != 0)
          r->failed = 1;
      } else {
        sp__tcp_close(r->conn);
      }
    } else if (token == T_CLIENT && ev->len > 0) {
      r->count += ev->len;
      if (r->count == 4) {
        sp__tcp_close(r->client);
        sp__tcp_close(r->listener);
      }
    }
    break;
  }
}

static int tcp_echo(const char *host) {
  rec_t *r = rec_new(0);
  int port = -1;

  ASSERT_NOT_NULL(r);
  r->hook = echo_hook;
  ASSERT_EQ(sp__tcp_listen(r->loop, host, 0, 16, T_LISTEN, &r->listener,
                           &port), 0);
  ASSERT_GT(port, 0);
  ASSERT_EQ(sp__tcp_connect(r->loop, host, port, T_CLIENT, &r->client), 0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 2);
  ASSERT_PASS(run_all(r, 5000));
  ASSERT_EQ(r->failed, 0);
  ASSERT_STR_EQ(r->out, "pingping");
  ASSERT_EQ(r->ev[find(r, SP_EV_WRITE, T_CLIENT_WRITE)].a, 0);
  ASSERT_EQ(r->ev[find(r, SP_EV_WRITE, T_CONN_WRITE)].a, 0);
  ASSERT_EQ(count(r, SP_EV_TCP_ACCEPT), 1);
  ASSERT_EQ(count(r, SP_EV_CLOSED), 3);
  ASSERT_GE(find(r, SP_EV_CLOSED, T_CONN), 0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

TEST_IMPL(loop_tcp_echo_ipv4) {
  return tcp_echo("127.0.0.1");
}

TEST_IMPL(loop_tcp_echo_localhost) {
  return tcp_echo("localhost");
}

TEST_IMPL(loop_tcp_connection_refused) {
  rec_t *r = rec_new(0);
  sp_tcp_t *tcp;
  int port = -1, c;

  ASSERT_NOT_NULL(r);
  /* A port that was free a moment ago. */
  ASSERT_EQ(sp__tcp_listen(r->loop, "127.0.0.1", 0, 1, 1, &tcp, &port), 0);
  sp__tcp_close(tcp);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__tcp_connect(r->loop, "127.0.0.1", port, 2, &tcp), 0);
  ASSERT_PASS(run_until(r, SP_EV_TCP_CONNECT, 2, 5000));
  c = find(r, SP_EV_TCP_CONNECT, 2);
  ASSERT_EQ(r->ev[c].a, UV_ECONNREFUSED);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 1);
  sp__tcp_close(tcp);
  ASSERT_PASS(run_all(r, 1000));
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  ASSERT_EQ(sp__tcp_connect(r->loop, "not-an-address", 80, 3, &tcp),
            UV_EINVAL);
  ASSERT_EQ(sp__tcp_connect(r->loop, "127.0.0.1", 0, 3, &tcp), UV_EINVAL);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  rec_free(r);
  return 0;
}

static void accept_only_hook(rec_t *r, uint64_t token, const sp_event_t *ev) {
  if (ev->type == SP_EV_TCP_ACCEPT)
    r->conn = ev->handle;
}

/* Closing a socket answers its pending writes with UV_ECANCELED, before
 * SP_EV_CLOSED. */
TEST_IMPL(loop_tcp_close_cancels_writes) {
  enum { CHUNK = 1 << 20, WRITES = 64 };
  rec_t *r = rec_new(0);
  char *chunk;
  int port, i, closed, cancelled = 0, writes = 0;

  ASSERT_NOT_NULL(r);
  chunk = calloc(1, CHUNK);
  ASSERT_NOT_NULL(chunk);
  r->hook = accept_only_hook;
  ASSERT_EQ(sp__tcp_listen(r->loop, "127.0.0.1", 0, 4, T_LISTEN,
                           &r->listener, &port), 0);
  ASSERT_EQ(sp__tcp_connect(r->loop, "127.0.0.1", port, T_CLIENT,
                            &r->client), 0);
  ASSERT_PASS(run_until(r, SP_EV_TCP_CONNECT, T_CLIENT, 5000));
  for (i = 0; i < WRITES; i++)
    ASSERT_EQ(sp__tcp_write(r->client, chunk, CHUNK, 100 + i), 0);
  /* Nobody reads: most of it cannot leave. */
  for (i = 0; i < 5; i++)
    (void) sp__loop_step(r->loop, 1);
  sp__tcp_close(r->client);
  if (r->conn != NULL)
    sp__tcp_close(r->conn);
  sp__tcp_close(r->listener);
  ASSERT_PASS(run_all(r, 5000));
  closed = find(r, SP_EV_CLOSED, T_CLIENT);
  ASSERT_GE(closed, 0);
  for (i = 0; i < r->n; i++) {
    if (r->ev[i].type != SP_EV_WRITE)
      continue;
    writes++;
    ASSERT_LT(i, closed);
    if (r->ev[i].a == UV_ECANCELED)
      cancelled++;
    else
      ASSERT_EQ(r->ev[i].a, 0);
  }
  ASSERT_EQ(writes, WRITES);
  ASSERT_GT(cancelled, 0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 0);
  free(chunk);
  rec_free(r);
  return 0;
}

/* ---- signals, accounting, freeing ---------------------------------------- */

TEST_IMPL(loop_signal_watch) {
  rec_t *r = rec_new(0);
  uint64_t id;
  int s;

  ASSERT_NOT_NULL(r);
  ASSERT_EQ(sp__signal_watch(r->loop, SIGUSR1, 5), 0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 1);
  /* A watcher does not keep the loop alive. */
  ASSERT_EQ(sp__loop_step(r->loop, 1), 0);
  ASSERT_EQ(sp__signal_watch(r->loop, 1000, 6), UV_EINVAL);
  ASSERT_EQ(sp__loop_handle_count(r->loop), 1);
  ASSERT_EQ(sp__timer_add(r->loop, sp__loop_now(r->loop) + 50, 1, &id), 0);
  ASSERT_EQ(kill(getpid(), SIGUSR1), 0);
  ASSERT_PASS(run_all(r, 2000));
  s = find(r, SP_EV_SIGNAL, 5);
  ASSERT_GE(s, 0);
  ASSERT_EQ(r->ev[s].a, SIGUSR1);
  ASSERT_GE(find(r, SP_EV_TIMER, 1), 0);
  rec_free(r);
  return 0;
}

/* sp__loop_free with everything still open: children are killed and
 * reaped, sockets and watchers closed, and no event is reported. */
TEST_IMPL(loop_free_with_open_handles) {
  char *args[] = { "cat", NULL };
  sp_proc_options_t opts;
  rec_t *r = rec_new(0);
  sp_proc_t *proc, *piped;
  sp_tcp_t *tcp;
  uint64_t id;
  int pid, pid2, port, n, i, expected;

  ASSERT_NOT_NULL(r);
  ASSERT_PASS(spawn_sh(r, "exec sleep 30", 1, &proc, &pid));
  memset(&opts, 0, sizeof(opts));
  opts.file = "cat";
  opts.args = args;
  opts.stdin_pipe = 1;
  ASSERT_EQ(sp__proc_spawn(r->loop, &opts, 2, &piped, &pid2), 0);
  ASSERT_EQ(sp__proc_write(piped, "abc", 3, 3), 0);
  ASSERT_EQ(sp__tcp_listen(r->loop, "127.0.0.1", 0, 4, 4, &r->listener,
                           &port), 0);
  ASSERT_EQ(sp__tcp_connect(r->loop, "127.0.0.1", port, 5, &r->client), 0);
  /* An IPv6 socket too, where the machine has IPv6 loopback. */
  expected = 5 + (sp__tcp_connect(r->loop, "::1", port, 6, &tcp) == 0);
  ASSERT_EQ(sp__signal_watch(r->loop, SIGUSR2, 7), 0);
  for (i = 0; i < 3; i++)
    ASSERT_EQ(sp__timer_add(r->loop, sp__loop_now(r->loop) + 60000, 8, &id),
              0);
  ASSERT_EQ(sp__loop_handle_count(r->loop), expected);
  ASSERT_EQ(sp__loop_timer_count(r->loop), 3);
  for (i = 0; i < 3; i++)
    (void) sp__loop_step(r->loop, 1);
  n = r->n;
  sp__loop_free(r->loop);
  ASSERT_EQ(r->n, n);
  ASSERT_EQ(kill(pid, 0), -1);
  ASSERT_EQ(errno, ESRCH);
  ASSERT_EQ(kill(pid2, 0), -1);
  ASSERT_EQ(errno, ESRCH);
  free(r);
  return 0;
}
