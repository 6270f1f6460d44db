/* The sprun executable: LuaJIT with the sprun module built in, running one
 * script (or -e code) as a coroutine.
 *
 *   sprun [options] script.lua [args...]
 *   sprun [options] -e CODE [args...]
 *
 * Exit status: the number the script returns, else 0; 1 after an uncaught
 * error (`sprun: file:line: message` and a traceback on stderr); 2 when the
 * command line is wrong or the script cannot be read.
 *
 * The Lua library is found next to the binary: `<bindir>/../lua` in the
 * build tree, `<bindir>/../share/lua/5.1` once installed, so that no
 * environment variable is needed. The trap: the chunk runs in a coroutine,
 * so its traceback must be taken from that coroutine, not from the main
 * state, after lua_resume returns.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "sprun.h"
#include "../lua/sprun_lua.h"

#define EXIT_USAGE 2

typedef struct {
  const char *code;      /* -e CODE, or NULL */
  const char *script;    /* the script path, or NULL */
  int virtual_time;      /* --virtual-time */
  int first_arg;         /* index in argv of the script (or what follows -e) */
  const char *telemetry; /* --telemetry DEST, or NULL */
  int log_events;        /* --log-events */
  char metrics_host[64]; /* --metrics HOST:PORT, or "" */
  int metrics_port;
  const char *policy;    /* --policy PATH, or NULL */
  const char *telemetry_level; /* --telemetry-level LEVEL, or NULL */
  double shutdown_grace_ms;    /* --shutdown-grace-ms MS, or -1 */
  const char *trace;           /* --trace FILE, or NULL */
  double trace_buffer;         /* --trace-buffer N, or -1 */
  const char *report;          /* --report FILE, or NULL */
} options_t;

static const char usage_text[] =
    "usage: sprun [options] script.lua [args...]\n"
    "       sprun [options] -e CODE [args...]\n"
    "\n"
    "Runs a Lua script on LuaJIT with the sprun fault-tolerance library\n"
    "(require \"sprun\"). The script's returned number is the exit status.\n"
    "\n"
    "options (each VALUE also as --option=VALUE):\n"
    "  -e CODE          run CODE instead of a script file\n"
    "  --virtual-time   run on a virtual clock: when no task can run and\n"
    "                   none awaits I/O, time jumps to the next deadline\n"
    "  --telemetry DEST write each telemetry event as a JSON line to DEST:\n"
    "                   stderr, stdout or a file (appended to)\n"
    "  --telemetry-level LEVEL\n"
    "                   the events --telemetry and --log-events write:\n"
    "                   debug, info (the default) or warning and above\n"
    "  --log-events     log each telemetry event to stderr, one line each\n"
    "  --metrics HOST:PORT\n"
    "                   serve Prometheus metrics on http://HOST:PORT/metrics\n"
    "                   while the script runs\n"
    "  --policy PATH    load the policy file PATH before the script (see\n"
    "                   sprun.policy.default()); SIGHUP reloads it\n"
    "  --trace FILE     write a trace of the run (Chrome Trace Event\n"
    "                   Format JSON, for Perfetto) to FILE at its end\n"
    "  --trace-buffer N keep the newest N events for --trace and --report\n"
    "                   (default 100000; what is dropped is counted)\n"
    "  --report FILE    write a report of the run (one HTML file, its\n"
    "                   timeline in SVG) to FILE at its end\n"
    "  --shutdown-grace-ms MS\n"
    "                   after SIGINT, SIGTERM, SIGHUP or os.exit, how long\n"
    "                   the cancelled tasks may take to end (default 5000)\n"
    "  -v               print the version of sprun, LuaJIT and exit\n"
    "  -h               print this help and exit\n"
    "  --               stop handling options\n"
    "\n"
    "The script runs as the main task: it may sleep and await, and sprun\n"
    "exits when every task is done. SIGINT, SIGTERM, SIGHUP and os.exit\n"
    "cancel every task; a second signal, or the end of the grace period,\n"
    "kills what is left and exits at once. No child process outlives sprun.\n"
    "\n"
    "exit status: the script's returned number (0 to 255), 0 for true or\n"
    "nothing, 1 for false or nil, err; 1 on an uncaught error; 2 on a bad\n"
    "command line, an unreadable script or another returned value;\n"
    "130/143/129 after SIGINT/SIGTERM/SIGHUP; os.exit's code.\n";

static int usage_error(const char *fmt, const char *what) {
  fprintf(stderr, "sprun: ");
  fprintf(stderr, fmt, what);
  fprintf(stderr, " (see sprun -h)\n");
  return EXIT_USAGE;
}

/* Splits HOST:PORT ([HOST]:PORT for IPv6) into o->metrics_host and
 * o->metrics_port; returns 0, or -1 if it is not that. */
static int parse_metrics(const char *v, options_t *o) {
  const char *colon = strrchr(v, ':');
  const char *host = v;
  size_t len;
  char *end;
  long port;

  if (colon == NULL || colon[1] == '\0')
    return -1;
  len = (size_t) (colon - v);
  if (len >= 2 && v[0] == '[' && v[len - 1] == ']') {
    host = v + 1;
    len -= 2;
  } else if (memchr(v, ':', len) != NULL) {
    return -1; /* an IPv6 address needs brackets */
  }
  if (len == 0 || len >= sizeof(o->metrics_host))
    return -1;
  errno = 0;
  port = strtol(colon + 1, &end, 10);
  if (*end != '\0' || errno != 0 || port < 1 || port > 65535 ||
      colon[1] == '+' || colon[1] == '-' || colon[1] == ' ')
    return -1;
  memcpy(o->metrics_host, host, len);
  o->metrics_host[len] = '\0';
  o->metrics_port = (int) port;
  return 0;
}

/* The value of option `name` at argv[*i]: "--name=VALUE", or "--name" and
 * the next argument (then *i moves on to it). NULL if argv[*i] is not this
 * option; *missing is set when it is, with no value after it. */
static const char *option_value(int argc, char **argv, int *i,
                                const char *name, int *missing) {
  const char *a = argv[*i];
  size_t len = strlen(name);

  *missing = 0;
  if (strncmp(a, name, len) != 0)
    return NULL;
  if (a[len] == '=')
    return a + len + 1;
  if (a[len] != '\0')
    return NULL;
  if (*i + 1 >= argc) {
    *missing = 1;
    return NULL;
  }
  return argv[++*i];
}

/* A whole number of ms from 0 to 2^53 (the largest a Lua number holds
 * exactly); -1 if `v` is not one. */
static double parse_ms(const char *v) {
  char *end;
  double ms;

  if (v[0] < '0' || v[0] > '9')
    return -1;
  errno = 0;
  ms = strtod(v, &end);
  if (*end != '\0' || errno != 0 || ms != (double) (long long) ms ||
      ms > 9007199254740992.0)
    return -1;
  return ms;
}

/* Returns -1 when the command line is complete, or an exit status. */
static int parse_options(int argc, char **argv, options_t *o) {
  const char *v;
  int missing;
  int i;

  memset(o, 0, sizeof(*o));
  o->shutdown_grace_ms = -1;
  o->trace_buffer = -1;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || a[1] == '\0')
      break;
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage_text, stdout);
      return 0;
    }
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      printf("sprun %s (%s)\n", sp_version_string(), LUAJIT_VERSION);
      return 0;
    }
    if (strcmp(a, "--virtual-time") == 0) {
      o->virtual_time = 1;
      continue;
    }
    if (strcmp(a, "--log-events") == 0) {
      o->log_events = 1;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--telemetry", &missing)) != NULL
        || missing) {
      if (v == NULL || v[0] == '\0')
        return usage_error("option '%s' needs a destination: stderr, stdout "
                           "or a file", "--telemetry");
      o->telemetry = v;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--telemetry-level", &missing)) !=
            NULL || missing) {
      if (v == NULL || (strcmp(v, "debug") != 0 && strcmp(v, "info") != 0 &&
                        strcmp(v, "warning") != 0)) {
        fprintf(stderr, "sprun: option '--telemetry-level' must be debug, "
                "info or warning, got '%s' (see sprun -h)\n",
                v != NULL ? v : "");
        return EXIT_USAGE;
      }
      o->telemetry_level = v;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--metrics", &missing)) != NULL ||
        missing) {
      if (v == NULL || parse_metrics(v, o) != 0) {
        fprintf(stderr, "sprun: option '--metrics' must be HOST:PORT with a "
                "port from 1 to 65535, got '%s' (see sprun -h)\n",
                v != NULL ? v : "");
        return EXIT_USAGE;
      }
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--policy", &missing)) != NULL ||
        missing) {
      if (v == NULL || v[0] == '\0')
        return usage_error("option '%s' needs a file", "--policy");
      o->policy = v;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--trace", &missing)) != NULL ||
        missing) {
      if (v == NULL || v[0] == '\0')
        return usage_error("option '%s' needs a file", "--trace");
      o->trace = v;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--report", &missing)) != NULL ||
        missing) {
      if (v == NULL || v[0] == '\0')
        return usage_error("option '%s' needs a file", "--report");
      o->report = v;
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--trace-buffer", &missing))
            != NULL || missing) {
      o->trace_buffer = v != NULL ? parse_ms(v) : -1;
      if (o->trace_buffer < 1 || o->trace_buffer > 10000000) {
        fprintf(stderr, "sprun: option '--trace-buffer' must be a whole "
                "number from 1 to 10000000, got '%s' (see sprun -h)\n",
                v != NULL ? v : "");
        return EXIT_USAGE;
      }
      continue;
    }
    if ((v = option_value(argc, argv, &i, "--shutdown-grace-ms", &missing))
            != NULL || missing) {
      o->shutdown_grace_ms = v != NULL ? parse_ms(v) : -1;
      if (o->shutdown_grace_ms < 0) {
        fprintf(stderr, "sprun: option '--shutdown-grace-ms' must be a whole "
                "number of ms >= 0, got '%s' (see sprun -h)\n",
                v != NULL ? v : "");
        return EXIT_USAGE;
      }
      continue;
    }
    if ((v = option_value(argc, argv, &i, "-e", &missing)) != NULL ||
        missing) {
      if (v == NULL)
        return usage_error("option '%s' needs an argument", "-e");
      o->code = v;
      o->first_arg = i;
      return -1;
    }
    return usage_error("unknown option '%s'", a);
  }
  if (i >= argc) {
    fputs("sprun: no script given (give the path of a Lua file, or -e "
          "CODE)\n\n", stderr);
    fputs(usage_text, stderr);
    return EXIT_USAGE;
  }
  o->script = argv[i];
  o->first_arg = i;
  return -1;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Puts the sprun Lua library first on package.path. */
static void set_lua_path(lua_State *L) {
  static const char *const candidates[] = {"/../lua",
                                           "/../share/lua/5.1"};
  char exe[PATH_MAX];
  char dir[PATH_MAX + 32];
  char probe[PATH_MAX + 64];
  ssize_t n;
  size_t k;
  char *slash;

  n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    return;
  exe[n] = '\0';
  slash = strrchr(exe, '/');
  if (slash == NULL)
    return;
  *slash = '\0';

  for (k = 0; k < sizeof(candidates) / sizeof(candidates[0]); k++) {
    /* exe is shorter than PATH_MAX, so neither can be truncated. */
    snprintf(dir, sizeof(dir), "%s%s", exe, candidates[k]);
    snprintf(probe, sizeof(probe), "%s/sprun/init.lua", dir);
    if (!file_exists(probe))
      continue;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir,
                    lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    return;
  }
}

static void preload_core(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_sprun_core);
  lua_setfield(L, -2, "sprun.core");
  lua_pop(L, 2);
}

/* arg[0] is the script, arg[1..] its arguments, arg[-k] what came before,
 * as luajit sets it. */
static void set_arg_table(lua_State *L, int argc, char **argv, int script) {
  int i;

  lua_createtable(L, argc - script - 1, script);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* The message handler of the protected call into the scheduler: adds a
 * traceback to errors raised outside any task. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_isstring(L, -1))
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Loads the chunk; returns -1 when it is on the stack, else an exit code. */
static int load_chunk(lua_State *L, const options_t *o) {
  struct stat st;
  FILE *f;

  if (o->code != NULL) {
    if (luaL_loadbuffer(L, o->code, strlen(o->code), "=(command line)") == 0)
      return -1;
    fprintf(stderr, "sprun: %s\n", lua_tostring(L, -1));
    return 1;
  }
  if (o->script[0] == '\0') {
    fprintf(stderr, "sprun: the script name is empty (give the path of a "
                    "Lua file, or -e CODE)\n");
    return EXIT_USAGE;
  }
  if (stat(o->script, &st) != 0) {
    fprintf(stderr, "sprun: cannot open %s: %s\n", o->script,
            strerror(errno));
    return EXIT_USAGE;
  }
  if (S_ISDIR(st.st_mode)) {
    fprintf(stderr, "sprun: cannot run %s: it is a directory\n", o->script);
    return EXIT_USAGE;
  }
  f = fopen(o->script, "r");
  if (f == NULL) {
    fprintf(stderr, "sprun: cannot open %s: %s\n", o->script,
            strerror(errno));
    return EXIT_USAGE;
  }
  fclose(f);
  if (luaL_loadfile(L, o->script) == 0)
    return -1;
  fprintf(stderr, "sprun: %s\n", lua_tostring(L, -1));
  return 1;
}

/* As exit(3) does with its argument: the low 8 bits of a whole number. */
static int exit_status(lua_Number n) {
  if (!(n > -2147483648.0 && n < 2147483648.0))
    return 1;
  return (int)n & 0xff;
}

/* Runs the chunk on top of the stack through sprun.cli.main, which sets
 * up what the options ask for (policy file, telemetry sinks, metrics),
 * runs the chunk as the main task and returns the exit status and, after
 * an uncaught error, the message with its traceback. */
static int run(lua_State *L, int argc, char **argv, const options_t *o) {
  int nargs;
  int i;
  int rc;
  int base;

  luaL_openlibs(L);
  preload_core(L);
  set_lua_path(L);
  set_arg_table(L, argc, argv, o->first_arg);

  lua_pushcfunction(L, traceback);
  base = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sprun.cli");
  if (lua_pcall(L, 1, 1, base) != 0) {
    fprintf(stderr, "sprun: cannot load the sprun library: %s\n",
            lua_tostring(L, -1));
    return 1;
  }
  lua_getfield(L, -1, "main");
  lua_remove(L, -2);

  lua_createtable(L, 0, 8);
  if (o->policy != NULL) {
    lua_pushstring(L, o->policy);
    lua_setfield(L, -2, "policy");
  }
  lua_pushstring(L, o->virtual_time ? "virtual" : "real");
  lua_setfield(L, -2, "clock");
  if (o->telemetry != NULL) {
    lua_pushstring(L, o->telemetry);
    lua_setfield(L, -2, "telemetry");
  }
  if (o->log_events) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "log_events");
  }
  if (o->telemetry_level != NULL) {
    lua_pushstring(L, o->telemetry_level);
    lua_setfield(L, -2, "telemetry_level");
  }
  if (o->trace != NULL) {
    lua_pushstring(L, o->trace);
    lua_setfield(L, -2, "trace");
  }
  if (o->report != NULL) {
    lua_pushstring(L, o->report);
    lua_setfield(L, -2, "report");
  }
  if (o->trace_buffer >= 1) {
    lua_pushnumber(L, o->trace_buffer);
    lua_setfield(L, -2, "trace_buffer");
  }
  if (o->shutdown_grace_ms >= 0) {
    lua_pushnumber(L, o->shutdown_grace_ms);
    lua_setfield(L, -2, "shutdown_grace_ms");
  }
  if (o->metrics_host[0] != '\0') {
    lua_pushstring(L, o->metrics_host);
    lua_setfield(L, -2, "metrics_host");
    lua_pushinteger(L, o->metrics_port);
    lua_setfield(L, -2, "metrics_port");
  }

  rc = load_chunk(L, o);
  if (rc >= 0)
    return rc;

  nargs = argc - o->first_arg - 1;
  luaL_checkstack(L, nargs + LUA_MINSTACK, "too many arguments");
  for (i = o->first_arg + 1; i < argc; i++)
    lua_pushstring(L, argv[i]);

  if (lua_pcall(L, nargs + 2, 2, base) != 0) {
    fprintf(stderr, "sprun: %s\n", lua_tostring(L, -1));
    return 1;
  }
  if (lua_isstring(L, -1)) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    fflush(stderr);
  }
  return exit_status(lua_tonumber(L, -2));
}

int main(int argc, char **argv) {
  options_t o;
  lua_State *L;
  int rc;

  rc = parse_options(argc, argv, &o);
  if (rc >= 0)
    return rc;

  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "sprun: cannot create a Lua state: out of memory\n");
    return 1;
  }
  rc = run(L, argc, argv, &o);
  fflush(stdout);
  lua_close(L);
  return rc;
}
