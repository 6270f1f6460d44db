/* sprun.core: the classic Lua C module of sprun, in one translation unit.
 *
 * The hot calls (breaker, health, retry, timers) go through the LuaJIT
 * FFI, which needs the sp_* symbols and the struct layouts of sprun.h.
 * This module is what `require "sprun.core"` loads: it carries the core
 * and the loop in the same shared object, gives the version and the
 * layout of every struct the FFI declares (llayout.c), and binds the loop
 * to Lua, one file per family of handles, luv-style: each is #included
 * here, below, and everything in them is static (see private.h).
 *
 * It also holds the only clock reads of sprun: sp_clock_ms and sp_clock_ns
 * are plain C functions called through the FFI.
 *
 * The rule: the exported names are the entry points and nothing else:
 * luaopen_sprun_core, the clocks, sp_loop_now_ms, sp_loop_clock and the
 * sp_lua_timer_* calls. The trap: the included files depend on the files
 * included before them, so their order below is the order of their
 * dependencies (util.c first, then the registry, then the loop).
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "private.h"

#include "util.c"
#include "lhandle.c"
#include "lloop.c"
#include "ltimer.c"
#include "lprocess.c"
#include "ltcp.c"
#include "ldns.c"
#include "lhttp.c"
#include "lresp.c"
#include "lsignal.c"
#include "llayout.c"

static uint64_t l_monotonic_ns(void) {
  struct timespec ts;

  /* CLOCK_MONOTONIC cannot fail with a valid pointer on Linux. */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

double sp_clock_ms(void) {
  return (double) (l_monotonic_ns() / 1000000u);
}

double sp_clock_ns(void) {
  return (double) l_monotonic_ns();
}

/* The methods of a loop, from every family. */
static const luaL_Reg l_loop_methods[] = {
  { "now", l_loop_now },
  { "step", l_loop_step },
  { "handle", l_loop_handle },
  { "handle_count", l_loop_handle_count },
  { "timer_count", l_loop_timer_count },
  { "closing_count", l_loop_closing_count },
  { "spawn", l_loop_spawn },
  { "tcp_connect", l_loop_tcp_connect },
  { "tcp_listen", l_loop_tcp_listen },
  { "pipe_open", l_loop_pipe_open },
  { "dns_resolve", l_loop_dns_resolve },
  { "http_request", l_loop_http_request },
  { "http_stats", l_loop_http_stats },
  { "signal_watch", l_loop_signal_watch },
  { "kill_children", l_loop_kill_children },
  { "park", l_loop_park },
  { "unpark", l_loop_unpark },
  { "close", l_loop_close },
  { NULL, NULL }
};

static const luaL_Reg l_functions[] = {
  { "layout", l_layout },
  { "loop_new", l_loop_new },
  { "signal_name", l_signal_name },
  { "uv_err_name", l_uv_err_name },
  { "uv_strerror", l_uv_strerror },
  { "stdio_take", l_stdio_take },
  { "url_parse", l_url_parse },
  { "resp_reader", l_resp_reader },
  { "resp_command", l_resp_command },
  { "hostname", l_hostname },
  { "pid", l_pid },
  { NULL, NULL }
};

int luaopen_sprun_core(lua_State *L) {
  int i;

  l_find_shim();
  l_new_metatable(L, LOOP_MT, l_loop_methods, l_loop_tostring, l_loop_close);
  l_new_metatable(L, PROC_MT, l_proc_methods, l_proc_tostring, NULL);
  l_new_metatable(L, TCP_MT, l_tcp_methods, l_tcp_tostring, NULL);
  l_new_metatable(L, DNS_MT, l_dns_methods, l_dns_tostring, l_dns_cancel);
  l_new_metatable(L, HTTP_MT, l_http_methods, l_http_tostring, l_http_close);
  l_new_metatable(L, RESP_MT, l_resp_methods, l_resp_tostring, l_resp_close);

  lua_newtable(L);
  luaL_register(L, NULL, l_functions);
  lua_pushstring(L, SP_VERSION_STRING);
  lua_setfield(L, -2, "version");
  l_push_signals(L);
  lua_setfield(L, -2, "signals");
  for (i = 0; l_events[i].name != NULL; i++) {
    lua_pushinteger(L, l_events[i].type);
    lua_setfield(L, -2, l_events[i].name);
  }
  return 1;
}
