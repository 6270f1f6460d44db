/* Tests of the error table (runtime/core/errors.c): the name and message of
 * every code, checked against literal strings rather than the table that
 * produced them, the unknown case, and the version string.
 */
#include <limits.h>

#include "task.h"

TEST_IMPL(errors_names_and_messages) {
  static const struct {
    int code;
    int value;
    const char *name;
    const char *message;
  } expected[] = {
      {SP_EINVAL, -1, "SP_EINVAL", "invalid argument"},
      {SP_ENOMEM, -2, "SP_ENOMEM", "out of memory"},
      {SP_ECIRCUITOPEN, -3, "SP_ECIRCUITOPEN", "circuit open"},
      {SP_ETIMEDOUT, -4, "SP_ETIMEDOUT", "timed out"},
      {SP_ECANCELED, -5, "SP_ECANCELED", "cancelled"},
      {SP_ENOENT, -6, "SP_ENOENT", "no such entry"},
      {SP_ERANGE, -7, "SP_ERANGE", "value out of range"},
      {SP_EFULL, -8, "SP_EFULL", "capacity reached"},
  };
  size_t i;
  int count;

  for (i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
    ASSERT_EQ(expected[i].code, expected[i].value);
    ASSERT_STR_EQ(sp_err_name(expected[i].code), expected[i].name);
    ASSERT_STR_EQ(sp_strerror(expected[i].code), expected[i].message);
  }

  /* No code in the table is missing above, and each is within range. */
  count = 0;
#define XX(code, value, _)                                                   \
  count++;                                                                   \
  ASSERT_GE(SP_##code, SP_ERRNO_MIN);                                        \
  ASSERT_LT(SP_##code, 0);
  SP_ERRNO_MAP(XX)
#undef XX
  ASSERT_EQ(count, sizeof(expected) / sizeof(expected[0]));
  return 0;
}

TEST_IMPL(errors_unknown) {
  static const int unknown[] = {0, 1, -9, -100, INT_MIN, INT_MAX,
                                SP_BREAKER_IGNORED};
  size_t i;

  for (i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
    ASSERT_STR_EQ(sp_err_name(unknown[i]), "SP_EUNKNOWN");
    ASSERT_STR_EQ(sp_strerror(unknown[i]), "unknown error");
  }
  return 0;
}

TEST_IMPL(errors_version) {
  char buf[32];

  ASSERT_STR_EQ(sp_version_string(), SP_VERSION_STRING);
  snprintf(buf, sizeof(buf), "%d.%d.%d", SP_VERSION_MAJOR, SP_VERSION_MINOR,
           SP_VERSION_PATCH);
  ASSERT_STR_EQ(sp_version_string(), buf);
  ASSERT_STR_EQ(sp_version_string(), "0.1.0");
  return 0;
}
