/* Private to runtime/loop/http*.c: the structures of sprun.h's HTTP pool
 * and request, shared by http.c (the pool: curl's sockets and timer, the
 * collection of finished transfers, the lifecycle) and http_transfer.c
 * (one transfer: its options, its headers and body, how it ended).
 */
#ifndef SPRUN_LOOP_HTTP_H
#define SPRUN_LOOP_HTTP_H

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

/* http_transfer.c */
void sp__http_buf_free(sp_buf_t *b);
void sp__http_notify_add(sp_http_t *http, sp_http_req_t *r);
void sp__http_notify_remove(sp_http_t *http, sp_http_req_t *r);
/* The options every request gets, then the caller's. */
int sp__http_setup(sp_http_req_t *r, CURL *e, const sp_http_options_t *o);
/* Reads what the request's end says, while its easy handle is at hand. */
void sp__http_finish(sp_http_req_t *r, CURLcode code);

/* http.c: the socket callbacks every request's handle is given. */
curl_socket_t sp__http_open_cb(void *clientp, curlsocktype purpose,
                               struct curl_sockaddr *addr);
int sp__http_close_cb(void *clientp, curl_socket_t fd);

#endif /* SPRUN_LOOP_HTTP_H */
