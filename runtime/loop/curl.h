/* libcurl, loaded when sprun first needs it (dlopen of libcurl.so.4), for
 * http.c and the Lua binding's lhttp.c.
 *
 * Why not linked: libcurl brings some twenty libraries (OpenSSL, nghttp2,
 * LDAP, SSH, ...) whose loading doubles the start of every sprun process,
 * pool workers included, whether or not it ever makes a request. The
 * rule: include this header instead of <curl/curl.h>; the curl_* names
 * below are calls through the table, valid once sp__curl_load returned 0.
 */
#ifndef SPRUN_LOOP_CURL_H
#define SPRUN_LOOP_CURL_H

/* The type-checking macros of curl.h would wrap the names below. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#define SP__CURL_FUNCS(X)                                                    \
  X(CURLcode, global_init, (long flags))                                     \
  X(CURLM *, multi_init, (void))                                             \
  X(CURLMcode, multi_setopt, (CURLM *m, CURLMoption o, ...))                 \
  X(CURLMcode, multi_socket_action,                                          \
    (CURLM *m, curl_socket_t s, int ev, int *running))                       \
  X(CURLMsg *, multi_info_read, (CURLM *m, int *left))                       \
  X(CURLMcode, multi_add_handle, (CURLM *m, CURL *e))                        \
  X(CURLMcode, multi_remove_handle, (CURLM *m, CURL *e))                     \
  X(CURLMcode, multi_cleanup, (CURLM *m))                                    \
  X(CURL *, easy_init, (void))                                               \
  X(void, easy_cleanup, (CURL *e))                                           \
  X(void, easy_reset, (CURL *e))                                             \
  X(CURLcode, easy_setopt, (CURL *e, CURLoption o, ...))                     \
  X(CURLcode, easy_getinfo, (CURL *e, CURLINFO i, ...))                      \
  X(CURLcode, easy_pause, (CURL *e, int bitmask))                            \
  X(const char *, easy_strerror, (CURLcode c))                               \
  X(struct curl_slist *, slist_append, (struct curl_slist *l, const char *s)) \
  X(void, slist_free_all, (struct curl_slist *l))                            \
  X(CURLU *, url, (void))                                                    \
  X(CURLUcode, url_set,                                                      \
    (CURLU *u, CURLUPart what, const char *part, unsigned int flags))        \
  X(CURLUcode, url_get,                                                      \
    (const CURLU *u, CURLUPart what, char **part, unsigned int flags))       \
  X(void, url_cleanup, (CURLU *u))                                           \
  X(const char *, url_strerror, (CURLUcode c))                               \
  X(void, free, (void *p))

typedef struct sp__curl_s {
#define SP__CURL_FIELD(ret, name, args) ret (*name) args;
  SP__CURL_FUNCS(SP__CURL_FIELD)
#undef SP__CURL_FIELD
} sp__curl_t;

extern sp__curl_t sp__curl;

/* Loads libcurl and runs curl_global_init, once: 0, or UV_ENOSYS when it
 * cannot be loaded (sp__curl_error says why). Not thread-safe, as
 * curl_global_init is not. */
int sp__curl_load(void);
const char *sp__curl_error(void);

/* curl.h makes these three macros of themselves. */
#undef curl_multi_setopt
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_global_init sp__curl.global_init
#define curl_multi_init sp__curl.multi_init
#define curl_multi_setopt sp__curl.multi_setopt
#define curl_multi_socket_action sp__curl.multi_socket_action
#define curl_multi_info_read sp__curl.multi_info_read
#define curl_multi_add_handle sp__curl.multi_add_handle
#define curl_multi_remove_handle sp__curl.multi_remove_handle
#define curl_multi_cleanup sp__curl.multi_cleanup
#define curl_easy_init sp__curl.easy_init
#define curl_easy_cleanup sp__curl.easy_cleanup
#define curl_easy_reset sp__curl.easy_reset
#define curl_easy_setopt sp__curl.easy_setopt
#define curl_easy_getinfo sp__curl.easy_getinfo
#define curl_easy_pause sp__curl.easy_pause
#define curl_easy_strerror sp__curl.easy_strerror
#define curl_slist_append sp__curl.slist_append
#define curl_slist_free_all sp__curl.slist_free_all
#define curl_url sp__curl.url
#define curl_url_set sp__curl.url_set
#define curl_url_get sp__curl.url_get
#define curl_url_cleanup sp__curl.url_cleanup
#define curl_url_strerror sp__curl.url_strerror
#define curl_free sp__curl.free

#endif /* SPRUN_LOOP_CURL_H */
