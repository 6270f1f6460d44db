-- Rules of sprun's own Lua that a reader cannot see broken.
--
-- No loop over `pairs` or `next` by those names (tables.lua says why: the
-- LuaJIT of Debian 12 can end such a loop early once its trace is
-- blacklisted, LuaJIT issue #827).

local h = require "helpers"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function lua_files(dir)
  local p = assert(io.popen("find " .. dir .. " -name '*.lua' | sort"))
  local out = {}
  for line in p:lines() do
    out[#out + 1] = line
  end
  p:close()
  return out
end

-- "line N: text" for each loop of `src` over pairs or next by name.
local function iterating_loops(src)
  local found, n = {}, 0
  for line in (src .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local code = line:gsub("%-%-.*", "")
    if code:find("%f[%w_]in%s+pairs%s*%(") or code:find("%f[%w_]in%s+next%s*,")
    then
      found[#found + 1] = "line " .. n .. ": " .. line
    end
  end
  return found
end

describe("lint", function()
  it("finds a loop over pairs or next and leaves each_key alone", function()
    assert.are.same({ "line 1: for k in pairs(t) do end",
                      "line 3: for k, v in next, t do end" },
      iterating_loops("for k in pairs(t) do end\n"
                      .. "for k in each_key, t do end\n"
                      .. "for k, v in next, t do end\n"
                      .. "-- for k in pairs(t) do\n"
                      .. "for i, v in ipairs(t) do end\n"))
  end)

  it("no file of lua/sprun loops over pairs or next by name", function()
    local files = lua_files(h.root .. "/lua/sprun")
    assert.is_true(#files > 40)
    local bad = {}
    for _, path in ipairs(files) do
      for _, where in ipairs(iterating_loops(read(path))) do
        bad[#bad + 1] = path .. " " .. where
      end
    end
    assert.are.same({}, bad)
  end)

  it("a loop over each_key walks every key of LuaJIT #827's case", function()
    local each_key = next
    local t = { 1, 2, 3, 4, 5 }
    local tab = { a = t, b = t, c = t, d = t, e = t }
    local function f()
      for _ = 1, 100 do end
    end
    local short = 0
    for _ = 1, 100000 do
      f()
      local c = 0
      for _, v in each_key, tab do
        for _ in each_key, v do end
        c = c + 1
      end
      if c ~= 5 then
        short = short + 1
      end
    end
    assert.are.equal(0, short)
  end)
end)
