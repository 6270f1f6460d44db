/* The loop part of `sprun.core`: the binding of runtime/loop to Lua. */
#ifndef SPRUN_LUA_LOOP_H
#define SPRUN_LUA_LOOP_H

#include <stdint.h>

#include <lua.h>

/* With the module table on top of the stack, adds loop_new, signals,
 * signal_name, uv_err_name, uv_strerror and the EV_* constants to it.
 * Leaves the stack as it was. */
int sp__lua_loop_open(lua_State *L);

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
 * loop.c). They run no Lua and no loop. Results are ids or counts as
 * doubles, or a negative libuv error code. */
double sp_lua_timer_after(void *h, double ms, double token, double seq);
double sp_lua_timer_add(void *h, double deadline, double token, double seq);
double sp_lua_timer_cancel(void *h, double id);
double sp_lua_timer_reserve(void *h);

#endif /* SPRUN_LUA_LOOP_H */
