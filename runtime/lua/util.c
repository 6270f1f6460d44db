/* What every binding file of sprun.core uses: the argument checkers, the
 * answers of a method, the signal names, and the making of a metatable.
 *
 * The rule: misuse raises an argument error (the l_check_* functions, or
 * luaL_check*), and a runtime failure is an answer, nil, "ENAME", "message"
 * (l_push_error), so that a script can print it and branch on the name; a
 * method of a closed handle answers nil, "EBADF", "handle is closed".
 *
 * The trap: a checker that fails does not return (luaL_argerror unwinds
 * the C stack). Check every argument before allocating anything that only
 * C holds, or keep such memory in a userdata on the Lua stack, which the
 * collector frees whatever happens (see l_string_list in lprocess.c).
 */
#include <signal.h>
#include <string.h>

#include "private.h"

static int l_push_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, uv_err_name(err));
  lua_pushstring(L, uv_strerror(err));
  return 3;
}

static int l_push_result(lua_State *L, int err) {
  if (err)
    return l_push_error(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "EBADF");
  lua_pushliteral(L, "handle is closed");
  return 3;
}

static uint64_t l_check_uint(lua_State *L, int idx, const char *what) {
  lua_Number n = luaL_checknumber(L, idx);

  if (!(n >= 0 && n < L_MAX_INT) || (lua_Number) (uint64_t) n != n)
    luaL_argerror(L, idx,
                  lua_pushfstring(L, "%s must be an integer in [0, 2^53)",
                                  what));
  return (uint64_t) n;
}

static int l_check_int(lua_State *L, int idx, int lo, int hi,
                       const char *what) {
  lua_Number n = luaL_checknumber(L, idx);

  if (!(n >= lo && n <= hi) || (lua_Number) (int) n != n)
    luaL_argerror(L, idx,
                  lua_pushfstring(L, "%s must be an integer in [%d, %d]",
                                  what, lo, hi));
  return (int) n;
}

/* The signals a script may name: core.signals, core.signal_name and every
 * argument that takes a signal (lsignal.c, lprocess.c). */
static const struct {
  const char *name;
  int signum;
} l_signals[] = {
  { "SIGHUP", SIGHUP },   { "SIGINT", SIGINT },   { "SIGQUIT", SIGQUIT },
  { "SIGILL", SIGILL },   { "SIGTRAP", SIGTRAP }, { "SIGABRT", SIGABRT },
  { "SIGBUS", SIGBUS },   { "SIGFPE", SIGFPE },   { "SIGKILL", SIGKILL },
  { "SIGUSR1", SIGUSR1 }, { "SIGSEGV", SIGSEGV }, { "SIGUSR2", SIGUSR2 },
  { "SIGPIPE", SIGPIPE }, { "SIGALRM", SIGALRM }, { "SIGTERM", SIGTERM },
  { "SIGCHLD", SIGCHLD }, { "SIGCONT", SIGCONT }, { "SIGSTOP", SIGSTOP },
  { NULL, 0 }
};

/* A signal given as a number or as a name from core.signals. */
static int l_check_signal(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *name = lua_tostring(L, idx);
    int i;

    for (i = 0; l_signals[i].name != NULL; i++)
      if (strcmp(l_signals[i].name, name) == 0)
        return l_signals[i].signum;
    luaL_argerror(L, idx,
                  lua_pushfstring(L, "unknown signal name '%s'", name));
  }
  return l_check_int(L, idx, 0, 64, "signal");
}

/* Pushes what `describe` says of the libuv code at index 1; nil for 0. */
static int l_push_uv_text(lua_State *L, const char *(*describe)(int err)) {
  int err = l_check_int(L, 1, -100000, 0, "error code");

  if (err == 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, describe(err));
  return 1;
}

/* core.uv_err_name(code): "ECONNREFUSED", ...; nil for 0. */
static int l_uv_err_name(lua_State *L) {
  return l_push_uv_text(L, uv_err_name);
}

/* core.uv_strerror(code): the message of a libuv code; nil for 0. */
static int l_uv_strerror(lua_State *L) {
  return l_push_uv_text(L, uv_strerror);
}

/* core.hostname(): this machine's host name (uv_os_gethostname), or nil
 * and the libuv error's text. */
static int l_hostname(lua_State *L) {
  char name[UV_MAXHOSTNAMESIZE];
  size_t size = sizeof(name);
  int rc;

  rc = uv_os_gethostname(name, &size);
  if (rc < 0) {
    lua_pushnil(L);
    lua_pushstring(L, uv_strerror(rc));
    return 2;
  }
  lua_pushlstring(L, name, size);
  return 1;
}

/* core.pid(): this process's id. */
static int l_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer) uv_os_getpid());
  return 1;
}

/* The methods get the metatable as their one upvalue (see l_check_loop in
 * lloop.c). */
static void l_new_metatable(lua_State *L, const char *name,
                            const luaL_Reg *methods, lua_CFunction tostring,
                            lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  lua_pushvalue(L, -2);
  luaL_openlib(L, NULL, methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  if (gc != NULL) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}
