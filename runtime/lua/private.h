/* Private to the module sprun.core: what its binding files share.
 *
 * module.c is the one translation unit of the module; it #includes util.c,
 * lhandle.c, lloop.c, ltimer.c, lprocess.c, ltcp.c, ldns.c, lhttp.c,
 * lresp.c, lsignal.c and llayout.c, and everything in them is static. Only the entry points are
 * exported, each declared in the header its callers read: sprun_lua.h for
 * the program that embeds the module (luaopen_sprun_core and the clocks),
 * loop.h for the loop's FFI surface (sp_loop_now_ms, sp_loop_clock and the
 * sp_lua_timer_* calls, mirrored in lua/sprun/ffi.lua). This header holds
 * the rest: the two userdata types, the metatable names and the limits.
 *
 * The trap: the included files are not compiled on their own. Each one
 * includes this header for the types it uses, but a static function it
 * calls from another file must come from a file included before it:
 * module.c includes them in the order of their dependencies.
 */
#ifndef SPRUN_LUA_PRIVATE_H
#define SPRUN_LUA_PRIVATE_H

#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "sprun.h"
#include "../loop/loop.h"
#include "loop.h"
#include "sprun_lua.h"

#define LOOP_MT "sprun.core.loop"
#define PROC_MT "sprun.core.proc"
#define TCP_MT "sprun.core.tcp"

/* Tokens, ids and deadlines are Lua numbers: integers below 2^53. */
#define L_MAX_INT 9007199254740992.0

/* The type of a batch of timer events (not an sp_event_type_t). */
#define L_EV_TIMERS 100

/* A loop userdata (lloop.c). Its address is also the loop's handle for the
 * sp_lua_timer_* calls (ltimer.c). */
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
  /* The loop's HTTP connection pool (lhttp.c), made at the first request
   * and closed with the loop; NULL until then. */
  sp_http_t *http;
  /* 1 while parked (loop:park): out of the open loops' list, kept for
   * the next run. */
  int parked;
  struct l_loop_s *prev;
  struct l_loop_s *next;
} l_loop_t;

/* A process or socket userdata (lhandle.c). */
typedef struct l_handle_s {
  void *ptr; /* sp_proc_t or sp_tcp_t; NULL once closed */
  int pid;
} l_handle_t;

#endif /* SPRUN_LUA_PRIVATE_H */
