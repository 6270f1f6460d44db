-- sprun.tcp: connections and local servers from tasks. Lines across chunk
-- boundaries, \r\n, end of file, data that arrives before anyone reads,
-- connect errors and timeouts, cancellation of a blocked read. Every run
-- checks that no handle is left open (h.run_tasks).
local h = require "helpers"
local sp = require "sprun"
local sched = require "sprun.sched"
local ffi = require "ffi"

local run = h.run_tasks
local kind = sp.error_kind

local wait_for = h.wait_for

pcall(ffi.cdef, [[
int socket(int domain, int type, int protocol);
int bind(int fd, const void *addr, unsigned len);
int listen(int fd, int backlog);
int getsockname(int fd, void *addr, unsigned *len);
int close(int fd);
]])
pcall(ffi.cdef, [[
struct sprun_test_sockaddr_in {
  uint16_t family; uint16_t port; uint32_t addr; char zero[8];
};
]])

-- A listening socket on 127.0.0.1 with a backlog of 0 that never accepts:
-- once one connection fills its queue, further connects hang (their SYNs
-- are dropped). Returns the port and a function that closes it.
local function blackhole()
  local C = ffi.C
  local fd = C.socket(2, 1, 0) -- AF_INET, SOCK_STREAM
  assert(fd >= 0, "socket failed")
  local sa = ffi.new("struct sprun_test_sockaddr_in")
  sa.family = 2
  sa.addr = 0x0100007f -- 127.0.0.1 in network order (little-endian host)
  assert(C.bind(fd, sa, ffi.sizeof(sa)) == 0, "bind failed")
  assert(C.listen(fd, 0) == 0, "listen failed")
  local len = ffi.new("unsigned[1]", ffi.sizeof(sa))
  assert(C.getsockname(fd, sa, len) == 0)
  local port = bit.rshift(bit.bswap(sa.port), 16)
  return port, function() C.close(fd) end
end

-- A port nothing listens on: bound by a server that is closed again.
local function free_port()
  return run(function()
    local srv = sp.tcp.listen("127.0.0.1", 0, function() end)
    local port = srv.port
    srv:close()
    return port
  end)
end

describe("sprun.tcp", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("round-trips through an echo server", function()
    local r = run(function()
      local srv = assert(sp.tcp.listen("127.0.0.1", 0, function(conn)
        while true do
          local line = conn:read_line()
          if not line then return end
          conn:write("echo:" .. line .. "\n")
        end
      end))
      assert(srv.port > 0 and srv.port < 65536)
      local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
      local got = {}
      for _, m in ipairs { "a", "bb", "" } do
        assert(c:write(m .. "\n"))
        got[#got + 1] = c:read_line()
      end
      c:close()
      srv:close()
      return got
    end)
    assert.are.same({ "echo:a", "echo:bb", "echo:" }, r)
  end)

  it("read_line joins chunks, strips \\r\\n, returns the tail at EOF",
    function()
      local r = run(function()
        local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
          for _, part in ipairs { "he", "llo\r", "\nwor", "ld\n\r\n",
                                  "no newline" } do
            conn:write(part)
            sp.sleep(10) -- separate chunks on the wire
          end
        end)
        local c = assert(sp.tcp.connect("localhost", srv.port))
        local got = {}
        for i = 1, 5 do
          local line, err = c:read_line()
          got[i] = line or ("<" .. kind(err) .. ">")
        end
        local again, err2 = c:read_line()
        c:close()
        srv:close()
        return { got, again, kind(err2) }
      end)
      assert.are.same({ { "hello", "world", "", "no newline", "<closed>" },
        nil, "closed" }, r)
    end)

  it("read returns data as it comes, then nil, closed at EOF", function()
    local r = run(function()
      local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
        conn:write("abcdef")
        sp.sleep(10)
        conn:write("gh")
      end)
      local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
      local parts = {}
      parts[1] = c:read(4)
      parts[2] = c:read(4)
      parts[3] = c:read()
      local v, err = c:read()
      local w, err2 = c:read(1)
      c:close()
      srv:close()
      return { parts, v, kind(err), w, kind(err2) }
    end)
    assert.are.same({ { "abcd", "ef", "gh" }, nil, "closed", nil, "closed" },
      r)
  end)

  it("keeps data sent before the reader reads", function()
    local r = run(function()
      local served = false
      local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
        conn:write("early 1\nearly 2\n")
        conn:close()
        served = true
      end)
      local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
      wait_for("the server to write and close", function() return served end)
      local a = c:read_line()
      local b = c:read_line()
      local v, err = c:read_line()
      c:close()
      srv:close()
      return { a, b, v, kind(err) }
    end)
    assert.are.same({ "early 1", "early 2", nil, "closed" }, r)
  end)

  it("serves several clients at once", function()
    local r = run(function()
      local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
        local line = conn:read_line()
        sp.sleep(20)
        conn:write(line:upper() .. "\n")
      end)
      local clients = {}
      for i = 1, 20 do
        clients[i] = sp.spawn(function()
          local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
          c:write("client" .. i .. "\n")
          local line = c:read_line()
          c:close()
          return line
        end)
      end
      local got = {}
      for i = 1, 20 do got[i] = clients[i]:await() end
      srv:close()
      return got
    end)
    for i = 1, 20 do
      assert.are.equal("CLIENT" .. i, r[i])
    end
  end)

  it("writes and reads a large payload whole", function()
    local payload = string.rep("0123456789", 200000) -- 2 MB
    local r = run(function()
      local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
        local got, n = {}, 0
        while n < #payload do
          local s = assert(conn:read())
          got[#got + 1] = s
          n = n + #s
        end
        conn:write((table.concat(got) == payload and "same " or "different ")
          .. n .. "\n")
      end)
      local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
      local ok = c:write(payload)
      local reply = c:read_line()
      c:close()
      srv:close()
      return { ok, reply }
    end)
    assert.are.same({ true, "same 2000000" }, r)
  end)

  it("a connection reset by the peer: connection_reset, then write fails",
    function()
      local r = run(function()
        local sent = false
        local srv = sp.tcp.listen("127.0.0.1", 0, function()
          -- Returns once the client's data is in, and so closes with it
          -- unread: a reset. (On loopback, data a write handed to the
          -- kernel is already in the peer's receive queue.)
          wait_for("the client's write", function() return sent end)
        end)
        local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
        assert(c:write("never read\n"))
        sent = true
        local v, err = c:read()
        local w, werr = c:write("more")
        c:close()
        srv:close()
        return { v, kind(err), w, kind(werr) }
      end)
      assert.are.same({ nil, "connection_reset", nil }, { r[1], r[2], r[3] })
      assert.is_true(r[4] == "connection_closed" or r[4] == "connection_reset",
        tostring(r[4]))
    end)

  it("write on a closed connection: nil, err kind closed", function()
    local r = run(function()
      local srv = sp.tcp.listen("127.0.0.1", 0, function() end)
      local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
      c:close()
      local v, err = c:write("x")
      local v2, err2 = c:read()
      srv:close()
      return { v, kind(err), v2, kind(err2), c:close() }
    end)
    assert.are.same({ nil, "closed", nil, "closed", true }, r)
  end)

  describe("connect", function()
    it("to a port nobody listens on: connection_refused", function()
      local port = free_port()
      local v, err = run(function()
        return sp.tcp.connect("127.0.0.1", port)
      end)
      assert.is_nil(v)
      assert.are.equal("connection_refused", kind(err))
      assert.are.equal("connection_refused: connect to 127.0.0.1:" .. port
        .. ": connection refused", tostring(err))
      assert.are.equal("ECONNREFUSED", err.details.code)
    end)

    it("that hangs: timeout after timeout_ms", function()
      local port, close = blackhole()
      local ok, r = pcall(run, function()
        -- The first connect fills the listener's queue.
        local first = assert(sp.tcp.connect("127.0.0.1", port,
          { timeout_ms = 10000 }))
        local t0 = sp.now()
        local v, err = sp.tcp.connect("127.0.0.1", port, { timeout_ms = 100 })
        local elapsed = sp.now() - t0
        first:close()
        return { v, kind(err), tostring(err), err.details.timeout_ms, elapsed }
      end)
      close()
      assert(ok, r)
      assert.is_true(r[5] >= 100 and r[5] < 10000, "took " .. r[5])
      r[5] = nil
      assert.are.same({ nil, "timeout", "timeout: connect to 127.0.0.1:"
        .. port .. " did not finish within 100 ms", 100 }, r)
    end)

    it("a connect in time disarms its timeout", function()
      -- In virtual time the sleep jumps straight to its end, unless the
      -- connect's timeout is still armed: the clock then stops there first
      -- (5 s after the connect started) and ends the sleep early.
      local r = run({ clock = "virtual" }, function()
        local srv = sp.tcp.listen("127.0.0.1", 0, function() end)
        local c = assert(sp.tcp.connect("127.0.0.1", srv.port,
          { timeout_ms = 5000 }))
        local t = sp.now()
        sp.sleep(6000)
        local slept = sp.now() - t
        c:close()
        srv:close()
        return slept
      end)
      assert.are.equal(6000, r)
    end)

    it("cancelling a task blocked in connect closes the socket", function()
      local port, close = blackhole()
      local ok, r = pcall(run, function()
        local first = assert(sp.tcp.connect("127.0.0.1", port))
        local t = sp.spawn(function() return sp.tcp.connect("127.0.0.1", port) end)
        wait_for("the task to block in connect",
          function() return t:status() == "waiting" end)
        t:cancel()
        local v, err = t:await()
        first:close()
        return { v, kind(err), t:status() }
      end)
      close()
      assert(ok, r)
      assert.are.same({ nil, "cancelled", "cancelled" }, r)
    end)

    it("to a name that does not resolve: dns_failed, naming the host",
      function()
        local v, err = run(function()
          return sp.tcp.connect("not-an-ip.invalid", 80)
        end)
        assert.is_nil(v)
        assert.are.equal("dns_failed", kind(err))
        assert.matches("^dns_failed: not%-an%-ip%.invalid: ", tostring(err))
      end)

    it("rejects a bad host or port at once, at the caller's line",
      function()
        local function at_line(f)
          local line = debug.getinfo(f, "S").linedefined
          local ok, err = pcall(f)
          assert.is_false(ok)
          return (err:gsub("^.*tcp_spec%.lua:" .. line .. ": ", "here: "))
        end
        assert.are.equal("here: tcp.connect: port must be an integer >= 1, "
          .. "got 0", at_line(function() sp.tcp.connect("127.0.0.1", 0) end))
        assert.are.equal("here: tcp.connect: port must be an integer between "
          .. "1 and 65535, got 70000",
          at_line(function() sp.tcp.connect("127.0.0.1", 70000) end))
        assert.are.equal('here: tcp.connect: port must be an integer >= 1, '
          .. 'got "80"',
          at_line(function() sp.tcp.connect("127.0.0.1", "80") end))
        assert.are.equal('here: tcp.connect: host must be a non-empty string, '
          .. 'got ""', at_line(function() sp.tcp.connect("", 80) end))
        assert.are.equal("here: tcp.connect: unknown option 'timeout' (did "
          .. "you mean 'timeout_ms'?)", at_line(
          function() sp.tcp.connect("127.0.0.1", 80, { timeout = 1 }) end))
        assert.are.equal("here: tcp.listen: port must be an integer >= 0, "
          .. "got -1", at_line(
          function() sp.tcp.listen("127.0.0.1", -1, print) end))
      end)
  end)

  describe("cancellation", function()
    it("cancelling a task blocked in read closes its connection; the peer "
      .. "sees EOF", function()
      local r = run(function()
        local peer = {}
        local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
          conn:write("hello\n")
          local v, err = conn:read()
          peer.v, peer.err = v, kind(err)
        end)
        local got_first = false
        local reader = sp.spawn(function()
          local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
          local first = c:read_line()
          got_first = true
          return first, c:read() -- blocks: the server sends nothing more
        end)
        -- "hello" read, so the cancel closes a socket with nothing unread.
        wait_for("the reader to read its first line",
          function() return got_first end)
        local st = reader:status()
        reader:cancel()
        local v, err = reader:await()
        wait_for("the server's handler to see the end of the stream",
          function() return peer.err ~= nil end)
        srv:close()
        return { st, v, kind(err), reader:status(), peer.v, peer.err }
      end)
      assert.are.same({ "waiting", nil, "cancelled", "cancelled", nil,
        "closed" }, r)
    end)

    it("cancelling the owner of a server closes it; server:wait returns",
      function()
        local r = run(function()
          local srv
          local owner = sp.spawn(function()
            srv = sp.tcp.listen("127.0.0.1", 0, function() end)
            sp.sleep(10000)
          end)
          sp.sleep(5)
          local waiters = {}
          for i = 1, 2 do
            waiters[i] = sp.spawn(function() return srv:wait() end)
          end
          sp.sleep(5)
          owner:cancel()
          local port = srv.port
          local w1, w2 = waiters[1]:await(), waiters[2]:await()
          local v, err = sp.tcp.connect("127.0.0.1", port)
          return { w1, w2, v, kind(err) }
        end)
        assert.are.same({ true, true, nil, "connection_refused" }, r)
      end)
  end)

  describe("listen", function()
    it("on a port in use: nil, err kind address_in_use", function()
      local r = run(function()
        local srv = sp.tcp.listen("127.0.0.1", 0, function() end)
        local v, err = sp.tcp.listen("127.0.0.1", srv.port, function() end)
        srv:close()
        return { v, kind(err) }
      end)
      assert.are.same({ nil, "address_in_use" }, r)
    end)

    it("outside a task raises", function()
      assert.has_error(function()
        sp.tcp.listen("127.0.0.1", 0, function() end)
      end, "tcp.listen: must be called from a task (inside sprun.run or a "
        .. "script run by sprun)")
    end)
  end)

  describe("in virtual time", function()
    it("a cancelled reader of a socket it does not own stops its reading",
      function()
        local t0 = sp.hrtime()
        local r = run({ clock = "virtual" }, function()
          local srv = sp.tcp.listen("127.0.0.1", 0, function()
            sp.sleep(5000) -- keeps the connection open, without reading
          end)
          local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
          local reader = sp.spawn(function() return c:read() end)
          sp.sleep(0)
          reader:cancel()
          local _, err = reader:await()
          -- A socket still reading would hold the clock to the real one:
          -- this sleep would then take 30 real seconds.
          local v0 = sp.now()
          sp.sleep(30000)
          local slept = sp.now() - v0
          c:close()
          srv:close()
          return { kind(err), slept }
        end)
        assert.are.same({ "cancelled", 30000 }, r)
        local ms = (sp.hrtime() - t0) / 1e6
        assert.is_true(ms < 10000, "took " .. ms .. " ms of real time")
      end)

    it("a connection works while another task sleeps an hour", function()
      local t0 = sp.hrtime()
      local r = run({ clock = "virtual" }, function()
        local log = {}
        local v0 = sp.now()
        sp.spawn(function()
          sp.sleep(3600000)
          log[#log + 1] = "hour at " .. (sp.now() - v0)
        end)
        local srv = sp.tcp.listen("127.0.0.1", 0, function(conn)
          conn:write("pong " .. conn:read_line() .. "\n")
        end)
        local c = assert(sp.tcp.connect("127.0.0.1", srv.port))
        c:write("ping\n")
        log[#log + 1] = c:read_line()
        local during = sp.now() - v0
        c:close()
        srv:close()
        return { log = log, small = during < 10000 }
      end)
      assert.are.same({ log = { "pong ping", "hour at 3600000" }, small = true },
        r)
      assert.is_true((sp.hrtime() - t0) / 1e6 < 10000)
    end)
  end)
end)
