/* One HTTP transfer of the pool (http.c): the options its easy handle
 * gets, the headers and body gathered from curl's callbacks, and how it
 * ended, classified for sprun's error kinds.
 *
 * The rule: everything here runs inside curl's callbacks or right after a
 * transfer ended, in C only; a streamed request with new bytes is put on
 * the pool's list (notify) for collect to report.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"

/* ---- buffers -------------------------------------------------------------- */

static int buf_append(sp_buf_t *b, const char *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    char *p;
    while (cap < b->len + len)
      cap *= 2;
    p = realloc(b->data, cap);
    if (p == NULL)
      return -1;
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
  return 0;
}

void sp__http_buf_free(sp_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static size_t header_cb(char *data, size_t size, size_t n, void *userp) {
  sp_http_req_t *r = userp;
  size_t len = size * n;

  /* A new status line starts a new response (after a 100 Continue). */
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
    r->head.len = 0;
  if (r->head.len + len > SP_HTTP_MAX_HEAD) {
    r->too_large = 1;
    return 0;
  }
  if (buf_append(&r->head, data, len) != 0)
    return 0;
  return len;
}

void sp__http_notify_add(sp_http_t *http, sp_http_req_t *r) {
  if (r->notify)
    return;
  r->notify = 1;
  r->nnext = NULL;
  *http->notify_tail = r;
  http->notify_tail = &r->nnext;
}

void sp__http_notify_remove(sp_http_t *http, sp_http_req_t *r) {
  sp_http_req_t **p;

  if (!r->notify)
    return;
  r->notify = 0;
  for (p = &http->notify_head; *p != NULL; p = &(*p)->nnext) {
    if (*p == r) {
      *p = r->nnext;
      break;
    }
  }
  http->notify_tail = &http->notify_head;
  while (*http->notify_tail != NULL)
    http->notify_tail = &(*http->notify_tail)->nnext;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp) {
  sp_http_req_t *r = userp;
  size_t len = size * n;

  if (r->max_body != 0 && r->body.len + len > r->max_body) {
    if (r->stream && r->body.len > 0) {
      /* Held until the owner takes what it has. */
      r->paused = 1;
      return CURL_WRITEFUNC_PAUSE;
    }
    if (!r->stream) {
      r->too_large = 1;
      return 0;
    }
  }
  if (buf_append(&r->body, data, len) != 0)
    return 0;
  if (r->stream && r->http != NULL)
    sp__http_notify_add(r->http, r);
  return len;
}

/* ---- results ------------------------------------------------------------- */

static int outcome_of(sp_http_req_t *r, CURLcode code, long os_errno,
                      long connect_us) {
  switch (code) {
  case CURLE_OK:
    return SP_HTTP_OK;
  case CURLE_OPERATION_TIMEDOUT:
    if (strstr(r->errbuf, "too slow") != NULL)
      return SP_HTTP_STALLED;
    /* Not connected yet ("Connection timed out after ...", or "Failed
     * to connect ... Timeout was reached" as curl words it when the
     * attempt itself timed out): the connect's timeout. Lua calls it the
     * total one when that came first. */
    if (connect_us == 0)
      return SP_HTTP_CONNECT_TIMEOUT;
    return SP_HTTP_TIMEOUT;
  case CURLE_COULDNT_CONNECT:
    if (os_errno == ECONNREFUSED)
      return SP_HTTP_REFUSED;
    if (os_errno == ENETUNREACH || os_errno == EHOSTUNREACH)
      return SP_HTTP_UNREACHABLE;
    return SP_HTTP_CONNECT_FAILED;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_USE_SSL_FAILED:
    return SP_HTTP_TLS_FAILED;
  case CURLE_WRITE_ERROR:
  case CURLE_FILESIZE_EXCEEDED:
    return r->too_large || code == CURLE_FILESIZE_EXCEEDED
               ? SP_HTTP_TOO_LARGE : SP_HTTP_FAILED;
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_BAD_CONTENT_ENCODING:
    return SP_HTTP_BAD_RESPONSE;
  case CURLE_RECV_ERROR:
    /* A body that breaks the chunked encoding is the server's fault, not
     * the connection's: curl says so only in its message. */
    if (strstr(r->errbuf, "chunk") != NULL)
      return SP_HTTP_BAD_RESPONSE;
    return SP_HTTP_RESET;
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    return SP_HTTP_RESET;
  default:
    return r->too_large ? SP_HTTP_TOO_LARGE : SP_HTTP_FAILED;
  }
}

static double us_to_ms(curl_off_t us) {
  return (double) us / 1000.0;
}

/* Reads what the request's end says, while its easy handle is at hand. */
void sp__http_finish(sp_http_req_t *r, CURLcode code) {
  sp_http_result_t *o = &r->result;
  CURL *e = r->easy;
  curl_off_t t = 0;
  long v = 0;
  long os_errno = 0;

  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &o->status);
  curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &os_errno);
  curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &v);
  switch (v) {
  case CURL_HTTP_VERSION_1_0:
    o->http_version = 10;
    break;
  case CURL_HTTP_VERSION_1_1:
    o->http_version = 11;
    break;
  case CURL_HTTP_VERSION_2_0:
    o->http_version = 20;
    break;
  case CURL_HTTP_VERSION_3:
    o->http_version = 30;
    break;
  default:
    o->http_version = 0;
  }
  o->retry_after_s = -1;
  if (curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &t) == CURLE_OK && t > 0)
    o->retry_after_s = (long) t;
  t = 0;
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &t);
  o->connect_ms = us_to_ms(t);
  o->outcome = outcome_of(r, code, os_errno, (long) t);
  t = 0;
  curl_easy_getinfo(e, CURLINFO_APPCONNECT_TIME_T, &t);
  o->tls_ms = us_to_ms(t);
  t = 0;
  curl_easy_getinfo(e, CURLINFO_STARTTRANSFER_TIME_T, &t);
  o->ttfb_ms = us_to_ms(t);
  t = 0;
  curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &t);
  o->total_ms = us_to_ms(t);
  if (o->outcome == SP_HTTP_OK)
    o->message = "";
  else if (r->too_large && o->outcome == SP_HTTP_TOO_LARGE)
    o->message = "the response is larger than max_body_bytes";
  else
    o->message = r->errbuf[0] ? r->errbuf : curl_easy_strerror(code);
  o->head = r->head.data;
  o->head_len = r->head.len;
  o->body = r->body.data;
  o->body_len = r->body.len;
}


int sp__http_setup(sp_http_req_t *r, CURL *e, const sp_http_options_t *o) {
  sp_http_t *http = r->http;
  const char *method = o->method != NULL ? o->method : "GET";
  const char *const *h;
  int has_expect = 0;

  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, sp__http_open_cb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, http);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, sp__http_close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, http);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  /* No proxy from the environment: its name would be resolved by curl. */
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  /* Waiting for a connection in use to tell whether it multiplexes is
   * for https (ALPN says so at the handshake). Over plain http it would
   * hold a second request to an origin until the first one's answer
   * came, however long that takes (a hedge behind a hung request). */
  curl_easy_setopt(e, CURLOPT_PIPEWAIT,
                   strncasecmp(o->url, "https://", 8) == 0 ? 1L : 0L);
  if (curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK)
    return UV_EINVAL;
  for (h = o->headers; h != NULL && *h != NULL; h++) {
    struct curl_slist *n = curl_slist_append(r->headers, *h);
    if (n == NULL)
      return UV_ENOMEM;
    r->headers = n;
    if (strncasecmp(*h, "expect:", 7) == 0)
      has_expect = 1;
  }
  if (o->body != NULL && !has_expect) {
    /* No 100-continue round trip before a large body. */
    struct curl_slist *n = curl_slist_append(r->headers, "Expect:");
    if (n == NULL)
      return UV_ENOMEM;
    r->headers = n;
  }
  if (r->headers != NULL)
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  if (o->resolve != NULL) {
    r->resolve = curl_slist_append(NULL, o->resolve);
    if (r->resolve == NULL)
      return UV_ENOMEM;
  }
  /* Always set, NULL too: curl_easy_reset leaves the list of the handle's
   * last request in place until that request started, and a request freed
   * before it started would hand the next one freed memory. */
  curl_easy_setopt(e, CURLOPT_RESOLVE, r->resolve);
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0 || o->body != NULL) {
    if (strcmp(method, "POST") != 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    if (o->body != NULL) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       (curl_off_t) o->body_len);
      curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body);
    } else if (strcmp(method, "POST") == 0) {
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) 0);
      curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
    }
  }
  if (o->timeout_ms > 0)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  if (o->connect_timeout_ms > 0)
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  if (o->low_speed_bytes > 0 && o->low_speed_s > 0) {
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, o->low_speed_bytes);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->low_speed_s);
  }
  if (o->max_body_bytes > 0 && !o->stream)
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
                     (curl_off_t) o->max_body_bytes);
  switch (o->version) {
  case SP_HTTP_1_1:
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 0L);
    break;
  case SP_HTTP_H2C:
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     (long) CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    /* libcurl 7.88 breaks a stream it starts on an h2c connection that
     * already carried one (curl#10634, fixed in 8.0): one connection per
     * request, never shared. */
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 0L);
    break;
  default:
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
  }
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L);
  if (o->ca_file != NULL)
    curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
  return 0;
}
