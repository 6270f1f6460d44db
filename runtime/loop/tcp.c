/* TCP sockets: connections (made or accepted) and listeners.
 *
 * The rule: every request that was started is answered exactly once. A
 * connect reports SP_EV_TCP_CONNECT and a write SP_EV_WRITE even when the
 * socket is closed first (with UV_ECANCELED, which libuv delivers before
 * the close callback), so that nothing waits forever; SP_EV_CLOSED is
 * always the last event of a socket.
 *
 * The trap: data is read into the loop's one buffer and is valid only
 * during the event callback; the owner copies what it keeps. And a failed
 * connect leaves the socket open: the owner closes it like any other.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A connection is a TCP socket, or an inherited descriptor opened as a
 * pipe (sp__tcp_pipe_open: a socket pair from the parent); both are
 * streams, and everything but connect and listen treats them alike. */
struct sp_tcp_s {
  sp__handle_t h;
  union {
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } u;
  uv_connect_t connect;
  int reading;
};

static int parse_addr(const char *host, int port,
                      struct sockaddr_storage *addr) {
  if (host == NULL || port < 0 || port > 65535)
    return UV_EINVAL;
  if (strcmp(host, "localhost") == 0)
    host = "127.0.0.1";
  if (uv_ip4_addr(host, port, (struct sockaddr_in *) addr) == 0)
    return 0;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *) addr) == 0)
    return 0;
  return UV_EINVAL;
}

/* The stream of either kind of connection. */
static uv_stream_t *stream_of(sp_tcp_t *t) {
  return (uv_stream_t *) &t->u;
}

static void close_cb(uv_handle_t *handle) {
  sp_tcp_t *t = handle->data;

  sp__handle_unlink(&t->h);
  free(t);
}

static sp_tcp_t *tcp_new(sp_loop_t *loop) {
  sp_tcp_t *t = calloc(1, sizeof(*t));

  if (t == NULL)
    return NULL;
  t->h.loop = loop;
  if (uv_tcp_init(&loop->uv, &t->u.tcp) != 0) {
    free(t);
    return NULL;
  }
  t->u.tcp.data = t;
  return t;
}

/* For a socket that never reached its owner: no event, just the memory. */
static void tcp_discard(sp_tcp_t *t) {
  t->h.closing = 1;
  uv_close((uv_handle_t *) stream_of(t), close_cb);
}

/* The socket's close function, for sp__loop_free. */
static void tcp_close(sp__handle_t *h) {
  sp__tcp_close((sp_tcp_t *) h);
}

static void connect_cb(uv_connect_t *req, int status) {
  sp_tcp_t *t = req->handle->data;

  t->h.loop->inflight--;
  sp__emit(t->h.loop, t->h.token, SP_EV_TCP_CONNECT, status, 0, NULL, 0, t);
}

int sp__tcp_connect(sp_loop_t *loop, const char *host, int port,
                    uint64_t token, sp_tcp_t **out) {
  struct sockaddr_storage addr;
  sp_tcp_t *t;
  int err;

  if (port == 0)
    return UV_EINVAL;
  err = parse_addr(host, port, &addr);
  if (err)
    return err;
  t = tcp_new(loop);
  if (t == NULL)
    return UV_ENOMEM;
  err = uv_tcp_connect(&t->connect, &t->u.tcp, (struct sockaddr *) &addr,
                       connect_cb);
  if (err) {
    tcp_discard(t);
    return err;
  }
  loop->inflight++;
  sp__handle_link(loop, &t->h, tcp_close, token);
  *out = t;
  return 0;
}

static void connection_cb(uv_stream_t *server, int status) {
  sp_tcp_t *s = server->data;
  sp_loop_t *loop = s->h.loop;
  sp_tcp_t *c;
  int err;

  if (s->h.closing)
    return;
  if (status < 0) {
    sp__emit(loop, s->h.token, SP_EV_TCP_ACCEPT, status, 0, NULL, 0, NULL);
    return;
  }
  c = tcp_new(loop);
  if (c == NULL) {
    sp__emit(loop, s->h.token, SP_EV_TCP_ACCEPT, UV_ENOMEM, 0, NULL, 0,
             NULL);
    return;
  }
  err = uv_accept(server, (uv_stream_t *) &c->u.tcp);
  if (err) {
    tcp_discard(c);
    sp__emit(loop, s->h.token, SP_EV_TCP_ACCEPT, err, 0, NULL, 0, NULL);
    return;
  }
  sp__handle_link(loop, &c->h, tcp_close, 0);
  sp__emit(loop, s->h.token, SP_EV_TCP_ACCEPT, 0, 0, NULL, 0, c);
}

int sp__tcp_listen(sp_loop_t *loop, const char *host, int port, int backlog,
                   uint64_t token, sp_tcp_t **out, int *bound_port) {
  struct sockaddr_storage addr;
  int len = (int) sizeof(addr);
  sp_tcp_t *t;
  int err;

  err = parse_addr(host, port, &addr);
  if (err)
    return err;
  t = tcp_new(loop);
  if (t == NULL)
    return UV_ENOMEM;
  err = uv_tcp_bind(&t->u.tcp, (struct sockaddr *) &addr, 0);
  if (err == 0)
    err = uv_listen((uv_stream_t *) &t->u.tcp, backlog, connection_cb);
  if (err == 0)
    err = uv_tcp_getsockname(&t->u.tcp, (struct sockaddr *) &addr, &len);
  if (err) {
    tcp_discard(t);
    return err;
  }
  if (addr.ss_family == AF_INET6)
    *bound_port = ntohs(((struct sockaddr_in6 *) &addr)->sin6_port);
  else
    *bound_port = ntohs(((struct sockaddr_in *) &addr)->sin_port);
  sp__handle_link(loop, &t->h, tcp_close, token);
  *out = t;
  return 0;
}

int sp__tcp_pipe_open(sp_loop_t *loop, int fd, uint64_t token,
                      sp_tcp_t **out) {
  sp_tcp_t *t = calloc(1, sizeof(*t));
  int err;

  if (t == NULL)
    return UV_ENOMEM;
  t->h.loop = loop;
  err = uv_pipe_init(&loop->uv, &t->u.pipe, 0);
  if (err) {
    free(t);
    return err;
  }
  t->u.pipe.data = t;
  err = uv_pipe_open(&t->u.pipe, fd);
  if (err) {
    tcp_discard(t);
    return err;
  }
  sp__handle_link(loop, &t->h, tcp_close, token);
  *out = t;
  return 0;
}

void sp__tcp_set_token(sp_tcp_t *t, uint64_t token) {
  t->h.token = token;
}

static void stop_reading(sp_tcp_t *t) {
  if (t->reading) {
    t->reading = 0;
    t->h.loop->inflight--;
  }
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  sp_tcp_t *t = stream->data;

  if (nread > 0) {
    sp__emit(t->h.loop, t->h.token, SP_EV_TCP_DATA, 0, 0, buf->base,
             (size_t) nread, t);
  } else if (nread < 0) {
    /* End of file or an error: either way, no more data. */
    uv_read_stop(stream);
    stop_reading(t);
    sp__emit(t->h.loop, t->h.token, SP_EV_TCP_DATA,
             nread == UV_EOF ? 0 : nread, 0, NULL, 0, t);
  }
}

int sp__tcp_read_start(sp_tcp_t *t) {
  int err;

  if (t->h.closing)
    return UV_EBADF;
  if (t->reading)
    return 0;
  err = uv_read_start(stream_of(t), sp__alloc_cb, read_cb);
  if (err)
    return err;
  t->reading = 1;
  t->h.loop->inflight++;
  return 0;
}

int sp__tcp_read_stop(sp_tcp_t *t) {
  if (t->h.closing)
    return UV_EBADF;
  if (t->reading)
    uv_read_stop(stream_of(t));
  stop_reading(t);
  return 0;
}

int sp__tcp_write(sp_tcp_t *t, const char *data, size_t len,
                  uint64_t write_token) {
  if (t->h.closing)
    return UV_EBADF;
  return sp__stream_write(t->h.loop, stream_of(t), data, len, write_token);
}

void sp__tcp_close(sp_tcp_t *t) {
  if (t->h.closing)
    return;
  t->h.closing = 1;
  stop_reading(t);
  uv_close((uv_handle_t *) stream_of(t), close_cb);
}
