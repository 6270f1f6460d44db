/* Handles: the loop's list of the processes, sockets and signal watchers
 * its owner holds, and the counts the leak checks read.
 *
 * The rule: a handle is linked once its owner gets it, and unlinked in the
 * close callback that frees its memory, which reports SP_EV_CLOSED: the
 * last event of every handle. Each handle brings its own close function,
 * so that sp__loop_free closes whatever is left without knowing what kinds
 * of handle there are; a new kind is a new file and a close function.
 *
 * The trap: closing unlinks nothing at once. A handle being closed stays in
 * the list, and in the count, until its close callback ran (its
 * SP_EV_CLOSED is still to come); that is also why the list can be walked
 * while closing. A handle whose creation failed was never linked: it is
 * freed without an event and was never counted.
 */
#include "internal.h"

void sp__handle_link(sp_loop_t *loop, sp__handle_t *h, sp__close_fn close,
                     uint64_t token) {
  h->loop = loop;
  h->close = close;
  h->token = token;
  h->counted = 1;
  h->next = &loop->handles;
  h->prev = loop->handles.prev;
  h->prev->next = h;
  loop->handles.prev = h;
  loop->handle_count++;
}

void sp__handle_unlink(sp__handle_t *h) {
  sp_loop_t *loop = h->loop;

  if (!h->counted)
    return;
  h->counted = 0;
  h->prev->next = h->next;
  h->next->prev = h->prev;
  loop->handle_count--;
  /* The handle structs start with their sp__handle_t, so `h` is also the
   * pointer the owner holds. */
  sp__emit(loop, h->token, SP_EV_CLOSED, 0, 0, NULL, 0, h);
}

void sp__handle_close(void *handle) {
  sp__handle_t *h = handle;

  h->close(h);
}

void sp__handle_close_all(sp_loop_t *loop) {
  sp__handle_t *h;

  for (h = loop->handles.next; h != &loop->handles; h = h->next)
    if (!h->closing)
      h->close(h);
}

unsigned sp__loop_handle_count(const sp_loop_t *loop) {
  return loop->handle_count;
}

unsigned sp__loop_closing_count(const sp_loop_t *loop) {
  const sp__handle_t *h;
  unsigned n = 0;

  for (h = loop->handles.next; h != &loop->handles; h = h->next)
    if (h->closing)
      n++;
  return n;
}
