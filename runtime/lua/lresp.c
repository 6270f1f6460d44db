/* RESP, the Redis protocol, in Lua: core.resp_reader() and
 * core.resp_command(...), on libhiredis's reader and command formatter
 * (its networking is not used: the transport is sprun.tcp).
 *
 * The rule: reader:feed(data) takes bytes as they come, in any pieces;
 * reader:next() returns the next whole reply as kind, value, or nothing
 * while none is complete. Kinds: "string", "status", "integer", "nil",
 * "array", "error", and "protocol" (the stream is not RESP; the reader is
 * dead from then on). In an array, a nil is false and an error is a table
 * { err = "message" }, so that the list keeps its length.
 *
 * The trap: hiredis keeps what it was fed until a reply is taken, so a
 * reader holds at most one unfinished reply plus the replies not yet
 * taken; the caller takes them as they come.
 */
#include <string.h>

#include <hiredis/hiredis.h>

#include "private.h"

#define RESP_MT "sprun.core.resp"

typedef struct l_resp_s {
  redisReader *r; /* NULL once closed */
} l_resp_t;

/* Arrays nest at most this deep (Redis's own replies nest 2 or 3). */
#define L_RESP_MAX_DEPTH 32

static void l_push_reply(lua_State *L, const redisReply *rep, int depth) {
  size_t i;

  switch (rep->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, rep->str, (size_t) rep->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushnumber(L, (lua_Number) rep->integer);
    break;
  case REDIS_REPLY_NIL:
    lua_pushboolean(L, 0);
    break;
  case REDIS_REPLY_ERROR:
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, rep->str, (size_t) rep->len);
    lua_setfield(L, -2, "err");
    break;
  case REDIS_REPLY_ARRAY:
    if (depth >= L_RESP_MAX_DEPTH) {
      lua_pushboolean(L, 0);
      break;
    }
    lua_createtable(L, (int) rep->elements, 0);
    for (i = 0; i < rep->elements; i++) {
      l_push_reply(L, rep->element[i], depth + 1);
      lua_rawseti(L, -2, (int) i + 1);
    }
    break;
  default:
    lua_pushboolean(L, 0);
  }
}

static const char *l_reply_kind(int type) {
  switch (type) {
  case REDIS_REPLY_STRING:
    return "string";
  case REDIS_REPLY_STATUS:
    return "status";
  case REDIS_REPLY_INTEGER:
    return "integer";
  case REDIS_REPLY_NIL:
    return "nil";
  case REDIS_REPLY_ARRAY:
    return "array";
  case REDIS_REPLY_ERROR:
    return "error";
  default:
    return "unknown";
  }
}

static int l_resp_reader(lua_State *L) {
  l_resp_t *u = lua_newuserdata(L, sizeof(*u));

  u->r = redisReaderCreate();
  if (u->r == NULL)
    return luaL_error(L, "sprun.core: out of memory");
  luaL_getmetatable(L, RESP_MT);
  lua_setmetatable(L, -2);
  return 1;
}

static l_resp_t *l_check_resp(lua_State *L) {
  l_resp_t *u = luaL_checkudata(L, 1, RESP_MT);

  if (u->r == NULL)
    luaL_error(L, "sprun.core: the RESP reader is closed");
  return u;
}

static int l_resp_feed(lua_State *L) {
  l_resp_t *u = l_check_resp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);

  if (redisReaderFeed(u->r, data, len) != REDIS_OK)
    return luaL_error(L, "sprun.core: out of memory");
  return 0;
}

static int l_resp_next(lua_State *L) {
  l_resp_t *u = l_check_resp(L);
  void *reply = NULL;

  if (redisReaderGetReply(u->r, &reply) != REDIS_OK) {
    lua_pushliteral(L, "protocol");
    lua_pushstring(L, u->r->errstr);
    return 2;
  }
  if (reply == NULL)
    return 0;
  lua_pushstring(L, l_reply_kind(((redisReply *) reply)->type));
  if (((redisReply *) reply)->type == REDIS_REPLY_ERROR)
    lua_pushlstring(L, ((redisReply *) reply)->str,
                    (size_t) ((redisReply *) reply)->len);
  else
    l_push_reply(L, reply, 0);
  freeReplyObject(reply);
  return 2;
}

/* reader:close() (and its __gc). Idempotent. */
static int l_resp_close(lua_State *L) {
  l_resp_t *u = luaL_checkudata(L, 1, RESP_MT);

  if (u->r != NULL) {
    redisReaderFree(u->r);
    u->r = NULL;
  }
  return 0;
}

static int l_resp_tostring(lua_State *L) {
  l_resp_t *u = luaL_checkudata(L, 1, RESP_MT);

  lua_pushfstring(L, "sprun.core.resp (%s): %p", u->r ? "open" : "closed",
                  (void *) u);
  return 1;
}

static const luaL_Reg l_resp_methods[] = {
  { "feed", l_resp_feed },
  { "next", l_resp_next },
  { "close", l_resp_close },
  { NULL, NULL }
};

#define L_RESP_MAX_ARGS 1024

/* core.resp_command(arg, ...): the command as RESP (a multi-bulk of its
 * arguments, each a string or a number, binary-safe). */
static int l_resp_command(lua_State *L) {
  int argc = lua_gettop(L);
  const char *argv[L_RESP_MAX_ARGS];
  size_t lens[L_RESP_MAX_ARGS];
  char *cmd = NULL;
  int len;
  int i;

  if (argc < 1 || argc > L_RESP_MAX_ARGS)
    return luaL_error(L, "sprun.core: a command takes 1 to %d arguments",
                      L_RESP_MAX_ARGS);
  for (i = 0; i < argc; i++)
    argv[i] = luaL_checklstring(L, i + 1, &lens[i]);
  len = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (len < 0 || cmd == NULL)
    return luaL_error(L, "sprun.core: out of memory");
  lua_pushlstring(L, cmd, (size_t) len);
  redisFreeCommand(cmd);
  return 1;
}
