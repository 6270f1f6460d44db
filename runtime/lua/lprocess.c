/* Processes in Lua: loop:spawn and the methods of a process userdata.
 *
 * The rule: loop:spawn checks every option before it starts anything: an
 * unknown option, a missing file or an argument of the wrong type raises,
 * and a program that cannot be started answers nil, "ENOENT", ... . The
 * child's output, its exit and its close come as events to the loop's
 * dispatcher, with the process userdata as their handle.
 *
 * The trap: the argument lists handed to libuv point into the Lua strings
 * of the options table, and live in a userdata on the stack, not in C
 * memory: a check that raises halfway leaks nothing, and nothing they
 * point at is collected before uv_spawn has used it.
 */
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "private.h"

/* Fills a NULL-terminated array (a userdata, left on the stack so that it
 * is collected whatever happens) with the strings of the list at `idx`. */
static char **l_string_list(lua_State *L, int idx, const char *what,
                            const char *first) {
  size_t n = idx ? lua_objlen(L, idx) : 0;
  size_t extra = (n == 0 && first != NULL) ? 1 : 0;
  char **list;
  size_t i;

  list = lua_newuserdata(L, (n + extra + 1) * sizeof(*list));
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, idx, (int) i + 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "sprun.core: loop:spawn: %s[%d] must be a string, got %s",
                 what, (int) i + 1, luaL_typename(L, -1));
    /* The string stays anchored in the options table. */
    list[i] = (char *) lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  if (extra)
    list[n++] = (char *) first;
  list[n] = NULL;
  return list;
}

/* Reads an option of the table at index 2: leaves it at `idx`. */
static int l_opt(lua_State *L, const char *name, int type, const char *want) {
  lua_getfield(L, 2, name);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != type)
    luaL_error(L, "sprun.core: loop:spawn: option '%s' must be %s, got %s",
               name, want, luaL_typename(L, -1));
  return !lua_isnil(L, -1);
}

static int l_loop_spawn(lua_State *L) {
  static const char *const known[] = { "file", "args", "env", "cwd", "stdin",
                                       "stderr", "channel", NULL };
  static const char *const stderr_modes[] = { "pipe", "inherit", "null",
                                              NULL };
  l_loop_t *ll = l_check_loop(L, 1);
  sp_proc_options_t opts;
  sp_proc_t *proc;
  l_handle_t *h;
  uint64_t token;
  int i, pid, err;

  luaL_checktype(L, 2, LUA_TTABLE);
  token = l_check_uint(L, 3, "token");
  lua_settop(L, 3);
  lua_pushnil(L);
  while (lua_next(L, 2) != 0) {
    lua_pop(L, 1);
    for (i = 0; known[i] != NULL; i++)
      if (lua_type(L, -1) == LUA_TSTRING &&
          strcmp(lua_tostring(L, -1), known[i]) == 0)
        break;
    if (known[i] == NULL)
      luaL_error(L, "sprun.core: loop:spawn: unknown option '%s' (known: "
                    "file, args, env, cwd, stdin, stderr, channel)",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                : luaL_typename(L, -1));
  }
  memset(&opts, 0, sizeof(opts));
  if (!l_opt(L, "file", LUA_TSTRING, "a string")) /* 4 */
    luaL_error(L, "sprun.core: loop:spawn: option 'file' is required");
  opts.file = lua_tostring(L, 4);
  l_opt(L, "args", LUA_TTABLE, "a list of strings"); /* 5 */
  opts.args = l_string_list(L, lua_istable(L, 5) ? 5 : 0, "args", opts.file);
  if (l_opt(L, "env", LUA_TTABLE, "a list of \"K=V\" strings")) /* 7 */
    opts.env = l_string_list(L, 7, "env", NULL);
  else
    lua_pushnil(L);
  if (l_opt(L, "cwd", LUA_TSTRING, "a string")) /* 9 */
    opts.cwd = lua_tostring(L, 9);
  l_opt(L, "stdin", LUA_TBOOLEAN, "a boolean"); /* 10 */
  opts.stdin_pipe = lua_toboolean(L, 10);
  l_opt(L, "stderr", LUA_TSTRING, "\"pipe\", \"inherit\" or \"null\""); /* 11 */
  opts.stderr_mode = lua_isnil(L, 11)
                       ? SP__STDERR_PIPE
                       : luaL_checkoption(L, 11, NULL, stderr_modes);
  l_opt(L, "channel", LUA_TBOOLEAN, "a boolean"); /* 12 */
  opts.channel = lua_toboolean(L, 12);

  h = l_new_handle(L, PROC_MT);
  err = sp__proc_spawn(ll->loop, &opts, token, &proc, &pid);
  if (err)
    return l_push_error(L, err);
  h->pid = pid;
  l_register(L, ll, h, proc);
  lua_pushinteger(L, pid);
  return 2;
}

static int l_proc_write(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t token = l_check_uint(L, 3, "write token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__proc_write(h->ptr, data, len, token));
}

/* proc:channel_write(data[, token]): no token (or 0), no SP_EV_WRITE. */
static int l_proc_channel_write(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t token =
      lua_isnoneornil(L, 3) ? 0 : l_check_uint(L, 3, "write token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__proc_channel_write(h->ptr, data, len, token));
}

static int l_proc_close_stdin(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__proc_close_stdin(h->ptr));
}

static int l_proc_kill(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);
  int signum = lua_isnoneornil(L, 2) ? SIGTERM : l_check_signal(L, 2);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__proc_kill(h->ptr, signum));
}

/* proc:await(bool): a task waits on the child, or no longer does (see
 * sp__proc_await: what holds virtual time back). */
static int l_proc_await(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);

  luaL_checktype(L, 2, LUA_TBOOLEAN);
  if (h->ptr != NULL)
    sp__proc_await(h->ptr, lua_toboolean(L, 2));
  return 0;
}

static int l_proc_close(lua_State *L) {
  return l_handle_close(L, PROC_MT);
}

static int l_proc_pid(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);

  lua_pushinteger(L, h->pid);
  return 1;
}

static int l_proc_tostring(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);

  lua_pushfstring(L, "sprun.core.proc (pid %d, %s): %p", h->pid,
                  h->ptr ? "open" : "closed", (void *) h);
  return 1;
}

static const luaL_Reg l_proc_methods[] = {
  { "write", l_proc_write },
  { "channel_write", l_proc_channel_write },
  { "close_stdin", l_proc_close_stdin },
  { "kill", l_proc_kill },
  { "close", l_proc_close },
  { "pid", l_proc_pid },
  { "await", l_proc_await },
  { NULL, NULL }
};

/* Where sprun-exec is for the object this module is linked into: next to
 * core.so, or, for the sprun executable (which has the module built in),
 * in the module folder of its build tree or of its install. The first
 * one that can be run is used; with none, children start without it (see
 * runtime/loop/exec.c). */
static void l_find_shim(void) {
  static const char *const candidates[] = {
    "/sprun-exec", "/lib/lua/5.1/sprun/sprun-exec",
    "/../lib/lua/5.1/sprun/sprun-exec"
  };
  char self[PATH_MAX];
  char path[PATH_MAX + 64];
  char found[PATH_MAX];
  Dl_info info;
  char *slash;
  size_t i;

  if (sp__proc_shim() != NULL)
    return;
  if (dladdr((void *) luaopen_sprun_core, &info) == 0 ||
      info.dli_fname == NULL || realpath(info.dli_fname, self) == NULL)
    return;
  slash = strrchr(self, '/');
  if (slash == NULL)
    return;
  *slash = '\0';
  for (i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
    snprintf(path, sizeof(path), "%s%s", self, candidates[i]);
    if (access(path, X_OK) == 0 && realpath(path, found) != NULL) {
      sp__proc_set_shim(found);
      return;
    }
  }
}
