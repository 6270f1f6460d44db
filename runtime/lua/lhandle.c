/* The handle registry: the userdata of every process and socket a loop
 * has open, keyed by the C handle's pointer.
 *
 * The rule: an open handle sits in its loop's registry table (pointer ->
 * userdata), so it is never collected while libuv still uses it, even
 * when no Lua value refers to it, and every event of a handle carries the
 * same userdata; the entry goes after the handle's SP_EV_CLOSED.
 *
 * The trap: a handle's userdata outlives the C handle. It holds the
 * pointer only until close() (or the handle's SP_EV_CLOSED, or the close
 * of its loop), and from then on every method answers nil, "EBADF"
 * without touching freed memory: a method checks h->ptr before anything.
 */
#include "private.h"

/* Creates a handle userdata (left on the stack), not yet registered. */
static l_handle_t *l_new_handle(lua_State *L, const char *mt) {
  l_handle_t *h = lua_newuserdata(L, sizeof(*h));

  h->ptr = NULL;
  h->pid = 0;
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, -2);
  return h;
}

/* Binds the userdata on top of the stack to `ptr` and keeps it alive in
 * the loop's table until the handle's SP_EV_CLOSED. */
static void l_register(lua_State *L, l_loop_t *ll, l_handle_t *h, void *ptr) {
  h->ptr = ptr;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Pushes the userdata registered for `ptr`, or nil. */
static void l_push_handle(lua_State *L, l_loop_t *ll, void *ptr) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

/* After SP_EV_CLOSED: the userdata lets go of the dead pointer, and the
 * registry of the userdata. */
static void l_forget(lua_State *L, l_loop_t *ll, void *ptr) {
  l_handle_t *h;

  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  lua_pushlightuserdata(L, ptr);
  lua_rawget(L, -2);
  h = lua_touserdata(L, -1);
  if (h != NULL)
    h->ptr = NULL;
  lua_pop(L, 1);
  lua_pushlightuserdata(L, ptr);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* x:close() of a process or a socket: closes the C handle (whose memory
 * goes with its SP_EV_CLOSED, still to come), and the userdata lets go of
 * it at once. */
static int l_handle_close(lua_State *L, const char *mt) {
  l_handle_t *h = luaL_checkudata(L, 1, mt);

  if (h->ptr == NULL)
    return l_push_closed(L);
  sp__handle_close(h->ptr);
  h->ptr = NULL;
  lua_pushboolean(L, 1);
  return 1;
}

/* When the loop closes, every handle is gone with it: each userdata lets
 * go of its pointer, and the registry goes. */
static void l_forget_all(lua_State *L, l_loop_t *ll) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ll->handles_ref);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      l_handle_t *h = lua_touserdata(L, -1);
      if (h != NULL)
        h->ptr = NULL;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, ll->handles_ref);
  ll->handles_ref = LUA_NOREF;
}
