/* fuzz_options: the option checks of the Lua API, fed random Lua tables.
 *
 * The input is decoded into a Lua value, most often a table whose keys are
 * the real option names mixed with junk, and whose values are numbers
 * (NaN, infinities, huge, negative, fractional, -0), strings, booleans,
 * nested tables, functions, cdata, coroutines and real sprun objects. The
 * value is handed to one of the functions that check options:
 * circuit_breaker.start_link (rate windows included),
 * health_monitor.start_link, retry_policy.new, the executor's
 * execute_with_retry, execute_with_timeout, execute_batch and
 * execute_with_protection (whose operation succeeds at once, so accepted
 * options run one quick call), bulkhead.new and pipeline.new (whose
 * stages nest the others' options).
 *
 * The invariant (DESIGN.md, Misuse): the call either succeeds, or raises an
 * error whose value is a string starting with the function's name, as in
 * "circuit_breaker.start_link: option ...". A crash, a non-string error, an
 * error naming something else, or a `nil, err` return for options the
 * checks let through (a limit the Lua side and the C side disagree on)
 * aborts. Only running out of memory may come back as `nil, err`: the
 * health monitor allocates what max_crashes and max_workers ask for.
 *
 * LuaJIT is not instrumented, so libFuzzer sees no coverage of the Lua
 * code by itself. A line hook feeds it: each (chunk, line) that runs bumps
 * a counter in libFuzzer's extra-counters section, so new lines of the
 * checks count as new coverage. The JIT is off, so that the hook sees
 * every line.
 *
 * Memory: every input ends with a full garbage collection, so that what
 * the objects it made hold in C is freed before libFuzzer's leak check.
 *
 * The Lua modules come from lua/ in the source tree (SPRUN_ROOT, set at
 * build time, or the SPRUN_ROOT environment variable); the sp_* symbols
 * the FFI needs are in this binary, linked with -Wl,-E as sprun is.
 *
 * Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "../../runtime/lua/sprun_lua.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Lines of Lua run, as coverage for libFuzzer (cleared before each run). */
#define LINE_COUNTERS 8192
__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t line_counters[LINE_COUNTERS];

static lua_State *L;
static int driver_ref;

/* ---- the Lua side ------------------------------------------------------- */

/* run(target, value) calls one API function under pcall and returns nil if
 * the invariant holds, else a description of what broke it (after printing
 * the call; FUZZ_OPTIONS_SHOW=1 prints every call). */
static const char driver[] =
    "local cb = require 'sprun.circuit_breaker'\n"
    "local hm = require 'sprun.health_monitor'\n"
    "local rp = require 'sprun.retry_policy'\n"
    "local ex = require 'sprun.executor'\n"
    "local errors = require 'sprun.errors'\n"
    "local ffi = require 'ffi'\n"
    "local function ok_fn() return 42 end\n"
    "local breaker = cb.start_link{ name = 'fuzz' }\n"
    "local targets = {\n"
    "  { 'circuit_breaker.start_link', cb.start_link },\n"
    "  { 'health_monitor.start_link', hm.start_link },\n"
    "  { 'retry_policy.new', rp.new },\n"
    "  { 'executor.execute_with_retry',\n"
    "    function(o) return ex.execute_with_retry(ok_fn, o) end },\n"
    "  { 'executor.execute_with_timeout',\n"
    "    function(o) return ex.execute_with_timeout(ok_fn, o) end },\n"
    "  { 'executor.execute_batch',\n"
    "    function(o) return ex.execute_batch({}, o) end },\n"
    "  { 'executor.execute_batch',\n"
    "    function(o) return ex.execute_batch({ ok_fn }, o) end },\n"
    "  { 'executor.execute_with_protection',\n"
    "    function(o) return ex.execute_with_protection(breaker, ok_fn, o) end"
    " },\n"
    "  { 'bulkhead.new', require('sprun.bulkhead').new },\n"
    "  { 'pipeline.new', require('sprun.pipeline').new },\n"
    "}\n"
    /* Values the C side cannot make: pushed by index from C. */
    "local specials = {\n"
    "  ok_fn, function() error('boom') end, function() return 0 / 0 end,\n"
    "  function() return nil, 'nope' end, print, coroutine.create(ok_fn),\n"
    "  ffi.new('uint64_t', 5), ffi.new('int64_t', -1), ffi.new('double', 1),\n"
    "  ffi.new('uint32_t[2]'), breaker, rp.new{},\n"
    "  errors.error('timeout', 'slow'), setmetatable({}, {}),\n"
    "  setmetatable({}, { __index = function() return 1 end }),\n"
    "}\n"
    /* The value, readably, for the report of a broken invariant. */
    "local function show(v, depth)\n"
    "  if type(v) == 'string' then return string.format('%q', v) end\n"
    "  if type(v) == 'number' then return string.format('%.17g', v) end\n"
    "  if type(v) ~= 'table' or (depth or 0) > 3 then return tostring(v) end\n"
    "  local parts = {}\n"
    "  for k, x in pairs(v) do\n"
    "    parts[#parts + 1] = '[' .. show(k, 9) .. '] = ' .. show(x, (depth or 0) + 1)\n"
    "  end\n"
    "  table.sort(parts)\n"
    "  return '{ ' .. table.concat(parts, ', ') .. ' }'\n"
    "end\n"
    "local function check(t, value)\n"
    "  local target = targets[t % #targets + 1]\n"
    "  local name, fn = target[1], target[2]\n"
    "  local ok, a, b = pcall(fn, value)\n"
    "  if ok then\n"
    "    if name:match('^executor') then\n"
    /* A timeout of 0 may cancel the operation before it runs. */
    "      if name == 'executor.execute_batch' then\n"
    "        if type(a) ~= 'table' or (a[1] ~= nil and not (a[1].ok and\n"
    "            a[1].value == 42 or errors.kind(a[1].error) == 'timeout'))\n"
    "        then\n"
    "          return name .. ': no result, or not the operation\\'s'\n"
    "        end\n"
    "      elseif a ~= 42 and errors.kind(b) ~= 'timeout' then\n"
    "        return name .. ': returned ' .. tostring(a) .. ', ' .. tostring(b)\n"
    "      end\n"
    "    elseif a == nil then\n"
    "      if errors.kind(b) == 'out_of_memory' then return nil end\n"
    "      return name .. ': accepted the options, then returned nil, '\n"
    "        .. tostring(b)\n"
    "    end\n"
    "    return nil\n"
    "  end\n"
    "  if type(a) ~= 'string' then\n"
    "    return name .. ': raised a ' .. type(a) .. ': ' .. tostring(a)\n"
    "  end\n"
    "  if a:sub(1, #name + 2) ~= name .. ': ' then\n"
    "    return name .. ': raised an error that does not start with its name: '"
    "\n"
    "      .. a\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    "local function run(t, value)\n"
    "  local broken = check(t, value)\n"
    "  if os.getenv('FUZZ_OPTIONS_SHOW') or broken then\n"
    "    io.stderr:write('fuzz_options: ', targets[t % #targets + 1][1], '(',\n"
    "                    show(value), ')\\n')\n"
    "  end\n"
    "  return broken\n"
    "end\n"
    "return run, specials\n";

static int specials_ref;
static int nspecials;

/* Every line run marks a counter for its (chunk, line). */
static void line_hook(lua_State *l, lua_Debug *ar) {
  uintptr_t h;

  if (lua_getinfo(l, "S", ar) == 0)
    return;
  h = (uintptr_t) ar->source * 31u + (uintptr_t) ar->currentline * 2654435761u;
  h ^= h >> 15;
  line_counters[h % LINE_COUNTERS]++;
}

/* Frees what Lua holds before LeakSanitizer looks at exit (atexit runs
 * this first: it is registered after LSan's own check). */
static void close_state(void) {
  if (L != NULL)
    lua_close(L);
  L = NULL;
}

static void die(const char *what) {
  fprintf(stderr, "fuzz_options: %s\n", what);
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *root = getenv("SPRUN_ROOT");
  (void) argc;
  (void) argv;

  if (root == NULL)
    root = SPRUN_ROOT;
  L = luaL_newstate();
  if (L == NULL)
    die("cannot create a Lua state");
  luaL_openlibs(L);

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_sprun_core);
  lua_setfield(L, -2, "sprun.core");
  lua_pop(L, 1);
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, "");
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);

  /* The line hook must see every line: no trace may run instead. */
  if (luaL_dostring(L, "jit.off(); jit.flush()") != 0)
    die(lua_tostring(L, -1));
  if (luaL_loadbuffer(L, driver, sizeof(driver) - 1, "=fuzz_driver") != 0 ||
      lua_pcall(L, 0, 2, 0) != 0)
    die(lua_tostring(L, -1));
  nspecials = (int) lua_objlen(L, -1);
  specials_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  driver_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  atexit(close_state);
  return 0;
}

/* ---- decoding the input into a Lua value -------------------------------- */

typedef struct {
  const uint8_t *p;
  size_t n;
} input_t;

static uint8_t take8(input_t *in) {
  if (in->n == 0)
    return 0;
  in->n--;
  return *in->p++;
}

static uint64_t take64(input_t *in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | take8(in);
  return v;
}

static const char *const option_names[] = {
    /* circuit_breaker.start_link */
    "name", "failure_threshold", "reset_timeout_ms", "half_open_max_calls",
    "is_failure", "clock",
    /* health_monitor.start_link */
    "pool", "crash_window_ms", "max_crashes", "check_interval_ms",
    "max_workers",
    /* retry_policy.new and the executor's retry options */
    "max_attempts", "backoff", "backoff_ms", "base_backoff_ms", "multiplier",
    "max_backoff_ms", "jitter", "jitter_factor", "retriable_errors", "seed",
    "policy", "operation",
    /* execute_with_timeout, execute_batch */
    "timeout_ms", "max_concurrency",
    /* circuit_breaker.start_link's rate windows */
    "window", "type", "size", "size_ms", "buckets", "failure_rate",
    "min_calls", "slow_call_ms", "slow_call_rate",
    /* bulkhead.new, pipeline.new */
    "max_concurrent", "max_queue", "retry", "breaker", "bulkhead",
    "fallback", "budget", "ratio", "min_retries_per_s", "ttl_ms",
    /* near misses */
    "failure_treshold", "Name", "max_attempt", "", "jitter ", "timeout",
};
#define NOPTIONS (sizeof(option_names) / sizeof(option_names[0]))

/* Strings with a meaning somewhere (sizeof keeps the embedded zero). */
#define W(s) {s, sizeof(s) - 1}
static const struct {
  const char *s;
  size_t len;
} words[] = {
    W(""), W("x"), W("fuzz"), W("list"), W("exponential"), W("full"),
    W("count"), W("time"),
    W("equal"), W("decorrelated"), W("all"), W("timeout"), W("unavailable"),
    W("true"), W("nan"), W("1"), W("-1"), W("1e999"), W("0x10"), W(" 5"),
    W("closed"), W("\xff\xfe"), W("a\0b"),
};
#undef W
#define NWORDS (sizeof(words) / sizeof(words[0]))

static const double numbers[] = {
    0.0, -0.0, 1.0, -1.0, 2.0, 3.0, 5.0, 10.0, 0.5, 1.5, 0.25, 0.999, 1.001,
    -3.0, 100.0, 1000.0, 30000.0, 60000.0, 64.0, 65.0,
    2147483647.0, 2147483648.0, 4294967293.0, 4294967294.0, 4294967295.0,
    4294967296.0, 9007199254740991.0, 9007199254740992.0,
    9007199254740994.0, 1.8446744073709552e19, 9.2233720368547758e18, 5e12,
    1e300, -1e300, 1.7976931348623157e308, 4.9e-324, -4.9e-324,
};
#define NNUMBERS (sizeof(numbers) / sizeof(numbers[0]))

static void push_value(input_t *in, int depth);

/* A table: a list (what backoff_ms and retriable_errors want), or keys
 * among the option names and junk. */
static void push_table(input_t *in, int depth) {
  uint8_t shape = take8(in);
  int n = take8(in) % (shape & 1 ? 70 : 12);

  lua_createtable(L, 0, 0);
  for (int i = 1; i <= n && in->n > 0; i++) {
    if (shape & 1) {
      push_value(in, depth + 1);
      lua_rawseti(L, -2, i);
      continue;
    }
    uint8_t k = take8(in);
    if (k < 200) {
      lua_pushstring(L, option_names[k % NOPTIONS]);
    } else if (k < 230) {
      push_value(in, depth + 1); /* any key: numbers, tables, ... */
      if (lua_isnil(L, -1) ||
          (lua_type(L, -1) == LUA_TNUMBER &&
           lua_tonumber(L, -1) != lua_tonumber(L, -1))) {
        lua_pop(L, 1); /* not a valid key */
        continue;
      }
    } else {
      lua_pushinteger(L, take8(in) % 8);
    }
    push_value(in, depth + 1);
    lua_rawset(L, -3);
  }
}

static void push_value(input_t *in, int depth) {
  uint8_t k = take8(in);
  uint64_t bits;
  double d;

  switch (k % 16) {
  case 0:
    lua_pushnil(L);
    break;
  case 1:
    lua_pushboolean(L, k & 16);
    break;
  case 2:
  case 3:
  case 4:
    lua_pushnumber(L, numbers[take8(in) % NNUMBERS]);
    break;
  case 5:
    lua_pushnumber(L, take8(in));
    break;
  case 6:
    lua_pushnumber(L, (double) (int8_t) take8(in) / (k & 16 ? 4 : 1));
    break;
  case 7:
    bits = take64(in);
    memcpy(&d, &bits, sizeof(d));
    lua_pushnumber(L, d); /* any bits: NaNs of every kind included */
    break;
  case 8:
    lua_pushnumber(L, k & 16 ? NAN : (k & 32 ? INFINITY : -INFINITY));
    break;
  case 9:
  case 10:
    if (k & 16) {
      size_t w = take8(in) % NWORDS;
      lua_pushlstring(L, words[w].s, words[w].len);
    } else {
      char buf[16];
      size_t len = take8(in) % sizeof(buf);
      for (size_t i = 0; i < len; i++)
        buf[i] = (char) take8(in);
      lua_pushlstring(L, buf, len);
    }
    break;
  case 11:
    lua_pushstring(L, option_names[take8(in) % NOPTIONS]);
    break;
  case 12:
  case 13:
    if (depth < 3)
      push_table(in, depth);
    else
      lua_createtable(L, 0, 0);
    break;
  case 14:
    lua_rawgeti(L, LUA_REGISTRYINDEX, specials_ref);
    lua_rawgeti(L, -1, 1 + take8(in) % nspecials);
    lua_remove(L, -2);
    break;
  default:
    lua_pushlightuserdata(L, NULL);
    break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input_t in = {data, size};
  uint8_t target = take8(&in);
  uint8_t shape = take8(&in);

  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, driver_ref);
  lua_pushinteger(L, target);
  /* Mostly an options table; sometimes nil or any other value. */
  if (shape < 16)
    push_value(&in, 0);
  else
    push_table(&in, 0);

  if (lua_pcall(L, 2, 1, 0) != 0) {
    fprintf(stderr, "fuzz_options: the driver failed: %s\n",
            lua_tostring(L, -1));
    abort();
  }
  if (!lua_isnil(L, -1)) {
    fprintf(stderr, "fuzz_options: invariant broken: %s\n",
            lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  /* LeakSanitizer does not scan LuaJIT's heap (LuaJIT maps it itself), so
   * C memory owned by an unreachable Lua object (a health monitor's rings,
   * freed by its ffi.gc finaliser) would look leaked if libFuzzer checked
   * for leaks now. A full collection runs the finalisers first. */
  lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
