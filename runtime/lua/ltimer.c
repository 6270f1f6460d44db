/* Timers in Lua: the scheduler's timer calls, through the FFI.
 *
 * The rule: a sleep, a timeout and their cancels run no Lua and no loop:
 * pure calls, which the FFI compiles into the caller's trace, where a
 * classic C function would end it. `h` is what loop:handle() gave (the
 * loop's l_loop_t); every number is a double, so that no call makes a
 * boxed 64-bit cdata. A result below 0 is a negative libuv error code
 * (UV_EBADF once the loop is closed). Declared in loop.h and, for the FFI,
 * in lua/sprun/ffi.lua.
 *
 * The trap: a timer must never fire early, so a deadline with a fraction
 * of a ms rounds up, never down.
 */
#include "private.h"

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
