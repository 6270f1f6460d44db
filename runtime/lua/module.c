/* sprun.core: the classic Lua C module of sprun.
 *
 * The hot calls (breaker, health, retry) go through the LuaJIT FFI, which
 * needs the sp_* symbols and the struct layouts of sprun.h. This module is
 * what `require "sprun.core"` loads: it carries the core in the same shared
 * object, gives the version, and describes the layout of every struct the
 * FFI declares, so a test can check that lua/sprun/ffi.lua matches the C
 * header field by field.
 *
 * It also holds the only clock reads of sprun: sp_clock_ms and sp_clock_ns
 * are plain C functions called through the FFI.
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "sprun.h"
#include "sprun_lua.h"
#include "loop.h"

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

typedef struct {
  const char *name;
  size_t offset;
} l_field_t;

typedef struct {
  const char *name;
  size_t size;
  const l_field_t *fields;
} l_struct_t;

#define L_FIELD(type, field) { #field, offsetof(type, field) }

static const l_field_t l_breaker_config_fields[] = {
  L_FIELD(sp_breaker_config_t, failure_threshold),
  L_FIELD(sp_breaker_config_t, half_open_max_calls),
  L_FIELD(sp_breaker_config_t, reset_timeout_ms),
  L_FIELD(sp_breaker_config_t, window_type),
  L_FIELD(sp_breaker_config_t, window_size),
  L_FIELD(sp_breaker_config_t, window_ms),
  L_FIELD(sp_breaker_config_t, window_buckets),
  L_FIELD(sp_breaker_config_t, min_calls),
  L_FIELD(sp_breaker_config_t, failure_rate),
  L_FIELD(sp_breaker_config_t, slow_call_rate),
  L_FIELD(sp_breaker_config_t, slow_call_ms),
  { NULL, 0 }
};

static const l_field_t l_breaker_bucket_fields[] = {
  L_FIELD(sp_breaker_bucket_t, epoch),
  L_FIELD(sp_breaker_bucket_t, calls),
  L_FIELD(sp_breaker_bucket_t, failures),
  L_FIELD(sp_breaker_bucket_t, slow),
  L_FIELD(sp_breaker_bucket_t, pad_),
  { NULL, 0 }
};

static const l_field_t l_breaker_fields[] = {
  L_FIELD(sp_breaker_t, config),
  L_FIELD(sp_breaker_t, state),
  L_FIELD(sp_breaker_t, generation),
  L_FIELD(sp_breaker_t, failure_count),
  L_FIELD(sp_breaker_t, success_count),
  L_FIELD(sp_breaker_t, half_open_calls),
  L_FIELD(sp_breaker_t, opened_at_ms),
  L_FIELD(sp_breaker_t, rejected_count),
  L_FIELD(sp_breaker_t, total_successes),
  L_FIELD(sp_breaker_t, total_failures),
  L_FIELD(sp_breaker_t, ignored_count),
  L_FIELD(sp_breaker_t, window_calls),
  L_FIELD(sp_breaker_t, window_failures),
  L_FIELD(sp_breaker_t, window_slow),
  L_FIELD(sp_breaker_t, open_reason),
  L_FIELD(sp_breaker_t, head_),
  L_FIELD(sp_breaker_t, epoch_),
  L_FIELD(sp_breaker_t, ring_),
  L_FIELD(sp_breaker_t, buckets_),
  { NULL, 0 }
};

static const l_field_t l_health_config_fields[] = {
  L_FIELD(sp_health_config_t, max_crashes),
  L_FIELD(sp_health_config_t, max_workers),
  L_FIELD(sp_health_config_t, crash_window_ms),
  { NULL, 0 }
};

static const l_field_t l_worker_stats_fields[] = {
  L_FIELD(sp_worker_stats_t, crashes_in_window),
  L_FIELD(sp_worker_stats_t, pad_),
  L_FIELD(sp_worker_stats_t, total_crashes),
  L_FIELD(sp_worker_stats_t, last_crash_ms),
  { NULL, 0 }
};

static const l_field_t l_health_fields[] = {
  L_FIELD(sp_health_t, config),
  L_FIELD(sp_health_t, total_crashes),
  L_FIELD(sp_health_t, crashes_in_window),
  L_FIELD(sp_health_t, workers_with_crashes),
  L_FIELD(sp_health_t, worker_count),
  L_FIELD(sp_health_t, head_),
  L_FIELD(sp_health_t, latest_),
  L_FIELD(sp_health_t, times_),
  L_FIELD(sp_health_t, owners_),
  L_FIELD(sp_health_t, slots_),
  L_FIELD(sp_health_t, idle_head_),
  L_FIELD(sp_health_t, idle_tail_),
  L_FIELD(sp_health_t, free_head_),
  { NULL, 0 }
};

static const l_field_t l_retry_config_fields[] = {
  L_FIELD(sp_retry_config_t, max_attempts),
  L_FIELD(sp_retry_config_t, backoff_count),
  L_FIELD(sp_retry_config_t, backoff_ms),
  L_FIELD(sp_retry_config_t, backoff),
  L_FIELD(sp_retry_config_t, base_backoff_ms),
  L_FIELD(sp_retry_config_t, multiplier),
  L_FIELD(sp_retry_config_t, max_backoff_ms),
  L_FIELD(sp_retry_config_t, jitter),
  L_FIELD(sp_retry_config_t, jitter_factor),
  L_FIELD(sp_retry_config_t, seed),
  { NULL, 0 }
};

static const l_field_t l_retry_fields[] = {
  L_FIELD(sp_retry_t, config),
  L_FIELD(sp_retry_t, rng_),
  L_FIELD(sp_retry_t, previous_),
  { NULL, 0 }
};

static const l_struct_t l_structs[] = {
  { "sp_breaker_config_t", sizeof(sp_breaker_config_t),
    l_breaker_config_fields },
  { "sp_breaker_bucket_t", sizeof(sp_breaker_bucket_t),
    l_breaker_bucket_fields },
  { "sp_breaker_t", sizeof(sp_breaker_t), l_breaker_fields },
  { "sp_health_config_t", sizeof(sp_health_config_t),
    l_health_config_fields },
  { "sp_worker_stats_t", sizeof(sp_worker_stats_t), l_worker_stats_fields },
  { "sp_health_t", sizeof(sp_health_t), l_health_fields },
  { "sp_retry_config_t", sizeof(sp_retry_config_t), l_retry_config_fields },
  { "sp_retry_t", sizeof(sp_retry_t), l_retry_fields },
  { NULL, 0, NULL }
};

/* layout() -> { struct_name = { size = N, offsets = { field = N, ... } } } */
static int l_layout(lua_State *L) {
  const l_struct_t *s;
  const l_field_t *f;

  lua_newtable(L);
  for (s = l_structs; s->name != NULL; s++) {
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, (lua_Number) s->size);
    lua_setfield(L, -2, "size");
    lua_newtable(L);
    for (f = s->fields; f->name != NULL; f++) {
      lua_pushnumber(L, (lua_Number) f->offset);
      lua_setfield(L, -2, f->name);
    }
    lua_setfield(L, -2, "offsets");
    lua_setfield(L, -2, s->name);
  }
  return 1;
}

static const luaL_Reg l_functions[] = {
  { "layout", l_layout },
  { NULL, NULL }
};

int luaopen_sprun_core(lua_State *L) {
  lua_newtable(L);
  luaL_register(L, NULL, l_functions);
  lua_pushstring(L, SP_VERSION_STRING);
  lua_setfield(L, -2, "version");
  sp__lua_loop_open(L);
  return 1;
}
