-- `make install PREFIX=...`: the installed tree works for plain luajit
-- (require "sprun") and for C programs (libsprun.a, sprun.h, sprun.pc).
local h = require "helpers"

describe("make install", function()
  local prefix, dir

  setup(function()
    dir = h.tmpdir()
    prefix = dir .. "/prefix"
    local r = h.run("make -C " .. h.shell_quote(h.root) .. " --no-print-directory"
      .. " BUILD=" .. h.shell_quote(h.build) .. " install PREFIX="
      .. h.shell_quote(prefix))
    assert(r.code == 0, "make install failed:\n" .. r.stdout .. r.stderr)
  end)
  teardown(function() h.rmrf(dir) end)

  it("installs the binary, the library, the module, the header and sprun.pc",
    function()
      for _, f in ipairs { "bin/sprun", "lib/libsprun.a", "include/sprun.h",
        "lib/pkgconfig/sprun.pc", "lib/lua/5.1/sprun/core.so",
        "share/lua/5.1/sprun/init.lua", "share/lua/5.1/sprun/ffi.lua" } do
        assert.is_truthy(io.open(prefix .. "/" .. f), "missing " .. f)
      end
    end)

  it("a plain luajit can require every module", function()
    local code = [[
      local sp = require "sprun"
      local cb = sp.circuit_breaker.start_link{ name = "x", failure_threshold = 1 }
      cb:call(function() return nil, "boom" end)
      local hm = require("sprun.health_monitor").start_link{ max_crashes = 1 }
      hm:record_crash("w1", { reason = "segfault" })
      local rp = require("sprun.retry_policy").new{ backoff_ms = { 7 } }
      print(cb:state(), hm:is_healthy(), rp:backoff_for_attempt(3),
        require("sprun.errors").kind(sp.error("timeout", "t")))
    ]]
    local env = "env LUA_PATH=" .. h.shell_quote(prefix .. "/share/lua/5.1/?.lua;"
      .. prefix .. "/share/lua/5.1/?/init.lua;;") .. " LUA_CPATH="
      .. h.shell_quote(prefix .. "/lib/lua/5.1/?.so;;")
    local r = h.run("cd / && " .. env .. " luajit -e " .. h.shell_quote(code))
    assert.are.same({ code = 0, stdout = "open\tfalse\t7\ttimeout\n", stderr = "" }, r)
  end)

  it("the installed sprun finds its library with no environment", function()
    local r = h.run("cd / && env -u LUA_PATH -u LUA_CPATH "
      .. h.shell_quote(prefix .. "/bin/sprun")
      .. " -e 'print(require(\"sprun.circuit_breaker\").start_link{name=\"a\"}:state())'")
    assert.are.same({ code = 0, stdout = "closed\n", stderr = "" }, r)
  end)

  it("the installed pool finds the installed Python worker helper",
    function()
      assert.is_truthy(io.open(prefix .. "/share/sprun/python/sprun_worker.py"))
      local worker = h.write_file(dir .. "/echo_worker.py", [[
import sprun_worker, os
@sprun_worker.handler("where")
def where(args):
    return os.path.dirname(sprun_worker.__file__)
sprun_worker.run()
]])
      local r = h.run("cd / && env -u LUA_PATH -u LUA_CPATH -u PYTHONPATH "
        .. h.shell_quote(prefix .. "/bin/sprun") .. " -e " .. h.shell_quote(
          "local sprun = require 'sprun' "
          .. "local p = assert(sprun.pool.start{ name = 'py', size = 1, cmd = "
          .. "{ 'python3', '" .. worker .. "' } }) print(p:call('where')) "
          .. "p:stop()"))
      assert.are.same({ code = 0, stdout = prefix .. "/share/sprun/python\n",
                        stderr = "" }, r)
    end)

  it("a C program links against libsprun.a through pkg-config", function()
    local src = h.write_file(dir .. "/prog.c", [[
#include <stdio.h>
#include <sprun.h>

int main(void) {
  sp_breaker_t b;
  sp_breaker_config_t cfg = { 2, 1, 1000, SP_WINDOW_CONSECUTIVE };
  if (sp_breaker_init(&b, &cfg) != 0) return 1;
  sp_breaker_acquire(&b, 0);
  sp_breaker_record(&b, b.generation, SP_OUTCOME_FAILURE, 0, 0);
  sp_breaker_acquire(&b, 1);
  int ev = sp_breaker_record(&b, b.generation, SP_OUTCOME_FAILURE, 1, 0);
  printf("%s %d %s\n", sp_breaker_state_name(b.state),
         (ev & SP_BREAKER_OPENED) != 0, sp_err_name(sp_breaker_acquire(&b, 2)));
  return 0;
}
]])
    local flags = h.run("PKG_CONFIG_PATH=" .. h.shell_quote(prefix .. "/lib/pkgconfig")
      .. " pkg-config --cflags --libs --static sprun")
    assert.are.equal(0, flags.code, flags.stderr)
    local r = h.run("cc -std=c11 -Wall -Werror -o " .. h.shell_quote(dir .. "/prog")
      .. " " .. h.shell_quote(src) .. " " .. flags.stdout:gsub("\n", "") .. " && "
      .. h.shell_quote(dir .. "/prog"))
    assert.are.same({ code = 0, stdout = "open 1 SP_ECIRCUITOPEN\n", stderr = "" }, r)
  end)
end)
