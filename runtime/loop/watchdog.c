/* The watchdog: a small process, one per loop, that kills the process
 * groups of the loop's children if sprun dies without doing it itself.
 *
 * sprun kills its children's groups on every way out it sees (a return,
 * an error, a signal, os.exit through atexit), and each child carries a
 * death signal (runtime/exec/sprun-exec.c). Neither covers what a child
 * started before sprun was killed with SIGKILL: its grandchildren stay in
 * its group, and the death signal reaches only the child. The watchdog is
 * forked at the first spawn of a loop and told of each group as it starts
 * ("+pid") and once it is gone ("-pid"), over a pipe whose only writer is
 * sprun. When that pipe ends, whatever ended sprun, it kills every group
 * it still knows and exits.
 *
 * The rule: the watchdog outlives nothing. It leaves sprun's session (a
 * terminal's Ctrl-C goes to sprun's group, not to it) and ignores the
 * signals a group kill or a terminal sends, so that it dies only after
 * its work; it holds no file of sprun's but the pipe (a reader of sprun's
 * stdout must see end of file when sprun exits, not when the watchdog
 * does); and sp__loop_free ends it and reaps it.
 *
 * The traps: it is forked from a process that may have threads (libuv's
 * pool), so the child may only make async-signal-safe calls: no malloc,
 * no stdio; it keeps the groups in a fixed array of static memory. And
 * until it has left sprun's group it would get the signals sent to that
 * group, and handle them with sprun's own handlers, which write to the
 * pipe libuv reads them from: sprun would see every such signal twice. So
 * signals are blocked across the fork, and the child unblocks them only
 * once its handlers are its own and it is in a session of its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

/* Groups one watchdog knows at once; more are not watched (a loop with
 * that many children alive has other problems). */
#define SP__WATCH_MAX 65536

/* In the watchdog only (after fork): the groups it kills at the end. */
static int32_t watched[SP__WATCH_MAX];

static void close_from(int lowest) {
  long max;
  int fd;

#ifdef SYS_close_range
  if (syscall(SYS_close_range, (unsigned) lowest, ~0U, 0) == 0)
    return;
#endif
  max = sysconf(_SC_OPEN_MAX);
  if (max < 0 || max > 65536)
    max = 65536;
  for (fd = lowest; fd < max; fd++)
    close(fd);
}

/* Reads exactly `len` bytes; 0 at end of file or on error. */
static int read_all(int fd, unsigned char *buf, size_t len) {
  size_t got = 0;

  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n > 0)
      got += (size_t) n;
    else if (n < 0 && errno == EINTR)
      continue;
    else
      return 0;
  }
  return 1;
}

static void watchdog_main(int rfd) {
  static const int deaf[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP,
                              SIGTTIN, SIGTTOU, SIGPIPE, SIGUSR1, SIGUSR2 };
  struct sigaction sa;
  unsigned char rec[5];
  sigset_t none;
  int n = 0;
  int i;
  int null;

  /* Signals are blocked (see watchdog_start): none of sprun's handlers
   * may run here. */
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = SIG_DFL;
  for (i = 1; i < NSIG; i++)
    sigaction(i, &sa, NULL);
  sa.sa_handler = SIG_IGN;
  for (i = 0; i < (int) (sizeof(deaf) / sizeof(deaf[0])); i++)
    sigaction(deaf[i], &sa, NULL);
  setsid();
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (rfd != 3) {
    dup2(rfd, 3);
    rfd = 3;
  }
  close_from(4);
  null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (null > 3)
      close(null);
  }
  while (read_all(rfd, rec, sizeof(rec))) {
    int32_t pid = (int32_t) ((uint32_t) rec[1] << 24 | (uint32_t) rec[2] << 16
                             | (uint32_t) rec[3] << 8 | rec[4]);
    if (rec[0] == '+') {
      if (n < SP__WATCH_MAX)
        watched[n++] = pid;
    } else {
      for (i = 0; i < n; i++) {
        if (watched[i] == pid) {
          watched[i] = watched[--n];
          break;
        }
      }
    }
  }
  for (i = 0; i < n; i++)
    kill(-watched[i], SIGKILL);
  _exit(0);
}

static int watchdog_start(sp_loop_t *loop) {
  sigset_t all, old;
  int fds[2];
  pid_t pid;

  if (pipe2(fds, O_CLOEXEC) != 0)
    return uv_translate_sys_error(errno);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid = fork();
  if (pid == 0) {
    close(fds[1]);
    watchdog_main(fds[0]);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  close(fds[0]);
  if (pid < 0) {
    close(fds[1]);
    return uv_translate_sys_error(errno);
  }
  /* A watchdog that stops reading (stopped by a signal) must not stop
   * sprun: a message that does not fit is dropped. */
  fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK);
  loop->watch_fd = fds[1];
  loop->watch_pid = pid;
  return 0;
}

static void tell(sp_loop_t *loop, unsigned char op, int pid) {
  unsigned char rec[5];
  uint32_t u = (uint32_t) pid;
  ssize_t n;

  rec[0] = op;
  rec[1] = (unsigned char) (u >> 24);
  rec[2] = (unsigned char) (u >> 16);
  rec[3] = (unsigned char) (u >> 8);
  rec[4] = (unsigned char) u;
  do
    n = write(loop->watch_fd, rec, sizeof(rec));
  while (n < 0 && errno == EINTR);
}

void sp__watchdog_add(sp_loop_t *loop, int pid) {
  if (loop->watch_fd < 0 && watchdog_start(loop) != 0)
    return;
  tell(loop, '+', pid);
}

void sp__watchdog_remove(sp_loop_t *loop, int pid) {
  if (loop->watch_fd >= 0)
    tell(loop, '-', pid);
}

void sp__watchdog_stop(sp_loop_t *loop) {
  int status;

  if (loop->watch_fd < 0)
    return;
  close(loop->watch_fd);
  loop->watch_fd = -1;
  while (waitpid(loop->watch_pid, &status, 0) < 0 && errno == EINTR)
    ;
  loop->watch_pid = 0;
}
