/* Timers in Lua: the scheduler's timer calls, through the FFI, and the one
 * clamp of a deadline.
 *
 * The rule: a sleep, a timeout and their cancels run no Lua and no loop:
 * pure calls, which the FFI compiles into the caller's trace, where a
 * classic C function would end it. `h` is what loop:handle() gave (the
 * loop's l_loop_t); every number is a double, so that no call makes a
 * boxed 64-bit cdata. A result below 0 is a negative libuv error code
 * (UV_EBADF once the loop is closed, UV_EINVAL for a number out of range).
 * Declared in loop.h and, for the FFI, in lua/sprun/ffi.lua.
 *
 * The deadline `ms` from the loop's time is computed in one place,
 * l_deadline: the loop's now + ms, clamped to the last deadline a timer
 * takes (2^53 - 1 ms: it is 285,000 years away either way), a fraction
 * rounded up. sp_lua_timer_after arms it; sp_lua_timer_deadline gives it
 * to Lua, which then never computes it again.
 *
 * The trap: a timer must never fire early, so a deadline with a fraction
 * of a ms rounds up, never down. And the numbers come from Lua, where NaN
 * is a number: every check is written !(what is valid), which NaN fails.
 */
#include "private.h"

/* The whole ms at or after `d`, for 0 <= d < 2^53. */
static uint64_t l_ceil_ms(double d) {
  uint64_t ms = (uint64_t) d;

  if ((double) ms < d)
    ms++;
  return ms;
}

/* An integer in [0, 2^53), as tokens, ids and seqs are. */
static int l_is_uint(double n) {
  return n >= 0 && n < L_MAX_INT && (double) (uint64_t) n == n;
}

/* The deadline `ms` from the loop's time (see the top of this file), or
 * UV_EINVAL unless 0 <= ms <= 2^53. The loop is open. */
static double l_deadline(const l_loop_t *ll, double ms) {
  double d;

  if (!(ms >= 0 && ms <= L_MAX_INT))
    return UV_EINVAL;
  d = (double) sp__loop_now(ll->loop) + ms;
  if (d > L_MAX_INT - 1)
    d = L_MAX_INT - 1;
  return (double) l_ceil_ms(d);
}

/* Arms a timer for the whole ms `deadline`, with `seq` (from
 * sp_lua_timer_reserve) or, if `seq` < 0, none: the next place. */
static double l_arm(l_loop_t *ll, uint64_t deadline, double token,
                    double seq) {
  uint64_t id;
  int err;

  if (!l_is_uint(token) || !(seq < 0 || l_is_uint(seq)))
    return UV_EINVAL;
  if (seq < 0)
    err = sp__timer_add(ll->loop, deadline, (uint64_t) token, &id);
  else
    err = sp__timer_add_seq(ll->loop, deadline, (uint64_t) token,
                            (uint64_t) seq, &id);
  return err ? err : (double) id;
}

double sp_lua_timer_deadline(void *h, double ms) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  return l_deadline(ll, ms);
}

double sp_lua_timer_after(void *h, double ms, double token, double seq) {
  l_loop_t *ll = h;
  double d;

  if (ll->loop == NULL)
    return UV_EBADF;
  d = l_deadline(ll, ms);
  if (d < 0)
    return d;
  return l_arm(ll, (uint64_t) d, token, seq);
}

double sp_lua_timer_add(void *h, double deadline, double token, double seq) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  if (!(deadline >= 0 && deadline < L_MAX_INT))
    return UV_EINVAL;
  return l_arm(ll, l_ceil_ms(deadline), token, seq);
}

double sp_lua_timer_cancel(void *h, double id) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  if (!l_is_uint(id))
    return UV_ENOENT;
  return sp__timer_cancel(ll->loop, (uint64_t) id);
}

double sp_lua_timer_reserve(void *h) {
  l_loop_t *ll = h;

  if (ll->loop == NULL)
    return UV_EBADF;
  return (double) sp__timer_reserve(ll->loop);
}
