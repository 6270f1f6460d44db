-- Four sprun processes in one fleet on a real redis-server: each node
-- (tests/lua/fleet_node.lua, a pool worker of its own, with its own
-- node_id) has a breaker "dep" in the fleet and calls its dependency
-- every 20 ms; the spec turns the dependency down and up node by node and
-- watches what each node's breaker does, on the clock all the processes
-- share (CLOCK_MONOTONIC).
--
--   one node's failures open that node only;
--   a second node's make the quorum (2 of 4 live, min_share 0.5): every
--   node opens, the others with reason "fleet", within 2 intervals;
--   after the reset timeout exactly one node half-opens (the probe lease);
--   its probe succeeds and every node closes within one interval;
--   force_open from one node reaches all, release closes all.
-- No node process and no redis-server is left afterwards (by pid).
local h = require "helpers"
local sprun = require "sprun"
local redisd = require "redisd"

local INTERVAL = 500
local RESET = 3000
local NODES = 4
-- What a machine's noise may add to a bound (a timer firing late,
-- the pool's pipe, an ASan build).
local SLACK = 150

-- FLEET_FIGURES=1 prints the measured delays as TAP comments.
local function figure(fmt, ...)
  if os.getenv("FLEET_FIGURES") then
    print("# " .. fmt:format(...))
  end
end

local function start_nodes(srv)
  local nodes = {}
  for i = 1, NODES do
    local pool = assert(sprun.pool.start {
      name = "node" .. i, size = 1,
      cmd = { h.sprun, h.root .. "/tests/lua/fleet_node.lua" } })
    local id = "n" .. i
    local r = assert(pool:call("start", { url = srv:url(), node_id = id,
      interval_ms = INTERVAL, reset_timeout_ms = RESET }))
    nodes[i] = { pool = pool, id = id, pid = r.pid }
  end
  return nodes
end

-- Every node calls its dependency every 20 ms until stop() is called.
local function drive(nodes)
  local running = true
  local tasks = {}
  for i, n in ipairs(nodes) do
    tasks[i] = sprun.spawn(function()
      while running do
        assert(n.pool:call("call", 1))
        sprun.sleep(20)
      end
      return true
    end)
  end
  return function()
    running = false
    for _, t in ipairs(tasks) do
      assert(t:await())
    end
  end
end

local function state(n)
  return assert(n.pool:call("state"))
end

local function states(nodes)
  local out = {}
  for i, n in ipairs(nodes) do
    out[i] = state(n).state
  end
  return out
end

-- The node's transitions named `name` at or after time `since`.
local function events(n, name, since)
  local out = {}
  for _, e in ipairs(state(n).events) do
    if e.name == name and e.at >= (since or 0) then
      out[#out + 1] = e
    end
  end
  return out
end

local function all(nodes, value)
  for _, s in ipairs(states(nodes)) do
    if s ~= value then
      return false
    end
  end
  return true
end

describe("sprun.fleet across four processes", function()
  it("opens on the quorum, not on one node; one probe for the fleet; "
     .. "all close within an interval of its success; force_open and "
     .. "release reach every node", function()
    local pids = {}
    redisd.with(nil, function(srv)
      local nodes = start_nodes(srv)
      for i, n in ipairs(nodes) do pids[i] = n.pid end
      h.wait_for("4 live nodes", function()
        for _, n in ipairs(nodes) do
          local v = state(n).view
          if v == nil or v.live_nodes ~= NODES then return false end
        end
        return true
      end, 5000)
      local stop = drive(nodes)
      local n1, n2, n3, n4 = unpack(nodes)

      -- One node's dependency fails: it opens, alone, for 2 intervals
      -- (and the fleet opens before its own reset timeout passes).
      assert(n1.pool:call("dep", "down"))
      h.wait_for("n1 open", function() return state(n1).state == "open" end,
                 2000)
      sprun.sleep(2 * INTERVAL)
      assert.are.same({ "open", "closed", "closed", "closed" },
                      states(nodes))
      local opened1 = events(n1, "opened")
      assert.are.same({ "failures" }, { opened1[1].reason })
      for _, n in ipairs { n2, n3, n4 } do
        assert.are.same({}, events(n, "opened"), n.id)
        local v = state(n).view
        assert.are.same({ "closed", 1 }, { v.state, v.open_votes }, n.id)
      end

      -- A second node's make the quorum: every node opens.
      assert(n2.pool:call("dep", "down"))
      h.wait_for("all open", function() return all(nodes, "open") end,
                 3000)
      local t2 = events(n2, "opened")[1]
      assert.are.equal("failures", t2.reason)
      for _, n in ipairs { n3, n4 } do
        local e = events(n, "opened")
        assert.are.equal(1, #e, n.id)
        assert.are.equal("fleet", e[1].reason, n.id)
        figure("%s opened %.0f ms after n2", n.id, e[1].at - t2.at)
        assert.is_true(e[1].at - t2.at <= 2 * INTERVAL + SLACK,
                       n.id .. " opened " .. e[1].at - t2.at
                       .. " ms after n2")
      end

      -- The dependency comes back. After the reset timeout one node takes
      -- the lease and half-opens; the others stay open until it is done.
      local back = h.mono_ms()
      for _, n in ipairs(nodes) do assert(n.pool:call("dep", "up")) end
      local holder
      h.wait_for("a probe", function()
        for _, n in ipairs(nodes) do
          if #events(n, "half_open", back) > 0 then
            holder = n
            return true
          end
        end
        return false
      end, RESET + 3000)
      h.wait_for("all closed", function() return all(nodes, "closed") end,
                 3000)
      local probe_ok = events(holder, "closed", back)
      assert.are.equal(1, #probe_ok, holder.id)
      for _, n in ipairs(nodes) do
        if n ~= holder then
          assert.are.same({}, events(n, "half_open", back), n.id)
          local e = events(n, "closed", back)
          assert.are.equal(1, #e, n.id)
          figure("%s closed %.0f ms after the probe", n.id,
                 e[1].at - probe_ok[1].at)
          assert.is_true(e[1].at - probe_ok[1].at <= INTERVAL + SLACK,
                         n.id .. " closed " .. e[1].at - probe_ok[1].at
                         .. " ms after the probe")
        end
      end

      -- The operator's word from one node reaches every node.
      local forced = h.mono_ms()
      assert(n3.pool:call("force_open"))
      h.wait_for("all forced open", function()
        for _, n in ipairs(nodes) do
          if #events(n, "forced_open", forced) ~= 1 then return false end
        end
        return true
      end, 3000)
      for _, n in ipairs(nodes) do
        local e = events(n, "forced_open", forced)[1]
        figure("%s forced open %.0f ms after", n.id, e.at - forced)
        assert.is_true(e.at - forced <= INTERVAL + SLACK,
                       n.id .. " forced open " .. e.at - forced .. " ms")
      end
      local r = assert(n2.pool:call("call", 1))
      assert.are.same({ 0, 1 }, { r.ok, r.rejected })
      assert(n3.pool:call("release"))
      local released = h.mono_ms()
      h.wait_for("all closed after release",
                 function() return all(nodes, "closed") end, 3000)
      assert.is_true(h.mono_ms() - released <= INTERVAL + SLACK + 100)
      stop()
      for _, n in ipairs(nodes) do
        assert(n.pool:call("close"))
        n.pool:stop()
      end
    end)
    for i, pid in ipairs(pids) do
      assert.is_false(h.alive(pid), "node " .. i .. " (" .. pid
                      .. ") is left")
    end
  end)
end)
