/* Name lookups in Lua: loop:dns_resolve(host, family, token) -> a lookup
 * userdata, on sprun.h's sp_dns_resolve.
 *
 * The rule: the lookup's end comes as SP_EV_DNS with its token (a: 0 or a
 * negative libuv code, data: the addresses, one per line), unless
 * lookup:cancel() came first; a lookup is I/O a task awaits from its
 * start to its end or cancel, so virtual time follows the real clock
 * meanwhile. The trap: the userdata may be collected, or the loop closed,
 * while the thread pool still runs the lookup; the C request outlives
 * both (sp_dns_cancel), and the callback lets go of the userdata first.
 */
#include <string.h>

#include "private.h"

#define DNS_MT "sprun.core.dns"

typedef struct l_dns_s {
  sp_dns_t *req; /* NULL once ended or cancelled */
  l_loop_t *ll;
  uint64_t token;
} l_dns_t;

static void l_dns_done(sp_dns_t *req, int status, const char *const *addrs,
                       int count, void *data) {
  l_dns_t *d = data;
  char buf[32 * 48];
  size_t len = 0;
  int i;

  (void) req;
  d->req = NULL;
  if (d->ll->loop == NULL)
    return;
  sp__loop_io(d->ll->loop, -1);
  for (i = 0; i < count; i++) {
    size_t n = strlen(addrs[i]);
    if (len + n + 1 > sizeof(buf))
      break;
    if (len > 0)
      buf[len++] = '\n';
    memcpy(buf + len, addrs[i], n);
    len += n;
  }
  sp__loop_report(d->ll->loop, d->token, SP_EV_DNS, status, count, buf, len,
                  NULL);
}

static int l_loop_dns_resolve(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  const char *host = luaL_checkstring(L, 2);
  const char *family = luaL_checkstring(L, 3);
  uint64_t token = l_check_uint(L, 4, "token");
  l_dns_t *d;
  int fam;
  int err;

  if (strcmp(family, "any") == 0)
    fam = SP_DNS_ANY;
  else if (strcmp(family, "inet") == 0)
    fam = SP_DNS_INET;
  else if (strcmp(family, "inet6") == 0)
    fam = SP_DNS_INET6;
  else
    return luaL_argerror(L, 3, "family must be any, inet or inet6");
  d = lua_newuserdata(L, sizeof(*d));
  d->req = NULL;
  d->ll = ll;
  d->token = token;
  luaL_getmetatable(L, DNS_MT);
  lua_setmetatable(L, -2);
  err = sp_dns_resolve(sp__loop_uv(ll->loop), host, fam, l_dns_done, d,
                       &d->req);
  if (err)
    return l_push_error(L, err);
  sp__loop_io(ll->loop, 1);
  return 1;
}

/* lookup:cancel() (and its __gc): no SP_EV_DNS will come. Idempotent. */
static int l_dns_cancel(lua_State *L) {
  l_dns_t *d = luaL_checkudata(L, 1, DNS_MT);

  if (d->req != NULL) {
    sp_dns_cancel(d->req);
    d->req = NULL;
    if (d->ll->loop != NULL)
      sp__loop_io(d->ll->loop, -1);
  }
  return 0;
}

static int l_dns_tostring(lua_State *L) {
  l_dns_t *d = luaL_checkudata(L, 1, DNS_MT);

  lua_pushfstring(L, "sprun.core.dns (%s): %p",
                  d->req ? "running" : "done", (void *) d);
  return 1;
}

static const luaL_Reg l_dns_methods[] = {
  { "cancel", l_dns_cancel },
  { NULL, NULL }
};
