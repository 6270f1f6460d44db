/* test-list.h: every C test of the core, in the order the runner runs them.
 *
 * A new TEST_IMPL(name) in a tests/c/test-*.c file must be listed here too,
 * or the runner never calls it: the list, not the files, is what runs.
 */
#ifndef TEST_LIST_H
#define TEST_LIST_H

#define TEST_LIST(XX)                                                        \
  XX(errors_names_and_messages)                                              \
  XX(errors_unknown)                                                         \
  XX(errors_version)                                                         \
  XX(breaker_init_validation)                                                \
  XX(breaker_state_names)                                                    \
  XX(breaker_closed_admits_every_call)                                       \
  XX(breaker_threshold_one)                                                  \
  XX(breaker_threshold_five_success_resets_count)                            \
  XX(breaker_timeout_counts_from_opening)                                    \
  XX(breaker_timeout_boundary)                                               \
  XX(breaker_half_open_max_zero_closes_at_once)                              \
  XX(breaker_half_open_one_probe)                                            \
  XX(breaker_half_open_three_probes)                                         \
  XX(breaker_failed_probe_reopens)                                           \
  XX(breaker_snakepit_counts)                                                \
  XX(breaker_late_success_after_open_ignored)                                \
  XX(breaker_late_failure_after_close_ignored)                               \
  XX(breaker_neutral_returns_permit_without_counting)                        \
  XX(breaker_record_rejects_unknown_outcome)                                 \
  XX(breaker_half_open_permits_never_negative)                               \
  XX(breaker_manual_records)                                                 \
  XX(breaker_reset)                                                          \
  XX(breaker_time_going_backwards)                                           \
  XX(breaker_counts_saturate)                                                \
  XX(breaker_generation_changes_at_every_transition)                         \
  XX(breaker_mask_half_open_closed_opened)                                   \
  XX(breaker_window_init_validation)                                     \
  XX(breaker_window_count_failure_rate_exact)                            \
  XX(breaker_window_min_calls)                                           \
  XX(breaker_window_count_ring_eviction)                                 \
  XX(breaker_window_slow_call_rate)                                      \
  XX(breaker_window_time_buckets_expire)                                 \
  XX(breaker_window_time_end_of_clock)                                   \
  XX(breaker_window_half_open_and_close_reset)                           \
  XX(breaker_manual_states)                                              \
  XX(breaker_manual_states_rate_window)                                  \
  XX(health_init_validation)                                                 \
  XX(health_capacity)                                                        \
  XX(health_window_boundary_inclusive)                                       \
  XX(health_unhealthy_at_max_crashes)                                        \
  XX(health_ring_overwrite)                                                  \
  XX(health_per_worker_counts)                                               \
  XX(health_eviction_order)                                                  \
  XX(health_crashed_workers_never_evicted)                                   \
  XX(health_unknown_slot)                                                    \
  XX(health_earlier_times_clamped)                                           \
  XX(health_ten_thousand_crashes)                                            \
  XX(health_matches_naive_model)                                             \
  XX(retry_should_retry)                                                     \
  XX(retry_list_repeats_last)                                                \
  XX(retry_cap)                                                              \
  XX(retry_exponential)                                                      \
  XX(retry_jitter_none_draws_nothing)                                        \
  XX(retry_jitter_proportional)                                              \
  XX(retry_jitter_full)                                                      \
  XX(retry_jitter_equal)                                                     \
  XX(retry_jitter_decorrelated)                                              \
  XX(retry_decorrelated_restarts_at_attempt_one)                             \
  XX(retry_seed_reproducible)                                                \
  XX(retry_random_known_values)                                              \
  XX(retry_init_validation)                                                  \
  XX(heap_order_deadline_then_insertion)                                     \
  XX(heap_cancel_from_middle)                                                \
  XX(heap_ids_not_reused)                                                    \
  XX(heap_random_against_reference)                                          \
  XX(heap_million_timers)                                                    \
  XX(heap_exhausted_slot_retired)                                            \
  XX(loop_virtual_hour_timer)                                                \
  XX(loop_timer_order_real)                                                  \
  XX(loop_timer_order_virtual)                                               \
  XX(loop_timer_cancel)                                                      \
  XX(loop_step_nowait_never_blocks)                                          \
  XX(loop_timer_added_in_callback_real)                                      \
  XX(loop_timer_added_in_callback_virtual)                                   \
  XX(loop_zero_delay_timers_do_not_starve_io)                                \
  XX(loop_million_timers_virtual)                                            \
  XX(loop_process_output_and_code)                                           \
  XX(loop_process_signal)                                                    \
  XX(loop_process_close_kills)                                               \
  XX(loop_process_kill_group)                                                \
  XX(loop_process_grandchild_keeps_pipe)                                     \
  XX(loop_process_output_kept_when_loop_is_late)                            \
  XX(loop_process_stdin)                                                     \
  XX(loop_process_env_and_cwd)                                               \
  XX(loop_spawn_not_found)                                                   \
  XX(loop_virtual_time_waits_for_io)                                         \
  XX(loop_virtual_timer_fires_during_io)                                     \
  XX(loop_virtual_time_counts_time_between_steps)                           \
  XX(loop_virtual_time_jumps_past_idle_child)                               \
  XX(loop_tcp_echo_ipv4)                                                     \
  XX(loop_tcp_echo_localhost)                                                \
  XX(loop_tcp_connection_refused)                                            \
  XX(loop_tcp_close_cancels_writes)                                          \
  XX(loop_signal_watch)                                                      \
  XX(loop_free_with_open_handles)

#endif /* TEST_LIST_H */
