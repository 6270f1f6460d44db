/* task.h: what every C test of the core includes.
 *
 * A test is `TEST_IMPL(name) { ...; return 0; }`, listed once in
 * test-list.h. The ASSERT macros evaluate each operand once, print the
 * place and both values as TAP diagnostic lines on stdout, and return 1
 * from the test, so one failing test does not stop the others. They can
 * therefore be used only in a function returning int, which is why the
 * tests' helpers return int as well (0 when all went right).
 */
#ifndef TASK_H
#define TASK_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "sprun.h"

/* The prototype comes first so that every test has one, as
 * -Wmissing-prototypes wants, without a header to keep in step. */
#define TEST_IMPL(name)                                                      \
  int run_test_##name(void);                                                 \
  int run_test_##name(void)

#define ASSERT(expr)                                                         \
  do {                                                                       \
    if (!(expr)) {                                                           \
      printf("# %s:%d: assertion failed: %s\n", __FILE__, __LINE__, #expr);  \
      return 1;                                                              \
    }                                                                        \
  } while (0)

/* Compares two values converted to `type`, printed with `conv`. */
#define ASSERT_BASE(a, op, b, type, conv)                                    \
  do {                                                                       \
    type eval_a_ = (type) (a);                                               \
    type eval_b_ = (type) (b);                                               \
    if (!(eval_a_ op eval_b_)) {                                             \
      printf("# %s:%d: assertion failed: %s %s %s\n", __FILE__, __LINE__,    \
             #a, #op, #b);                                                   \
      printf("#   left:  %" conv "\n", eval_a_);                             \
      printf("#   right: %" conv "\n", eval_b_);                             \
      return 1;                                                              \
    }                                                                        \
  } while (0)

/* Signed integers (and anything that fits in int64_t, such as uint32_t). */
#define ASSERT_EQ(a, b) ASSERT_BASE(a, ==, b, int64_t, PRId64)
#define ASSERT_NE(a, b) ASSERT_BASE(a, !=, b, int64_t, PRId64)
#define ASSERT_GE(a, b) ASSERT_BASE(a, >=, b, int64_t, PRId64)
#define ASSERT_GT(a, b) ASSERT_BASE(a, >, b, int64_t, PRId64)
#define ASSERT_LE(a, b) ASSERT_BASE(a, <=, b, int64_t, PRId64)
#define ASSERT_LT(a, b) ASSERT_BASE(a, <, b, int64_t, PRId64)

/* Unsigned 64-bit values, where a conversion to int64_t would wrap. */
#define ASSERT_UINT64_EQ(a, b) ASSERT_BASE(a, ==, b, uint64_t, PRIu64)
#define ASSERT_UINT64_NE(a, b) ASSERT_BASE(a, !=, b, uint64_t, PRIu64)
#define ASSERT_UINT64_GE(a, b) ASSERT_BASE(a, >=, b, uint64_t, PRIu64)
#define ASSERT_UINT64_LE(a, b) ASSERT_BASE(a, <=, b, uint64_t, PRIu64)

/* Doubles, printed in full so that an off-by-one-ulp is visible. */
#define ASSERT_DOUBLE_EQ(a, b) ASSERT_BASE(a, ==, b, double, ".17g")
#define ASSERT_DOUBLE_NE(a, b) ASSERT_BASE(a, !=, b, double, ".17g")
#define ASSERT_DOUBLE_GE(a, b) ASSERT_BASE(a, >=, b, double, ".17g")
#define ASSERT_DOUBLE_LE(a, b) ASSERT_BASE(a, <=, b, double, ".17g")
#define ASSERT_DOUBLE_LT(a, b) ASSERT_BASE(a, <, b, double, ".17g")

#define ASSERT_PTR_BASE(a, op, b)                                            \
  do {                                                                       \
    const void *eval_a_ = (const void *) (a);                                \
    const void *eval_b_ = (const void *) (b);                                \
    if (!(eval_a_ op eval_b_)) {                                             \
      printf("# %s:%d: assertion failed: %s %s %s\n", __FILE__, __LINE__,    \
             #a, #op, #b);                                                   \
      printf("#   left:  %p\n", eval_a_);                                    \
      printf("#   right: %p\n", eval_b_);                                    \
      return 1;                                                              \
    }                                                                        \
  } while (0)

#define ASSERT_NULL(a) ASSERT_PTR_BASE(a, ==, NULL)
#define ASSERT_NOT_NULL(a) ASSERT_PTR_BASE(a, !=, NULL)

/* Strings compare by content; NULL never equals a string. */
#define ASSERT_STR_EQ(a, b)                                                  \
  do {                                                                       \
    const char *eval_a_ = (a);                                               \
    const char *eval_b_ = (b);                                               \
    if (eval_a_ == NULL || eval_b_ == NULL || strcmp(eval_a_, eval_b_)) {    \
      printf("# %s:%d: assertion failed: %s == %s\n", __FILE__, __LINE__,    \
             #a, #b);                                                        \
      printf("#   left:  \"%s\"\n", eval_a_ ? eval_a_ : "(null)");           \
      printf("#   right: \"%s\"\n", eval_b_ ? eval_b_ : "(null)");           \
      return 1;                                                              \
    }                                                                        \
  } while (0)

/* Runs a helper of the test (an int function returning 0 when all went
 * right) and fails the test if it failed; the helper has already printed
 * what went wrong, this adds where it was called from. */
#define ASSERT_PASS(helper_call)                                             \
  do {                                                                       \
    if ((helper_call) != 0) {                                                \
      printf("# %s:%d: called from here\n", __FILE__, __LINE__);            \
      return 1;                                                              \
    }                                                                        \
  } while (0)

#endif /* TASK_H */
