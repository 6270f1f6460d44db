-- sprun.pool.protocol: JSON encoding of requests, framing (ndjson, lp4),
-- and the incremental reader, fed the way a socket delivers: whole, byte
-- by byte, in random chunks, and with messages far larger than a chunk.
local protocol = require "sprun.pool.protocol"

-- Feeds `data` to a new reader for `framing` in chunks of the sizes
-- `sizes()` gives; returns the messages, the bad ones and the fatal error.
local function read_all(framing, data, sizes)
  local got, bad, fatal = {}, {}, nil
  local r = protocol.reader(framing, function(m) got[#got + 1] = m end,
    function(why, text) bad[#bad + 1] = why .. ": " .. text end,
    function(why) fatal = why end)
  local at = 1
  while at <= #data do
    local n = sizes and sizes() or #data
    r:feed(data:sub(at, at + n - 1))
    at = at + n
  end
  return got, bad, fatal, r:pending()
end

local function frames(framing, list)
  local out = {}
  for i, v in ipairs(list) do
    out[i] = protocol.frame(framing, assert(protocol.encode(v)))
  end
  return table.concat(out)
end

describe("sprun.pool.protocol", function()
  local big = string.rep("é\n\t\"x😀", 200000) -- ~2.4 MB
  local msgs = { { id = 1, ok = "a\nb" }, { id = 2, ok = big },
                 { ready = true }, { id = 3, error = { kind = "k" } } }

  for _, framing in ipairs { "ndjson", "lp4" } do
    describe(framing, function()
      it("reads messages whole, byte by byte and in random chunks",
        function()
        local data = frames(framing, msgs)
        math.randomseed(7)
        for _, sizes in ipairs {
          function() return #data end,
          function() return math.random(1, 70000) end,
          function() return 65536 end,
          function() return 4 end,
        } do
          local got, bad, fatal, pending = read_all(framing, data, sizes)
          assert.are.same({ msgs, {}, nil, 0 },
                          { got, bad, fatal, pending })
        end
        -- Byte by byte (the small messages only, for time).
        local small = { msgs[1], msgs[3], msgs[4] }
        local got, bad, fatal, pending = read_all(framing,
          frames(framing, small), function() return 1 end)
        assert.are.same({ small, {}, nil, 0 }, { got, bad, fatal, pending })
        -- A message begun and not finished is pending.
        local _, _, _, left = read_all(framing, data:sub(1, 1000))
        assert.is_true(left > 0)
      end)

      it("says what is not JSON or not an object, and goes on", function()
        local data = protocol.frame(framing, "nope")
          .. protocol.frame(framing, "[1]")
          .. frames(framing, { { id = 9, ok = 1 } })
        local got, bad, fatal = read_all(framing, data,
                                         function() return 3 end)
        assert.are.same({ { id = 9, ok = 1 } }, got)
        assert.are.same({ "not JSON: nope", "not a JSON object: [1]" }, bad)
        assert.is_nil(fatal)
      end)

      it("gives up once on a message past MAX_MESSAGE bytes", function()
        local saved = protocol.MAX_MESSAGE
        protocol.MAX_MESSAGE = 1000
        local long = string.rep("x", 1500)
        local data = framing == "lp4"
          and "\0\0\5\220" .. long or long
        local got, _, fatal = read_all(framing, data,
                                       function() return 100 end)
        protocol.MAX_MESSAGE = saved
        assert.are.same({}, got)
        assert.matches(framing == "lp4" and "a frame of 1500 bytes"
                       or "a line longer than 1000 bytes", fatal, 1, true)
      end)
    end)
  end

  it("frames lp4 with a 4-byte big-endian length", function()
    assert.are.equal("\0\0\1\0" .. string.rep("a", 256),
                     protocol.frame("lp4", string.rep("a", 256)))
    assert.are.equal("{}\n", protocol.frame("ndjson", "{}"))
  end)

  it("encodes numbers so that they read back the same, and refuses what "
     .. "JSON cannot hold", function()
    for _, v in ipairs { 0.1 + 0.2, 2 ^ 53 - 1, -1.5e-300, 1e300, 12 } do
      local s = assert(protocol.encode(v))
      assert.are.equal(v, require("cjson").decode(s))
    end
    assert.are.same({ "[1,null,3]" }, { protocol.encode({ 1, nil, 3 }) })
    local _, why = protocol.encode({ f = print })
    assert.matches("function", why)
    local _, why2 = protocol.encode({ 1, x = 2 })
    assert.is_string(why2)
  end)

  it("walks tables without ITERN, which Debian 12's LuaJIT can end early "
     .. "in a trace (LuaJIT #827)", function()
    local h = require "helpers"
    for _, f in ipairs { "lua/sprun/pool/protocol.lua",
                         "lua/sprun/telemetry/json.lua" } do
      local r = h.run("luajit -bl " .. h.shell_quote(h.root .. "/" .. f))
      assert.are.equal(0, r.code, r.stderr)
      assert.is_truthy(r.stdout:find("ITERC", 1, true), f)
      assert.is_falsy(r.stdout:find("ITERN", 1, true), f)
    end
  end)
end)
