/* The libuv glue under the sprun scheduler: one loop, a timer heap, child
 * processes, TCP sockets and signals. No Lua here: every completion is
 * reported through one C callback with the token its owner chose, and the
 * Lua binding (runtime/lua/) turns tokens back into tasks.
 *
 * Private to sprun: these names are not part of the public sprun.h.
 *
 * Errors: functions return 0 or a negative libuv error code (UV_E*), which
 * uv_err_name() and uv_strerror() describe.
 *
 * Ownership: handles are created here and freed only in their uv_close
 * callback. After sp__*_close the caller must forget the pointer; a
 * SP_EV_CLOSED event with the handle's token says the memory is gone.
 */
#ifndef SPRUN_LOOP_H
#define SPRUN_LOOP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sp_loop_s sp_loop_t;
typedef struct sp_proc_s sp_proc_t;
typedef struct sp_tcp_s sp_tcp_t;

typedef enum {
  /* A timer is due. token: the timer's. a: its deadline. b: its id (a
   * stale timer of a token that was reused can be told apart). */
  SP_EV_TIMER = 1,
  /* A chunk of a child's output (handle: the process). len 0: end of file
   * (a: 0, or the read error that ended the stream). */
  SP_EV_PROC_STDOUT,
  SP_EV_PROC_STDERR,
  /* The same for the channel on the child's fd 3 (spawned with channel). */
  SP_EV_PROC_CHANNEL,
  /* The child exited and each of its pipes it writes to has reached end of
   * file (so every SP_EV_PROC_STDOUT/STDERR/CHANNEL chunk came first). a:
   * exit status, b: the signal that ended it, or 0. */
  SP_EV_PROC_EXIT,
  /* A write finished (process stdin or TCP). token: the write's own token.
   * a: 0 or a negative libuv error code. */
  SP_EV_WRITE,
  /* A connect finished. a: 0 or a negative libuv error code (UV_ECANCELED
   * when the socket was closed first). */
  SP_EV_TCP_CONNECT,
  /* Data read from a socket (data, len). len 0 with a == 0: end of file;
   * a < 0: a read error (libuv code). */
  SP_EV_TCP_DATA,
  /* A listening socket accepted a connection. handle: the new sp_tcp_t,
   * whose token is 0 until sp__tcp_set_token; it is not reading yet.
   * a < 0: accepting failed (libuv code), handle NULL. */
  SP_EV_TCP_ACCEPT,
  /* A watched signal arrived. a: its number. */
  SP_EV_SIGNAL,
  /* A handle was closed and its memory freed. handle: the dead pointer,
   * only for identification. */
  SP_EV_CLOSED,
  /* The owners of these are the Lua binding's (runtime/lua/ldns.c,
   * lhttp.c), on the public sp_dns_* and sp_http_* calls: reported with
   * sp__loop_report. A lookup ended: a = 0 or a negative libuv code, data:
   * the addresses, one per line. */
  SP_EV_DNS,
  /* A streamed HTTP request holds body bytes to take. */
  SP_EV_HTTP_BODY,
  /* An HTTP request ended. */
  SP_EV_HTTP_DONE
} sp_event_type_t;

typedef struct sp_event_s {
  int type;       /* sp_event_type_t */
  int64_t a;
  int64_t b;
  const char *data; /* valid only during the callback */
  size_t len;
  void *handle;
} sp_event_t;

/* Called for every completion, from inside sp__loop_step. */
typedef void (*sp_event_cb)(void *ctx, uint64_t token, const sp_event_t *ev);

/* ---- loop --------------------------------------------------------------- */

/* virtual_time: timers do not wait for the clock; whenever no I/O is in
 * flight (no running child, no pending connect or write, no socket reading),
 * time jumps to the next deadline; while I/O is in flight it runs at the
 * real speed. Starts at the real time. */
int sp__loop_new(sp_loop_t **out, int virtual_time, sp_event_cb cb,
                 void *ctx);
/* Closes every handle still open (killing child processes), runs the loop
 * until the close callbacks are done and frees the loop. Reports no event.
 * Not from inside the event callback. */
void sp__loop_free(sp_loop_t *loop);

/* 1 when the loop holds nothing a run could have left: no handle, timer,
 * request, child or watchdog (a loop in this state can be kept for the
 * next run rather than freed and made again). */
int sp__loop_idle(sp_loop_t *loop);

/* Kills the process group of every child of the loop that still runs,
 * with SIGKILL, at once: for a process about to exit (it reaps nothing;
 * the children go with the process). */
void sp__loop_kill_children(sp_loop_t *loop);

/* The loop's time in ms: libuv's cached time, or the virtual clock. */
uint64_t sp__loop_now(const sp_loop_t *loop);

/* Where sp__loop_now reads its value: stable for the loop's lifetime. */
const uint64_t *sp__loop_now_ptr(const sp_loop_t *loop);
/* Refreshes the cached real time (no effect in virtual time). */
void sp__loop_update_time(sp_loop_t *loop);

/* Runs one iteration: fires every due timer (by deadline, then in the order
 * they were added), polls I/O (waiting for it unless `nowait`), and reports
 * everything through the callback. Returns 1 while timers or I/O remain
 * (another step could report something), 0 when nothing is pending. A
 * timer added by a timer's callback fires in a later step, even if due.
 * Not reentrant: never call it from the event callback. */
int sp__loop_step(sp_loop_t *loop, int nowait);

/* Open handles the caller created and has not seen SP_EV_CLOSED for
 * (processes, sockets, signal watchers), and armed timers. For leak checks. */
unsigned sp__loop_handle_count(const sp_loop_t *loop);
/* Of those, the ones being closed (their SP_EV_CLOSED is still to come). */
unsigned sp__loop_closing_count(const sp_loop_t *loop);
unsigned sp__loop_timer_count(const sp_loop_t *loop);

/* For I/O the loop does not own but runs (DNS lookups, HTTP transfers):
 * the libuv loop under it, a way to report an event as its own handles
 * do (so that virtual time treats it alike), and the count of such I/O a
 * task awaits (while it is above 0, virtual time follows the real clock). */
struct uv_loop_s *sp__loop_uv(sp_loop_t *loop);
void sp__loop_report(sp_loop_t *loop, uint64_t token, int type, int64_t a,
                     int64_t b, const char *data, size_t len, void *handle);
void sp__loop_io(sp_loop_t *loop, int delta);

/* Closes a handle of any kind (a process, a socket) as its own sp__*_close
 * does, for a caller that treats them alike. */
void sp__handle_close(void *handle);

/* ---- timers (a binary heap; O(log n) add and cancel) ---------------------- */

/* Arms a one-shot timer for the absolute loop time `deadline_ms`. *id
 * identifies it for sp__timer_cancel; ids are never reused in a loop. */
int sp__timer_add(sp_loop_t *loop, uint64_t deadline_ms, uint64_t token,
                  uint64_t *id);
/* Disarms a timer; UV_ENOENT if it already fired or was cancelled. */
int sp__timer_cancel(sp_loop_t *loop, uint64_t id);
/* Takes a place in the order of equal deadlines now, for a timer added
 * later with sp__timer_add_seq: it fires before the timers of the same
 * deadline added after this call. Only from outside sp__loop_step's
 * callback (a timer added while timers fire must wait for the next step). */
uint64_t sp__timer_reserve(sp_loop_t *loop);
/* sp__timer_add with a place taken by sp__timer_reserve; UV_EINVAL for a
 * seq that was never handed out. */
int sp__timer_add_seq(sp_loop_t *loop, uint64_t deadline_ms, uint64_t token,
                      uint64_t seq, uint64_t *id);

/* ---- child processes ---------------------------------------------------- */

typedef struct sp_proc_options_s {
  const char *file;  /* looked up in PATH */
  char **args;       /* NULL-terminated, args[0] is the program name */
  char **env;        /* NULL-terminated "K=V" list, or NULL to inherit */
  const char *cwd;   /* or NULL */
  int stdin_pipe;    /* 1: a pipe written with sp__proc_write; 0: /dev/null */
  int stderr_mode;   /* SP__STDERR_PIPE, _INHERIT or _NULL */
  int channel;       /* 1: fd 3 of the child is a socket pair, both ways */
} sp_proc_options_t;

/* Where a child's stderr goes: a pipe read as SP_EV_PROC_STDERR, sprun's
 * own stderr, or /dev/null. */
enum { SP__STDERR_PIPE = 0, SP__STDERR_INHERIT = 1, SP__STDERR_NULL = 2 };

/* Starts a child in its own process group (so that killing it kills what
 * it started too). Output arrives as SP_EV_PROC_STDOUT/STDERR, then
 * SP_EV_PROC_EXIT. Returns a negative libuv code if the program cannot be
 * started (UV_ENOENT, ...). */
int sp__proc_spawn(sp_loop_t *loop, const sp_proc_options_t *options,
                   uint64_t token, sp_proc_t **out, int *pid);
int sp__proc_write(sp_proc_t *proc, const char *data, size_t len,
                   uint64_t write_token);
/* Writes to the channel (fd 3 of a child spawned with channel). A
 * write_token of 0 asks for no SP_EV_WRITE: the write is done in order
 * with the others, and its failure shows as the channel's end. */
int sp__proc_channel_write(sp_proc_t *proc, const char *data, size_t len,
                           uint64_t write_token);
int sp__proc_close_stdin(sp_proc_t *proc);
/* Sends `signum` to the child's process group. */
int sp__proc_kill(sp_proc_t *proc, int signum);
/* Kills the process group with SIGKILL if the child still runs (or if it
 * exited while something it started still held its output pipes), closes
 * the pipes and frees the handle once the child is reaped (SP_EV_CLOSED; no
 * SP_EV_PROC_EXIT is reported after this call). */
void sp__proc_close(sp_proc_t *proc);
/* A task awaits the child (its exit or its output), or no longer does:
 * while one does, it is I/O in flight, which holds virtual time to the
 * real clock. A child nobody awaits never holds it. */
void sp__proc_await(sp_proc_t *proc, int awaited);
/* The sprun-exec program every child is started through (see exec.c), or
 * NULL (the default) to start them directly. */
int sp__proc_set_shim(const char *path);
const char *sp__proc_shim(void);

/* ---- TCP ------------------------------------------------------------------ */

/* host: a numeric IPv4 or IPv6 address, or "localhost" (127.0.0.1). */
int sp__tcp_connect(sp_loop_t *loop, const char *host, int port,
                    uint64_t token, sp_tcp_t **out);
/* port 0 picks a free port, returned in *bound_port. */
/* Opens an inherited descriptor (a socket pair or a pipe, e.g. the channel
 * on fd 3 a worker pool gives its workers) as a connection: read, write and
 * close it like a TCP one. */
int sp__tcp_pipe_open(sp_loop_t *loop, int fd, uint64_t token,
                      sp_tcp_t **out);
int sp__tcp_listen(sp_loop_t *loop, const char *host, int port, int backlog,
                   uint64_t token, sp_tcp_t **out, int *bound_port);
void sp__tcp_set_token(sp_tcp_t *tcp, uint64_t token);
int sp__tcp_read_start(sp_tcp_t *tcp);
int sp__tcp_read_stop(sp_tcp_t *tcp);
int sp__tcp_write(sp_tcp_t *tcp, const char *data, size_t len,
                  uint64_t write_token);
void sp__tcp_close(sp_tcp_t *tcp);

/* ---- signals -------------------------------------------------------------- */

/* Watches a signal without keeping the loop alive. */
int sp__signal_watch(sp_loop_t *loop, int signum, uint64_t token);

#endif /* SPRUN_LOOP_H */
