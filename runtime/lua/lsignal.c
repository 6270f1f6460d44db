/* Signals in Lua: loop:signal_watch, core.signal_name and core.signals.
 *
 * The rule: a signal is named as in core.signals, or given by number; the
 * names are those of l_signals (util.c), the one table that every argument
 * taking a signal reads too. A watched signal comes as an SP_EV_SIGNAL to
 * the loop's dispatcher, with the watch's token.
 *
 * The trap: a watcher does not keep the loop alive (a loop whose only
 * handle is a watcher has nothing pending), and it has no close: it stays,
 * and counts in loop:handle_count(), until the loop is closed.
 */
#include "private.h"

/* loop:signal_watch(signal, token): true, or nil, "ENAME", "message". */
static int l_loop_signal_watch(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  int signum = l_check_signal(L, 2);
  uint64_t token = l_check_uint(L, 3, "token");

  return l_push_result(L, sp__signal_watch(ll->loop, signum, token));
}

/* core.signal_name(n): the name of signal n in core.signals, or nil. */
static int l_signal_name(lua_State *L) {
  lua_Number n = luaL_checknumber(L, 1);
  int i;

  for (i = 0; l_signals[i].name != NULL; i++) {
    if (l_signals[i].signum == n) {
      lua_pushstring(L, l_signals[i].name);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

/* core.signals: name -> number. Leaves it on the stack. */
static void l_push_signals(lua_State *L) {
  int i;

  lua_newtable(L);
  for (i = 0; l_signals[i].name != NULL; i++) {
    lua_pushinteger(L, l_signals[i].signum);
    lua_setfield(L, -2, l_signals[i].name);
  }
}
