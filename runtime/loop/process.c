/* Child processes: one uv_process_t, a pipe for stdout, one for stderr
 * unless it goes elsewhere, one for stdin if asked for, a socket pair on
 * the child's fd 3 (the channel) if asked for, and a grace timer.
 *
 * The rule: SP_EV_PROC_EXIT comes last, after libuv reaped the child and
 * every pipe it writes to reached end of file, so every output chunk and
 * every end-of-file event come before it. A child runs in its own process group
 * (UV_PROCESS_DETACHED calls setsid), so signals go to the group and reach
 * whatever the child started.
 *
 * The trap: a grandchild may inherit the output pipes and keep them open
 * long after the child exited. Once the child is reaped, end of file is
 * awaited for at most SP__EOF_GRACE_MS; then what the pipes hold is read
 * (a loop that comes back late must not lose output written in time),
 * the pipes are closed and the exit is reported anyway. And the
 * uv_process_t is closed only once the
 * child has been reaped: libuv reaps only children whose handle is open, so
 * closing it early would leave a zombie. sp__proc_close therefore kills the
 * group and waits for the exit callback before the memory can go. It also
 * kills the group of a child that has exited while something it started
 * still held the pipes: such a group is known to be alive, so its id cannot
 * have been reused.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "internal.h"

#define SP__EOF_GRACE_MS 100

struct sp_proc_s {
  sp__handle_t h;
  uv_process_t process;
  uv_pipe_t in;
  uv_pipe_t out;
  uv_pipe_t err;
  uv_pipe_t chan;
  uv_timer_t grace;
  uv_shutdown_t shutdown;
  int pid;
  int open;      /* libuv handles whose close callback has not run */
  int has_in;    /* the stdin pipe was created */
  int has_err;   /* the stderr pipe was created */
  int has_chan;  /* the channel was created */
  int in_done;   /* close_stdin was called */
  int out_eof;
  int err_eof;
  int chan_eof;
  int exited;
  int reported;  /* SP_EV_PROC_EXIT was reported */
  int inflight;  /* counted in loop->inflight: a task awaits it */
  int lingering; /* something else held the output pipes open */
  int64_t status;
  int term_signal;
};

static void close_cb(uv_handle_t *handle) {
  sp_proc_t *p = handle->data;

  if (--p->open > 0)
    return;
  /* Reaped, and its group killed if it outlived it: nothing left to
   * watch. */
  if (p->pid > 0)
    sp__watchdog_remove(p->h.loop, p->pid);
  sp__handle_unlink(&p->h);
  free(p);
}

static void close_handle(uv_handle_t *handle) {
  if (!uv_is_closing(handle))
    uv_close(handle, close_cb);
}

static void done_inflight(sp_proc_t *p) {
  if (p->inflight) {
    p->inflight = 0;
    p->h.loop->inflight--;
  }
}

/* Reads what a pipe holds right now and reports it, without waiting:
 * when the grace timer fires in the same step as the data it was waiting
 * for (the loop came back late), libuv would read it only after the timer
 * closed the pipe. Returns 1 at end of file, 0 if the pipe is still open
 * with nothing in it, or a negative libuv error code; the handle may be
 * closing on return (p->h.closing), when an event closed it. */
static int drain(sp_proc_t *p, uv_pipe_t *pipe, int type) {
  sp_loop_t *loop = p->h.loop;
  struct pollfd pfd;
  uv_os_fd_t fd;
  ssize_t n;

  if (uv_fileno((const uv_handle_t *) pipe, &fd) != 0)
    return 0;
  pfd.fd = fd;
  pfd.events = POLLIN;
  /* poll first: the read must never block, whatever the descriptor's
   * flags. */
  while (poll(&pfd, 1, 0) == 1) {
    n = read(fd, loop->readbuf, sizeof(loop->readbuf));
    if (n == 0)
      return 1;
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      return uv_translate_sys_error(errno);
    }
    sp__emit(loop, p->h.token, type, 0, 0, loop->readbuf, (size_t) n, p);
    if (p->h.closing)
      return 0;
  }
  return 0;
}

/* Ends a pipe that did not reach end of file by itself within the grace
 * period: reports what it still holds, then its end. */
static void force_eof(sp_proc_t *p, uv_pipe_t *pipe, int *eof, int type) {
  int rc;

  rc = drain(p, pipe, type);
  if (p->h.closing)
    return;
  *eof = 1;
  /* Still open and empty: something the child started holds it. */
  if (rc == 0)
    p->lingering = 1;
  close_handle((uv_handle_t *) pipe);
  sp__emit(p->h.loop, p->h.token, type, rc < 0 ? rc : 0, 0, NULL, 0, p);
}

/* Every emit may run code that closes the process, after which nothing
 * more is reported. */
static void report_exit(sp_proc_t *p) {
  uv_timer_stop(&p->grace);
  if (!p->out_eof)
    force_eof(p, &p->out, &p->out_eof, SP_EV_PROC_STDOUT);
  if (p->h.closing)
    return;
  if (!p->err_eof)
    force_eof(p, &p->err, &p->err_eof, SP_EV_PROC_STDERR);
  if (p->h.closing)
    return;
  if (!p->chan_eof)
    force_eof(p, &p->chan, &p->chan_eof, SP_EV_PROC_CHANNEL);
  if (p->h.closing)
    return;
  p->reported = 1;
  done_inflight(p);
  sp__emit(p->h.loop, p->h.token, SP_EV_PROC_EXIT, p->status, p->term_signal,
           NULL, 0, p);
}

static void grace_cb(uv_timer_t *timer) {
  sp_proc_t *p = timer->data;

  if (!p->reported && !p->h.closing)
    report_exit(p);
}

static void exit_cb(uv_process_t *process, int64_t status, int term_signal) {
  sp_proc_t *p = process->data;

  p->exited = 1;
  p->status = status;
  p->term_signal = term_signal;
  /* Reaped: nothing needs the handle any more. */
  close_handle((uv_handle_t *) process);
  if (p->h.closing)
    return;
  if (p->out_eof && p->err_eof && p->chan_eof)
    report_exit(p);
  else
    uv_timer_start(&p->grace, grace_cb, SP__EOF_GRACE_MS, 0);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  sp_proc_t *p = stream->data;
  int type;
  int *eof;

  if (stream == (uv_stream_t *) &p->out) {
    type = SP_EV_PROC_STDOUT;
    eof = &p->out_eof;
  } else if (stream == (uv_stream_t *) &p->err) {
    type = SP_EV_PROC_STDERR;
    eof = &p->err_eof;
  } else {
    type = SP_EV_PROC_CHANNEL;
    eof = &p->chan_eof;
  }
  if (nread == 0 || p->h.closing)
    return;
  if (nread > 0) {
    sp__emit(p->h.loop, p->h.token, type, 0, 0, buf->base, (size_t) nread, p);
    return;
  }
  /* End of file, or an error, which ends the stream just the same. */
  *eof = 1;
  close_handle((uv_handle_t *) stream);
  sp__emit(p->h.loop, p->h.token, type, nread == UV_EOF ? 0 : nread, 0, NULL,
           0, p);
  if (p->h.closing)
    return;
  if (p->exited && p->out_eof && p->err_eof && p->chan_eof && !p->reported)
    report_exit(p);
}

/* Closes what is open; the process handle only once the child is reaped
 * (exit_cb closes it then). */
static void close_all(sp_proc_t *p) {
  if (p->has_in)
    close_handle((uv_handle_t *) &p->in);
  close_handle((uv_handle_t *) &p->out);
  if (p->has_err)
    close_handle((uv_handle_t *) &p->err);
  if (p->has_chan)
    close_handle((uv_handle_t *) &p->chan);
  close_handle((uv_handle_t *) &p->grace);
}

/* The process's close function, for sp__loop_free. */
static void proc_close(sp__handle_t *h) {
  sp__proc_close((sp_proc_t *) h);
}

int sp__proc_spawn(sp_loop_t *loop, const sp_proc_options_t *options,
                   uint64_t token, sp_proc_t **out, int *pid) {
  uv_process_options_t opts;
  uv_stdio_container_t stdio[4];
  char **shim_argv;
  const char *file;
  sp_proc_t *p;
  int err;

  /* The program is looked for first: a missing one spawns nothing. */
  err = sp__exec_args(options, &file, &shim_argv);
  if (err)
    return err;
  p = calloc(1, sizeof(*p));
  if (p == NULL) {
    sp__exec_free(shim_argv);
    return UV_ENOMEM;
  }
  p->h.loop = loop;
  p->h.token = token;
  uv_pipe_init(&loop->uv, &p->out, 0);
  uv_timer_init(&loop->uv, &p->grace);
  p->out.data = p;
  p->grace.data = p;
  p->open = 2;
  if (options->stdin_pipe) {
    uv_pipe_init(&loop->uv, &p->in, 0);
    p->in.data = p;
    p->has_in = 1;
    p->open++;
    stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
    stdio[0].data.stream = (uv_stream_t *) &p->in;
  } else {
    /* libuv gives the child /dev/null for an ignored standard stream. */
    stdio[0].flags = UV_IGNORE;
  }
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *) &p->out;
  if (options->stderr_mode == SP__STDERR_PIPE) {
    uv_pipe_init(&loop->uv, &p->err, 0);
    p->err.data = p;
    p->has_err = 1;
    p->open++;
    stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[2].data.stream = (uv_stream_t *) &p->err;
  } else {
    /* No pipe: nothing to wait for at the end. */
    p->err_eof = 1;
    if (options->stderr_mode == SP__STDERR_INHERIT) {
      stdio[2].flags = UV_INHERIT_FD;
      stdio[2].data.fd = 2;
    } else {
      stdio[2].flags = UV_IGNORE;
    }
  }

  if (options->channel) {
    /* libuv makes a pipe of the child's stdio a socket pair: fd 3 carries
     * both directions. */
    uv_pipe_init(&loop->uv, &p->chan, 0);
    p->chan.data = p;
    p->has_chan = 1;
    p->open++;
    stdio[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
    stdio[3].data.stream = (uv_stream_t *) &p->chan;
  } else {
    p->chan_eof = 1;
  }

  memset(&opts, 0, sizeof(opts));
  opts.exit_cb = exit_cb;
  opts.file = file;
  opts.args = shim_argv != NULL ? shim_argv : options->args;
  opts.env = options->env;
  opts.cwd = options->cwd;
  opts.flags = UV_PROCESS_DETACHED;
  opts.stdio_count = options->channel ? 4 : 3;
  opts.stdio = stdio;

  /* uv_spawn initialises the handle even when it fails, so from here on
   * it must be closed whatever happens. */
  err = uv_spawn(&loop->uv, &p->process, &opts);
  sp__exec_free(shim_argv);
  p->process.data = p;
  p->open++;
  if (err) {
    /* Never linked: the close callbacks free it without an event. libuv
     * has already reaped a child whose exec failed. */
    close_all(p);
    close_handle((uv_handle_t *) &p->process);
    return err;
  }
  p->pid = p->process.pid;
  if (uv_read_start((uv_stream_t *) &p->out, sp__alloc_cb, read_cb) != 0) {
    p->out_eof = 1;
    close_handle((uv_handle_t *) &p->out);
  }
  if (p->has_chan &&
      uv_read_start((uv_stream_t *) &p->chan, sp__alloc_cb, read_cb) != 0) {
    p->chan_eof = 1;
    close_handle((uv_handle_t *) &p->chan);
  }
  if (p->has_err &&
      uv_read_start((uv_stream_t *) &p->err, sp__alloc_cb, read_cb) != 0) {
    p->err_eof = 1;
    close_handle((uv_handle_t *) &p->err);
  }
  sp__handle_link(loop, &p->h, proc_close, token);
  sp__watchdog_add(loop, p->pid);
  *out = p;
  *pid = p->pid;
  return 0;
}

void sp__proc_await(sp_proc_t *p, int awaited) {
  if (awaited && !p->inflight && !p->reported && !p->h.closing) {
    p->inflight = 1;
    p->h.loop->inflight++;
  } else if (!awaited) {
    done_inflight(p);
  }
}

int sp__proc_write(sp_proc_t *p, const char *data, size_t len,
                   uint64_t write_token) {
  if (p->h.closing)
    return UV_EBADF;
  if (!p->has_in)
    return UV_EINVAL;
  if (p->in_done)
    return UV_EPIPE;
  return sp__stream_write(p->h.loop, (uv_stream_t *) &p->in, data, len,
                          write_token);
}

int sp__proc_channel_write(sp_proc_t *p, const char *data, size_t len,
                           uint64_t write_token) {
  if (p->h.closing)
    return UV_EBADF;
  if (!p->has_chan)
    return UV_EINVAL;
  if (p->chan_eof)
    return UV_EPIPE;
  return sp__stream_write(p->h.loop, (uv_stream_t *) &p->chan, data, len,
                          write_token);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  sp_proc_t *p = req->handle->data;

  (void) status;
  close_handle((uv_handle_t *) &p->in);
}

int sp__proc_close_stdin(sp_proc_t *p) {
  if (p->h.closing)
    return UV_EBADF;
  if (!p->has_in)
    return UV_EINVAL;
  if (p->in_done)
    return 0;
  p->in_done = 1;
  /* The shutdown waits for the pending writes; then the pipe closes and
   * the child reads end of file. */
  if (uv_shutdown(&p->shutdown, (uv_stream_t *) &p->in, shutdown_cb) != 0)
    close_handle((uv_handle_t *) &p->in);
  return 0;
}

int sp__proc_kill(sp_proc_t *p, int signum) {
  int err;

  if (p->h.closing)
    return UV_EBADF;
  if (kill(-p->pid, signum) == 0)
    return 0;
  err = uv_translate_sys_error(errno);
  /* No group (the child never became a leader): the child itself, as long
   * as it is not reaped and its pid cannot belong to someone else. */
  if (errno == ESRCH && !p->exited) {
    if (kill(p->pid, signum) == 0)
      return 0;
    err = uv_translate_sys_error(errno);
  }
  return err;
}

void sp__proc_close(sp_proc_t *p) {
  if (p->h.closing)
    return;
  p->h.closing = 1;
  done_inflight(p);
  if (!p->exited) {
    if (kill(-p->pid, SIGKILL) != 0)
      kill(p->pid, SIGKILL);
  } else if (p->lingering || !p->out_eof || !p->err_eof || !p->chan_eof) {
    /* The child is gone but what it started still holds its pipes: the
     * group outlives its leader, and goes with the handle. */
    kill(-p->pid, SIGKILL);
  }
  close_all(p);
}

void sp__proc_kill_all(sp_loop_t *loop) {
  sp__handle_t *h;

  for (h = loop->handles.next; h != &loop->handles; h = h->next) {
    if (h->close == proc_close) {
      sp_proc_t *p = (sp_proc_t *) h;
      if (!p->exited || p->lingering)
        kill(-p->pid, SIGKILL);
    }
  }
}
