/* sprun-exec: the program every child of sprun is started through.
 *
 *   sprun-exec PARENT_PID FILE ARGV0 [ARGS...]
 *
 * It asks the kernel to kill it (SIGKILL) the moment the thread that
 * started it ends, whatever ends it, SIGKILL included (PR_SET_PDEATHSIG,
 * which survives execve), then becomes FILE with ARGV0 and ARGS as its
 * argv, by execvp: same pid, same environment, same open files, and the
 * program's own exit status or signal. uv_spawn has no hook that runs in
 * the child before exec, so this one step takes a program of its own.
 *
 * The rule: nothing of the program changes; only the death signal is
 * added. The trap: sprun may die between the fork and the prctl, and the
 * death signal would then never come (the new parent is init), so the
 * parent is checked after the prctl: a child whose parent is already gone
 * runs nothing. If FILE cannot be run (sprun checks it exists before it
 * starts this, so only a race gets here), the error goes to stderr and the
 * exit status is 127, as a shell's.
 */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
  char *end;
  long parent;

  if (argc < 4) {
    fprintf(stderr, "usage: sprun-exec PARENT_PID FILE ARGV0 [ARGS...] "
                    "(sprun starts its children through it)\n");
    return 127;
  }
  errno = 0;
  parent = strtol(argv[1], &end, 10);
  if (errno != 0 || *end != '\0' || parent <= 0) {
    fprintf(stderr, "sprun-exec: PARENT_PID must be a process id, got '%s'\n",
            argv[1]);
    return 127;
  }
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    fprintf(stderr, "sprun-exec: cannot set the death signal: %s\n",
            strerror(errno));
    return 127;
  }
  if (getppid() != (pid_t) parent)
    return 127;
  execvp(argv[2], argv + 3);
  fprintf(stderr, "sprun-exec: cannot run %s: %s\n", argv[2],
          strerror(errno));
  return 127;
}
