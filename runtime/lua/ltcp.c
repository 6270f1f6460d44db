/* Sockets in Lua: loop:tcp_connect, loop:tcp_listen, loop:pipe_open (an
 * inherited descriptor as a connection) and the methods of a socket
 * userdata.
 *
 * The rule: a connect, a write and the data read come as events to the
 * loop's dispatcher, with the socket userdata as their handle; a socket
 * that a listener accepted arrives as the handle of its SP_EV_TCP_ACCEPT,
 * a new userdata (see l_dispatch_event), with the token 0 until
 * set_token gives it one, and not reading until read_start.
 *
 * The trap: a failed connect leaves the socket open (the event says it
 * failed): the owner closes it like any other, or it stays in the loop's
 * registry until the loop closes.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "private.h"

static int l_loop_tcp_connect(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = l_check_int(L, 3, 1, 65535, "port");
  uint64_t token = l_check_uint(L, 4, "token");
  sp_tcp_t *tcp;
  l_handle_t *h;
  int err;

  h = l_new_handle(L, TCP_MT);
  err = sp__tcp_connect(ll->loop, host, port, token, &tcp);
  if (err)
    return l_push_error(L, err);
  l_register(L, ll, h, tcp);
  return 1;
}

static int l_loop_tcp_listen(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  const char *host = luaL_checkstring(L, 2);
  int port = l_check_int(L, 3, 0, 65535, "port");
  int backlog = 128;
  uint64_t token = l_check_uint(L, 5, "token");
  sp_tcp_t *tcp;
  l_handle_t *h;
  int bound;
  int err;

  if (!lua_isnoneornil(L, 4))
    backlog = l_check_int(L, 4, 1, 65535, "backlog");
  h = l_new_handle(L, TCP_MT);
  err = sp__tcp_listen(ll->loop, host, port, backlog, token, &tcp, &bound);
  if (err)
    return l_push_error(L, err);
  l_register(L, ll, h, tcp);
  lua_pushinteger(L, bound);
  return 2;
}

/* loop:pipe_open(fd, token): an inherited descriptor as a connection. */
static int l_loop_pipe_open(lua_State *L) {
  l_loop_t *ll = l_check_loop(L, 1);
  int fd = l_check_int(L, 2, 0, INT_MAX, "fd");
  uint64_t token = l_check_uint(L, 3, "token");
  sp_tcp_t *tcp;
  l_handle_t *h;
  int err;

  h = l_new_handle(L, TCP_MT);
  err = sp__tcp_pipe_open(ll->loop, fd, token, &tcp);
  if (err)
    return l_push_error(L, err);
  l_register(L, ll, h, tcp);
  return 1;
}

/* core.stdio_take(): the process's stdin and stdout taken for a channel.
 * Returns two new descriptors (close-on-exec) for what fds 0 and 1 were,
 * and points fd 0 at /dev/null and fd 1 at fd 2, so that nothing else in
 * the process or its children (print, io.write, C code) can read the
 * channel's input or write into its output. nil, err on failure, with
 * fds 0 and 1 as they were. */
static int l_stdio_take(lua_State *L) {
  int in_fd, out_fd, null_fd;

  in_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
  if (in_fd < 0)
    return l_push_error(L, uv_translate_sys_error(errno));
  out_fd = fcntl(1, F_DUPFD_CLOEXEC, 3);
  if (out_fd < 0)
    goto fail_in;
  null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0)
    goto fail_out;
  if (dup2(null_fd, 0) < 0) {
    close(null_fd);
    goto fail_out;
  }
  close(null_fd);
  if (dup2(2, 1) < 0) {
    int e = errno;
    (void)dup2(in_fd, 0);
    errno = e;
    goto fail_out;
  }
  lua_pushinteger(L, in_fd);
  lua_pushinteger(L, out_fd);
  return 2;

fail_out: {
    int e = errno;
    close(out_fd);
    errno = e;
  }
fail_in: {
    int e = errno;
    close(in_fd);
    return l_push_error(L, uv_translate_sys_error(e));
  }
}

static int l_tcp_set_token(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);
  uint64_t token = l_check_uint(L, 2, "token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  sp__tcp_set_token(h->ptr, token);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_tcp_read_start(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_read_start(h->ptr));
}

static int l_tcp_read_stop(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_read_stop(h->ptr));
}

static int l_tcp_write(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t token = l_check_uint(L, 3, "write token");

  if (h->ptr == NULL)
    return l_push_closed(L);
  return l_push_result(L, sp__tcp_write(h->ptr, data, len, token));
}

static int l_tcp_close(lua_State *L) {
  return l_handle_close(L, TCP_MT);
}

static int l_tcp_tostring(lua_State *L) {
  l_handle_t *h = luaL_checkudata(L, 1, TCP_MT);

  lua_pushfstring(L, "sprun.core.tcp (%s): %p", h->ptr ? "open" : "closed",
                  (void *) h);
  return 1;
}

static const luaL_Reg l_tcp_methods[] = {
  { "set_token", l_tcp_set_token },
  { "read_start", l_tcp_read_start },
  { "read_stop", l_tcp_read_stop },
  { "write", l_tcp_write },
  { "close", l_tcp_close },
  { NULL, NULL }
};
