/* HTTP requests on libcurl's multi_socket interface, driven by a libuv
 * loop (sprun.h's sp_http_*).
 *
 * How it runs: curl says which sockets to watch (socket_cb) and when to
 * wake it (timer_cb); a uv_poll per socket and one uv_timer call
 * curl_multi_socket_action back, and after each call the finished
 * transfers are collected (collect). sprun opens and closes every socket
 * itself (open_cb, close_cb), so a socket's poll is always stopped before
 * its descriptor is closed: curl sometimes closes a socket without saying
 * CURL_POLL_REMOVE first, and libuv aborts on a descriptor closed under a
 * live poll.
 *
 * The rule: the owner's callback runs only from collect, after
 * curl_multi_socket_action returned, never from inside a curl callback;
 * so the owner may start, free (abort) or take from any request in it.
 * The body and the headers are gathered in C, and a streamed body is
 * paused (CURL_WRITEFUNC_PAUSE) while its owner has not taken what is
 * held.
 *
 * The trap: freeing a running request calls curl_multi_remove_handle,
 * which closes its connection through close_cb, right there; and a
 * request freed inside the callback of another may have its own
 * completion still queued in curl, which curl_multi_remove_handle drops.
 * collect therefore reads one message at a time and touches nothing of a
 * request after its callback.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <uv.h>

#include "curl.h"
#include "sprun.h"

/* What a request may hold of its response headers. */
#define SP_HTTP_MAX_HEAD (1u << 20)
/* Easy handles kept for reuse. */
#define SP_HTTP_EASY_POOL 256

typedef struct sp_buf_s {
  char *data;
  size_t len;
  size_t cap;
} sp_buf_t;

/* A socket curl uses: its poll, from open_cb to close_cb. */
typedef struct sp_sock_s {
  uv_poll_t poll;
  sp_http_t *http;
  curl_socket_t fd;
  int events;
} sp_sock_t;

struct sp_http_req_s {
  sp_http_t *http; /* NULL once the pool closed */
  CURL *easy;      /* while running */
  sp_http_cb cb;
  void *data;
  struct curl_slist *headers;
  struct curl_slist *resolve;
  sp_buf_t head;
  sp_buf_t body;
  size_t max_body;
  int stream;
  int paused;
  int running;
  int done;
  int too_large;
  /* On the pool's list of streamed requests with bytes to hand over. */
  int notify;
  sp_http_req_t *nnext;
  /* The pool's list of every request not freed. */
  sp_http_req_t *prev;
  sp_http_req_t *next;
  sp_http_result_t result;
  char errbuf[CURL_ERROR_SIZE];
};

struct sp_http_s {
  uv_loop_t *uv;
  CURLM *multi;
  uv_timer_t timer;
  /* Collects outside curl's own wake-ups: curl_easy_pause may end a
   * transfer where no socket or timer of curl will say so. */
  uv_timer_t kick;
  /* Sockets by descriptor. */
  sp_sock_t **socks;
  size_t nsocks;
  unsigned open_socks;
  unsigned polls;
  CURL *easy_pool[SP_HTTP_EASY_POOL];
  int neasy;
  sp_http_req_t *reqs; /* live requests */
  sp_http_req_t *notify_head;
  sp_http_req_t **notify_tail;
  unsigned running;
  unsigned live;
  /* The handles hold the loop alive only while a transfer runs. */
  int refd;
  int closing;
  unsigned pending_closes;
};

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

static void buf_free(sp_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- holding the loop alive ------------------------------------------------ */

static void set_ref(sp_http_t *http, int on) {
  size_t i;

  if (http->refd == on)
    return;
  http->refd = on;
  if (on)
    uv_ref((uv_handle_t *) &http->timer);
  else
    uv_unref((uv_handle_t *) &http->timer);
  for (i = 0; i < http->nsocks; i++) {
    if (http->socks[i] == NULL)
      continue;
    if (on)
      uv_ref((uv_handle_t *) &http->socks[i]->poll);
    else
      uv_unref((uv_handle_t *) &http->socks[i]->poll);
  }
}

static void running_add(sp_http_t *http, int delta) {
  http->running += delta;
  set_ref(http, http->running > 0);
}

static void maybe_free(sp_http_t *http) {
  if (http->closing && http->pending_closes == 0) {
    free(http->socks);
    free(http);
  }
}

static void handle_closed_cb(uv_handle_t *h) {
  sp_http_t *http = h->data;

  http->pending_closes--;
  maybe_free(http);
}

static void sock_closed_cb(uv_handle_t *h) {
  sp_sock_t *s = (sp_sock_t *) h;
  sp_http_t *http = s->http;

  free(s);
  http->polls--;
  http->pending_closes--;
  maybe_free(http);
}

/* Stops and closes a socket's poll; the descriptor is the caller's. */
static void sock_drop(sp_http_t *http, curl_socket_t fd) {
  sp_sock_t *s;

  if (fd < 0 || (size_t) fd >= http->nsocks || http->socks[fd] == NULL)
    return;
  s = http->socks[fd];
  http->socks[fd] = NULL;
  uv_poll_stop(&s->poll);
  http->pending_closes++;
  uv_close((uv_handle_t *) &s->poll, sock_closed_cb);
}

/* ---- curl's callbacks: C only, never the owner's -------------------------- */

static void collect(sp_http_t *http);

static void poll_cb(uv_poll_t *p, int status, int events) {
  sp_sock_t *s = (sp_sock_t *) p;
  sp_http_t *http = s->http;
  int flags = 0;
  int n;

  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(http->multi, s->fd, flags, &n);
  collect(http);
}

static void timeout_cb(uv_timer_t *t) {
  sp_http_t *http = t->data;
  int n;

  curl_multi_socket_action(http->multi, CURL_SOCKET_TIMEOUT, 0, &n);
  collect(http);
}

static void kick_cb(uv_timer_t *t) {
  collect(t->data);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  sp_http_t *http = userp;

  (void) multi;
  if (http->closing)
    return 0;
  if (timeout_ms < 0)
    uv_timer_stop(&http->timer);
  else
    uv_timer_start(&http->timer, timeout_cb, (uint64_t) timeout_ms, 0);
  return 0;
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  sp_http_t *http = userp;
  sp_sock_t *s;
  int events = 0;

  (void) easy;
  (void) socketp;
  if (fd < 0 || (size_t) fd >= http->nsocks || http->socks[fd] == NULL)
    return 0;
  s = http->socks[fd];
  if (what == CURL_POLL_REMOVE) {
    uv_poll_stop(&s->poll);
    s->events = 0;
    return 0;
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  if (events != s->events) {
    s->events = events;
    uv_poll_start(&s->poll, events, poll_cb);
  }
  return 0;
}

static curl_socket_t open_cb(void *clientp, curlsocktype purpose,
                             struct curl_sockaddr *addr) {
  sp_http_t *http = clientp;
  sp_sock_t *s;
  int fd;

  (void) purpose;
  fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
  if (fd < 0)
    return CURL_SOCKET_BAD;
  if ((size_t) fd >= http->nsocks) {
    size_t n = http->nsocks ? http->nsocks : 64;
    sp_sock_t **p;
    while (n <= (size_t) fd)
      n *= 2;
    p = realloc(http->socks, n * sizeof(*p));
    if (p == NULL)
      goto fail;
    memset(p + http->nsocks, 0, (n - http->nsocks) * sizeof(*p));
    http->socks = p;
    http->nsocks = n;
  }
  if (http->socks[fd] != NULL) {
    /* A descriptor curl closed without close_cb (it does on some paths of
     * an aborted connect), now reused: its poll, stopped since, goes. */
    sock_drop(http, fd);
    http->open_socks--;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    goto fail;
  if (uv_poll_init_socket(http->uv, &s->poll, fd) != 0) {
    free(s);
    goto fail;
  }
  s->http = http;
  s->fd = fd;
  http->socks[fd] = s;
  http->open_socks++;
  http->polls++;
  if (!http->refd)
    uv_unref((uv_handle_t *) &s->poll);
  return fd;

fail:
  close(fd);
  return CURL_SOCKET_BAD;
}

static int close_cb(void *clientp, curl_socket_t fd) {
  sp_http_t *http = clientp;

  sock_drop(http, fd);
  http->open_socks--;
  return close(fd);
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

static void notify_add(sp_http_t *http, sp_http_req_t *r) {
  if (r->notify)
    return;
  r->notify = 1;
  r->nnext = NULL;
  *http->notify_tail = r;
  http->notify_tail = &r->nnext;
}

static void notify_remove(sp_http_t *http, sp_http_req_t *r) {
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
    notify_add(r->http, r);
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
    if (connect_us == 0 && strstr(r->errbuf, "onnection") != NULL)
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
static void finish(sp_http_req_t *r, CURLcode code) {
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

/* Gives an easy handle back to the pool (or frees it). */
static void easy_release(sp_http_t *http, CURL *e) {
  if (http != NULL && !http->closing && http->neasy < SP_HTTP_EASY_POOL) {
    curl_easy_reset(e);
    http->easy_pool[http->neasy++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

/* Takes a request off curl (aborting it if it still runs). */
static void detach(sp_http_req_t *r) {
  sp_http_t *http = r->http;

  if (r->easy == NULL)
    return;
  if (r->running) {
    r->running = 0;
    curl_multi_remove_handle(http->multi, r->easy);
    running_add(http, -1);
  }
  easy_release(http, r->easy);
  r->easy = NULL;
}

/* The owner's callbacks, after curl_multi_socket_action returned: the
 * streamed bytes first, then each request that ended. */
static void collect(sp_http_t *http) {
  CURLMsg *msg;
  int left;

  while (http->notify_head != NULL) {
    sp_http_req_t *r = http->notify_head;
    http->notify_head = r->nnext;
    if (http->notify_head == NULL)
      http->notify_tail = &http->notify_head;
    r->notify = 0;
    r->cb(r, SP_HTTP_EV_BODY, r->data);
  }
  while ((msg = curl_multi_info_read(http->multi, &left)) != NULL) {
    sp_http_req_t *r = NULL;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &r);
    if (r == NULL || r->done)
      continue;
    finish(r, msg->data.result);
    r->done = 1;
    detach(r);
    r->cb(r, SP_HTTP_EV_DONE, r->data);
  }
}

/* ---- the pool ------------------------------------------------------------ */

int sp_http_new(struct uv_loop_s *loop, sp_http_t **out) {
  sp_http_t *http;

  if (loop == NULL || out == NULL)
    return UV_EINVAL;
  if (sp__curl_load() != 0)
    return UV_ENOSYS;
  http = calloc(1, sizeof(*http));
  if (http == NULL)
    return UV_ENOMEM;
  http->uv = loop;
  http->notify_tail = &http->notify_head;
  http->multi = curl_multi_init();
  if (http->multi == NULL) {
    free(http);
    return UV_ENOMEM;
  }
  curl_multi_setopt(http->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(http->multi, CURLMOPT_SOCKETDATA, http);
  curl_multi_setopt(http->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(http->multi, CURLMOPT_TIMERDATA, http);
  uv_timer_init(loop, &http->timer);
  http->timer.data = http;
  uv_unref((uv_handle_t *) &http->timer);
  uv_timer_init(loop, &http->kick);
  http->kick.data = http;
  *out = http;
  return 0;
}

void sp_http_close(sp_http_t *http) {
  sp_http_req_t *r;
  size_t i;
  int k;

  if (http->closing)
    return;
  for (r = http->reqs; r != NULL; r = r->next) {
    detach(r);
    r->http = NULL;
  }
  http->reqs = NULL;
  http->notify_head = NULL;
  http->notify_tail = &http->notify_head;
  http->closing = 1;
  for (k = 0; k < http->neasy; k++)
    curl_easy_cleanup(http->easy_pool[k]);
  http->neasy = 0;
  /* Closes the idle connections, through close_cb. */
  curl_multi_cleanup(http->multi);
  http->multi = NULL;
  for (i = 0; i < http->nsocks; i++) {
    if (http->socks[i] != NULL) {
      sock_drop(http, (curl_socket_t) i);
      close((int) i);
    }
  }
  uv_timer_stop(&http->timer);
  uv_timer_stop(&http->kick);
  http->pending_closes += 2;
  uv_close((uv_handle_t *) &http->timer, handle_closed_cb);
  uv_close((uv_handle_t *) &http->kick, handle_closed_cb);
}

static CURL *easy_get(sp_http_t *http) {
  if (http->neasy > 0)
    return http->easy_pool[--http->neasy];
  return curl_easy_init();
}

/* The options every request gets, then the caller's. */
static int setup(sp_http_req_t *r, CURL *e, const sp_http_options_t *o) {
  sp_http_t *http = r->http;
  const char *method = o->method != NULL ? o->method : "GET";
  const char *const *h;
  int has_expect = 0;

  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_cb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, http);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, http);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  /* No proxy from the environment: its name would be resolved by curl. */
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
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

static void req_unlink(sp_http_req_t *r) {
  sp_http_t *http = r->http;

  if (http == NULL)
    return;
  notify_remove(http, r);
  if (r->prev != NULL)
    r->prev->next = r->next;
  else
    http->reqs = r->next;
  if (r->next != NULL)
    r->next->prev = r->prev;
  http->live--;
}

void sp_http_req_free(sp_http_req_t *r) {
  if (r == NULL)
    return;
  if (r->http != NULL)
    detach(r);
  req_unlink(r);
  curl_slist_free_all(r->headers);
  curl_slist_free_all(r->resolve);
  buf_free(&r->head);
  buf_free(&r->body);
  free(r);
}

int sp_http_start(sp_http_t *http, const sp_http_options_t *o,
                  sp_http_cb cb, void *data, sp_http_req_t **out) {
  sp_http_req_t *r;
  CURL *e;
  int err;

  if (http == NULL || http->closing || o == NULL || o->url == NULL ||
      cb == NULL || out == NULL)
    return UV_EINVAL;
  r = calloc(1, sizeof(*r));
  if (r == NULL)
    return UV_ENOMEM;
  r->http = http;
  r->cb = cb;
  r->data = data;
  r->stream = o->stream != 0;
  r->max_body = o->max_body_bytes;
  r->next = http->reqs;
  if (http->reqs != NULL)
    http->reqs->prev = r;
  http->reqs = r;
  http->live++;
  e = easy_get(http);
  if (e == NULL) {
    sp_http_req_free(r);
    return UV_ENOMEM;
  }
  r->easy = e;
  err = setup(r, e, o);
  if (err == 0 && curl_multi_add_handle(http->multi, e) != CURLM_OK)
    err = UV_ENOMEM;
  if (err) {
    sp_http_req_free(r);
    return err;
  }
  r->running = 1;
  running_add(http, 1);
  *out = r;
  return 0;
}

int sp_http_result(const sp_http_req_t *r, sp_http_result_t *out) {
  if (!r->done)
    return SP_ENOENT;
  *out = r->result;
  return 0;
}

const char *sp_http_take_body(sp_http_req_t *r, size_t *len) {
  *len = r->body.len;
  return r->body.data;
}

void sp_http_take_done(sp_http_req_t *r) {
  r->body.len = 0;
  r->result.body_len = 0;
  if (r->paused && r->easy != NULL && r->http != NULL) {
    r->paused = 0;
    /* May hand the held bytes to write_cb at once (C only), and even end
     * the transfer: what it did is collected at the next turn. */
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
    uv_timer_start(&r->http->kick, kick_cb, 0, 0);
  }
}

void sp_http_stats(const sp_http_t *http, sp_http_stats_t *out) {
  out->running = http->running;
  out->live = http->live;
  out->sockets = http->open_socks;
  out->polls = http->polls;
}
