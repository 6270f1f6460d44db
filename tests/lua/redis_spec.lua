-- sprun.redis: RESP by libhiredis (core.resp_reader, core.resp_command)
-- and connections over sprun.tcp, against a real redis-server the spec
-- starts on 127.0.0.1 (tests/lua/redisd.lua).
local h = require "helpers"
local sprun = require "sprun"
local core = require "sprun.core"
local redisd = require "redisd"

local kind = sprun.error_kind

local with_redis = redisd.with

describe("RESP (libhiredis)", function()
  it("formats commands binary-safe", function()
    assert.are.equal("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\n\0\r\n",
                     core.resp_command("SET", "k", "a\r\n\0"))
    assert.are.equal("*2\r\n$4\r\nINCR\r\n$2\r\n42\r\n",
                     core.resp_command("INCR", 42))
  end)

  it("reads replies fed in any pieces, one byte at a time included",
    function()
    local wire = "+OK\r\n:-7\r\n$-1\r\n$5\r\nhe\r\no\r\n-ERR bad\r\n"
                 .. "*3\r\n$1\r\na\r\n*2\r\n:1\r\n-E x\r\n$-1\r\n"
    local function read_all(chunk)
      local r = core.resp_reader()
      local out = {}
      for i = 1, #wire, chunk do
        r:feed(wire:sub(i, i + chunk - 1))
        while true do
          local k, v = r:next()
          if k == nil then
            break
          end
          out[#out + 1] = { k, v }
        end
      end
      r:close()
      return out
    end
    local want = {
      { "status", "OK" }, { "integer", -7 }, { "nil", false },
      { "string", "he\r\no" }, { "error", "ERR bad" },
      { "array", { "a", { 1, { err = "E x" } }, false } },
    }
    assert.are.same(want, read_all(#wire))
    assert.are.same(want, read_all(1))
    assert.are.same(want, read_all(7))
  end)

  it("a stream that is not RESP is a protocol error", function()
    local r = core.resp_reader()
    r:feed("HTTP/1.1 200 OK\r\n")
    local k, why = r:next()
    r:close()
    assert.are.equal("protocol", k)
    assert.matches("Protocol error", why)
  end)
end)

describe("sprun.redis", function()
  it("connects with AUTH and SELECT from the URL; calls and pipelines",
    function()
    local r = with_redis({ password = "s3cret" }, function(srv)
      local c = assert(sprun.redis.connect { url = srv:url(3) })
      local out = {
        c:call("SET", "k", "v\0\r\n"),
        c:call("GET", "k"),
        c:call("GET", "missing"),
        (c:call("CLIENT", "INFO"):match("db=(%d+)")),
        c:pipeline { { "INCR", "n" }, { "INCR", "n" }, { "LPUSH", "k", "x" },
                     { "GET", "n" } },
        c:call("EVAL", "return {1, 'a', false, {2}}", 0),
      }
      local _, e = c:call("INCR", "k")
      out[#out + 1] = kind(e)
      c:close()
      local _, closed = c:call("PING")
      out[#out + 1] = kind(closed)
      local _, wrong = sprun.redis.connect {
        url = "redis://:nope@127.0.0.1:" .. srv.port }
      out[#out + 1] = wrong.details.code
      return out
    end)
    assert.are.equal("OK", r[1])
    assert.are.equal("v\0\r\n", r[2])
    assert.is_false(r[3])
    assert.are.equal("3", r[4])
    assert.are.equal(1, r[5][1])
    assert.are.equal(2, r[5][2])
    assert.matches("^WRONGTYPE", r[5][3].err.message)
    assert.are.equal("2", r[5][4])
    assert.are.same({ 1, "a", false, { 2 } }, r[6])
    assert.are.same({ "redis_error", "closed", "WRONGPASS" },
                    { r[7], r[8], r[9] })
  end)

  it("serves callers from many tasks on one connection in order", function()
    local r = with_redis({}, function(srv)
      local c = assert(sprun.redis.connect { url = srv:url() })
      local tasks, seen = {}, {}
      for i = 1, 50 do
        tasks[i] = sprun.spawn(function()
          local v = assert(c:call("INCR", "counter"))
          local echo = assert(c:call("ECHO", "task " .. i))
          return v, echo
        end)
      end
      for i = 1, 50 do
        local v, echo = tasks[i]:await()
        seen[v] = true
        assert(echo == "task " .. i, echo)
      end
      local n = 0
      for _ in pairs(seen) do n = n + 1 end
      local total = c:call("GET", "counter")
      c:close()
      return { n, total }
    end)
    assert.are.same({ 50, "50" }, r)
  end)

  it("a server that stops answering: timeout, and the connection closes; "
    .. "a cancelled call closes it too", function()
    local r = with_redis({}, function(srv)
      local c = assert(sprun.redis.connect { url = srv:url(),
                                             timeout_ms = 200 })
      assert(c:call("PING"))
      os.execute("kill -STOP " .. srv.pid)
      local t0 = sprun.now()
      local _, e = c:call("PING")
      local waited = sprun.now() - t0
      os.execute("kill -CONT " .. srv.pid)
      local _, after = c:call("PING")
      local c2 = assert(sprun.redis.connect { url = srv:url(),
                                              timeout_ms = 5000 })
      local t = sprun.spawn(c2.call, c2, "BLPOP", "nothing", 0)
      sprun.sleep(50)
      t:cancel()
      local _, ce = t:await()
      local _, after2 = c2:call("PING")
      return { kind(e), waited, kind(after), kind(ce), kind(after2) }
    end)
    assert.are.equal("timeout", r[1])
    assert.is_true(r[2] >= 190 and r[2] < 1000, r[2] .. " ms")
    assert.are.same({ "closed", "cancelled", "closed" }, { r[3], r[4], r[5] })
  end)

  it("a server killed mid-connection gives closed, never a hang", function()
    local r = with_redis({}, function(srv)
      local c = assert(sprun.redis.connect { url = srv:url(),
                                             timeout_ms = 2000 })
      assert(c:call("PING"))
      srv:stop()
      local _, e = c:call("PING")
      local _, refused = sprun.redis.connect { url = srv:url() }
      return { kind(e), kind(refused) }
    end)
    assert.are.same({ "closed", "connection_refused" }, r)
  end)

  it("rejects a bad URL at once, naming what is wrong", function()
    local ok, err = pcall(sprun.redis.connect, { url = "http://x" })
    assert.is_false(ok)
    assert.matches("redis.connect: option 'url' must be a redis:// URL", err)
    ok, err = pcall(sprun.redis.connect, { url = "redis://h:99999" })
    assert.matches("has a port out of range", err)
    ok, err = pcall(sprun.redis.connect, { url = "redis://h/x" })
    assert.matches("has a database that is not a number", err)
  end)

  it("through a proxy that drops, delays and cuts the traffic (a "
    .. "partition): timeouts and closes, never a hang", function()
    local proxy = require "tcp_proxy"
    local r = with_redis({}, function(srv)
      local p = proxy.start("127.0.0.1", srv.port)
      local url = "redis://127.0.0.1:" .. p.port
      local c = assert(sprun.redis.connect { url = url, timeout_ms = 300 })
      local out = { c:call("PING") }
      p:set("delay", 100)
      local t0 = sprun.now()
      out[#out + 1] = c:call("PING")
      out[#out + 1] = sprun.now() - t0 >= 95
      p:set("drop")
      local _, e = c:call("PING")
      out[#out + 1] = kind(e)
      p:set("pass")
      local c2 = assert(sprun.redis.connect { url = url, timeout_ms = 300 })
      out[#out + 1] = c2:call("PING")
      p:cut()
      local _, e2 = c2:call("PING")
      out[#out + 1] = kind(e2)
      out[#out + 1] = p.connections
      out[#out + 1] = p.dropped > 0
      p:close()
      return out
    end)
    assert.are.same({ "PONG", "PONG", true, "timeout", "PONG", "closed", 2,
                      true }, r)
  end)
end)
