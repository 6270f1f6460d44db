/* The loop part of `sprun.core` that the FFI calls: the loop's time and
 * the scheduler's timer calls, each mirrored in lua/sprun/ffi.lua. The
 * binding itself (runtime/lua/lloop.c and its siblings) is static.
 */
#ifndef SPRUN_LUA_LOOP_H
#define SPRUN_LUA_LOOP_H

#include <stdint.h>

/* The time of the most recently created loop that is still open, in ms, or
 * the monotonic clock in whole ms when no loop is open. For the FFI. */
double sp_loop_now_ms(void);

/* Brings the newest open loop's time up to the monotonic clock now, as
 * uv_update_time does (a virtual clock is left alone: it moves only when
 * the loop jumps it). No loop open: nothing to do. The loop's time is
 * otherwise updated once per turn, so it does not move during a long
 * CPU-bound stretch of Lua. */
void sp_loop_update_time(void);

/* The same time without a call: while a loop is open, `now_ms` points at
 * the newest open loop's time in ms; it is NULL when none is, and readers
 * then call sp_loop_now_ms. The struct lives as long as the program. */
typedef struct {
  const uint64_t *now_ms;
} sp_loop_clock_t;

const sp_loop_clock_t *sp_loop_clock(void);

/* The scheduler's timer calls, for the FFI (ltimer.c): `h` is a loop's
 * handle (loop:handle() in lloop.c). They run no Lua and no loop. Every
 * number is a double; a token, an id or a seq is an integer in [0, 2^53).
 * A result below 0 is a negative libuv error code: UV_EBADF once the loop
 * is closed, UV_EINVAL for an argument out of range. */

/* The absolute deadline of a timer `ms` from the loop's time, as
 * sp_lua_timer_after arms it: now + ms, at most 2^53 - 1, a fraction
 * rounded up to the next whole ms. UV_EINVAL unless 0 <= ms <= 2^53 (a
 * negative ms, NaN, infinity). */
double sp_lua_timer_deadline(void *h, double ms);
/* Arms a timer for sp_lua_timer_deadline(h, ms) with `token`; returns its
 * id. `seq` is a place from sp_lua_timer_reserve, or -1 (any value below
 * 0) for the next place; UV_EINVAL for a seq never handed out. */
double sp_lua_timer_after(void *h, double ms, double token, double seq);
/* The same for an absolute `deadline` in [0, 2^53) ms, a fraction rounded
 * up. */
double sp_lua_timer_add(void *h, double deadline, double token, double seq);
/* Disarms timer `id`: 0, or UV_ENOENT if it fired, was cancelled, or is
 * not an id at all. */
double sp_lua_timer_cancel(void *h, double id);
/* A place among equal deadlines, taken now: the timer armed with it fires
 * before the timers of its deadline armed after this call. */
double sp_lua_timer_reserve(void *h);

#endif /* SPRUN_LUA_LOOP_H */
