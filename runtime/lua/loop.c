/* The loop in Lua: the loop, process and socket userdata of `sprun.core`,
 * and the one dispatcher every completion goes to.
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
 * The trap: a handle's userdata outlives the C handle. It holds the
 * pointer only until close() (or the handle's SP_EV_CLOSED), and from then
 * on every method answers nil, "EBADF" without touching freed memory. An
 * open handle sits in its loop's registry table (pointer -> userdata), so
 * it is never collected while libuv still uses it, and every event of a
 * handle carries the same userdata; the entry goes after SP_EV_CLOSED.
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "../loop/loop.h"
#include "loop.h"

#define LOOP_MT "sprun.core.loop"
#define PROC_MT "sprun.core.proc"
#define TCP_MT "sprun.core.tcp"

/* Tokens, ids and deadlines are Lua numbers: integers below 2^53. */
#define L_MAX_INT 9007199254740992.0

/* The type of a batch of timer events (not an sp_event_type_t). */
#define L_EV_TIMERS 100

typedef struct l_loop_s {
  sp_loop_t *loop; /* NULL once closed */
  lua_State *L;    /* the state running loop:step, NULL outside a step */
  int dispatch_ref;
  int traceback_ref;
  int handles_ref; /* lightuserdata pointer -> handle userdata */
  int timers_ref;  /* the list of gathered timer events, or LUA_NOREF */
  int ntimers;     /* timer events gathered and not yet dispatched */
  /* The first of them, kept here until a second one comes: a lone timer
   * is dispatched as an SP_EV_TIMER. */
  uint64_t first_token;
  sp_event_t first;
  struct l_loop_s *prev;
  struct l_loop_s *next;
} l_loop_t;

typedef struct l_handle_s {
  void *ptr; /* sp_proc_t or sp_tcp_t; NULL once closed */
  int pid;
} l_handle_t;

/* The open loops, newest first, for sp_loop_now_ms, and the newest one's
 * time for sp_loop_clock. */
static l_loop_t *open_loops;
static sp_loop_clock_t l_clock;

static void l_clock_update(void) {
  l_clock.now_ms = open_loops != NULL ? sp__loop_now_ptr(open_loops->loop)
                                      : NULL;
}

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

static const struct {
  const char *name;
  int type;
} l_events[] = {
  { "EV_TIMER", SP_EV_TIMER },
  { "EV_PROC_STDOUT", SP_EV_PROC_STDOUT },
  { "EV_PROC_STDERR", SP_EV_PROC_STDERR },
  { "EV_PROC_EXIT", SP_EV_PROC_EXIT },
  { "EV_WRITE", SP_EV_WRITE },
  { "EV_TCP_CONNECT", SP_EV_TCP_CONNECT },
  { "EV_TCP_DATA", SP_EV_TCP_DATA },
  { "EV_TCP_ACCEPT", SP_EV_TCP_ACCEPT },
  { "EV_SIGNAL", SP_EV_SIGNAL },
  { "EV_CLOSED", SP_EV_CLOSED },
  { "EV_TIMERS", L_EV_TIMERS },
  { NULL, 0 }
};

/* ---- helpers ------------------------------------------------------------- */

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

/* The loop methods have the loop metatable as their upvalue:
 * l_check_loop, on every timer call, compares with it instead of looking
 * the metatable up by name as luaL_checkudata does. */
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

/* Creates a handle userdata (left on the stack), not yet registered. */
static l_handle_t *l_new_handle(lua_State *L, const char *mt) {
  l_handle_t *h = lua_newuserdata(L, sizeof(*h));

  h->ptr = NULL;
  h->pid = 0;
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, -2);
  return h;
}

/* Binds the userdata on top of the stack to `ptr` and keeps it alive in
 * the loop's table until the handle's SP_EV_CLOSED. */
static void l_register(lua_State *L, l_loop_t *ll, l_handle_t *h, void *ptr) {
  h->ptr = ptr;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Pushes the userdata registered for `ptr`, or nil. */
static void l_push_handle(lua_State *L, l_loop_t *ll, void *ptr) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

static void l_forget(lua_State *L, l_loop_t *ll, void *ptr) {
  l_handle_t *h;

  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_rawget(L, -2);
  h = lua_touserdata(L, -1);
  if (h != NULL)
    h->ptr = NULL;
  lua_pop(L, 1);
  lua_pushlightuserdata(L, ptr);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
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
  ll->next = open_loops;
  if (open_loops != NULL)
    open_loops->prev = ll;
  open_loops = ll;
  l_clock_update();
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

/* Also the __gc: idempotent, and never called during a step by the
 * collector (the step holds the loop on the stack). */
static int l_loop_close(lua_State *L) {
  l_loop_t *ll = luaL_checkudata(L, 1, LOOP_MT);

  if (ll->loop == NULL)
    return 0;
  if (ll->L != NULL)
    return luaL_error(L, "sprun.core: loop:close() called inside "
                         "loop:step()");
  sp__loop_free(ll->loop);
  ll->loop = NULL;
  if (ll->prev != NULL)
    ll->prev->next = ll->next;
  else
    open_loops = ll->next;
  if (ll->next != NULL)
    ll->next->prev = ll->prev;
  ll->prev = ll->next = NULL;
  l_clock_update();
  /* Every handle is gone with the loop. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      l_handle_t *h = lua_touserdata(L, -1);
      if (h != NULL)
        h->ptr = NULL;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->handles_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->traceback_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->dispatch_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->timers_ref);
  ll->handles_ref = ll->traceback_ref = ll->dispatch_ref = LUA_NOREF;
  ll->timers_ref = LUA_NOREF;
  return 0;
}

static int l_loop_now(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);

  lua_pushnumber(L, (lua_Number) sp__loop_now(ll->loop));
  return 1;
}

static int l_loop_update_time(lua_State *L) {
  sp__loop_update_time(l_check_loop(L, 1)->loop);
  return 0;
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

/* Arms a timer for `deadline` (a number of ms, a fraction rounding up: a
 * timer never fires early) with the token at index `base` and, if given,
 * the seq at `base + 1` (from timer_reserve); pushes its id. */
static int l_add_timer(lua_State *L, l_loop_t *ll, lua_Number d, int base) {
  uint64_t deadline = (uint64_t) d;
  uint64_t token = l_check_uint(L, base, "token");
  uint64_t id;
  int err;

  if ((lua_Number) deadline < d)
    deadline++;
  if (lua_isnoneornil(L, base + 1))
    err = sp__timer_add(ll->loop, deadline, token, &id);
  else
    err = sp__timer_add_seq(ll->loop, deadline, token,
                            l_check_uint(L, base + 1, "seq"), &id);
  if (err)
    return l_push_error(L, err);
  lua_pushnumber(L, (lua_Number) id);
  return 1;
}

/* timer_add(deadline, token[, seq]), the arguments from index `base`. */
static int l_timer_add_at(lua_State *L, l_loop_t *ll, int base) {
  lua_Number d = luaL_checknumber(L, base);

  if (!(d >= 0 && d < L_MAX_INT))
    luaL_argerror(L, base, "deadline must be a number of ms in [0, 2^53)");
  return l_add_timer(L, ll, d, base + 1);
}

/* timer_after(ms, token[, seq]): timer_add for the deadline `ms` from the
 * loop's time, in one call (a sleep's cost is mostly its calls). A
 * deadline past the last one a timer takes is clamped to it: it is 285,000
 * years away either way. */
static int l_timer_after_at(lua_State *L, l_loop_t *ll, int base) {
  lua_Number ms = luaL_checknumber(L, base);
  lua_Number d;

  if (!(ms >= 0 && ms <= L_MAX_INT))
    luaL_argerror(L, base, "delay must be a number of ms in [0, 2^53]");
  d = (lua_Number) sp__loop_now(ll->loop) + ms;
  if (d > L_MAX_INT - 1)
    d = L_MAX_INT - 1;
  return l_add_timer(L, ll, d, base + 1);
}

/* timer_cancel(id): true if it was armed. */
static int l_timer_cancel_at(lua_State *L, l_loop_t *ll, int base) {
  lua_Number n = luaL_checknumber(L, base);
  int ok = 0;

  if (n >= 0 && n < L_MAX_INT && (lua_Number) (uint64_t) n == n)
    ok = sp__timer_cancel(ll->loop, (uint64_t) n) == 0;
  lua_pushboolean(L, ok);
  return 1;
}

/* timer_reserve(): a seq for timer_add or timer_after, whose timer then
 * fires before the timers of its deadline armed after this call. */
static int l_timer_reserve_of(lua_State *L, l_loop_t *ll) {
  lua_pushnumber(L, (lua_Number) sp__timer_reserve(ll->loop));
  return 1;
}

static int l_loop_timer_add(lua_State *L) {
  return l_timer_add_at(L, l_check_loop(L, 1), 2);
}

static int l_loop_timer_after(lua_State *L) {
  return l_timer_after_at(L, l_check_loop(L, 1), 2);
}

static int l_loop_timer_cancel(lua_State *L) {
  return l_timer_cancel_at(L, l_check_loop(L, 1), 2);
}

static int l_loop_timer_reserve(lua_State *L) {
  return l_timer_reserve_of(L, l_check_loop(L, 1));
}

/* ---- timers through the FFI ------------------------------------------------
 *
 * The scheduler's own timer calls (a sleep, a timeout, their cancels) run
 * no Lua and no loop: pure calls, which the FFI compiles into the caller's
 * trace, where a classic C function would end it. `h` is what loop:handle()
 * gave (the loop's l_loop_t); every number is a double, so that no call
 * makes a boxed 64-bit cdata. A result below 0 is a negative libuv error
 * code (UV_EBADF once the loop is closed). Declared in loop.h and, for the
 * FFI, in lua/sprun/ffi.lua. */

/* `seq` < 0: none (take the next). */
static double l_ffi_add(l_loop_t *ll, double d, double token, double seq) {
  uint64_t deadline;
  uint64_t id;
  int err;

  if (ll->loop == NULL)
    return UV_EBADF;
  if (!(d >= 0 && d < L_MAX_INT) || !(token >= 0 && token < L_MAX_INT) ||
      !(seq < L_MAX_INT))
    return UV_EINVAL;
  deadline = (uint64_t) d;
  if ((double) deadline < d)
    deadline++;
  if (seq < 0)
    err = sp__timer_add(ll->loop, deadline, (uint64_t) token, &id);
  else
    err = sp__timer_add_seq(ll->loop, deadline, (uint64_t) token,
                            (uint64_t) seq, &id);
  return err ? err : (double) id;
}

double sp_lua_timer_after(void *h, double ms, double token, double seq) {
  l_loop_t *ll = h;
  double d;

  if (ll->loop == NULL)
    return UV_EBADF;
  if (!(ms >= 0 && ms <= L_MAX_INT))
    return UV_EINVAL;
  d = (double) sp__loop_now(ll->loop) + ms;
  if (d > L_MAX_INT - 1)
    d = L_MAX_INT - 1;
  return l_ffi_add(ll, d, token, seq);
}

double sp_lua_timer_add(void *h, double deadline, double token, double seq) {
  return l_ffi_add(h, deadline, token, seq);
}

double sp_lua_timer_cancel(void *h, double id) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  if (!(id >= 0 && id < L_MAX_INT) || (double) (uint64_t) id != id)
    return UV_ENOENT;
  return sp__timer_cancel(ll->loop, (uint64_t) id);
}

double sp_lua_timer_reserve(void *h) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  return (double) sp__timer_reserve(ll->loop);
}

/* loop:handle(): the loop for the sp_lua_timer_* functions, as a light
 * userdata. It stays valid as long as the loop userdata lives; once the
 * loop is closed, the functions answer UV_EBADF. */
static int l_loop_handle(lua_State *L) {
  lua_pushlightuserdata(L, l_check_loop(L, 1));
  return 1;
}

static int l_loop_handle_count(lua_State *L) {
  lua_pushnumber(L, sp__loop_handle_count(l_check_loop(L, 1)->loop));
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
                    "file, args, env, cwd, stdin)",
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

  h = l_new_handle(L, PROC_MT);
  err = sp__proc_spawn(ll->loop, &opts, token, &proc, &pid);
  if (err)
    return l_push_error(L, err);
  h->pid = pid;
  l_register(L, ll, h, proc);
  lua_pushinteger(L, pid);
  return 2;
}

static int l_loop_tcp_connect(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = l_check_int(L, 3, 1, 65535, "port");
  uint64_t token = l_check_uint(L, 4, "token");
  sp_tcp_t *tcp;
  l_handle_t *h;
  int err;

  h = l_new_handle(L, TCP_MT);
  err = sp__tcp_connect(ll->loop, host, port, token, &tcp);
  if (err)
    return l_push_error(L, err);
  l_register(L, ll, h, tcp);
  return 1;
}

static int l_loop_tcp_listen(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = l_check_int(L, 3, 0, 65535, "port");
  int backlog = 128;
  uint64_t token = l_check_uint(L, 5, "token");
  sp_tcp_t *tcp;
  l_handle_t *h;
  int bound;
  int err;

  if (!lua_isnoneornil(L, 4))
    backlog = l_check_int(L, 4, 1, 65535, "backlog");
  h = l_new_handle(L, TCP_MT);
  err = sp__tcp_listen(ll->loop, host, port, backlog, token, &tcp, &bound);
  if (err)
    return l_push_error(L, err);
  l_register(L, ll, h, tcp);
  lua_pushinteger(L, bound);
  return 2;
}

static int l_loop_signal_watch(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  int signum = l_check_signal(L, 2);
  uint64_t token = l_check_uint(L, 3, "token");

  return l_push_result(L, sp__signal_watch(ll->loop, signum, token));
}

static int l_loop_tostring(lua_State *L) {
  l_loop_t *ll = luaL_checkudata(L, 1, LOOP_MT);

  lua_pushfstring(L, "sprun.core.loop (%s): %p",
                  ll->loop ? "open" : "closed", (void *) ll);
  return 1;
}

/* ---- processes ----------------------------------------------------------- */

static int l_proc_write(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t token = l_check_uint(L, 3, "write token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__proc_write(h->ptr, data, len, token));
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

static int l_proc_close(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, PROC_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  sp__proc_close(h->ptr);
  h->ptr = NULL;
  lua_pushboolean(L, 1);
  return 1;
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

/* ---- sockets ------------------------------------------------------------- */

static int l_tcp_set_token(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);
  uint64_t token = l_check_uint(L, 2, "token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  sp__tcp_set_token(h->ptr, token);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_tcp_read_start(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_read_start(h->ptr));
}

static int l_tcp_read_stop(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_read_stop(h->ptr));
}

static int l_tcp_write(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t token = l_check_uint(L, 3, "write token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_write(h->ptr, data, len, token));
}

static int l_tcp_close(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  sp__tcp_close(h->ptr);
  h->ptr = NULL;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_tcp_tostring(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  lua_pushfstring(L, "sprun.core.tcp (%s): %p", h->ptr ? "open" : "closed",
                  (void *) h);
  return 1;
}

/* ---- module -------------------------------------------------------------- */

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

static int l_uv_err_name(lua_State *L) {
  int err = l_check_int(L, 1, -100000, 0, "error code");

  if (err == 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, uv_err_name(err));
  return 1;
}

static int l_uv_strerror(lua_State *L) {
  int err = l_check_int(L, 1, -100000, 0, "error code");

  if (err == 0)
    lua_pushnil(L);
  else
    lua_pushstring(L, uv_strerror(err));
  return 1;
}

double sp_loop_now_ms(void) {
  if (open_loops != NULL)
    return (double) sp__loop_now(open_loops->loop);
  return (double) (uv_hrtime() / 1000000);
}

const sp_loop_clock_t *sp_loop_clock(void) {
  return &l_clock;
}

static const luaL_Reg l_loop_methods[] = {
  { "now", l_loop_now },
  { "update_time", l_loop_update_time },
  { "step", l_loop_step },
  { "timer_add", l_loop_timer_add },
  { "timer_after", l_loop_timer_after },
  { "timer_reserve", l_loop_timer_reserve },
  { "handle", l_loop_handle },
  { "timer_cancel", l_loop_timer_cancel },
  { "handle_count", l_loop_handle_count },
  { "timer_count", l_loop_timer_count },
  { "closing_count", l_loop_closing_count },
  { "spawn", l_loop_spawn },
  { "tcp_connect", l_loop_tcp_connect },
  { "tcp_listen", l_loop_tcp_listen },
  { "signal_watch", l_loop_signal_watch },
  { "close", l_loop_close },
  { NULL, NULL }
};

static const luaL_Reg l_proc_methods[] = {
  { "write", l_proc_write },
  { "close_stdin", l_proc_close_stdin },
  { "kill", l_proc_kill },
  { "close", l_proc_close },
  { "pid", l_proc_pid },
  { NULL, NULL }
};

static const luaL_Reg l_tcp_methods[] = {
  { "set_token", l_tcp_set_token },
  { "read_start", l_tcp_read_start },
  { "read_stop", l_tcp_read_stop },
  { "write", l_tcp_write },
  { "close", l_tcp_close },
  { NULL, NULL }
};

/* The methods get the metatable as their one upvalue (see l_check_loop). */
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

int sp__lua_loop_open(lua_State *L) {
  int i;

  l_new_metatable(L, LOOP_MT, l_loop_methods, l_loop_tostring, l_loop_close);
  l_new_metatable(L, PROC_MT, l_proc_methods, l_proc_tostring, NULL);
  l_new_metatable(L, TCP_MT, l_tcp_methods, l_tcp_tostring, NULL);

  lua_pushcfunction(L, l_loop_new);
  lua_setfield(L, -2, "loop_new");
  lua_pushcfunction(L, l_signal_name);
  lua_setfield(L, -2, "signal_name");
  lua_pushcfunction(L, l_uv_err_name);
  lua_setfield(L, -2, "uv_err_name");
  lua_pushcfunction(L, l_uv_strerror);
  lua_setfield(L, -2, "uv_strerror");
  lua_newtable(L);
  for (i = 0; l_signals[i].name != NULL; i++) {
    lua_pushinteger(L, l_signals[i].signum);
    lua_setfield(L, -2, l_signals[i].name);
  }
  lua_setfield(L, -2, "signals");
  for (i = 0; l_events[i].name != NULL; i++) {
    lua_pushinteger(L, l_events[i].type);
    lua_setfield(L, -2, l_events[i].name);
  }
  return 0;
}
