/* sprun: the Lua C module `sprun.core` and the clock the Lua layer reads.
 *
 * runtime/core never reads a clock: every caller passes the time in. The
 * Lua layer reads it here, through the FFI, so there is one place that
 * decides what "now" is.
 */
#ifndef SPRUN_LUA_H
#define SPRUN_LUA_H

#include <lua.h>

int luaopen_sprun_core(lua_State *L);

/* CLOCK_MONOTONIC in whole milliseconds. */
double sp_clock_ms(void);
/* CLOCK_MONOTONIC in nanoseconds, for measuring durations. */
double sp_clock_ns(void);

#endif /* SPRUN_LUA_H */
