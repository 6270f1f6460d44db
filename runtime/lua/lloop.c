/* The loop in Lua: the loop userdata of `sprun.core`, and the one
 * dispatcher every completion goes to.
 *
 * The rule: Lua never runs the loop through the FFI. loop:step runs it
 * here, and each event calls dispatch(token, type, a, b, data, handle)
 * through lua_pcall, on the Lua state that called step, with a traceback
 * handler. A dispatcher that raises gets its error and traceback printed
 * to stderr, and the loop goes on. A loop made with batch_timers gathers
 * the timer events instead, in order, and hands them over in one call,
 * dispatch(0, EV_TIMERS, n, 0, nil, list) with list[2i-1], list[2i] the
 * token and id of the i-th: before any other event, and at the end of the
 * step. A step that fires a thousand timers then makes one call, not a
 * thousand; a step that fires one dispatches it as usual.
 *
 * The trap: an event may close the loop's handles, or try to step or
 * close the loop itself; loop:step and loop:close refuse to run inside a
 * step (ll->L is set for its duration), and the registry (lhandle.c)
 * keeps every handle's userdata alive until its SP_EV_CLOSED. The open
 * loops are also listed here, newest first, for sp_loop_now_ms,
 * sp_loop_update_time and sp_loop_clock: a loop leaves the list when it closes, never later.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "private.h"

/* The open loops, newest first, for sp_loop_now_ms, and the newest one's
 * time for sp_loop_clock. */
static l_loop_t *open_loops;
static sp_loop_clock_t l_clock;

static void l_clock_update(void) {
  l_clock.now_ms = open_loops != NULL ? sp__loop_now_ptr(open_loops->loop)
                                      : NULL;
}

static void l_unlink(l_loop_t *ll) {
  if (ll->prev != NULL)
    ll->prev->next = ll->next;
  else
    open_loops = ll->next;
  if (ll->next != NULL)
    ll->next->prev = ll->prev;
  ll->prev = ll->next = NULL;
  l_clock_update();
}

static void l_link(l_loop_t *ll) {
  ll->next = open_loops;
  if (open_loops != NULL)
    open_loops->prev = ll;
  open_loops = ll;
  l_clock_update();
}

/* core.EV_*: the types of the events dispatch gets. */
static const struct {
  const char *name;
  int type;
} l_events[] = {
  { "EV_TIMER", SP_EV_TIMER },
  { "EV_PROC_STDOUT", SP_EV_PROC_STDOUT },
  { "EV_PROC_STDERR", SP_EV_PROC_STDERR },
  { "EV_PROC_CHANNEL", SP_EV_PROC_CHANNEL },
  { "EV_PROC_EXIT", SP_EV_PROC_EXIT },
  { "EV_WRITE", SP_EV_WRITE },
  { "EV_TCP_CONNECT", SP_EV_TCP_CONNECT },
  { "EV_TCP_DATA", SP_EV_TCP_DATA },
  { "EV_TCP_ACCEPT", SP_EV_TCP_ACCEPT },
  { "EV_SIGNAL", SP_EV_SIGNAL },
  { "EV_CLOSED", SP_EV_CLOSED },
  { "EV_DNS", SP_EV_DNS },
  { "EV_HTTP_BODY", SP_EV_HTTP_BODY },
  { "EV_HTTP_DONE", SP_EV_HTTP_DONE },
  { "EV_TIMERS", L_EV_TIMERS },
  { NULL, 0 }
};

/* The loop methods have the loop metatable as their upvalue:
 * l_check_loop, on every call (loop:step and loop:now come once a turn of
 * the scheduler), compares with it instead of looking the metatable up by
 * name as luaL_checkudata does. */
static l_loop_t *l_check_loop(lua_State *L, int idx) {
  l_loop_t *ll = lua_touserdata(L, idx);
  int same = 0;

  if (ll != NULL && lua_getmetatable(L, idx)) {
    same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
  }
  if (!same)
    luaL_typerror(L, idx, LOOP_MT);
  if (ll->loop == NULL)
    luaL_error(L, "sprun.core: loop is closed");
  return ll;
}

/* ---- the dispatcher ------------------------------------------------------ */

static int l_traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);

  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Calls dispatch with the 6 values on top of the stack, with the traceback
 * handler pushed below them at `base + 1`; leaves the stack at `base`. */
static void l_call_dispatch(lua_State *L, int base) {
  if (lua_pcall(L, 6, 0, base + 1) != 0) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "sprun: error in event dispatch: %s\n",
            msg != NULL ? msg : "(no message)");
    fflush(stderr);
  }
  lua_settop(L, base);
}

static void l_dispatch_event(l_loop_t *ll, uint64_t token,
                             const sp_event_t *ev);

/* Appends a timer event to the list of the step. */
static void l_push_timer(lua_State *L, l_loop_t *ll, uint64_t token,
                         int64_t id) {
  int i = 2 * ll->ntimers;

  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->timers_ref);
  lua_pushnumber(L, (lua_Number) token);
  lua_rawseti(L, -2, i + 1);
  lua_pushnumber(L, (lua_Number) id);
  lua_rawseti(L, -2, i + 2);
  lua_pop(L, 1);
  ll->ntimers++;
}

/* Gathers a timer event (see the top of this file). */
static void l_gather_timer(lua_State *L, l_loop_t *ll, uint64_t token,
                           const sp_event_t *ev) {
  if (ll->ntimers == 0) {
    ll->first_token = token;
    ll->first = *ev;
    ll->ntimers = 1;
    return;
  }
  if (ll->ntimers == 1) {
    ll->ntimers = 0;
    l_push_timer(L, ll, ll->first_token, ll->first.b);
  }
  l_push_timer(L, ll, token, ev->b);
}

/* Hands the gathered timer events over: one as itself, more in one call. */
static void l_flush_timers(l_loop_t *ll) {
  lua_State *L = ll->L;
  int n = ll->ntimers;
  int base;

  if (n == 0)
    return;
  ll->ntimers = 0;
  if (n == 1) {
    l_dispatch_event(ll, ll->first_token, &ll->first);
    return;
  }
  base = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->traceback_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->dispatch_ref);
  lua_pushnumber(L, 0);
  lua_pushinteger(L, L_EV_TIMERS);
  lua_pushinteger(L, n);
  lua_pushnumber(L, 0);
  lua_pushnil(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->timers_ref);
  l_call_dispatch(L, base);
}

static void l_on_event(void *ctx, uint64_t token, const sp_event_t *ev) {
  l_loop_t *ll = ctx;
  lua_State *L = ll->L;

  if (L == NULL)
    return;
  if (!lua_checkstack(L, 16)) {
    fprintf(stderr, "sprun: error in event dispatch: stack overflow\n");
    return;
  }
  if (ll->timers_ref != LUA_NOREF) {
    if (ev->type == SP_EV_TIMER && ll->ntimers < INT_MAX / 2) {
      l_gather_timer(L, ll, token, ev);
      return;
    }
    /* Events reach the dispatcher in the order they happened. */
    l_flush_timers(ll);
  }
  l_dispatch_event(ll, token, ev);
}

/* Calls dispatch(token, type, a, b, data, handle) for one event. */
static void l_dispatch_event(l_loop_t *ll, uint64_t token,
                             const sp_event_t *ev) {
  lua_State *L = ll->L;
  int base;

  base = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->traceback_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->dispatch_ref);
  lua_pushnumber(L, (lua_Number) token);
  lua_pushinteger(L, ev->type);
  lua_pushnumber(L, (lua_Number) ev->a);
  lua_pushnumber(L, (lua_Number) ev->b);
  if (ev->data != NULL && ev->len > 0)
    lua_pushlstring(L, ev->data, ev->len);
  else
    lua_pushnil(L);
  if (ev->handle == NULL) {
    lua_pushnil(L);
  } else if (ev->type == SP_EV_TCP_ACCEPT) {
    l_handle_t *h = l_new_handle(L, TCP_MT);
    l_register(L, ll, h, ev->handle);
  } else {
    l_push_handle(L, ll, ev->handle);
  }
  l_call_dispatch(L, base);
  if (ev->type == SP_EV_CLOSED && ev->handle != NULL)
    l_forget(L, ll, ev->handle);
  lua_settop(L, base);
}

/* ---- loop ---------------------------------------------------------------- */

/* core.loop_new(virtual, dispatch[, batch_timers]) */
static int l_loop_new(lua_State *L) {
  l_loop_t *ll;
  int batch;
  int err;

  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TBOOLEAN);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TBOOLEAN);
  batch = lua_toboolean(L, 3);
  lua_settop(L, 2);
  ll = lua_newuserdata(L, sizeof(*ll));
  memset(ll, 0, sizeof(*ll));
  ll->dispatch_ref = LUA_NOREF;
  ll->traceback_ref = LUA_NOREF;
  ll->handles_ref = LUA_NOREF;
  ll->timers_ref = LUA_NOREF;
  luaL_getmetatable(L, LOOP_MT);
  lua_setmetatable(L, -2);
  err = sp__loop_new(&ll->loop, lua_toboolean(L, 1), l_on_event, ll);
  if (err) {
    ll->loop = NULL;
    return l_push_error(L, err);
  }
  l_link(ll);
  lua_pushvalue(L, 2);
  ll->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, l_traceback);
  ll->traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  ll->handles_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (batch) {
    lua_newtable(L);
    ll->timers_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 1;
}

/* loop:park() -> true if the loop holds nothing (no handle, timer,
 * child, HTTP pool) and is now parked: out of the open loops (the clock
 * of sp_loop_now_ms no longer reads it), kept as it is for loop:unpark,
 * so that the next run skips making a loop. false, and nothing done,
 * otherwise. */
static int l_loop_park(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);

  if (ll->L != NULL)
    return luaL_error(L, "sprun.core: loop:park() called inside "
                         "loop:step()");
  if (ll->parked || ll->http != NULL || ll->ntimers != 0
      || !sp__loop_idle(ll->loop)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  l_unlink(ll);
  ll->parked = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* loop:unpark(): the parked loop is open again, its time brought up to
 * the real clock. */
static int l_loop_unpark(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);

  if (!ll->parked)
    return luaL_error(L, "sprun.core: loop:unpark() on a loop not parked");
  ll->parked = 0;
  sp__loop_update_time(ll->loop);
  l_link(ll);
  return 0;
}

/* Also the __gc: idempotent, and never called during a step by the
 * collector (the step holds the loop on the stack). */
static int l_loop_close(lua_State *L) {
  l_loop_t *ll = luaL_checkudata(L, 1, LOOP_MT);

  if (ll->loop == NULL)
    return 0;
  if (ll->L != NULL)
    return luaL_error(L, "sprun.core: loop:close() called inside "
                         "loop:step()");
  /* Its connections and polls go before the loop does. */
  if (ll->http != NULL) {
    sp_http_close(ll->http);
    ll->http = NULL;
  }
  sp__loop_free(ll->loop);
  ll->loop = NULL;
  if (ll->parked)
    ll->parked = 0;
  else
    l_unlink(ll);
  l_forget_all(L, ll);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->traceback_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->dispatch_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->timers_ref);
  ll->traceback_ref = ll->dispatch_ref = ll->timers_ref = LUA_NOREF;
  return 0;
}

static int l_loop_now(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);

  lua_pushnumber(L, (lua_Number) sp__loop_now(ll->loop));
  return 1;
}

static int l_loop_step(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  int more;

  if (ll->L != NULL)
    return luaL_error(L, "sprun.core: loop:step() called inside "
                         "loop:step()");
  ll->L = L;
  more = sp__loop_step(ll->loop, lua_toboolean(L, 2));
  if (ll->timers_ref != LUA_NOREF && lua_checkstack(L, 16))
    l_flush_timers(ll);
  ll->L = NULL;
  lua_pushboolean(L, more);
  return 1;
}

/* loop:handle(): the loop for the sp_lua_timer_* functions, as a light
 * userdata. It stays valid as long as the loop userdata lives; once the
 * loop is closed, the functions answer UV_EBADF. */
static int l_loop_handle(lua_State *L) {
  lua_pushlightuserdata(L, l_check_loop(L, 1));
  return 1;
}

/* loop:kill_children(): SIGKILL to the group of every child still
 * running, at once (the process is about to exit: see os.exit in
 * sprun.cli and the shutdown of sched.main). */
static int l_loop_kill_children(lua_State *L) {
  sp__loop_kill_children(l_check_loop(L, 1)->loop);
  return 0;
}

static int l_loop_handle_count(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  sp_http_stats_t hs;
  unsigned n = sp__loop_handle_count(ll->loop);

  /* HTTP requests not freed count as handles too. */
  if (ll->http != NULL) {
    sp_http_stats(ll->http, &hs);
    n += hs.live;
  }
  lua_pushnumber(L, n);
  return 1;
}

static int l_loop_closing_count(lua_State *L) {
  lua_pushnumber(L, sp__loop_closing_count(l_check_loop(L, 1)->loop));
  return 1;
}

static int l_loop_timer_count(lua_State *L) {
  lua_pushnumber(L, sp__loop_timer_count(l_check_loop(L, 1)->loop));
  return 1;
}

static int l_loop_tostring(lua_State *L) {
  l_loop_t *ll = luaL_checkudata(L, 1, LOOP_MT);

  lua_pushfstring(L, "sprun.core.loop (%s): %p",
                  ll->loop ? "open" : "closed", (void *) ll);
  return 1;
}

double sp_loop_now_ms(void) {
  if (open_loops != NULL)
    return (double) sp__loop_now(open_loops->loop);
  return (double) (uv_hrtime() / 1000000);
}

void sp_loop_update_time(void) {
  if (open_loops != NULL)
    sp__loop_update_time(open_loops->loop);
}

const sp_loop_clock_t *sp_loop_clock(void) {
  return &l_clock;
}
