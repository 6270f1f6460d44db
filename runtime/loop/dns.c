/* Name lookups: getaddrinfo on libuv's thread pool (sprun.h's sp_dns_*).
 *
 * The rule: a lookup's callback comes once, from the loop, unless it was
 * cancelled first; then it never comes. The trap: uv_cancel stops only a
 * lookup still queued. One the pool already runs cannot be stopped, so a
 * cancelled request stays allocated until libuv reports it, and its result
 * is dropped there: the request is freed in its uv callback, in every
 * case, and the owner forgets it at once when it cancels.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "sprun.h"

/* The most addresses one answer keeps (a name with more is rare, and a
 * connect tries them in order anyway). */
#define SP_DNS_MAX_ADDRS 32

struct sp_dns_s {
  uv_getaddrinfo_t req;
  sp_dns_cb cb;
  void *data;
  int cancelled;
};

/* The numeric form of one address (no port). */
static int format_addr(const struct addrinfo *ai, char *out, size_t len) {
  if (ai->ai_family == AF_INET)
    return uv_ip4_name((const struct sockaddr_in *) ai->ai_addr, out, len);
  if (ai->ai_family == AF_INET6)
    return uv_ip6_name((const struct sockaddr_in6 *) ai->ai_addr, out, len);
  return UV_EAI_FAMILY;
}

static void resolved_cb(uv_getaddrinfo_t *r, int status,
                        struct addrinfo *res) {
  sp_dns_t *d = r->data;
  char names[SP_DNS_MAX_ADDRS][INET6_ADDRSTRLEN];
  const char *addrs[SP_DNS_MAX_ADDRS];
  const struct addrinfo *ai;
  int count = 0;
  int i;

  if (!d->cancelled && status == 0) {
    for (ai = res; ai != NULL && count < SP_DNS_MAX_ADDRS; ai = ai->ai_next) {
      if (format_addr(ai, names[count], sizeof(names[count])) != 0)
        continue;
      /* The resolver may list an address once per socket type. */
      for (i = 0; i < count; i++)
        if (strcmp(names[i], names[count]) == 0)
          break;
      if (i == count) {
        addrs[count] = names[count];
        count++;
      }
    }
    if (count == 0)
      status = UV_EAI_NODATA;
  }
  if (res != NULL)
    uv_freeaddrinfo(res);
  if (!d->cancelled)
    d->cb(d, status, addrs, count, d->data);
  free(d);
}

int sp_dns_resolve(struct uv_loop_s *loop, const char *host, int family,
                   sp_dns_cb cb, void *data, sp_dns_t **out) {
  struct addrinfo hints;
  sp_dns_t *d;
  int err;

  if (loop == NULL || host == NULL || *host == '\0' || cb == NULL ||
      out == NULL)
    return UV_EINVAL;
  memset(&hints, 0, sizeof(hints));
  switch (family) {
  case SP_DNS_ANY:
    hints.ai_family = AF_UNSPEC;
    /* Only the families this host has an address of (loopback aside). */
    hints.ai_flags = AI_ADDRCONFIG;
    break;
  case SP_DNS_INET:
    hints.ai_family = AF_INET;
    break;
  case SP_DNS_INET6:
    hints.ai_family = AF_INET6;
    break;
  default:
    return UV_EINVAL;
  }
  hints.ai_socktype = SOCK_STREAM;
  d = calloc(1, sizeof(*d));
  if (d == NULL)
    return UV_ENOMEM;
  d->cb = cb;
  d->data = data;
  d->req.data = d;
  err = uv_getaddrinfo(loop, &d->req, resolved_cb, host, NULL, &hints);
  if (err) {
    free(d);
    return err;
  }
  *out = d;
  return 0;
}

void sp_dns_cancel(sp_dns_t *d) {
  d->cancelled = 1;
  /* Queued: its callback comes with UV_EAI_CANCELED and frees it; running:
   * it comes with the result, which is dropped. */
  (void) uv_cancel((uv_req_t *) &d->req);
}
