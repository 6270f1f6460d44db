/* libcurl, loaded at its first use (see curl.h). The library is the one
 * Debian's libcurl4 installs, libcurl.so.4; the headers sprun was built
 * with name every function it takes, and a libcurl older than them (one
 * missing any) is refused as a whole, so that no call can reach NULL. */
#include <dlfcn.h>
#include <stdio.h>

#include <uv.h>

#include "curl.h"

sp__curl_t sp__curl;

static int state; /* 0: not tried, 1: loaded, -1: failed */
static char why[256];

int sp__curl_load(void) {
  void *lib;
  void *f;

  if (state != 0)
    return state > 0 ? 0 : UV_ENOSYS;
  state = -1;
  lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    snprintf(why, sizeof(why), "libcurl cannot be loaded: %s", dlerror());
    return UV_ENOSYS;
  }
#define SP__CURL_LOAD(ret, name, args)                                       \
  f = dlsym(lib, "curl_" #name);                                             \
  if (f == NULL) {                                                           \
    snprintf(why, sizeof(why), "libcurl.so.4 has no curl_%s", #name);        \
    dlclose(lib);                                                            \
    return UV_ENOSYS;                                                        \
  }                                                                          \
  *(void **) &sp__curl.name = f;
  SP__CURL_FUNCS(SP__CURL_LOAD)
#undef SP__CURL_LOAD
  if (sp__curl.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    snprintf(why, sizeof(why), "curl_global_init failed");
    dlclose(lib);
    return UV_ENOSYS;
  }
  state = 1;
  return 0;
}

const char *sp__curl_error(void) {
  return state < 0 ? why : NULL;
}
