-- sprun.http and sprun.dns against real servers the spec starts on
-- 127.0.0.1: Debian's nginx (keep-alive, a large file, TLS with a
-- certificate made here, HTTP/2 over TLS and without) and a fault server
-- in Lua (tests/lua/httpd/fault_server.lua). Every case gets exactly one
-- outcome of the right kind, and no handle is left (h.run_tasks).
local h = require "helpers"
local sprun = require "sprun"
local nginx = require "httpd.nginx"
local fault = require "httpd.fault_server"

local http = sprun.http
local kind = sprun.error_kind

-- Runs fn(server) with a fault server, closed at the end.
local function with_fault(fn, opts)
  return h.run_tasks(function()
    local fs = fault.start(opts)
    local ok, r = pcall(fn, fs)
    fs:close()
    assert(ok, r)
    return r
  end)
end

local function with_nginx(opts, fn)
  return h.run_tasks(function()
    local srv = nginx.start(opts)
    local ok, r = pcall(fn, srv)
    srv:stop()
    assert(ok, r)
    return r
  end)
end

local function elapsed_ms(fn)
  local t0 = sprun.hrtime()
  local a, b = fn()
  return (sprun.hrtime() - t0) / 1e6, a, b
end

describe("sprun.dns", function()
  it("resolves localhost and a name of /etc/hosts; a numeric address is "
    .. "its own answer", function()
    -- A name other than localhost that /etc/hosts maps to a loopback
    -- address, or this host's own name.
    local name
    for line in io.lines("/etc/hosts") do
      local addr, rest = line:match("^%s*(127%.[%d.]+)%s+(.*)$")
      for n in (rest or ""):gmatch("[^%s#]+") do
        if addr and not name and n ~= "localhost" then
          name = n
        end
      end
    end
    name = name or h.run("hostname").stdout:gsub("%s+$", "")
    local r = h.run_tasks(function()
      return {
        sprun.dns.resolve("localhost", { family = "inet" }),
        sprun.dns.resolve(name),
        sprun.dns.resolve("10.1.2.3"),
        sprun.dns.resolve("::1"),
      }
    end)
    assert.are.same({ "127.0.0.1" }, r[1])
    assert.is_true(#r[2] >= 1, name)
    assert.are.same({ "10.1.2.3" }, r[3])
    assert.are.same({ "::1" }, r[4])
  end)

  it("a name that cannot resolve is dns_failed, naming the host", function()
    local r = h.run_tasks(function()
      return { sprun.dns.resolve("no-such-host.invalid") }
    end)
    assert.is_nil(r[1])
    assert.are.equal("dns_failed", kind(r[2]))
    assert.are.equal("no-such-host.invalid", r[2].details.host)
    assert.matches("^dns_failed: no%-such%-host%.invalid: ", tostring(r[2]))
  end)

  it("a lookup cancelled while it runs returns at once, and its result is "
    .. "dropped", function()
    local r = h.run_tasks(function()
      -- More lookups than libuv's pool has threads, some queued, some
      -- running in the pool, when the cancels come: a task spawned after
      -- them runs once each has started its lookup, before the loop polls.
      local tasks = {}
      for i = 1, 32 do
        tasks[i] = sprun.spawn(function()
          return sprun.dns.resolve("localhost", { family = "inet" })
        end)
      end
      local ms = sprun.spawn(function()
        return elapsed_ms(function()
          for i = 1, 32 do
            assert(tasks[i]:status() == "waiting", tasks[i]:status())
            tasks[i]:cancel()
          end
        end)
      end):await()
      local cancelled, resolved = 0, 0
      for i = 1, 32 do
        local v, err = tasks[i]:await()
        if v then
          assert(v[1] == "127.0.0.1", v[1])
          resolved = resolved + 1
        elseif kind(err) == "cancelled" then
          cancelled = cancelled + 1
        end
      end
      -- Another lookup after them works as usual.
      return { cancelled, resolved, ms, sprun.dns.resolve("localhost", {
        family = "inet" }) }
    end)
    assert.are.same({ 32, 0 }, { r[1], r[2] })
    -- Generous for valgrind: the cancels do not wait for the pool.
    assert.is_true(r[3] < 500, r[3] .. " ms")
    assert.are.same({ "127.0.0.1" }, r[4])
  end)

  it("tcp.connect and tcp.listen take host names", function()
    local r = h.run_tasks(function()
      local got
      local server = assert(sprun.tcp.listen("localhost", 0, function(c)
        got = c:read_line()
        c:write("pong\n")
      end))
      local c = assert(sprun.tcp.connect("localhost", server.port,
                                         { timeout_ms = 2000 }))
      c:write("ping\n")
      local line = c:read_line()
      c:close()
      server:close()
      return { line, got }
    end)
    assert.are.same({ "pong", "ping" }, r)
  end)
end)

describe("sprun.http against nginx", function()
  it("a request to an origin is not held behind another one to it that "
     .. "hangs", function()
    local took = with_fault(function(fs)
      local hung = sprun.spawn(http.get, fs:url("/never"),
                               { timeout_ms = 30000 })
      sprun.sleep(50)
      local t0 = sprun.now()
      assert.are.equal(200, assert(http.get(fs:url("/ok"))).status)
      local ms = sprun.now() - t0
      hung:cancel()
      return ms
    end)
    assert.is_true(took < 2000, tostring(took))
  end)

  it("GET, HEAD and a large file over one kept-alive connection", function()
    local large = 8 * 1024 * 1024
    local r = with_nginx({ large_bytes = large,
                           files = { ["hello.txt"] = "hello\n" } },
      function(srv)
        local a = assert(http.get(srv:url("/hello.txt")))
        local b = assert(http.head(srv:url("/hello.txt")))
        local c = assert(http.get(srv:url("/large.bin"),
                                  { timeout_ms = 10000 }))
        local d = assert(http.get((srv:url("/hello.txt"):gsub("127%.0%.0%.1",
                                                               "localhost"))))
        local st = http.pool_stats()
        return { a = a, b = b, c_len = #c.body, d = d, sockets = st.sockets }
      end)
    assert.are.equal(200, r.a.status)
    assert.are.equal("hello\n", r.a.body)
    assert.are.equal("1.1", r.a.http_version)
    assert.are.equal("6", r.a.headers["content-length"])
    assert.matches("^nginx", r.a.headers.server)
    for _, k in ipairs { "dns", "connect", "tls", "ttfb", "total" } do
      assert.is_true(r.a.timings[k] >= 0, k)
    end
    assert.is_true(r.a.timings.total >= r.a.timings.ttfb)
    assert.are.equal(200, r.b.status)
    assert.are.equal("", r.b.body)
    assert.are.equal(large, r.c_len)
    assert.are.equal("hello\n", r.d.body)
    -- 127.0.0.1 and localhost are two hosts to curl: one connection each.
    assert.are.equal(2, r.sockets)
  end)

  it("HTTPS verifies the certificate by default: with its CA it works, "
    .. "without it is tls_failed, verify = false skips it", function()
    local r = with_nginx({ tls = true }, function(srv)
      local url = srv:url("/small", "tls")
      return {
        ok = http.get(url, { tls = { ca_file = srv.ca_file } }),
        bad = { http.get(url) },
        unverified = http.get(url, { tls = { verify = false } }),
      }
    end)
    assert.are.equal(200, r.ok.status)
    assert.are.equal("2", r.ok.http_version)
    assert.is_true(r.ok.timings.tls > 0)
    assert.is_nil(r.bad[1])
    assert.are.equal("tls_failed", kind(r.bad[2]))
    assert.are.equal(200, r.unverified.status)
  end)

  it("HTTP/1.1 over TLS when asked, HTTP/2 without TLS (h2c) when asked, "
    .. "and concurrent h2 requests share one connection", function()
    local r = with_nginx({ tls = true, h2c = true }, function(srv)
      local tls = { ca_file = srv.ca_file }
      -- By address: a connection of its own, apart from the h2 one below.
      local one = assert(http.get(srv:url("/small", "tls_ip"),
                                  { tls = tls, http_version = "1.1" }))
      local h2c = {}
      for i = 1, 3 do
        h2c[i] = assert(http.get(srv:url("/small", "h2c"),
                                 { http_version = "h2c" })).http_version
      end
      assert(http.get(srv:url("/small", "tls"), { tls = tls }))
      local before = http.pool_stats().sockets
      local tasks = {}
      for i = 1, 10 do
        tasks[i] = sprun.spawn(http.get, srv:url("/small", "tls"),
                               { tls = tls })
      end
      local got = {}
      for i = 1, 10 do
        local v = tasks[i]:await()
        got[i] = v.status .. " " .. v.http_version
      end
      return { one.http_version, h2c, got,
               http.pool_stats().sockets - before }
    end)
    assert.are.equal("1.1", r[1])
    assert.are.same({ "2", "2", "2" }, r[2])
    for i = 1, 10 do
      assert.are.equal("200 2", r[3][i])
    end
    assert.are.equal(0, r[4])
  end)
end)

describe("sprun.http cancellation over HTTP/2", function()
  it("a cancelled stream is reset: the other on the same connection goes "
    .. "on", function()
    local r = with_nginx({ tls = true, large_bytes = 512 * 1024 },
      function(srv)
        local tls = { ca_file = srv.ca_file }
        assert(http.get(srv:url("/small", "tls"), { tls = tls }))
        local sockets = http.pool_stats().sockets
        -- 512 KiB at 256 KiB/s: both streams run for 2 s.
        local url = srv:url("/limited/large.bin", "tls")
        local a = sprun.spawn(http.get, url, { tls = tls, timeout_ms = 10000 })
        local b = sprun.spawn(http.get, url, { tls = tls, timeout_ms = 10000 })
        sprun.sleep(300)
        local during = http.pool_stats()
        a:cancel()
        local _, ea = a:await()
        local rb = b:await()
        return { kind(ea), rb.status, #rb.body, rb.http_version,
                 during.sockets - sockets, http.pool_stats().sockets,
                 sockets }
      end)
    assert.are.same({ "cancelled", 200, 512 * 1024, "2", 0 },
                    { r[1], r[2], r[3], r[4], r[5] })
    -- The connection the two streams shared is still the pool's.
    assert.are.equal(r[7], r[6])
  end)
end)

describe("sprun -e", function()
  it("prints the status of a GET to localhost", function()
    local r = with_nginx({}, function(srv)
      return sprun.process.run { h.sprun, "-e",
        'print(require("sprun").http.get("http://localhost:' .. srv.port
        .. '/small").status)', timeout_ms = 10000 }
    end)
    assert.are.same({ 0, "200\n", "" }, { r.code, r.stdout, r.stderr })
  end)
end)

describe("sprun.http against the fault server", function()
  it("parses the request it sends: method, headers, body", function()
    local r = with_fault(function(fs)
      return {
        assert(http.post(fs:url("/echo"), "a=1",
                         { headers = { ["X-Test"] = "yes",
                                       ["Content-Type"] = "text/plain" } })),
        assert(http.put(fs:url("/echo"), "")),
        assert(http.delete(fs:url("/echo"))),
        assert(http.request { url = fs:url("/echo"), method = "PATCH",
                              body = "p" }),
      }
    end)
    local cjson = require "cjson"
    local post = cjson.decode(r[1].body)
    assert.are.equal("POST", post.method)
    assert.are.equal("a=1", post.body)
    assert.are.equal("yes", post.headers["x-test"])
    assert.is_nil(post.headers.expect)
    assert.are.equal("PUT", cjson.decode(r[2].body).method)
    assert.are.equal("DELETE", cjson.decode(r[3].body).method)
    local patch = cjson.decode(r[4].body)
    assert.are.same({ "PATCH", "p" }, { patch.method, patch.body })
  end)

  it("repeated headers come as a list, in order; a chunked body whole",
    function()
    local r = with_fault(function(fs)
      return { assert(http.get(fs:url("/repeated"))),
               assert(http.get(fs:url("/chunked"))) }
    end)
    assert.are.equal("table", type(r[1].headers["set-cookie"]))
    assert.are.equal(2, #r[1].headers["set-cookie"])
    assert.are.same({ "a", "b" }, r[1].headers["x-dup"])
    assert.is_true(#r[2].body > 0)
  end)

  it("503 and 429 are responses, with Retry-After in ms; raise_for_status "
    .. "makes status >= 400 an http_error", function()
    local r = with_fault(function(fs)
      return {
        assert(http.get(fs:url("/503?retry_after=3"))),
        assert(http.get(fs:url("/429?retry_after=1"))),
        { http.get(fs:url("/status?code=404"), { raise_for_status = true }) },
        assert(http.get(fs:url("/status?code=404"))),
      }
    end)
    assert.are.same({ 503, 3000 }, { r[1].status, r[1].retry_after_ms })
    assert.are.same({ 429, 1000 }, { r[2].status, r[2].retry_after_ms })
    assert.is_nil(r[3][1])
    assert.are.equal("http_error", kind(r[3][2]))
    assert.are.equal(404, r[3][2].details.status)
    assert.are.equal(404, r[3][2].details.response.status)
    assert.are.equal(404, r[4].status)
  end)

  it("every fault gets one outcome of its kind", function()
    local r = with_fault(function(fs)
      local function outcome(path, opts)
        local v, err = http.get(fs:url(path), opts)
        return v and ("status " .. v.status) or kind(err)
      end
      return {
        slow = outcome("/slow-headers?ms=3000", { timeout_ms = 300 }),
        never = outcome("/never", { timeout_ms = 300 }),
        drip = outcome("/drip?bytes=100&ms=400",
                       { stall = { min_bytes_per_s = 50, for_ms = 1000 } }),
        reset = outcome("/reset-mid-body"),
        malformed = outcome("/malformed-status"),
        bad_chunk = outcome("/bad-chunk"),
        nothing = outcome("/close-no-response"),
        large = outcome("/big?bytes=100000", { max_body_bytes = 1000 }),
        fits = outcome("/big?bytes=1000", { max_body_bytes = 1000 }),
        refused = kind(select(2, http.get("http://127.0.0.1:1/"))),
        dns = kind(select(2, http.get("http://no-such-host.invalid/"))),
      }
    end)
    assert.are.same({
      slow = "timeout", never = "timeout", drip = "stalled", reset = "reset",
      malformed = "bad_response", bad_chunk = "bad_response",
      nothing = "reset", large = "too_large", fits = "status 200",
      refused = "connection_refused", dns = "dns_failed",
    }, r)
  end)

  it("a server that never reads: a large body times out", function()
    local r = with_fault(function(fs)
      local v, err = http.post(fs:url("/x"), string.rep("x", 8 * 1024 * 1024),
                               { timeout_ms = 500 })
      return { v, kind(err) }
    end, { mode = "no_read" })
    assert.are.same({ nil, "timeout" }, { r[1], r[2] })
  end)

  it("streams a large body to on_body, in the task, in order", function()
    local n = 3 * 1024 * 1024
    local r = with_fault(function(fs)
      local parts, in_task = {}, true
      local v = assert(http.get(fs:url("/big?bytes=" .. n), {
        on_body = function(chunk)
          in_task = in_task and sprun.spawn ~= nil and
                    require("sprun.sched").running() ~= nil
          parts[#parts + 1] = chunk
        end }))
      return { v.status, v.body, table.concat(parts), #parts, in_task }
    end)
    assert.are.equal(200, r[1])
    assert.are.equal("", r[2])
    assert.are.equal(fault.body(n), r[3])
    assert.is_true(r[4] > 1)
    assert.is_true(r[5])
  end)

  it("an error raised by on_body aborts the transfer and reaches the "
    .. "caller", function()
    local r = with_fault(function(fs)
      local ok, err = pcall(http.get, fs:url("/big?bytes=3000000"), {
        on_body = function() error("enough", 0) end })
      sprun.sleep(50)
      return { ok, err, http.pool_stats().running, fs.open }
    end)
    assert.are.same({ false, "enough", 0, 0 }, r)
  end)
end)

describe("sprun.http cancellation", function()
  it("a task cancelled mid-request aborts the transfer and closes its "
    .. "connection at once", function()
    local r = with_fault(function(fs)
      local t = sprun.spawn(http.get, fs:url("/never"))
      h.wait_for("the request to arrive", function()
        return fs.hits["/never"] == 1
      end, 2000)
      local ms = elapsed_ms(function() t:cancel() end)
      local v, err = t:await()
      -- The server sees the connection go within a turn or two.
      local gone = elapsed_ms(function()
        h.wait_for("the connection to close", function()
          return fs.open == 0
        end, 1000)
      end)
      return { v, kind(err), ms, gone < 200, http.pool_stats() }
    end)
    assert.is_nil(r[1])
    assert.are.equal("cancelled", r[2])
    assert.is_true(r[3] < 200, r[3] .. " ms")
    assert.is_true(r[4])
    assert.are.same({ running = 0, live = 0, sockets = 0, polls = 0 }, r[5])
  end)

  it("execute_with_timeout cancels the request for real", function()
    local r = with_fault(function(fs)
      local ms, v, err = elapsed_ms(function()
        return sprun.executor.execute_with_timeout(function()
          return http.get(fs:url("/drip?bytes=100&ms=100"))
        end, { timeout_ms = 200 })
      end)
      h.wait_for("the connection to close", function()
        return fs.open == 0
      end, 1000)
      return { v, kind(err), ms, true, http.pool_stats().running }
    end)
    assert.is_nil(r[1])
    assert.are.equal("timeout", r[2])
    -- The timer runs on the loop's clock, read at the turn's start.
    assert.is_true(r[3] >= 150 and r[3] < 1000, r[3] .. " ms")
    assert.is_true(r[4])
    assert.are.equal(0, r[5])
  end)

  it("a batch whose items time out leaves the others alone", function()
    local r = with_fault(function(fs)
      local fns = {}
      for i = 1, 10 do
        local path = i % 2 == 0 and "/never" or "/ok"
        fns[i] = function() return http.get(fs:url(path)) end
      end
      local out = sprun.executor.execute_batch(fns, { timeout_ms = 1000 })
      local kinds = {}
      for i, o in ipairs(out) do
        kinds[i] = o.ok and o.value.status or kind(o.error)
      end
      return kinds
    end)
    for i = 1, 10 do
      assert.are.equal(i % 2 == 0 and "timeout" or 200, r[i])
    end
  end)
end)

describe("sprun.http connect timeouts", function()
  it("a listener whose queue is full never answers the handshake: "
    .. "connect_timeout, or timeout when that comes first", function()
    local ffi = require "ffi"
    pcall(ffi.cdef, [[
      int socket(int, int, int);
      int bind(int, const void *, unsigned);
      int listen(int, int);
      int getsockname(int, void *, unsigned *);
      int close(int);
      struct sp_test_sin { uint16_t family; uint16_t port; uint32_t addr;
                           uint8_t zero[8]; };
    ]])
    -- A socket that listens with a queue of one and never accepts.
    local fd = ffi.C.socket(2, 1, 0)
    assert(fd >= 0)
    local sin = ffi.new("struct sp_test_sin")
    sin.family, sin.addr = 2, 0x0100007f
    assert(ffi.C.bind(fd, sin, ffi.sizeof(sin)) == 0)
    assert(ffi.C.listen(fd, 0) == 0)
    local len = ffi.new("unsigned[1]", ffi.sizeof(sin))
    assert(ffi.C.getsockname(fd, sin, len) == 0)
    local port = bit.rshift(bit.bswap(sin.port), 16)
    local r = h.run_tasks(function()
      local url = "http://127.0.0.1:" .. port .. "/"
      -- Fill the queue: these handshakes complete, the next ones do not.
      local fill = {}
      for i = 1, 4 do
        fill[i] = sprun.spawn(http.get, url, { timeout_ms = 2000 })
      end
      sprun.sleep(100)
      local _, a = http.get(url, { connect_timeout_ms = 200,
                                   timeout_ms = 2000 })
      local _, b = http.get(url, { connect_timeout_ms = 2000,
                                   timeout_ms = 200 })
      for i = 1, 4 do
        fill[i]:cancel()
      end
      return { kind(a), kind(b) }
    end)
    ffi.C.close(fd)
    assert.are.same({ "connect_timeout", "timeout" }, r)
  end)
end)
