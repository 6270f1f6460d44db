/* core.layout(): the size of every struct that lua/sprun/ffi.lua declares,
 * and the offset of each of its fields, as the C compiler laid them out.
 *
 * The rule: the FFI declarations are a copy of sprun.h, and a copy drifts;
 * tests/lua/ffi_layout_spec.lua compares this table with what ffi.sizeof
 * and ffi.offsetof say of the copy, field by field.
 *
 * The trap: a field missing here is a field nobody checks. A field added
 * to a struct of sprun.h goes into its list below as well.
 */
#include <stddef.h>

#include "private.h"

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
  L_FIELD(sp_breaker_t, half_open_admitted),
  L_FIELD(sp_breaker_t, failures_since_close),
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

static const l_field_t l_adaptive_config_fields[] = {
  L_FIELD(sp_adaptive_config_t, algorithm),
  L_FIELD(sp_adaptive_config_t, queue_mode),
  L_FIELD(sp_adaptive_config_t, min_limit),
  L_FIELD(sp_adaptive_config_t, max_limit),
  L_FIELD(sp_adaptive_config_t, initial_limit),
  L_FIELD(sp_adaptive_config_t, long_window),
  L_FIELD(sp_adaptive_config_t, backoff_ratio),
  L_FIELD(sp_adaptive_config_t, timeout_ms),
  L_FIELD(sp_adaptive_config_t, rtt_tolerance),
  L_FIELD(sp_adaptive_config_t, smoothing),
  L_FIELD(sp_adaptive_config_t, queue_size),
  L_FIELD(sp_adaptive_config_t, window_ms),
  L_FIELD(sp_adaptive_config_t, window_min_samples),
  L_FIELD(sp_adaptive_config_t, pad_),
  { NULL, 0 }
};

static const l_field_t l_adaptive_fields[] = {
  L_FIELD(sp_adaptive_t, config),
  L_FIELD(sp_adaptive_t, limit),
  L_FIELD(sp_adaptive_t, in_flight),
  L_FIELD(sp_adaptive_t, max_in_flight),
  L_FIELD(sp_adaptive_t, acquired),
  L_FIELD(sp_adaptive_t, rejected),
  L_FIELD(sp_adaptive_t, successes),
  L_FIELD(sp_adaptive_t, dropped),
  L_FIELD(sp_adaptive_t, ignored),
  L_FIELD(sp_adaptive_t, updates),
  L_FIELD(sp_adaptive_t, long_rtt),
  L_FIELD(sp_adaptive_t, short_rtt),
  L_FIELD(sp_adaptive_t, gradient),
  L_FIELD(sp_adaptive_t, long_count_),
  L_FIELD(sp_adaptive_t, window_count_),
  L_FIELD(sp_adaptive_t, long_sum_),
  L_FIELD(sp_adaptive_t, window_rtt_sum_),
  L_FIELD(sp_adaptive_t, window_start_),
  L_FIELD(sp_adaptive_t, window_in_flight_),
  L_FIELD(sp_adaptive_t, window_dropped_),
  { NULL, 0 }
};

static const l_field_t l_rate_config_fields[] = {
  L_FIELD(sp_rate_config_t, rate),
  L_FIELD(sp_rate_config_t, per_ms),
  L_FIELD(sp_rate_config_t, burst),
  { NULL, 0 }
};

static const l_field_t l_rate_state_fields[] = {
  L_FIELD(sp_rate_state_t, last_ms_),
  L_FIELD(sp_rate_state_t, ahead_),
  L_FIELD(sp_rate_state_t, seq_),
  { NULL, 0 }
};

static const l_field_t l_rate_fields[] = {
  L_FIELD(sp_rate_t, config),
  L_FIELD(sp_rate_t, rate_num),
  L_FIELD(sp_rate_t, rate_den),
  L_FIELD(sp_rate_t, taken),
  L_FIELD(sp_rate_t, rejected),
  L_FIELD(sp_rate_t, reserved),
  L_FIELD(sp_rate_t, refused),
  L_FIELD(sp_rate_t, returned),
  L_FIELD(sp_rate_t, state),
  L_FIELD(sp_rate_t, unit_ms_),
  L_FIELD(sp_rate_t, interval_),
  L_FIELD(sp_rate_t, limit_),
  L_FIELD(sp_rate_t, seq_),
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
  { "sp_adaptive_config_t", sizeof(sp_adaptive_config_t),
    l_adaptive_config_fields },
  { "sp_adaptive_t", sizeof(sp_adaptive_t), l_adaptive_fields },
  { "sp_rate_config_t", sizeof(sp_rate_config_t), l_rate_config_fields },
  { "sp_rate_state_t", sizeof(sp_rate_state_t), l_rate_state_fields },
  { "sp_rate_t", sizeof(sp_rate_t), l_rate_fields },
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
