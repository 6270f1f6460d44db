-- sprun.trace: a run's telemetry as a Chrome Trace Event Format document,
-- under virtual time (exact timestamps), checked as data and as the JSON
-- file Perfetto reads (decoded with cjson): a breaker's transitions as
-- instants and a counter on its own track, a ring that drops its oldest
-- entries and says how many, detaching at stop, and bad input.
local sprun = require "sprun"
local h = require "helpers"
local cjson = require "cjson"
local telemetry = require "sprun.telemetry"

local vrun = h.vrun
local trace = sprun.trace

local function fail()
  return nil, sprun.error("unavailable", "down")
end

local function ok()
  return "fine"
end

-- A breaker named db taken through opened (now), half_open and closed
-- (1000 ms later), under virtual time.
local function breaker_story()
  local cb = sprun.circuit_breaker.start_link {
    name = "db", failure_threshold = 2, reset_timeout_ms = 1000,
  }
  cb:call(fail)
  cb:call(fail)
  sprun.sleep(1000)
  assert(cb:call(ok) == "fine")
end

-- The document's events of phase ph on the track labelled label.
local function on_track(doc, label, ph)
  local tid
  for _, e in ipairs(doc.traceEvents) do
    if e.ph == "M" and e.name == "thread_name" and e.args.name == label then
      tid = e.tid
    end
  end
  assert(tid, "no track " .. label)
  local out = {}
  for _, e in ipairs(doc.traceEvents) do
    if e.tid == tid and e.ph == ph then
      out[#out + 1] = e
    end
  end
  return out
end

describe("sprun.trace", function()
  it("records a breaker's transitions as instants and a state counter on "
     .. "its track, at the loop's times in µs", function()
    local doc
    vrun(function()
      sprun.sleep(250) -- times count from the trace's start
      local t = trace.start()
      breaker_story()
      doc = t:stop()
    end)
    local names, ts = {}, {}
    for _, e in ipairs(on_track(doc, "circuit_breaker db", "i")) do
      if e.name == "opened" or e.name == "half_open" or e.name == "closed" then
        names[#names + 1] = e.name
        ts[#ts + 1] = e.ts
      end
    end
    assert.are.same({ "opened", "half_open", "closed" }, names)
    assert.are.same({ 0, 1000000, 1000000 }, ts)
    local states = {}
    for _, e in ipairs(on_track(doc, "circuit_breaker db", "C")) do
      states[#states + 1] = e.args.state
      assert.are.equal("breaker db", e.name)
    end
    assert.are.same({ 2, 1, 0 }, states)
    assert.are.equal(0, doc.otherData.dropped_events)
    assert.are.equal("sprun", doc.traceEvents[1].args.name)
  end)

  it("writes a file that decodes as JSON: every track named, timestamps "
     .. "in order on each", function()
    local path = os.tmpname()
    vrun(function()
      local t = trace.start { path = path }
      breaker_story()
      assert(t:stop())
    end)
    local f = assert(io.open(path))
    local doc = cjson.decode(f:read("*a"))
    f:close()
    os.remove(path)
    local named, last, instants = {}, {}, 0
    for _, e in ipairs(doc.traceEvents) do
      if e.ph == "M" and e.name == "thread_name" then
        named[e.tid] = true
      elseif e.ph == "i" or e.ph == "C" then
        assert.is_true(named[e.tid], "track " .. e.tid .. " unnamed")
        assert.is_true(e.ts >= (last[e.tid] or 0))
        last[e.tid] = e.ts
        if e.ph == "i" then instants = instants + 1 end
      end
    end
    -- 2 failures, 1 success, 3 transitions, each one event at least.
    assert.is_true(instants >= 6, "only " .. instants .. " instants")
    assert.are.equal(instants, doc.otherData.recorded)
    assert.are.same({ "circuit_breaker db" }, trace.track_names(doc))
  end)

  it("keeps the newest `buffer` events and counts what it dropped",
     function()
    local doc
    vrun(function()
      local t = trace.start { buffer = 3 }
      for i = 1, 5 do
        telemetry.emit("sprun.hedge.started", { attempt = i },
                       { name = "h" })
      end
      doc = t:stop()
    end)
    local attempts = {}
    for _, e in ipairs(on_track(doc, "hedge h", "i")) do
      attempts[#attempts + 1] = e.args.attempt
    end
    assert.are.same({ 3, 4, 5 }, attempts)
    assert.are.equal(2, doc.otherData.dropped_events)
    assert.are.equal(3, doc.otherData.buffer)
  end)

  it("what took time is an async slice ending at its event: overlapping "
     .. "ones on one track, each b with its e, ids unique", function()
    local doc
    vrun(function()
      local t = trace.start()
      local md = { origin = "http://127.0.0.1:1", method = "GET" }
      sprun.sleep(300)
      telemetry.emit("sprun.http.request", { duration_ms = 250 }, md)
      sprun.sleep(100)
      telemetry.emit("sprun.http.request", { duration_ms = 200 }, md)
      telemetry.emit("sprun.http.request", { duration_ms = 0 }, md)
      doc = t:stop()
    end)
    local got = h.trace_structure(doc)
    assert.are.same({ "http http://127.0.0.1:1 request 50000-300000",
                      "http http://127.0.0.1:1 request 200000-400000" }, got)
  end)

  it("stops recording at stop; a second stop gives the same document",
     function()
    vrun(function()
      local t = trace.start()
      telemetry.emit("sprun.hedge.started", { attempt = 1 }, { name = "h" })
      local doc = t:stop()
      for _, r in ipairs(telemetry.list_handlers()) do
        assert.are_not.equal(t.id, r.id)
      end
      telemetry.emit("sprun.hedge.started", { attempt = 2 }, { name = "h" })
      assert.are.same(doc, t:stop())
      assert.are.equal(1, doc.otherData.recorded)
    end)
  end)

  it("keeps copies of plain values, never the emitter's tables", function()
    local doc
    vrun(function()
      local t = trace.start()
      local m = { attempt = 1, nested = { 1 } }
      telemetry.emit("sprun.hedge.started", m,
                     { name = "h", err = sprun.error("timeout", "slow") })
      m.attempt = 99
      doc = t:stop()
    end)
    local e = on_track(doc, "hedge h", "i")[1]
    assert.are.equal(1, e.args.attempt)
    assert.is_nil(e.args.nested)
    assert.are.equal("timeout: slow", e.args.err)
  end)

  it("a path that cannot be written gives nil, err kind trace_failed",
     function()
    vrun(function()
      local t = trace.start { path = "/nonexistent-dir/t.json" }
      local doc, err = t:stop()
      assert.is_nil(doc)
      assert.are.equal("trace_failed", err.kind)
      assert.matches("cannot write /nonexistent%-dir/t%.json", err.message)
    end)
  end)

  it("refuses bad options with a message naming what is allowed", function()
    local cases = {
      { 5, "sprun.trace.start: options must be a table or nil, got 5" },
      { { path = "" }, "sprun.trace.start: path must be a non-empty string "
                       .. "or nil, got \"\"" },
      { { buffer = 0 }, "sprun.trace.start: buffer must be an integer "
                        .. "between 1 and 10000000, got 0" },
      { { buffer = 1.5 }, "sprun.trace.start: buffer must be an integer "
                          .. "between 1 and 10000000, got 1.5" },
      { { buffr = 3 }, "sprun.trace.start: unknown option 'buffr' "
                       .. "(allowed: path, buffer)" },
    }
    for _, c in ipairs(cases) do
      local okc, err = pcall(function() trace.start(c[1]) end)
      assert.is_false(okc)
      assert.are.equal("trace_spec.lua", err:match("([%w_]+%.lua):%d+:"))
      assert.are.equal(c[2], err:gsub("^.-:%d+: ", ""))
    end
  end)
end)
