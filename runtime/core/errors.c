/* errors: the names and messages of sprun's error codes.
 *
 * Every code, its name and its message come from the one table
 * SP_ERRNO_MAP in sprun.h, so a code added there is named and described here
 * without touching this file.
 *
 * The trap: these functions are called on whatever a caller got back,
 * including 0, a positive event mask or a code from a newer sprun. They must
 * never return NULL for such a value, only the "unknown" strings, so that
 * their result can always be printed.
 */
#include "sprun.h"

const char *sp_err_name(int err) {
  switch (err) {
#define XX(code, value, _)                                                   \
  case SP_##code:                                                            \
    return "SP_" #code;
    SP_ERRNO_MAP(XX)
#undef XX
  }
  return "SP_EUNKNOWN";
}

const char *sp_strerror(int err) {
  switch (err) {
#define XX(code, value, message)                                             \
  case SP_##code:                                                            \
    return message;
    SP_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

const char *sp_version_string(void) {
  return SP_VERSION_STRING;
}
