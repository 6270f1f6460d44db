/* The DNS and HTTP calls of sprun.h on a plain libuv loop, as a C program
 * that links libsprun.a uses them: a lookup and its cancel, and requests
 * to a small HTTP server run on the same loop (127.0.0.1, a free port). */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "task.h"

/* ---- DNS ------------------------------------------------------------------ */

typedef struct {
  int calls;
  int status;
  char first[64];
  int count;
} dns_seen_t;

static void dns_cb(sp_dns_t *req, int status, const char *const *addrs,
                   int count, void *data) {
  dns_seen_t *s = data;

  (void) req;
  s->calls++;
  s->status = status;
  s->count = count;
  if (count > 0)
    snprintf(s->first, sizeof(s->first), "%s", addrs[0]);
}

TEST_IMPL(dns_resolve_localhost_and_invalid) {
  uv_loop_t loop;
  dns_seen_t a, b;
  sp_dns_t *r1, *r2;

  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, sp_dns_resolve(&loop, "localhost", SP_DNS_INET, dns_cb, &a,
                              &r1));
  ASSERT_EQ(0, sp_dns_resolve(&loop, "no-such-host.invalid", SP_DNS_ANY,
                              dns_cb, &b, &r2));
  ASSERT_EQ(UV_EINVAL, sp_dns_resolve(&loop, "", SP_DNS_ANY, dns_cb, &b,
                                      &r2));
  ASSERT_EQ(UV_EINVAL, sp_dns_resolve(&loop, "localhost", 5, dns_cb, &b,
                                      &r2));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, a.calls);
  ASSERT_EQ(0, a.status);
  ASSERT_EQ(0, strcmp(a.first, "127.0.0.1"));
  ASSERT_EQ(1, b.calls);
  ASSERT_LT(b.status, 0);
  ASSERT_EQ(0, b.count);
  ASSERT_EQ(0, uv_loop_close(&loop));
  return 0;
}

TEST_IMPL(dns_cancel_drops_the_result) {
  uv_loop_t loop;
  dns_seen_t a;
  sp_dns_t *r;
  int i;

  memset(&a, 0, sizeof(a));
  ASSERT_EQ(0, uv_loop_init(&loop));
  /* Some are still queued when cancelled, some already run: none calls
   * back, and the loop ends once the pool is done with them. */
  for (i = 0; i < 32; i++) {
    ASSERT_EQ(0, sp_dns_resolve(&loop, "localhost", SP_DNS_ANY, dns_cb, &a,
                                &r));
    sp_dns_cancel(r);
  }
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(0, a.calls);
  ASSERT_EQ(0, uv_loop_close(&loop));
  return 0;
}

/* ---- HTTP ----------------------------------------------------------------- */

static void conn_closed(uv_handle_t *h);

/* A server answering every request on a connection with "hello", kept
 * alive: reads until the blank line, then writes the response. */
typedef struct {
  uv_tcp_t tcp;
  char buf[4096];
  size_t len;
} conn_t;

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Twice: a\r\nX-Twice: b\r\n"
    "Retry-After: 7\r\n\r\nhello";

static int accepted;

static void conn_closed(uv_handle_t *h) {
  free(h);
}

static void write_done(uv_write_t *w, int status) {
  (void) status;
  free(w);
}

static void conn_alloc(uv_handle_t *h, size_t n, uv_buf_t *buf) {
  conn_t *c = (conn_t *) h;

  (void) n;
  buf->base = c->buf + c->len;
  buf->len = sizeof(c->buf) - c->len;
}

static void conn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn_t *c = (conn_t *) s;
  char *end;

  (void) buf;
  if (n < 0) {
    uv_close((uv_handle_t *) s, conn_closed);
    return;
  }
  c->len += (size_t) n;
  while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) != NULL) {
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t out = uv_buf_init((char *) RESPONSE, sizeof(RESPONSE) - 1);
    size_t used = (size_t) (end + 4 - c->buf);
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    uv_write(w, s, &out, 1, write_done);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  conn_t *c = calloc(1, sizeof(*c));

  (void) status;
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *) &c->tcp) == 0) {
    accepted++;
    uv_read_start((uv_stream_t *) &c->tcp, conn_alloc, conn_read);
  } else {
    uv_close((uv_handle_t *) &c->tcp, conn_closed);
  }
}

typedef struct {
  int done;
  sp_http_result_t r;
  char head[1024];
  char body[64];
  sp_http_t *http;
} req_seen_t;

static void close_walk(uv_handle_t *h, void *arg) {
  (void) arg;
  if (!uv_is_closing(h))
    uv_close(h, h->type == UV_TCP && h->data != NULL ? conn_closed : NULL);
}

static void http_cb(sp_http_req_t *req, int event, void *data) {
  req_seen_t *s = data;

  if (event != SP_HTTP_EV_DONE)
    return;
  s->done++;
  sp_http_result(req, &s->r);
  snprintf(s->head, sizeof(s->head), "%.*s", (int) s->r.head_len, s->r.head);
  snprintf(s->body, sizeof(s->body), "%.*s", (int) s->r.body_len, s->r.body);
}

static int run_requests(uv_loop_t *loop, int port, req_seen_t *seen, int n) {
  char url[64];
  sp_http_options_t o;
  sp_http_req_t *reqs[8];
  sp_http_stats_t st;
  int i;

  snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
  memset(&o, 0, sizeof(o));
  o.url = url;
  o.timeout_ms = 5000;
  o.verify = 1;
  for (i = 0; i < n; i++) {
    ASSERT_EQ(0, sp_http_start(seen->http, &o, http_cb, seen, &reqs[i]));
    /* One at a time, so that the connection is reused. */
    while (seen->done < i + 1)
      uv_run(loop, UV_RUN_ONCE);
    sp_http_req_free(reqs[i]);
  }
  sp_http_stats(seen->http, &st);
  ASSERT_EQ(0, st.running);
  ASSERT_EQ(0, st.live);
  ASSERT_EQ(1, st.sockets);
  return 0;
}

TEST_IMPL(http_get_reuses_the_connection) {
  uv_loop_t loop;
  uv_tcp_t server;
  struct sockaddr_in addr;
  struct sockaddr_storage bound;
  int len = sizeof(bound);
  req_seen_t seen;
  sp_http_options_t o;
  sp_http_req_t *req;

  memset(&seen, 0, sizeof(seen));
  accepted = 0;
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, uv_tcp_init(&loop, &server));
  server.data = NULL; /* not a conn_t: close_walk frees those only */
  ASSERT_EQ(0, uv_ip4_addr("127.0.0.1", 0, &addr));
  ASSERT_EQ(0, uv_tcp_bind(&server, (struct sockaddr *) &addr, 0));
  ASSERT_EQ(0, uv_listen((uv_stream_t *) &server, 16, on_connection));
  ASSERT_EQ(0, uv_tcp_getsockname(&server, (struct sockaddr *) &bound, &len));
  ASSERT_EQ(0, sp_http_new(&loop, &seen.http));
  /* Misuse is refused. */
  memset(&o, 0, sizeof(o));
  ASSERT_EQ(UV_EINVAL, sp_http_start(seen.http, &o, http_cb, &seen, &req));
  ASSERT_EQ(0, run_requests(&loop,
                            ntohs(((struct sockaddr_in *) &bound)->sin_port),
                            &seen, 3));
  ASSERT_EQ(3, seen.done);
  ASSERT_EQ(1, accepted);
  ASSERT_EQ(SP_HTTP_OK, seen.r.outcome);
  ASSERT_EQ(200, seen.r.status);
  ASSERT_EQ(11, seen.r.http_version);
  ASSERT_EQ(7, seen.r.retry_after_s);
  ASSERT_EQ(0, strcmp(seen.body, "hello"));
  ASSERT(strstr(seen.head, "X-Twice: b") != NULL);
  ASSERT(seen.r.total_ms >= seen.r.ttfb_ms);
  sp_http_close(seen.http);
  uv_walk(&loop, close_walk, NULL);
  while (uv_run(&loop, UV_RUN_DEFAULT) != 0)
    ;
  ASSERT_EQ(0, uv_loop_close(&loop));
  return 0;
}

TEST_IMPL(http_refused_and_freed_while_running) {
  uv_loop_t loop;
  req_seen_t seen;
  sp_http_options_t o;
  sp_http_req_t *a, *b;

  memset(&seen, 0, sizeof(seen));
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, sp_http_new(&loop, &seen.http));
  memset(&o, 0, sizeof(o));
  o.url = "http://127.0.0.1:1/";
  ASSERT_EQ(0, sp_http_start(seen.http, &o, http_cb, &seen, &a));
  /* Freed before it ran at all: no callback. */
  ASSERT_EQ(0, sp_http_start(seen.http, &o, http_cb, &seen, &b));
  sp_http_req_free(b);
  while (seen.done < 1)
    uv_run(&loop, UV_RUN_ONCE);
  ASSERT_EQ(1, seen.done);
  ASSERT_EQ(SP_HTTP_REFUSED, seen.r.outcome);
  ASSERT_EQ(0, seen.r.status);
  sp_http_req_free(a);
  sp_http_close(seen.http);
  while (uv_run(&loop, UV_RUN_DEFAULT) != 0)
    ;
  ASSERT_EQ(0, uv_loop_close(&loop));
  return 0;
}
