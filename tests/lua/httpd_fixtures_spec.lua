-- The servers the HTTP client's specs run against, checked with the
-- system curl: a real nginx (tests/lua/httpd/nginx.lua: keep-alive
-- HTTP/1.1, HTTPS with h2 by ALPN, h2c, stopped with its whole process
-- group) and the fault-injecting server (tests/lua/httpd/fault_server.lua:
-- every route does to curl what it says). Every run checks that no
-- handle is left open and no child process is left behind.
local h = require "helpers"
local cjson = require "cjson"
local sprun = require "sprun"
local nginx = require "httpd.nginx"
local fault = require "httpd.fault_server"

local run = h.run_tasks

-- curl as it is, without what a sanitizer build preloads; -sS: no
-- progress, but the error message. Returns { code, stdout, stderr } and
-- the milliseconds it took.
local function curl(args, timeout_ms)
  local cmd = { "curl", "-sS", env = { LD_PRELOAD = false },
                timeout_ms = timeout_ms or 5000 }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = a
  end
  local t0 = sprun.hrtime()
  local r = assert(sprun.process.run(cmd))
  return r, (sprun.hrtime() - t0) / 1e6
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then
    f:close()
  end
  return f ~= nil
end

-- Lines "Name: value" of a response head dumped by curl -D -, as a list
-- of { lower-case name, value }.
local function header_list(head)
  local list = {}
  for k, v in head:gmatch("([^:\r\n]+): ([^\r\n]*)") do
    list[#list + 1] = { k:lower(), v }
  end
  return list
end

local function values_of(list, name)
  local vs = {}
  for _, kv in ipairs(list) do
    if kv[1] == name then
      vs[#vs + 1] = kv[2]
    end
  end
  return vs
end

describe("httpd.nginx", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  it("serves the docroot over one kept-alive HTTP/1.1 connection, "
     .. "large.bin byte for byte, and stop() leaves no process", function()
    local size = 8 * 1024 * 1024
    local srv, log, r, out, large, pid, dir
    run(function()
      srv = nginx.start { large_bytes = size,
                          files = { ["hello.txt"] = "hello\n",
                                    ["sub/deep.txt"] = "deep\n" } }
      pid, dir = srv.pid, srv.dir
      assert.is_true(h.alive(pid))
      assert.are.same({}, srv:access_log())
      r = curl { "-v", "-w", "%{http_code} %{size_download} %{num_connects}\n",
                 "-o", "/dev/null", srv:url("/hello.txt"),
                 "-o", dir .. "/large.out", srv:url("/large.bin") }
      out = curl { srv:url("/sub/deep.txt"), srv:url("/small") }.stdout
      large = h.read_file(dir .. "/large.out")
      log = srv:access_log()
      srv:stop()
      srv:stop() -- idempotent
    end)
    assert.are.equal(0, r.code, r.stderr)
    -- The second URL went over the first one's connection.
    assert.are.equal("200 6 1\n200 " .. size .. " 0\n", r.stdout)
    assert.is_truthy(r.stderr:find("Re-using existing connection", 1, true))
    assert.are.equal("deep\nok\n", out)
    assert.are.equal(size, #large)
    assert.is_true(large == fault.body(size))
    assert.are.equal(4, #log)
    assert.are.same({ 1, 2 }, { log[1].requests, log[2].requests })
    assert.are.equal(log[1].connection, log[2].connection)
    assert.are.same({ "HTTP/1.1", "GET", "/large.bin", 200, size },
                    { log[2].protocol, log[2].method, log[2].uri,
                      log[2].status, log[2].bytes })
    -- Gone with its whole group, its directory removed.
    assert.is_false(h.alive(pid))
    assert.are.same({}, h.group_members(pid))
    assert.is_false(exists(dir .. "/nginx.conf"))
  end)

  it("serves HTTPS with the certificate it made: h2 by ALPN, HTTP/1.1 "
     .. "on request, by name and by IP; unverified without the CA", function()
    local srv, h2, h1, by_ip, untrusted, cert
    run(function()
      srv = nginx.start { tls = true }
      local ca = { "--cacert", srv.ca_file, "--resolve", srv.resolve }
      local function with_ca(...)
        local args = { unpack(ca) }
        for _, a in ipairs { ... } do
          args[#args + 1] = a
        end
        return curl(args)
      end
      h2 = with_ca("-w", " %{http_version} %{num_connects}\n",
                   srv:url("/small", "tls"), srv:url("/small", "tls"))
      h1 = with_ca("--http1.1", "-w", " %{http_version}",
                   srv:url("/status/404", "tls"))
      by_ip = with_ca("-w", " %{http_version}", srv:url("/small", "tls_ip"))
      untrusted = curl { "--resolve", srv.resolve, srv:url("/small", "tls") }
      cert = curl { "--cacert", srv.ca_file, "--resolve", srv.resolve,
                    "-v", "-o", "/dev/null", srv:url("/small", "tls") }
      srv:stop()
    end)
    -- Two requests, one connection.
    assert.are.same({ 0, "ok\n 2 1\nok\n 2 0\n" }, { h2.code, h2.stdout },
                    h2.stderr)
    assert.are.same({ 0, "404\n 1.1" }, { h1.code, h1.stdout }, h1.stderr)
    assert.are.same({ 0, "ok\n 2" }, { by_ip.code, by_ip.stdout },
                    by_ip.stderr)
    assert.are.equal(60, untrusted.code) -- CURLE_PEER_FAILED_VERIFICATION
    assert.is_truthy(cert.stderr:find("subject: CN=localhost", 1, true))
    assert.is_truthy(cert.stderr:find("ALPN: server accepted h2", 1, true))
    assert.is_truthy(srv.url(srv, "/x", "tls")
                     :match("^https://localhost:%d+/x$"))
    assert.are.same({}, h.group_members(srv.pid))
  end)

  -- One request per connection: curl 7.88 cannot reuse an h2c connection
  -- (its second request fails with "Error in the HTTP2 framing layer",
  -- curl issue 10634, fixed in 8.0); over TLS, reuse works (above).
  it("serves HTTP/2 without TLS to a client with prior knowledge",
     function()
    local srv, r, plain, log
    run(function()
      srv = nginx.start { h2c = true }
      r = curl { "--http2-prior-knowledge", "-w", " %{http_version}",
                 srv:url("/status/201", "h2c") }
      -- Without prior knowledge, HTTP/1.1 there is no HTTP.
      plain = curl { "--http1.1", srv:url("/small", "h2c") }
      log = srv:access_log()
      srv:stop()
    end)
    assert.are.same({ 0, "201\n 2" }, { r.code, r.stdout }, r.stderr)
    assert.are_not.equal(0, plain.code)
    assert.are.equal(1, #log)
    assert.are.same({ "HTTP/2.0", srv.h2c_port, 201 },
                    { log[1].protocol, log[1].port, log[1].status })
  end)

  it("answers /status/NNN with that status, redirects to /small, and "
     .. "stores a PUT under /upload/", function()
    local srv, r503, r204, r302, put, stored
    run(function()
      srv = nginx.start {}
      r503 = curl { "-w", " %{http_code}", srv:url("/status/503") }
      r204 = curl { "-w", "%{http_code} %{size_download}",
                    srv:url("/status/204") }
      r302 = curl { "-w", "%{http_code} %{redirect_url}", "-o", "/dev/null",
                    srv:url("/status/302") }
      put = curl { "-w", "%{http_code}", "-X", "PUT", "--data-binary",
                   "put body\n", srv:url("/upload/a/b.txt") }
      stored = h.read_file(srv.dir .. "/www/upload/a/b.txt")
      srv:stop()
    end)
    assert.are.equal("503\n 503", r503.stdout)
    assert.are.equal("204 0", r204.stdout)
    assert.are.equal("302 " .. srv:url("/small"), r302.stdout)
    assert.are.same({ 0, "201" }, { put.code, put.stdout }, put.stderr)
    assert.are.equal("put body\n", stored)
  end)

  it("is killed with the task that started it", function()
    local srv, pid, dir
    run(function()
      local started = sprun.spawn(function()
        srv = nginx.start {}
        pid, dir = srv.pid, srv.dir
        sprun.sleep(60000)
      end)
      h.wait_for("nginx to start", function() return pid ~= nil end, 5000)
      assert.is_true(h.alive(pid))
      started:cancel()
      h.wait_for("nginx to go", function()
        return #h.group_members(pid) == 0
      end, 3000)
    end)
    assert.is_false(h.alive(pid))
    -- Outside the run, stop() has only the directory left to remove.
    srv:stop()
    assert.is_false(exists(dir .. "/nginx.conf"))
  end)

  it("raises with nginx's error log when nginx cannot start, and leaves "
     .. "nothing behind", function()
    local ok, err
    run(function()
      ok, err = pcall(nginx.start, { limit_rate = "not-a-rate" })
    end)
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("did not come up", 1, true), err)
    assert.is_truthy(tostring(err):find("limit_rate", 1, true), err)
    local misuse_ok, misuse = pcall(nginx.start, { tsl = true })
    assert.is_false(misuse_ok)
    assert.is_truthy(misuse:find("nginx.start: unknown option 'tsl'", 1, true))
  end)
end)

describe("httpd.fault_server", function()
  after_each(function()
    assert.are.same({}, h.live_children())
  end)

  -- fn(fs) in a run with a fault server, closed after.
  local function with_server(fn, opts)
    local fs
    run(function()
      fs = fault.start(opts)
      local ok, err = pcall(fn, fs)
      fs:close()
      assert(ok, err)
    end)
    h.assert_no_handles()
    return fs
  end

  it("answers /ok, then /echo with the request as JSON, on one kept-alive "
     .. "connection", function()
    local r, fs
    fs = with_server(function(s)
      r = curl { "-v", s:url("/ok"), "--next", "-H", "X-Test: yes",
                 "--data-binary", "a body\n", s:url("/echo?x=1") }
    end)
    assert.are.equal(0, r.code, r.stderr)
    assert.is_truthy(r.stderr:find("Re-using existing connection", 1, true))
    local json = r.stdout:match("^ok(%b{})$")
    assert.is_truthy(json, r.stdout)
    local e = cjson.decode(json)
    assert.are.same({ "POST", "/echo", "x=1", "a body\n", "yes", "1.1" },
                    { e.method, e.path, e.query, e.body, e.headers["x-test"],
                      e.version })
    assert.are.same({ 1, 2, 1, 1, 0 },
                    { fs.connections, fs.requests, fs.hits["/ok"],
                      fs.hits["/echo"], fs.open })
    assert.are.equal("a body\n", fs.last_request.body)
  end)

  it("answers Expect: 100-continue at once, and reads a chunked body",
     function()
    local big, chunked, took
    local body = fault.body(2 * 1024 * 1024)
    with_server(function(s)
      local dir = h.tmpdir()
      h.write_file(dir .. "/body", body)
      -- curl sends a body this large only after a 100 Continue (or 1 s).
      big, took = curl { "-v", "--data-binary", "@" .. dir .. "/body",
                         s:url("/echo") }
      chunked = curl { "-H", "Transfer-Encoding: chunked", "--data-binary",
                       "@" .. dir .. "/body", s:url("/echo") }
      h.rmrf(dir)
    end)
    assert.are.equal(0, big.code, big.stderr)
    assert.is_truthy(big.stderr:find("Expect: 100-continue", 1, true))
    assert.is_truthy(big.stderr:find("HTTP/1.1 100 Continue", 1, true))
    assert.is_true(took < 900, "took " .. took .. " ms")
    assert.is_true(cjson.decode(big.stdout).body == body)
    local e = cjson.decode(chunked.stdout)
    assert.are.equal("chunked", e.headers["transfer-encoding"])
    assert.is_true(e.body == body)
  end)

  it("answers /status?code=N with N, /repeated with repeated headers, "
     .. "/big with the body pattern", function()
    local teapot, bad, rep, big, got
    local n = 3 * 1024 * 1024 + 7
    with_server(function(s)
      teapot = curl { "-w", " %{http_code}", s:url("/status?code=418") }
      bad = curl { "-w", "%{http_code}", "-o", "/dev/null",
                   s:url("/status?code=99") }
      rep = curl { "-D", "-", "-o", "/dev/null", s:url("/repeated") }
      local dir = h.tmpdir()
      big = curl { "-w", "%{size_download}", "-o", dir .. "/big",
                   s:url("/big?bytes=" .. n) }
      got = h.read_file(dir .. "/big")
      h.rmrf(dir)
    end)
    assert.are.equal("status 418\n 418", teapot.stdout)
    assert.are.equal("400", bad.stdout)
    local list = header_list(rep.stdout)
    assert.are.same({ "a=1; Path=/", "b=2; Path=/" },
                    values_of(list, "set-cookie"))
    assert.are.same({ "a", "b" }, values_of(list, "x-dup"))
    assert.are.equal(tostring(n), big.stdout)
    assert.is_true(got == fault.body(n))
    assert.are.equal("0000000000a0b00\n", fault.body(0xa0b10):sub(-16))
  end)

  it("holds the head of /slow-headers for ms, and ends the handler as soon "
     .. "as the client gives up", function()
    local slow, took, gave_up, open_after
    with_server(function(s)
      slow, took = curl { s:url("/slow-headers?ms=300") }
      gave_up = curl { "--max-time", "0.2", s:url("/slow-headers?ms=5000") }
      local t0 = sprun.now()
      h.wait_for("the handler to end", function() return s.open == 0 end,
                 1000)
      open_after = sprun.now() - t0
    end)
    assert.are.same({ 0, "slow" }, { slow.code, slow.stdout })
    assert.is_true(took >= 290 and took < 1000, "took " .. took .. " ms")
    assert.are.equal(28, gave_up.code) -- CURLE_OPERATION_TIMEDOUT
    assert.is_true(open_after < 500)
  end)

  it("drips /drip one byte every ms", function()
    local r, took
    with_server(function(s)
      r, took = curl { "-w", " %{size_download}",
                       s:url("/drip?bytes=5&ms=100") }
    end)
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal(fault.body(5) .. " 5", r.stdout)
    assert.is_true(took >= 480 and took < 1200, "took " .. took .. " ms")
  end)

  it("cuts /reset-mid-body with a TCP reset and /close-mid-body with a "
     .. "plain close, both after half the body", function()
    local reset, closed, fs
    fs = with_server(function(s)
      -- A kept-alive connection first: the reset must pick its own socket.
      local idle = assert(sprun.tcp.connect("127.0.0.1", s.port))
      assert(idle:write("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert(idle:read())
      reset = curl { "-w", "%{size_download}", "-o", "/dev/null",
                     s:url("/reset-mid-body") }
      closed = curl { "-w", "%{size_download}", "-o", "/dev/null",
                      s:url("/close-mid-body") }
      idle:close()
    end)
    assert.are.equal(56, reset.code) -- CURLE_RECV_ERROR
    assert.is_truthy(reset.stderr:find("Connection reset by peer", 1, true),
                     reset.stderr)
    assert.are.equal(1, fs.resets)
    assert.are.equal(18, closed.code) -- CURLE_PARTIAL_FILE
    assert.are.equal("50000", closed.stdout)
    assert.is_truthy(closed.stderr:find("50000 bytes remaining", 1, true),
                     closed.stderr)
  end)

  it("refuses with /503 and /429 and their Retry-After, and fails /flaky "
     .. "the first N times", function()
    local r503, r429, flaky, other
    local fs = with_server(function(s)
      r503 = curl { "-D", "-", "-o", "/dev/null", s:url("/503?retry_after=7") }
      r429 = curl { "-D", "-", "-o", "/dev/null", s:url("/429") }
      flaky = {}
      for i = 1, 3 do
        flaky[i] = curl { "-w", "%{http_code}", "-o", "/dev/null",
                          s:url("/flaky?fail=2") }.stdout
      end
      other = curl { "-w", "%{http_code}", "-o", "/dev/null",
                     s:url("/flaky?fail=2&id=b") }.stdout
    end)
    assert.is_truthy(r503.stdout:match("^HTTP/1%.1 503 "), r503.stdout)
    assert.are.same({ "7" }, values_of(header_list(r503.stdout),
                                       "retry-after"))
    assert.is_truthy(r429.stdout:match("^HTTP/1%.1 429 "), r429.stdout)
    assert.are.same({ "1" }, values_of(header_list(r429.stdout),
                                       "retry-after"))
    assert.are.same({ "503", "503", "200" }, flaky)
    assert.are.equal("503", other)
    assert.are.equal(4, fs.hits["/flaky"])
  end)

  it("never answers /never (curl times out), and the handler ends when "
     .. "curl goes", function()
    local r, took, fs
    fs = with_server(function(s)
      r, took = curl { "--max-time", "1", s:url("/never") }
      h.wait_for("the handler to end", function() return s.open == 0 end,
                 500)
    end)
    assert.are.equal(28, r.code)
    assert.is_true(took >= 990 and took < 1800, "took " .. took .. " ms")
    assert.are.same({ 1, 1 }, { fs.connections, fs.hits["/never"] })
  end)

  it("breaks the protocol: a bad status line, a header without a colon, "
     .. "a bad chunk size, no response; and sends a valid chunked body",
     function()
    local malformed, no_colon, bad_chunk, nothing, chunked
    with_server(function(s)
      malformed = curl { s:url("/malformed-status") }
      no_colon = curl { s:url("/malformed-header") }
      bad_chunk = curl { s:url("/bad-chunk") }
      nothing = curl { s:url("/close-no-response") }
      chunked = curl { "-v", s:url("/chunked?chunks=3") }
    end)
    -- curl 7.88 takes a status line that is not one for another version.
    assert.are.equal(1, malformed.code)  -- CURLE_UNSUPPORTED_PROTOCOL
    assert.is_truthy(malformed.stderr:find("Unsupported HTTP version", 1,
                                           true), malformed.stderr)
    assert.are.equal(8, no_colon.code)   -- CURLE_WEIRD_SERVER_REPLY
    assert.is_truthy(no_colon.stderr:find("Header without colon", 1, true),
                     no_colon.stderr)
    assert.are.equal(56, bad_chunk.code) -- CURLE_RECV_ERROR
    assert.is_truthy(bad_chunk.stderr:find("chunk", 1, true), bad_chunk.stderr)
    assert.are.equal(52, nothing.code)   -- CURLE_GOT_NOTHING
    assert.are.equal(0, chunked.code, chunked.stderr)
    assert.are.equal("chunk 1\nchunk 2\nchunk 3\n", chunked.stdout)
    assert.is_truthy(chunked.stderr:find("Transfer-Encoding: chunked", 1,
                                         true))
  end)

  it("in no_read mode, holds connections unread: a large body cannot be "
     .. "sent", function()
    local r, fs
    local n = 32 * 1024 * 1024
    fs = with_server(function(s)
      local dir = h.tmpdir()
      h.write_file(dir .. "/body", string.rep("x", n))
      r = curl { "--max-time", "0.5", "-w", "%{size_upload}",
                 "-H", "Expect:", "--data-binary", "@" .. dir .. "/body",
                 s:url("/echo") }
      h.rmrf(dir)
      assert.are.equal(1, s.open)
    end, { mode = "no_read" })
    assert.are.equal(28, r.code)
    assert.is_true(tonumber(r.stdout) < n, r.stdout)
    assert.are.same({ 1, 0, 0 }, { fs.connections, fs.requests, fs.open })
  end)

  it("close() ends the connections still open, and every handler",
     function()
    local got, why, fs
    run(function()
      fs = fault.start()
      local conns = {}
      for i = 1, 3 do
        conns[i] = assert(sprun.tcp.connect("127.0.0.1", fs.port))
      end
      assert(conns[1]:write("GET /never HTTP/1.1\r\nHost: x\r\n\r\n"))
      assert(conns[2]:write("GET /slow-headers?ms=60000 HTTP/1.1\r\n"
                            .. "Host: x\r\n\r\n"))
      assert(conns[3]:write("GET /drip?bytes=1000&ms=60000 HTTP/1.1\r\n"
                            .. "Host: x\r\n\r\n"))
      h.wait_for("3 requests", function() return fs.requests == 3 end, 1000)
      fs:close()
      fs:close() -- idempotent
      got, why = conns[1]:read()
      for i = 1, 3 do
        conns[i]:close()
      end
    end)
    h.assert_no_handles()
    assert.is_nil(got)
    assert.are.equal("closed", sprun.error_kind(why))
    assert.are.same({ 3, 0 }, { fs.connections, fs.open })
    local misuse_ok, misuse = pcall(fault.start, { mode = "silent" })
    assert.is_false(misuse_ok)
    assert.is_truthy(misuse:find("option 'mode' must be", 1, true))
  end)
end)
