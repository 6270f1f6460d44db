/* Signal watchers: one uv_signal_t a watch, reporting SP_EV_SIGNAL with
 * the watch's token.
 *
 * The rule: a watcher does not keep the loop alive (it is unreferenced),
 * so a program whose only open handle is a signal watcher has nothing
 * pending and its step returns 0. It has no close of its own for the
 * owner: it stays until the loop is freed, which closes it.
 *
 * The trap: a watcher whose uv_signal_start failed was initialised, so it
 * must still go through uv_close; it was never linked, so its close
 * callback frees it without an event.
 */
#include <stdlib.h>

#include "internal.h"

typedef struct sp__signal_s {
  sp__handle_t h;
  uv_signal_t signal;
} sp__signal_t;

static void signal_cb(uv_signal_t *handle, int signum) {
  sp__signal_t *s = handle->data;

  sp__emit(s->h.loop, s->h.token, SP_EV_SIGNAL, signum, 0, NULL, 0, NULL);
}

static void close_cb(uv_handle_t *handle) {
  sp__signal_t *s = handle->data;

  sp__handle_unlink(&s->h);
  free(s);
}

/* The watcher's close function, for sp__loop_free. */
static void signal_close(sp__handle_t *h) {
  if (h->closing)
    return;
  h->closing = 1;
  uv_close((uv_handle_t *) &((sp__signal_t *) h)->signal, close_cb);
}

int sp__signal_watch(sp_loop_t *loop, int signum, uint64_t token) {
  sp__signal_t *s;
  int err;

  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return UV_ENOMEM;
  s->h.loop = loop;
  err = uv_signal_init(&loop->uv, &s->signal);
  if (err) {
    free(s);
    return err;
  }
  s->signal.data = s;
  err = uv_signal_start(&s->signal, signal_cb, signum);
  if (err) {
    /* Not linked: freed in the close callback without an event. */
    uv_close((uv_handle_t *) &s->signal, close_cb);
    return err;
  }
  uv_unref((uv_handle_t *) &s->signal);
  sp__handle_link(loop, &s->h, signal_close, token);
  return 0;
}
