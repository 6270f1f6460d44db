/* Streams: what process pipes and TCP sockets share, the read buffer and
 * the writes.
 *
 * The rule: a write copies its data, so the caller's buffer (a Lua string)
 * may go as soon as the call returns, and it is answered exactly once, by
 * SP_EV_WRITE with its own token: with UV_ECANCELED when the stream is
 * closed first, which libuv reports before the close callback. A write
 * with token 0 is answered by nothing, and is first tried at once.
 *
 * The trap: the read buffer is the loop's one buffer. What a read reports
 * is valid only during the event callback, and the next read overwrites
 * it; the owner copies what it keeps.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A write request with its own copy of the data. */
typedef struct sp__write_s {
  uv_write_t req;
  sp_loop_t *loop;
  uint64_t token;
  char data[];
} sp__write_t;

void sp__alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  sp_loop_t *loop = (sp_loop_t *) handle->loop;

  (void) suggested;
  buf->base = loop->readbuf;
  buf->len = sizeof(loop->readbuf);
}

static void write_cb(uv_write_t *req, int status) {
  sp__write_t *w = (sp__write_t *) req;
  sp_loop_t *loop = w->loop;

  loop->inflight--;
  /* Token 0: nobody waits for this one. */
  if (w->token != 0)
    sp__emit(loop, w->token, SP_EV_WRITE, status, 0, NULL, 0,
             req->handle->data);
  free(w);
}

int sp__stream_write(sp_loop_t *loop, uv_stream_t *stream, const char *data,
                     size_t len, uint64_t write_token) {
  sp__write_t *w;
  uv_buf_t buf;
  int err;

  if (len > UINT32_MAX)
    return UV_E2BIG;
  /* A write nobody waits for (token 0), with nothing queued before it:
   * what the socket takes at once needs no copy, no request and no
   * callback; the rest is queued as any write. Any error but EAGAIN is
   * left to uv_write, which reports it as it always does. */
  if (write_token == 0 && len > 0 &&
      uv_stream_get_write_queue_size(stream) == 0) {
    buf = uv_buf_init((char *) data, (unsigned) len);
    err = uv_try_write(stream, &buf, 1);
    if (err > 0) {
      if ((size_t) err == len)
        return 0;
      data += err;
      len -= (size_t) err;
    }
  }
  w = malloc(sizeof(*w) + len);
  if (w == NULL)
    return UV_ENOMEM;
  w->loop = loop;
  w->token = write_token;
  if (len > 0)
    memcpy(w->data, data, len);
  buf = uv_buf_init(w->data, (unsigned) len);
  err = uv_write(&w->req, stream, &buf, 1, write_cb);
  if (err) {
    free(w);
    return err;
  }
  loop->inflight++;
  return 0;
}
