/* HTTP in Lua: loop:http_request(options, token) -> a request userdata, on
 * sprun.h's sp_http_*, with one connection pool per loop (made at the
 * first request, closed with the loop), and core.url_parse.
 *
 * The rule: a request reports SP_EV_HTTP_BODY (a streamed one holds bytes:
 * req:take_body()) and SP_EV_HTTP_DONE (req:result()) with its token;
 * req:close() frees it, aborting it if it still runs. A running request is
 * I/O a task awaits. The trap: the pool's callbacks run inside the loop's
 * step, after curl returned (never inside curl), and the loop's pool is
 * closed before the loop: a request still open then is cut off from it
 * and only its memory is left, for close() or the collector.
 */
#include <ctype.h>
#include <string.h>

#include "../loop/curl.h"

#include "private.h"

#define HTTP_MT "sprun.core.http"

typedef struct l_http_s {
  sp_http_req_t *req; /* NULL once closed */
  l_loop_t *ll;
  uint64_t token;
  int io; /* counted as I/O in flight */
} l_http_t;

static const char *const l_http_kinds[] = {
  NULL, "timeout", "connect_timeout", "connection_refused", "unreachable",
  "connect_failed", "tls_failed", "reset", "too_large", "stalled",
  "bad_response", "http_failed"
};

static void l_http_io_end(l_http_t *u) {
  if (u->io) {
    u->io = 0;
    if (u->ll->loop != NULL)
      sp__loop_io(u->ll->loop, -1);
  }
}

static void l_http_event(sp_http_req_t *req, int event, void *data) {
  l_http_t *u = data;

  (void) req;
  if (u->ll->loop == NULL)
    return;
  if (event == SP_HTTP_EV_DONE) {
    l_http_io_end(u);
    sp__loop_report(u->ll->loop, u->token, SP_EV_HTTP_DONE, 0, 0, NULL, 0,
                    NULL);
  } else {
    sp__loop_report(u->ll->loop, u->token, SP_EV_HTTP_BODY, 0, 0, NULL, 0,
                    NULL);
  }
}

/* A string field of the options table, or NULL. */
static const char *l_opt_string(lua_State *L, int t, const char *k,
                                size_t *len) {
  const char *s = NULL;

  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TSTRING)
    s = lua_tolstring(L, -1, len);
  lua_pop(L, 1); /* the string stays referenced by the table */
  return s;
}

static long l_opt_long(lua_State *L, int t, const char *k) {
  long v = 0;

  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TNUMBER)
    v = (long) lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static sp_http_t *l_http_pool(lua_State *L, l_loop_t *ll) {
  int err;

  if (ll->http == NULL) {
    err = sp_http_new(sp__loop_uv(ll->loop), &ll->http);
    if (err) {
      ll->http = NULL;
      luaL_error(L, "sprun.http: %s", err == UV_ENOSYS ? sp__curl_error()
                                                       : uv_strerror(err));
    }
  }
  return ll->http;
}

#define L_HTTP_MAX_HEADERS 256

/* loop:http_request(o, token): o = { method, url, headers = { "K: v" },
 * body, resolve, timeout_ms, connect_timeout_ms, low_speed_bytes,
 * low_speed_s, max_body_bytes, version (sp_http_version_t), verify,
 * ca_file, stream }. The request, or nil, name, message. */
static int l_loop_http_request(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  uint64_t token;
  sp_http_options_t o;
  const char *headers[L_HTTP_MAX_HEADERS + 1];
  sp_http_t *http;
  l_http_t *u;
  int n = 0;
  int err;

  luaL_checktype(L, 2, LUA_TTABLE);
  token = l_check_uint(L, 3, "token");
  memset(&o, 0, sizeof(o));
  o.url = l_opt_string(L, 2, "url", NULL);
  if (o.url == NULL)
    return luaL_argerror(L, 2, "url must be a string");
  o.method = l_opt_string(L, 2, "method", NULL);
  o.body = l_opt_string(L, 2, "body", &o.body_len);
  o.resolve = l_opt_string(L, 2, "resolve", NULL);
  o.ca_file = l_opt_string(L, 2, "ca_file", NULL);
  o.timeout_ms = l_opt_long(L, 2, "timeout_ms");
  o.connect_timeout_ms = l_opt_long(L, 2, "connect_timeout_ms");
  o.low_speed_bytes = l_opt_long(L, 2, "low_speed_bytes");
  o.low_speed_s = l_opt_long(L, 2, "low_speed_s");
  o.max_body_bytes = (size_t) l_opt_long(L, 2, "max_body_bytes");
  o.version = (int) l_opt_long(L, 2, "version");
  lua_getfield(L, 2, "verify");
  o.verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_getfield(L, 2, "stream");
  o.stream = lua_toboolean(L, -1);
  lua_pop(L, 2);
  lua_getfield(L, 2, "headers");
  if (lua_istable(L, -1)) {
    int i, count = (int) lua_objlen(L, -1);
    if (count > L_HTTP_MAX_HEADERS)
      return luaL_error(L, "sprun.core: more than %d headers",
                        L_HTTP_MAX_HEADERS);
    for (i = 1; i <= count; i++) {
      lua_rawgeti(L, -1, i);
      if (lua_type(L, -1) == LUA_TSTRING)
        headers[n++] = lua_tostring(L, -1);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  headers[n] = NULL;
  o.headers = headers;
  http = l_http_pool(L, ll);
  u = lua_newuserdata(L, sizeof(*u));
  u->req = NULL;
  u->ll = ll;
  u->token = token;
  u->io = 0;
  luaL_getmetatable(L, HTTP_MT);
  lua_setmetatable(L, -2);
  err = sp_http_start(http, &o, l_http_event, u, &u->req);
  if (err)
    return l_push_error(L, err);
  u->io = 1;
  sp__loop_io(ll->loop, 1);
  return 1;
}

static int l_loop_http_stats(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  sp_http_stats_t s;

  memset(&s, 0, sizeof(s));
  if (ll->http != NULL)
    sp_http_stats(ll->http, &s);
  lua_pushinteger(L, (lua_Integer) s.running);
  lua_pushinteger(L, (lua_Integer) s.live);
  lua_pushinteger(L, (lua_Integer) s.sockets);
  lua_pushinteger(L, (lua_Integer) s.polls);
  return 4;
}

/* The header block as a table: lower-cased names, a repeated header as a
 * list of its values in order. The status line is skipped. */
static void l_push_headers(lua_State *L, const char *p, size_t len) {
  const char *end = p + len;
  const char *eol;
  char name[256];

  lua_newtable(L);
  /* The status line. */
  eol = memchr(p, '\n', len);
  p = eol != NULL ? eol + 1 : end;
  while (p < end) {
    const char *colon, *v, *ve;
    size_t nlen, i;
    eol = memchr(p, '\n', (size_t) (end - p));
    if (eol == NULL)
      eol = end;
    colon = memchr(p, ':', (size_t) (eol - p));
    if (colon == NULL || colon == p || (size_t) (colon - p) >= sizeof(name)) {
      p = eol + 1;
      continue;
    }
    nlen = (size_t) (colon - p);
    for (i = 0; i < nlen; i++)
      name[i] = (char) tolower((unsigned char) p[i]);
    v = colon + 1;
    while (v < eol && (*v == ' ' || *v == '\t'))
      v++;
    ve = eol;
    while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
      ve--;
    lua_pushlstring(L, name, nlen);
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, v, (size_t) (ve - v));
      lua_rawset(L, -3);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
      /* The second value: the header becomes a list. */
      lua_createtable(L, 2, 0);
      lua_insert(L, -2);
      lua_rawseti(L, -2, 1);
      lua_pushlstring(L, v, (size_t) (ve - v));
      lua_rawseti(L, -2, 2);
      lua_rawset(L, -3);
    } else {
      lua_pushlstring(L, v, (size_t) (ve - v));
      lua_rawseti(L, -2, (int) lua_objlen(L, -2) + 1);
      lua_pop(L, 2);
    }
    p = eol + 1;
  }
}

static l_http_t *l_check_http(lua_State *L) {
  return luaL_checkudata(L, 1, HTTP_MT);
}

/* req:result() -> kind (nil: a response came), message, status,
 * http_version ("1.1", ...), headers, body, retry_after_s (or nil),
 * connect_ms, tls_ms, ttfb_ms, total_ms. */
static int l_http_result(lua_State *L) {
  l_http_t *u = l_check_http(L);
  sp_http_result_t r;

  if (u->req == NULL)
    return l_push_closed(L);
  if (sp_http_result(u->req, &r) != 0)
    return luaL_error(L, "sprun.core: the request has not ended");
  if (r.outcome == SP_HTTP_OK)
    lua_pushnil(L);
  else
    lua_pushstring(L, l_http_kinds[r.outcome]);
  lua_pushstring(L, r.message);
  lua_pushinteger(L, r.status);
  switch (r.http_version) {
  case 10:
    lua_pushliteral(L, "1.0");
    break;
  case 11:
    lua_pushliteral(L, "1.1");
    break;
  case 20:
    lua_pushliteral(L, "2");
    break;
  case 30:
    lua_pushliteral(L, "3");
    break;
  default:
    lua_pushnil(L);
  }
  l_push_headers(L, r.head != NULL ? r.head : "", r.head_len);
  lua_pushlstring(L, r.body != NULL ? r.body : "", r.body_len);
  if (r.retry_after_s >= 0)
    lua_pushnumber(L, (lua_Number) r.retry_after_s);
  else
    lua_pushnil(L);
  lua_pushnumber(L, r.connect_ms);
  lua_pushnumber(L, r.tls_ms);
  lua_pushnumber(L, r.ttfb_ms);
  lua_pushnumber(L, r.total_ms);
  return 11;
}

/* req:take_body() -> the streamed bytes held (or nil when none). */
static int l_http_take_body(lua_State *L) {
  l_http_t *u = l_check_http(L);
  const char *p;
  size_t len;

  if (u->req == NULL)
    return l_push_closed(L);
  p = sp_http_take_body(u->req, &len);
  if (len == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, p, len);
  sp_http_take_done(u->req);
  return 1;
}

/* req:close() (and its __gc): frees the request, aborting it if it runs. */
static int l_http_close(lua_State *L) {
  l_http_t *u = l_check_http(L);

  if (u->req != NULL) {
    sp_http_req_free(u->req);
    u->req = NULL;
    l_http_io_end(u);
  }
  return 0;
}

static int l_http_tostring(lua_State *L) {
  l_http_t *u = l_check_http(L);

  lua_pushfstring(L, "sprun.core.http (%s): %p", u->req ? "open" : "closed",
                  (void *) u);
  return 1;
}

static const luaL_Reg l_http_methods[] = {
  { "result", l_http_result },
  { "take_body", l_http_take_body },
  { "close", l_http_close },
  { NULL, NULL }
};

/* core.url_parse(url) -> scheme, host (IPv6 without brackets), port, or
 * nil, message; curl's own parser, so that what is resolved is what curl
 * connects to. Only http and https. */
static int l_url_parse(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  CURLU *u;
  char *scheme = NULL, *host = NULL, *port = NULL;
  CURLUcode rc;
  int n = 3;

  if (sp__curl_load() != 0)
    return luaL_error(L, "sprun.http: %s", sp__curl_error());
  u = curl_url();
  if (u == NULL)
    return luaL_error(L, "sprun.core: out of memory");
  rc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (rc == CURLUE_OK)
    rc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  if (rc == CURLUE_OK)
    rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
  if (rc == CURLUE_OK)
    rc = curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
  if (rc != CURLUE_OK) {
    lua_pushnil(L);
    lua_pushstring(L, curl_url_strerror(rc));
    n = 2;
  } else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "unsupported scheme '%s' (http and https are)",
                    scheme);
    n = 2;
  } else {
    size_t hl = strlen(host);
    lua_pushstring(L, scheme);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
      lua_pushlstring(L, host + 1, hl - 2);
    else
      lua_pushstring(L, host);
    lua_pushinteger(L, atoi(port));
  }
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return n;
}
