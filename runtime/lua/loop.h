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

/* The same time without a call: while a loop is open, `now_ms` points at
 * the newest open loop's time in ms; it is NULL when none is, and readers
 * then call sp_loop_now_ms. The struct lives as long as the program. */
typedef struct {
  const uint64_t *now_ms;
} sp_loop_clock_t;

const sp_loop_clock_t *sp_loop_clock(void);

/* The scheduler's timer calls, for the FFI: `h` is a loop's handle (see
 * loop:handle() in lloop.c). They run no Lua and no loop. Results are ids
 * or counts as doubles, or a negative libuv error code. */
double sp_lua_timer_after(void *h, double ms, double token, double seq);
double sp_lua_timer_add(void *h, double deadline, double token, double seq);
double sp_lua_timer_cancel(void *h, double id);
double sp_lua_timer_reserve(void *h);

#endif /* SPRUN_LUA_LOOP_H */
