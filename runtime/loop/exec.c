/* How a child is started: through sprun-exec (runtime/exec), which gives
 * it a death signal, with the program found first as execvp would find
 * it.
 *
 * The rule: what a caller of sp__proc_spawn sees does not depend on the
 * shim. A program that does not exist is UV_ENOENT from sp__proc_spawn
 * itself, one that cannot be run UV_EACCES, exactly as uv_spawn answers
 * without a shim, because the program is looked for here, in the parent,
 * along the PATH the child will have (its own env's, else sprun's), from
 * the directory it will run in. argv[0], the environment, the pid and the
 * exit status are the program's: the shim execs it.
 *
 * The trap: the child changes directory before the shim runs, so the
 * shim's own path must be absolute, and a relative program path is
 * passed on as it is (it means the same thing from the new directory).
 * Without a shim (not installed next to the module), children start as
 * before, without the death signal; the watchdog still covers them.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* Static, not malloc'd: the module may be unloaded (dlclose) at exit,
 * and what only a static of its own points at would then be a leak. */
static char shim_buf[PATH_MAX];
static const char *shim_path;

int sp__proc_set_shim(const char *path) {
  if (path == NULL) {
    shim_path = NULL;
    return 0;
  }
  if (strlen(path) >= sizeof(shim_buf))
    return UV_ENAMETOOLONG;
  strcpy(shim_buf, path);
  shim_path = shim_buf;
  return 0;
}

const char *sp__proc_shim(void) {
  return shim_path;
}

/* 0 if `path` is a file this process may execute, else UV_ENOENT (there
 * is nothing there) or UV_EACCES (there is, but it cannot be run). */
static int runnable(const char *path) {
  struct stat st;

  if (stat(path, &st) != 0)
    return errno == ENOENT || errno == ENOTDIR ? UV_ENOENT : UV_EACCES;
  if (!S_ISREG(st.st_mode) || access(path, X_OK) != 0)
    return UV_EACCES;
  return 0;
}

/* `name` as seen from `cwd` (NULL: this process's directory), into buf. */
static int from_dir(char *buf, size_t size, const char *cwd,
                    const char *name) {
  int n;

  if (name[0] == '/' || cwd == NULL)
    n = snprintf(buf, size, "%s", name);
  else
    n = snprintf(buf, size, "%s/%s", cwd, name);
  return n >= 0 && (size_t) n < size ? 0 : UV_ENAMETOOLONG;
}

/* The PATH of the child: from its env if it has one, else ours. */
static const char *child_path(char **env) {
  const char *path;
  size_t i;

  if (env != NULL) {
    for (i = 0; env[i] != NULL; i++)
      if (strncmp(env[i], "PATH=", 5) == 0)
        return env[i] + 5;
    return "/bin:/usr/bin";
  }
  path = getenv("PATH");
  return path != NULL ? path : "/bin:/usr/bin";
}

/* Looks the program up as execvp will in the child. On success *out is
 * what to pass the shim (a malloc'd path). */
static int find_program(const sp_proc_options_t *o, char **out) {
  char buf[PATH_MAX];
  const char *path;
  const char *p;
  int denied = 0;
  int err;

  if (o->file[0] == '\0')
    return UV_ENOENT;
  if (strchr(o->file, '/') != NULL) {
    err = from_dir(buf, sizeof(buf), o->cwd, o->file);
    if (err == 0)
      err = runnable(buf);
    if (err != 0)
      return err;
    *out = strdup(o->file);
    return *out != NULL ? 0 : UV_ENOMEM;
  }
  path = child_path(o->env);
  for (p = path;; p++) {
    const char *end = strchr(p, ':');
    size_t len = end != NULL ? (size_t) (end - p) : strlen(p);
    char dir[PATH_MAX];

    /* An empty entry is the current directory. */
    if (len < sizeof(dir)) {
      memcpy(dir, len > 0 ? p : ".", len > 0 ? len : 1);
      dir[len > 0 ? len : 1] = '\0';
      if (snprintf(buf, sizeof(buf), "%s/%s", dir, o->file) <
          (int) sizeof(buf)) {
        char seen[PATH_MAX];

        err = from_dir(seen, sizeof(seen), o->cwd, buf);
        if (err == 0)
          err = runnable(seen);
        if (err == 0) {
          *out = strdup(buf);
          return *out != NULL ? 0 : UV_ENOMEM;
        }
        if (err == UV_EACCES)
          denied = 1;
      }
    }
    if (end == NULL)
      break;
    p = end;
  }
  return denied ? UV_EACCES : UV_ENOENT;
}

/* The file and argv uv_spawn gets for `o`: the shim's, which then runs
 * the program (see the top of this file), or the program's own when
 * there is no shim. *argv_out (and what it points at) is freed with
 * sp__exec_free. */
int sp__exec_args(const sp_proc_options_t *o, const char **file,
                  char ***argv_out) {
  char **argv;
  char *program = NULL;
  size_t n = 0;
  size_t i;
  int err;

  *argv_out = NULL;
  if (shim_path == NULL) {
    *file = o->file;
    return 0;
  }
  err = find_program(o, &program);
  if (err != 0)
    return err;
  while (o->args[n] != NULL)
    n++;
  argv = calloc(n + 4, sizeof(*argv));
  if (argv == NULL) {
    free(program);
    return UV_ENOMEM;
  }
  argv[0] = strdup(shim_path);
  argv[1] = malloc(24);
  argv[2] = program;
  for (i = 0; i < n; i++)
    argv[3 + i] = o->args[i];
  if (argv[0] == NULL || argv[1] == NULL) {
    sp__exec_free(argv);
    return UV_ENOMEM;
  }
  snprintf(argv[1], 24, "%ld", (long) getpid());
  *file = shim_path;
  *argv_out = argv;
  return 0;
}

void sp__exec_free(char **argv) {
  if (argv == NULL)
    return;
  free(argv[0]);
  free(argv[1]);
  free(argv[2]);
  free(argv);
}
