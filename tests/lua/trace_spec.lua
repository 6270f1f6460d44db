-- sprun.trace: a run's telemetry as a Chrome Trace Event Format document,
-- under virtual time (exact timestamps), checked as data and as the JSON
-- file Perfetto reads (decoded with cjson): a breaker's transitions as
-- instants and a counter on its own track, a ring that drops its oldest
-- entries and says how many, detaching at stop, and bad input; tasks as
-- async slices nested under their parent where the format allows it, the
-- tasks in flight and a pool's gauges as counters, a retry loop's and a
-- hedged call's events linked by a flow, backoffs as slices; and the
-- scheduler's hook, one field check while no tracer records.
local sprun = require "sprun"
local h = require "helpers"
local cjson = require "cjson"
local telemetry = require "sprun.telemetry"

local vrun = h.vrun
local trace = sprun.trace
local ex = sprun.executor
local kernel = require "sprun.sched.kernel"

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
  -- A parent spawning two children: a (100 ms, returns) and b (1000 ms,
  -- cancelled by the parent at 50 ms); the parent awaits a.
  local function family()
    local parent = sprun.spawn(function()
      local a = sprun.spawn(function() sprun.sleep(100) return 1 end)
      local b = sprun.spawn(function() sprun.sleep(1000) end)
      sprun.sleep(50)
      b:cancel()
      return a:await()
    end)
    assert(parent:await() == 1)
  end

  -- The task slices of doc: "b.ts-e.ts" by task id, with their b and e.
  local function task_slices(doc)
    local by, open = {}, {}
    for _, e in ipairs(doc.traceEvents) do
      if e.cat == "task" and e.ph == "b" then
        local id = e.args.task
        assert.are.equal("task " .. id, e.name)
        open[id] = e
      elseif e.cat == "task" and e.ph == "e" then
        local id = tonumber(e.name:match("^task (%d+)$"))
        local b = open[id]
        by[id] = { b = b, e = e, span = b.ts .. "-" .. e.ts }
      end
    end
    return by
  end

  -- The values of the tasks counter, each on the track "tasks".
  local function task_counter(doc)
    local out = {}
    local tid = on_track(doc, "tasks", "C")[1].tid
    for _, e in ipairs(doc.traceEvents) do
      if e.ph == "C" and e.name == "tasks" then
        out[#out + 1] = e.args.running
        assert.are.equal(tid, e.tid)
      end
    end
    return out
  end

  -- The ids of family()'s tasks in doc: parent, a, b (spawn order).
  local function family_ids(by)
    local ids = {}
    for id in pairs(by) do ids[#ids + 1] = id end
    table.sort(ids)
    return ids
  end

  it("tasks are async slices from spawn to finish: a child nests in its "
     .. "parent's id where it ends first, else has an id of its own naming "
     .. "its parent; outcomes; the tasks counter", function()
    local doc, main
    vrun(function()
      main = kernel.last_task_id()
      local t = trace.start()
      family()
      doc = t:stop()
    end)
    local slices = h.trace_structure(doc)
    local by = task_slices(doc)
    local ids = family_ids(by)
    assert.are.equal(3, #ids)
    local p, a, b = by[ids[1]], by[ids[2]], by[ids[3]]
    -- The main task began before the trace: no slice, the parent's parent.
    assert.are.same({ task = ids[1], parent = main }, p.b.args)
    assert.are.same({ task = ids[2], parent = ids[1] }, a.b.args)
    assert.are.same({ task = ids[3], parent = ids[1] }, b.b.args)
    assert.are.same({ "0-100000", "0-100000", "0-50000" },
                    { p.span, a.span, b.span })
    assert.are.same({ "ok", "ok", "cancelled" },
                    { p.e.args.outcome, a.e.args.outcome, b.e.args.outcome })
    -- a ends before the parent: nested (same id); b overlaps a, which is
    -- no child of it: an id of its own.
    assert.are.equal(p.b.id, a.b.id)
    assert.are_not.equal(p.b.id, b.b.id)
    assert.are.same({ "task " .. ids[3] .. " 0-50000",
                      "task " .. ids[2] .. " 0-100000",
                      "task " .. ids[1] .. " 0-100000" }, slices)
    assert.are.same({ 0, 1, 2, 3, 2, 1, 0 }, task_counter(doc))
    assert.are.same({ "tasks" }, trace.track_names(doc))
    assert.are.same({ 3, 3 }, { #on_track(doc, "tasks", "b"),
                                #on_track(doc, "tasks", "e") })
    for _, s in pairs(by) do
      assert.are.same({ "task", "task" }, { s.b.cat, s.e.cat })
    end
    assert.are.equal(6, doc.otherData.recorded)
  end)

  it("tasks count toward the ring: a task whose spawn was dropped begins "
     .. "where the recording does, the counter from its value there",
     function()
    local doc
    vrun(function()
      local t = trace.start { buffer = 4 }
      family()
      doc = t:stop()
    end)
    h.trace_structure(doc)
    local by = task_slices(doc)
    local ids = family_ids(by)
    local p, a, b = by[ids[1]], by[ids[2]], by[ids[3]]
    assert.are.same({ "0-100000", "0-100000", "0-50000" },
                    { p.span, a.span, b.span })
    assert.are.equal(p.b.id, a.b.id)
    assert.are_not.equal(p.b.id, b.b.id)
    assert.are.same({ 2, 3, 2, 1, 0 }, task_counter(doc))
    assert.are.same({ 2, 4 }, { doc.otherData.dropped_events,
                                doc.otherData.recorded })
  end)

  it("a task still running at stop ends with the recording, with no "
     .. "outcome; one that outlives its parent has an id of its own",
     function()
    local doc
    vrun(function()
      local t = trace.start()
      local orphan
      local parent = sprun.spawn(function()
        orphan = sprun.spawn(function() sprun.sleep(1000) end)
        sprun.sleep(10)
      end)
      parent:await()
      sprun.sleep(20)
      doc = t:stop()
      orphan:cancel()
    end)
    h.trace_structure(doc)
    local by = task_slices(doc)
    local ids = family_ids(by)
    local p, c = by[ids[1]], by[ids[2]]
    assert.are.same({ "0-10000", "0-30000" }, { p.span, c.span })
    assert.are.same({ "ok" }, { p.e.args.outcome })
    assert.is_nil(c.e.args)
    assert.are_not.equal(p.b.id, c.b.id)
    assert.are.equal(ids[1], c.b.args.parent)
    assert.are.same({ 0, 1, 2, 1 }, task_counter(doc))
  end)

  it("with no tracer the scheduler's hook is false, and spawning and "
     .. "finishing check that one field and nothing else", function()
    vrun(function()
      assert.is_false(kernel.state().trace_hook)
      local t = trace.start()
      assert.are.equal("function", type(kernel.state().trace_hook))
      local t2 = trace.start()
      t:stop()
      assert.are.equal("function", type(kernel.state().trace_hook))
      t2:stop()
      assert.is_false(kernel.state().trace_hook)
      local recorded = #t2:entries()
      sprun.spawn(function() end):await()
      assert.are.equal(recorded, #t2:entries())
    end)
    -- Set when a run begins, from what the last tracer left.
    vrun(function()
      assert.is_false(kernel.state().trace_hook)
    end)
    local function lines_of(path, from, to)
      local src = h.read_file(h.root .. "/" .. path)
      local body = src:match("\n" .. from .. "(.-\n)" .. to)
      assert(body, from .. " not found in " .. path)
      local out = {}
      for line in body:gmatch("([^\n]*)\n") do
        if line:find("trace_hook", 1, true) then
          out[#out + 1] = line:gsub("^%s+", "")
        end
      end
      return out
    end
    assert.are.same({ "if s.trace_hook then",
                      "s.trace_hook(id, parent and parent[ID] or false)" },
      lines_of("lua/sprun/sched/kernel.lua", "local function new_task",
               "end\n"))
    assert.are.same({},
      lines_of("lua/sprun/sched/kernel.lua", "local function spawn_in",
               "end\n"))
    assert.are.same({ "if s.trace_hook then",
                      "s.trace_hook(task[ID], parent and parent[ID] or false, "
                      .. "task[STATE])" },
      lines_of("lua/sprun/sched/task.lua", "local function finish",
               "end\n"))
  end)

  it("a retry loop's events are one flow (s, t..., f) on its track; each "
     .. "backoff a slice of its delay_ms; a loop of one event has none",
     function()
    local doc
    local seen = {}
    telemetry.attach("trace_spec_calls", { "snakepit", "retry", "success" },
      function(_, _, md) seen[#seen + 1] = md.call end)
    vrun(function()
      local t = trace.start()
      local n = 0
      assert(ex.execute_with_retry(function()
        n = n + 1
        if n < 3 then return nil, sprun.error("unavailable", "down") end
        return "up"
      end, { max_attempts = 3, backoff_ms = { 100, 200 }, pool = "db" }))
      assert(ex.execute_with_retry(function() return "at once" end,
                                   { pool = "db" }))
      doc = t:stop()
    end)
    telemetry.detach("trace_spec_calls")
    local slices, by_ph, flows = h.trace_structure(doc)
    assert.are.same({ "backoff 0-100000", "backoff 100000-300000",
                      "retry db success 0-300000" }, slices)
    assert.are.equal(1, #flows)
    local f = flows[1]
    assert.are.same({ "s t t t f", "retry" }, { f.phases, f.cat })
    assert.are.same({ 0, 0, 100000, 100000, 300000 }, f.ts)
    local tid = on_track(doc, "retry db", "i")[1].tid
    assert.are.same({ tid, tid, tid, tid, tid }, f.tids)
    for _, ph in ipairs { "s", "t", "f" } do
      for _, e in ipairs(by_ph[ph]) do
        assert.are.same({ f.id, "retry call" }, { e.id, e.name })
      end
    end
    -- Each loop numbered once, in its events' metadata.
    assert.are.equal(2, #seen)
    assert.are.equal(seen[1] + 1, seen[2])
    local calls = {}
    for _, e in ipairs(on_track(doc, "retry db", "i")) do
      calls[#calls + 1] = e.name .. " " .. (e.args.call - seen[1])
    end
    assert.are.same({ "attempt 0", "backoff 0", "attempt 0", "backoff 0",
                      "success 0", "success 1" }, calls)
  end)

  it("a retry loop or hedged call that began with no handler of its "
     .. "events takes no call number, nor has one", function()
    local calls = {}
    local function watch(event)
      telemetry.attach("trace_spec_calls", event, function(_, _, md)
        calls[#calls + 1] = md.call or "none"
      end)
    end
    local unwatch = function() telemetry.detach("trace_spec_calls") end
    local function once() return 1 end
    local RETRY = { "snakepit", "retry", "success" }
    local WON = { "sprun", "hedge", "won" }
    vrun(function()
      watch(RETRY)
      ex.execute_with_retry(once)
      unwatch()
      ex.execute_with_retry(once)         -- unobserved: takes no number
      watch(RETRY)
      ex.execute_with_retry(once)
      unwatch()
      -- A handler attached while the loop runs sees no number.
      ex.execute_with_retry(function() watch(RETRY) return 1 end)
      unwatch()
      watch(WON)
      ex.execute_hedged(once, { delay_ms = 10 })
      unwatch()
      ex.execute_hedged(once, { delay_ms = 10 })
      watch(WON)
      ex.execute_hedged(once, { delay_ms = 10 })
      unwatch()
    end)
    assert.are.equal(5, #calls)
    assert.are.equal("number", type(calls[1]))
    assert.are.equal("number", type(calls[4]))
    assert.are.same({ calls[1] + 1, "none", calls[4] + 1 },
                    { calls[2], calls[3], calls[5] })
  end)

  it("a hedged call's started and won events are one flow", function()
    local doc
    vrun(function()
      local t = trace.start()
      local n = 0
      assert(ex.execute_hedged(function()
        n = n + 1
        sprun.sleep(n == 1 and 1000 or 10)
        return n
      end, { delay_ms = 50, max_hedges = 1, name = "h" }) == 2)
      doc = t:stop()
    end)
    local _, _, flows = h.trace_structure(doc)
    assert.are.equal(1, #flows)
    assert.are.same({ "s f", "hedge", { 50000, 60000 } },
                    { flows[1].phases, flows[1].cat, flows[1].ts })
    local tid = on_track(doc, "hedge h", "i")[1].tid
    assert.are.same({ tid, tid }, flows[1].tids)
  end)

  it("an event with numbers ready and busy sets the pool's counter, and "
     .. "with queued its queue's", function()
    local doc
    vrun(function()
      local t = trace.start()
      telemetry.emit("sprun.pool.request", { ready = 2, busy = 1, queued = 3,
                                             duration_ms = 0 },
                     { pool = "py" })
      sprun.sleep(10)
      telemetry.execute({ "sprun", "pool", "worker_started" },
                        { ready = 3, busy = 0 }, { pool = "py" })
      telemetry.execute({ "sprun", "pool", "worker_stopped" },
                        { ready = 2, busy = "1" }, { pool = "py" })
      doc = t:stop()
    end)
    local _, by_ph = h.trace_structure(doc)
    local got = {}
    for _, e in ipairs(by_ph.C) do
      got[#got + 1] = { e.name, e.ts, e.args }
    end
    assert.are.same({
      { "pool py", 0, { ready = 2, busy = 1 } },
      { "queue py", 0, { queued = 3 } },
      { "pool py", 10000, { ready = 3, busy = 0 } },
    }, got)
    local tid = on_track(doc, "pool py", "i")[1].tid
    for _, e in ipairs(by_ph.C) do
      assert.are.equal(tid, e.tid)
    end
  end)

  it("the structure check finds what Perfetto would not accept", function()
    local function doc(...)
      return { traceEvents = { ... } }
    end
    local function fault(d)
      local ok, err = pcall(h.trace_structure, d)
      assert.is_false(ok)
      return (tostring(err):gsub("^.-:%d+: ", ""))
    end
    local b = function(id, name, ts)
      return { ph = "b", cat = "c", id = id, name = name, ts = ts }
    end
    local e = function(id, name, ts)
      return { ph = "e", cat = "c", id = id, name = name, ts = ts }
    end
    local fl = function(ph, id, ts)
      return { ph = ph, cat = "c", id = id, name = "f", ts = ts,
               bp = ph == "f" and "e" or nil }
    end
    assert.are.same({ "y 1-2", "x 0-3" }, (h.trace_structure(
      doc(b(1, "x", 0), b(1, "y", 1), e(1, "y", 2), e(1, "x", 3)))))
    assert.are.equal("slice c 1: e of x ends y",
      fault(doc(b(1, "x", 0), b(1, "y", 1), e(1, "x", 2), e(1, "y", 3))))
    assert.are.equal("a b without its e", fault(doc(b(1, "x", 0))))
    assert.are.equal("slice id c 1 reused",
      fault(doc(b(1, "x", 0), e(1, "x", 1), b(1, "x", 2), e(1, "x", 3))))
    assert.are.equal("flow c 1 has a second s",
      fault(doc(fl("s", 1, 0), fl("s", 1, 1), fl("f", 1, 2))))
    assert.are.equal("flow c 1 without its f", fault(doc(fl("s", 1, 0))))
    assert.are.equal("flow c 1: t before its s", fault(doc(fl("t", 1, 0))))
    assert.are.equal("flow c 1: t after its f",
      fault(doc(fl("s", 1, 0), fl("f", 1, 1), fl("t", 1, 2))))
    assert.are.equal("out of order at ts 1",
      fault(doc(fl("s", 1, 2), fl("f", 1, 1))))
  end)
end)
