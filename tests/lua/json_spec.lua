-- sprun.telemetry.json: the encoder of the sinks and traces (sorted keys,
-- valid UTF-8, placeholders instead of errors, numbers that read back the
-- same, strings escaped by lua-cjson) and lua-cjson's decoder. Every text
-- it writes is read back with lua-cjson itself.
local sprun = require "sprun"
local json = require "sprun.telemetry.json"
local cjson = require "cjson"

describe("json.encode", function()
local encode = json.encode

  it("escapes every control character, quote and backslash per RFC 8259",
    function()
      local all = {}
      for i = 0, 127 do all[#all + 1] = string.char(i) end
      local s = table.concat(all)
      local text = encode(s)
      assert.are.equal(s, cjson.decode(text))
      assert.is_nil(text:sub(2, -2):find("[%z\1-\31\127]"))
      assert.are.equal('"a\\"b\\\\c\\n\\t\\u0000\\u001f"',
                       encode('a"b\\c\n\t\0\31'))
    end)

  it("keeps valid UTF-8 and replaces invalid bytes with U+FFFD", function()
    assert.are.equal('"héllo ✓ 😀"', encode("héllo ✓ 😀"))
    for _, bad in ipairs { "\255", "\192\175", "\237\160\128", "\226\130",
                           "\244\144\128\128" } do
      local text = encode("a" .. bad .. "b")
      assert.is_truthy(text:find("\239\191\189", 1, true), bad)
      assert.are.equal("string", type(cjson.decode(text)))
    end
  end)

  it("writes numbers that read back the same, null for nan and inf",
    function()
      assert.are.equal("[1,-2,0.1,1.5e+300,3.14159,null,null,null]",
        encode({ 1, -2, 0.1, 1.5e300, 3.14159, 0 / 0, math.huge,
                 -math.huge }))
      for _, v in ipairs { 1 / 3, 2 ^ 53 + 2, -1e-300, 123456789.125 } do
        assert.are.equal(v, cjson.decode(encode({ v }))[1])
      end
      assert.are.equal("9007199254740993", encode(9007199254740993ULL))
      assert.are.equal("-5", encode(-5LL))
    end)

  it("writes booleans, nil, nested tables, arrays and sorted objects",
    function()
      assert.are.equal('{"a":[true,false,{"x":[1,"y"]}],"b":{},"c":"s"}',
        encode({ c = "s", a = { true, false, { x = { 1, "y" } } }, b = {} }))
      assert.are.equal("null", encode(nil))
      assert.are.equal('{"1":"a","3":"c"}', encode({ [1] = "a", [3] = "c" }))
      assert.are.equal('{"1":"a","x":"b"}', encode({ "a", x = "b" }))
    end)

  it("writes error objects as their string form", function()
    assert.are.equal('{"e":"timeout: too slow","k":"circuit_open"}',
      encode({ e = sprun.error("timeout", "too slow"),
               k = sprun.error("circuit_open") }))
  end)

  it("never raises on cycles, functions, coroutines or userdata",
    function()
      local t = { name = "loop" }
      t.self = t
      t.list = { t, 1 }
      local text = encode({ t = t, f = print, co = coroutine.create(print),
                            u = io.stdout, deep = (function()
                              local d = {}
                              for _ = 1, 100 do d = { d } end
                              return d
                            end)() })
      local o = cjson.decode(text)
      assert.are.same({ name = "loop", self = "<cycle>",
                        list = { "<cycle>", 1 } }, o.t)
      assert.are.same({ "<function>", "<thread>", "<userdata>" },
                      { o.f, o.co, o.u })
      assert.matches("<too deep>", text, 1, true)
      -- A table met twice but not inside itself is no cycle.
      local shared = { 1 }
      assert.are.equal("[[1],[1]]", encode({ shared, shared }))
    end)

  it("uses the string form of a table with __tostring, even one that "
     .. "raises", function()
    local bad = setmetatable({}, { __tostring = function() error("x") end })
    assert.are.equal('"<table>"', encode(bad))
  end)
end)

describe("json.encode, more", function()
  it("sorts the keys of every object, whatever order pairs() gives",
    function()
      local t = {}
      for _, k in ipairs { "zeta", "alpha", "mu", "beta", "omega", "chi",
                           "eta", "delta", "iota", "kappa", "nu", "xi",
                           "pi", "rho" } do
        t[k] = #k
      end
      local text = json.encode({ outer = t, a = { t } })
      local keys = {}
      for k in text:gmatch('"(%a+)":%d') do keys[#keys + 1] = k end
      local sorted = {}
      for i = 1, 14 do sorted[i] = keys[i] end
      table.sort(sorted)
      assert.are.same(sorted, { unpack(keys, 1, 14) })
      assert.are.same(cjson.decode(text), { outer = t, a = { t } })
    end)

  it("an encode from inside a __tostring gets its own buffers", function()
    local inner = setmetatable({}, { __tostring = function()
      return json.encode({ b = 2, a = { 1 } })
    end })
    assert.are.equal('{"x":"{\\"a\\":[1],\\"b\\":2}","y":[true]}',
                     json.encode({ x = inner, y = { true } }))
    -- and the outer buffers are whole again afterwards
    assert.are.equal('[1,"a"]', json.encode({ 1, "a" }))
  end)

  it("escapes what lua-cjson escapes, and reads back the same", function()
    local s = 'a/b "q" \\ tab\t nl\n ctl\1 é'
    assert.are.equal(s, cjson.decode(json.encode(s)))
    assert.are.equal('"plain text"', json.encode("plain text"))
  end)
end)

describe("sprun.telemetry.json_encode", function()
  it("is json.encode", function()
    local v = { b = { 1, "x" }, a = sprun.error("timeout", "slow") }
    assert.are.equal('{"a":"timeout: slow","b":[1,"x"]}',
                     sprun.telemetry.json_encode(v))
    assert.are.equal(json.encode(v), sprun.telemetry.json_encode(v))
  end)
end)

describe("json.decode", function()
  it("gives the value of JSON text", function()
    assert.are.same({ a = { 1, 2 }, b = "x" },
                    json.decode('{"a":[1,2],"b":"x"}'))
    assert.are.equal(json.null, json.decode("null"))
  end)

  it("gives nil and lua-cjson's error for text that is not JSON", function()
    local v, err = json.decode('{"a":')
    assert.is_nil(v)
    assert.matches("Expected", err)
  end)
end)
