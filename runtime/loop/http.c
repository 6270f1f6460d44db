/* HTTP requests on libcurl's multi_socket interface, driven by a libuv
 * loop (sprun.h's sp_http_*).
 *
 * How it runs: curl says which sockets to watch (socket_cb) and when to
 * wake it (timer_cb); a uv_poll per socket and one uv_timer call
 * curl_multi_socket_action back, and after each call the finished
 * transfers are collected (collect). sprun opens and closes every socket
 * itself (sp__http_open_cb, sp__http_close_cb), so a socket's poll is always stopped before
 * its descriptor is closed: curl sometimes closes a socket without saying
 * CURL_POLL_REMOVE first, and libuv aborts on a descriptor closed under a
 * live poll.
 *
 * The rule: the owner's callback runs only from collect, after
 * curl_multi_socket_action returned, never from inside a curl callback;
 * so the owner may start, free (abort) or take from any request in it.
 * The body and the headers are gathered in C (http_transfer.c), and a
 * streamed body is paused (CURL_WRITEFUNC_PAUSE) while its owner has not
 * taken what is held.
 *
 * The trap: freeing a running request calls curl_multi_remove_handle,
 * which closes its connection through sp__http_close_cb, right there; and a
 * request freed inside the callback of another may have its own
 * completion still queued in curl, which curl_multi_remove_handle drops.
 * collect therefore reads one message at a time and touches nothing of a
 * request after its callback.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"

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

curl_socket_t sp__http_open_cb(void *clientp, curlsocktype purpose,
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
    /* A descriptor curl closed without sp__http_close_cb (it does on some paths of
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

int sp__http_close_cb(void *clientp, curl_socket_t fd) {
  sp_http_t *http = clientp;

  sock_drop(http, fd);
  http->open_socks--;
  return close(fd);
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
    sp__http_finish(r, msg->data.result);
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
  /* Closes the idle connections, through sp__http_close_cb. */
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

static void req_unlink(sp_http_req_t *r) {
  sp_http_t *http = r->http;

  if (http == NULL)
    return;
  sp__http_notify_remove(http, r);
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
  sp__http_buf_free(&r->head);
  sp__http_buf_free(&r->body);
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
  err = sp__http_setup(r, e, o);
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
