-- Pools declared in a policy file: started by reg:pool(name), sharing the
-- file's breakers and monitors by name, and changed by a reload: resized,
-- rolled one worker at a time when the command or env changes, drained
-- when dropped, and refused when a fixed option changes.
local sprun = require "sprun"
local policy = require "sprun.policy"
local h = require "helpers"

local WORKER = h.root .. "/tests/lua/pool/worker.lua"

local function file(body)
  return "return { " .. body:gsub("CMD", ("{ %q, %q }"):format(h.sprun,
                                                            WORKER)) .. " }"
end

describe("policy files: pools", function()
  local dir, path
  before_each(function()
    dir = h.tmpdir()
    path = dir .. "/policies.lua"
  end)
  after_each(function()
    h.rmrf(dir)
    assert.are.same({}, h.live_children())
  end)

  local function write(body) h.write_file(path, file(body)) end

  it("starts a declared pool at its first use, with the file's breaker "
     .. "and monitor", function()
    write [[
breakers = { db = { failure_threshold = 1 } },
health_monitors = { crashes = { max_crashes = 5 } },
pools = { py = { cmd = CMD, size = 2, breaker = "db", health = "crashes" } },
]]
    local r = h.run_tasks(function()
      local reg = assert(policy.load(path))
      local names = reg:names().pools
      local p = assert(reg:pool("py"))
      local same = reg:pool("py") == p
      local v = p:call("echo", "hi")
      local shared = p:breaker() == reg:breaker("db")
                     and p:health_monitor() == reg:health_monitor("crashes")
      local _, missing = reg:pool("nope")
      local info = { names, same, v, shared, p:name(), #p:workers(),
                     missing.kind, missing.message }
      p:stop()
      return info
    end)
    assert.are.same({ { "py" }, true, "hi", true, "py", 2, "not_found",
      "policy.pool: no pools named \"nope\" in " .. path .. " (pools: py)" },
      r)
  end)

  it("reports a bad pool entry with the file, the key path and the rule",
    function()
    for _, c in ipairs {
      { 'pools = { py = { cmd = CMD, size = 0 } }',
        "pools.py.size must be an integer >= 1, got 0" },
      { 'pools = { py = { cmd = CMD, sise = 2 } }',
        "pools.py: unknown key 'sise' (did you mean 'size'?)" },
      { 'pools = { py = { cmd = CMD, breaker = "db" } }',
        'pools.py.breaker names no entry of breakers (breakers: none), got "db"' },
      { 'pools = { py = { cmd = CMD, health = { max_crashes = 1 } } }',
        "pools.py.health must be the name of an entry of health_monitors "
        .. "(a policy file shares them by name), got table" },
    } do
      write(c[1])
      local reg, err = policy.load(path)
      assert.is_nil(reg)
      assert.are.equal("policy_error", err.kind)
      assert.matches(path .. ": " .. c[2], err.message, 1, true)
    end
  end)

  it("a reload resizes a live pool: new slots start, dropped ones finish "
     .. "what they run first", function()
    write 'pools = { py = { cmd = CMD, size = 2 } }'
    local r = h.run_tasks(function()
      local reg = assert(policy.load(path))
      local p = assert(reg:pool("py"))
      h.wait_for("2 ready", function() return p:stats().ready == 2 end)
      write 'pools = { py = { cmd = CMD, size = 3 } }'
      assert(reg:reload())
      h.wait_for("3 ready", function() return p:stats().ready == 3 end)
      -- A call on the last slot, then a shrink to 1 while it runs.
      local ts = {}
      for i = 1, 3 do
        ts[i] = sprun.spawn(function() return p:call("sleep", 300) end)
      end
      sprun.sleep(50)
      write 'pools = { py = { cmd = CMD, size = 1 } }'
      assert(reg:reload())
      local got = {}
      for i = 1, 3 do got[i] = ts[i]:await() end
      h.wait_for("1 worker", function() return #p:workers() == 1 end)
      local s = p:stats()
      p:stop()
      return { got, s.size, s.errors, s.crashes }
    end)
    assert.are.same({ { 300, 300, 300 }, 1, {}, {} }, r)
  end)

  it("a reload with a new env rolls the workers one at a time, calls "
     .. "going on throughout", function()
    write 'pools = { py = { cmd = CMD, size = 2, env = { GEN = "1" } } }'
    local r = h.run_tasks(function()
      local reg = assert(policy.load(path))
      local p = assert(reg:pool("py"))
      h.wait_for("2 ready", function() return p:stats().ready == 2 end)
      local before = {}
      for _, w in ipairs(p:workers()) do before[w.pid] = true end
      write 'pools = { py = { cmd = CMD, size = 2, env = { GEN = "2" } } }'
      assert(reg:reload())
      local most, errs, gens = 0, 0, {}
      h.wait_for("the roll", function()
        local v, err = p:call("env", "GEN")
        if v == nil then errs = errs + 1 else gens[v] = true end
        local n = #p:workers()
        if n > most then most = n end
        return p:stats().recycled == 2
      end, 10000)
      local seen = {}
      for _ = 1, 6 do seen[p:call("env", "GEN")] = true end
      local old_left = false
      for _, w in ipairs(p:workers()) do
        if before[w.pid] then old_left = true end
      end
      local s = p:stats()
      p:stop()
      return { errs, most <= 3, seen, old_left, s.errors, s.crashes }
    end)
    assert.are.same({ 0, true, { ["2"] = true }, false, {}, {} }, r)
  end)

  it("refuses a reload that changes a pool's channel, and changes nothing",
    function()
    write 'pools = { py = { cmd = CMD, size = 1 } }'
    local r = h.run_tasks(function()
      local reg = assert(policy.load(path))
      local p = assert(reg:pool("py"))
      write 'pools = { py = { cmd = CMD, size = 2, channel = "stdio" } }'
      local ok, err = reg:reload()
      local v = p:call("echo", 1)
      local n = p:stats().size
      p:stop()
      return { ok, err.message, v, n }
    end)
    assert.are.same({ nil, path .. ": pools.py: option 'channel' cannot "
      .. "change on a live pool (fd3 to stdio): stop the pool and start it "
      .. "again", 1, 1 }, r)
  end)

  it("a pool dropped from the file drains and stops", function()
    write 'pools = { py = { cmd = CMD, size = 1 } }'
    local r = h.run_tasks(function()
      local reg = assert(policy.load(path))
      local p = assert(reg:pool("py"))
      local t = sprun.spawn(function() return p:call("sleep", 200) end)
      sprun.sleep(50)
      write 'pools = {}'
      assert(reg:reload())
      local v = t:await()
      h.wait_for("the stop", function() return p:stats().state == "stopped" end)
      local _, gone = reg:pool("py")
      return { v, gone.kind }
    end)
    assert.are.same({ 200, "not_found" }, r)
  end)
end)
